"""The destinations' marker tables, where each published version is recorded: read once per destination
(connection, schema), an unreadable destination reported as one redacted line."""
from __future__ import annotations

from typing import Any

from ..config import Dataset
from ..connections import redact_exception
from .model import _one


class Markers:
    """The marker rows of each destination (connection, schema), read once per destination."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
        self._errors: dict[tuple[str, str], str] = {}

    def where(self, dataset: Dataset) -> tuple[str, str]:
        from ..publish import transports

        transport = transports.get(dataset.dest_conn)
        return dataset.dest_conn, dataset.dest_schema or transport.default_schema

    def of(self, dataset: Dataset) -> list[dict[str, Any]]:
        """The dataset's marker rows whose table still exists, newest first; raises RuntimeError (one
        redacted line) when the destination cannot be read."""
        try:
            key = self.where(dataset)
        except Exception as exc:
            raise RuntimeError(_one(redact_exception(exc))) from None
        if key not in self._rows and key not in self._errors:
            try:
                self._rows[key] = self._read(*key)
            except Exception as exc:
                self._errors[key] = _one(f"{dataset.dest_conn}: {redact_exception(exc)}")
        if key in self._errors:
            raise RuntimeError(self._errors[key])
        return [r for r in self._rows[key].get(dataset.id, []) if r.get("table_name") in (None, dataset.dest_table)]

    @staticmethod
    def _read(conn: str, schema: str) -> dict[str, list[dict[str, Any]]]:
        from ..publish import sql, transports

        transport = transports.get(conn)
        if not transport.query(sql.table_exists(schema, sql.MARKER_TABLE))[0]["present"]:
            return {}
        table = sql.qualified(schema, sql.MARKER_TABLE)
        rows = transport.query(  # SELECT *: columns added later (mode, counts, seconds, run_id) come along
            f"SELECT m.*, to_regclass(quote_ident({sql.literal(schema)}) || '.' || quote_ident(m.table_name)) IS NOT NULL "
            f"AS table_present FROM {table} m ORDER BY m.published_at DESC, m.version DESC")
        found: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            found.setdefault(str(row["dataset_id"]), []).append(dict(row))
        return found
