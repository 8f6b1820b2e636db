"""The load protocol (DESIGN §3), written once for every transport.

shadow table → COPY from staging → verify (count, empty, drift) → transport's finishing (CARTO:
cartodbfy + VACUUM) → indexes on the shadow → ONE transaction: swap shadow into place, rename its indexes,
re-create dependent views, grants, marker. Anything that fails before the swap drops the shadow and leaves
the live table exactly as it was; a crashed run's shadow is dropped by the next run.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import Dataset
from ..schema import TableSchema
from ..staging import StagedTable
from . import sql

log = logging.getLogger(__name__)

# Below this many live rows a table is "small" and drift is judged leniently (±200%, as the City's later checks did).
SMALL_TABLE_ROWS = 50
SMALL_TABLE_TOLERANCE = 2.0


_COPY_CONTEXT = re.compile(r"COPY [^,\n]+, line (?P<line>\d+)(?:, column (?P<column>[^:\n]+))?")


def _staged_row(message: str) -> str:
    """PostgreSQL names the CSV line (the header is line 1); a user wants the data row and column."""
    match = _COPY_CONTEXT.search(message)
    if not match or int(match["line"]) < 2:
        return ""
    column = f", column {match['column']}" if match["column"] else ""
    return f" at staged row {int(match['line']) - 1}{column}"


class LoadError(RuntimeError):
    """A load that stopped before the swap; the live table is unchanged."""


class Transport(Protocol):
    """How SQL reaches a destination: a direct PostGIS connection or CARTO's HTTP APIs."""

    name: str
    default_schema: str

    def query(self, statement: str) -> list[dict[str, Any]]: ...
    def long_query(self, statement: str) -> None: ...
    def transaction(self, statements: list[str]) -> None: ...
    def copy_in(self, copy_statement: str, staged: StagedTable) -> int: ...
    def finish_shadow(self, schema: str, shadow: str, table_schema: TableSchema) -> None: ...
    def post_swap(self, schema: str, table: str, table_schema: TableSchema, dataset: Dataset) -> None: ...
    def index_columns(self, dataset: Dataset, table_schema: TableSchema) -> list[list[str]]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class LoadResult:
    dataset_id: str
    version: str
    where: str  # transport:schema.table
    rows: int
    rewritten: bool
    seconds: float


Status = Callable[[str], None]


class Loader:
    """Publishes one staged version of one dataset through a transport."""

    def __init__(self, dataset: Dataset, transport: Transport, status: Status = lambda message: None):
        self.dataset, self.transport, self.status = dataset, transport, status
        self.schema = dataset.dest_schema or transport.default_schema
        self.table = dataset.dest_table
        self.shadow = sql.shadow_name(self.table)

    def where(self) -> str:
        return f"{self.transport.name}:{self.schema}.{self.table}"

    # --- completion -------------------------------------------------------------------------------------

    def is_published(self, version: str) -> bool:
        if not self._exists(sql.MARKER_TABLE):
            return False
        return bool(self.transport.query(sql.marker_lookup(self.schema, self.dataset.id, version, self.table)))

    # --- the protocol -----------------------------------------------------------------------------------

    def load(self, staged: StagedTable, force: bool = False, accept_schema_change: bool = False) -> LoadResult:
        started = time.monotonic()
        manifest, table_schema = staged.manifest(), staged.schema()
        self.transport.query(sql.create_marker_table(self.schema))
        if not force and self._unchanged(manifest.sha256):
            self._record(manifest.version, manifest.sha256, manifest.rows, rewritten=False)
            log.info("%s: data unchanged since the last publish (sha256 %s…); recorded version %s without rewriting %s",
                     self.dataset.id, manifest.sha256[:12], manifest.version, self.where())
            return LoadResult(self.dataset.id, manifest.version, self.where(), manifest.rows, False, time.monotonic() - started)
        self._check_grant_roles()
        self._drop_shadow()  # a crashed run's leftover
        try:
            self._build_shadow(staged, table_schema, manifest.rows)
            self._check_schema_change(accept_schema_change or self.dataset.accept_schema_change)
            # Indexes are built on the shadow, so the table, its indexes and the marker appear in one commit:
            # a worker killed (or an index failing) before then leaves the old table and no marker.
            index_renames = self._indexes(table_schema)
            self.status(f"swapping {self.where()}")
            self._swap(manifest.version, manifest.sha256, manifest.rows, index_renames)
        except BaseException as exc:
            self._drop_shadow_quietly()
            if isinstance(exc, Exception) and not isinstance(exc, LoadError):
                # A transport error: say which dataset and where; the cause stays chained for rotation checks.
                raise LoadError(f"{self.dataset.id}: load into {self.where()} failed, live table unchanged: {exc}") from exc
            raise
        self.transport.post_swap(self.schema, self.table, table_schema, self.dataset)
        elapsed = time.monotonic() - started
        log.info("%s: published %d rows to %s as version %s in %.1fs", self.dataset.id, manifest.rows, self.where(), manifest.version, elapsed)
        return LoadResult(self.dataset.id, manifest.version, self.where(), manifest.rows, True, elapsed)

    def _build_shadow(self, staged: StagedTable, table_schema: TableSchema, expected: int) -> None:
        self.status(f"creating {self.shadow}")
        self.transport.query(sql.create_table(self.schema, self.shadow, table_schema))
        self.status(f"copying {expected} rows into {self.shadow}")
        try:
            copied = self.transport.copy_in(sql.copy_from_stdin(self.schema, self.shadow, table_schema.names), staged)
        except Exception as exc:
            raise LoadError(f"{self.dataset.id}: COPY into {self.where()}{_staged_row(str(exc))} failed, live table unchanged: {exc}") from exc
        counted = self._count(self.shadow)
        if not (copied == counted == expected):
            raise LoadError(f"{self.dataset.id}: row count mismatch loading {self.where()}: staged {expected}, copied {copied}, in table {counted}")
        self._check_rows(counted)
        self.status(f"finishing {self.shadow}")
        self.transport.finish_shadow(self.schema, self.shadow, table_schema)

    def _check_grant_roles(self) -> None:
        """Fail before any copying when a role in carto_users does not exist (the swap would roll back)."""
        if not self.dataset.grants:
            return
        names = ", ".join(sql.literal(role) for role in self.dataset.grants)
        found = {row["rolname"] for row in self.transport.query(f"SELECT rolname FROM pg_roles WHERE rolname IN ({names})")}
        missing = [role for role in self.dataset.grants if role not in found]
        if missing:
            raise LoadError(f"{self.dataset.id}: carto_users names role(s) {missing} that do not exist on {self.transport.name}; fix carto_users in {self.dataset.path}")

    def _check_rows(self, new_rows: int) -> None:
        if new_rows == 0 and not self.dataset.allow_empty:
            raise LoadError(f"{self.dataset.id}: refusing to replace {self.where()} with an empty table (set allow_empty: true)")
        if not self._exists(self.table):
            return
        live = self._count(self.table)
        if live == 0:
            return
        tolerance = SMALL_TABLE_TOLERANCE if live < SMALL_TABLE_ROWS else self.dataset.row_count_tolerance
        change = (new_rows - live) / live
        if abs(change) > tolerance:
            raise LoadError(
                f"{self.dataset.id}: row count would change from {live} to {new_rows} ({change:+.1%}), beyond the "
                f"±{tolerance:.0%} tolerance for {self.where()}; if this is expected, raise row_count_tolerance in {self.dataset.path}"
            )

    def _check_schema_change(self, accepted: bool) -> None:
        """Apps query these tables by column name: a column added, removed or retyped is refused unless accepted."""
        if not self._exists(self.table):
            return
        live = {r["name"]: r["type"] for r in self.transport.query(sql.column_types(self.schema, self.table))}
        new = {r["name"]: r["type"] for r in self.transport.query(sql.column_types(self.schema, self.shadow))}
        added = [c for c in new if c not in live]
        removed = [c for c in live if c not in new]
        retyped = [f"{c} {live[c]} → {new[c]}" for c in new if c in live and live[c] != new[c]]
        if not (added or removed or retyped):
            return
        change = "; ".join(f"{what}: {', '.join(items)}" for what, items in
                           (("added", added), ("removed", removed), ("retyped", retyped)) if items)
        if accepted:
            log.warning("%s: schema of %s changes (accepted): %s", self.dataset.id, self.where(), change)
            return
        raise LoadError(f"{self.dataset.id}: the columns of {self.where()} would change — {change}. If this is "
                        f"intended, publish once with --accept-schema-change (or set accept_schema_change: true in {self.dataset.path})")

    def _swap(self, version: str, fingerprint: str, rows: int, index_renames: list[tuple[str, str]]) -> None:
        views = self.transport.query(sql.dependent_views(self.schema, self.table)) if self._exists(self.table) else []
        statements = [f"DROP {'MATERIALIZED VIEW' if v['kind'] == 'm' else 'VIEW'} {sql.qualified(v['view_schema'], v['view_name'])}" for v in views]
        statements += [
            f"DROP TABLE IF EXISTS {sql.qualified(self.schema, self.table)}",
            f"ALTER TABLE {sql.qualified(self.schema, self.shadow)} RENAME TO {sql.ident(self.table)}",
        ]
        statements += [f"ALTER INDEX {sql.qualified(self.schema, old)} RENAME TO {sql.ident(new)}" for old, new in index_renames]
        for view in views:  # views keep working on the new table; if one no longer fits, the whole swap rolls back
            kind = "MATERIALIZED VIEW" if view["kind"] == "m" else "VIEW"
            name = sql.qualified(view["view_schema"], view["view_name"])
            statements.append(f"CREATE {kind} {name} AS {view['definition'].rstrip().rstrip(';')}")
            statements += [f"GRANT SELECT ON {name} TO {sql.ident(g)}" for g in json.loads(view["grantees"] or "[]")]
        statements += [f"GRANT SELECT ON {sql.qualified(self.schema, self.table)} TO {sql.ident(user)}" for user in self.dataset.grants]
        statements.append(sql.insert_marker(self.schema, self.dataset.id, version, self.table, fingerprint, rows, True))
        if views:
            log.info("%s: re-creating dependent views %s on the new table", self.dataset.id, ", ".join(v["view_name"] for v in views))
        try:
            self.transport.transaction(statements)
        except Exception as exc:
            if views:
                names = ", ".join(f"{v['view_schema']}.{v['view_name']}" for v in views)
                raise LoadError(f"{self.dataset.id}: swap of {self.where()} rolled back; dependent views ({names}) could not be re-created on the new table: {exc}") from exc
            raise

    def _indexes(self, table_schema: TableSchema) -> list[tuple[str, str]]:
        """Build the configured indexes (and the spatial one) on the shadow; return (shadow name, final name)
        pairs for the swap to rename."""
        renames: list[tuple[str, str]] = []
        for columns in self.transport.index_columns(self.dataset, table_schema):
            missing = [c for c in columns if c not in table_schema.names and c not in ("the_geom", "the_geom_webmercator", "cartodb_id")]
            if missing:
                log.warning("%s: index %s skipped: no column %s in %s", self.dataset.id, "+".join(columns), missing, self.where())
                continue
            self.status(f"indexing {self.shadow} ({'+'.join(columns)})")
            method = "gist" if any(c == (table_schema.geometry.name if table_schema.geometry else None) or c.startswith("the_geom") for c in columns) else "btree"
            self.transport.long_query(sql.create_index(self.schema, self.shadow, columns, method))
            renames.append((sql.index_name(self.shadow, columns), sql.index_name(self.table, columns)))
        return renames

    # --- helpers ----------------------------------------------------------------------------------------

    def _unchanged(self, fingerprint: str) -> bool:
        if not self._exists(self.table):
            return False
        rows = self.transport.query(sql.latest_marker(self.schema, self.dataset.id, self.table))
        return bool(rows) and rows[0]["fingerprint"] == fingerprint

    def _record(self, version: str, fingerprint: str, rows: int, rewritten: bool) -> None:
        self.transport.query(sql.insert_marker(self.schema, self.dataset.id, version, self.table, fingerprint, rows, rewritten))

    def _exists(self, table: str) -> bool:
        return bool(self.transport.query(sql.table_exists(self.schema, table))[0]["present"])

    def _count(self, table: str) -> int:
        return int(self.transport.query(sql.count_rows(self.schema, table))[0]["n"])

    def _drop_shadow(self) -> None:
        self.transport.query(f"DROP TABLE IF EXISTS {sql.qualified(self.schema, self.shadow)}")

    def _drop_shadow_quietly(self) -> None:
        try:
            self._drop_shadow()
        except Exception as exc:  # the next run drops it; the original error matters more
            log.warning("%s: could not drop %s after a failed load (the next run will): %s", self.dataset.id, self.shadow, exc)
