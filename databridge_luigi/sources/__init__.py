"""Sources: each turns a dataset into a staged table (CSV + schema + manifest).

``extract(dataset, url, staged)`` picks the source by the dataset's kind, refuses an empty result unless
``allow_empty``, applies an optional schema override file, and writes the manifest last.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Dataset
from ..schema import SchemaError, TableSchema
from ..staging import Manifest, StagedTable

Progress = Callable[..., None]

if TYPE_CHECKING:
    from .sql.base import ChangedSince


def preload(kind: str) -> None:
    """Import what extracting a ``kind`` source needs, without connecting. The scheduling process calls this
    for an Extract it is about to run: with ``--workers N`` luigi forks a process per task, and each would
    otherwise import SQLAlchemy and a dialect itself (~0.4 s of CPU per task on two cores)."""
    if kind == "databridge":
        from . import sql  # noqa: F401  (SQLAlchemy and the adapters)
        from .sql import geodatabase  # noqa: F401  (adapter_for asks every PostgreSQL source whether it is one)
        from .sql.base import preload_dialects

        preload_dialects()


def extract(dataset: Dataset, url: str, staged: StagedTable, progress: Progress = lambda *a: None,
            since: "ChangedSince | None" = None) -> Manifest:
    """``since``: an incremental extract (SQL sources only): the rows changed since a published version, which
    the manifest records as ``delta`` so that a load merges them instead of taking them for the whole table."""
    with staged.writer() as writer:
        if dataset.kind == "databridge":
            from .sql import extract_table

            extraction = extract_table(dataset, url, writer, progress, since)
        elif dataset.kind == "knack":
            from .knack import extract_knack

            extraction = extract_knack(dataset, url, writer, progress)
        elif dataset.kind == "airtable":
            from .airtable import extract_airtable

            extraction = extract_airtable(dataset, url, writer, progress)
        else:
            raise NotImplementedError(f"{dataset.id}: {dataset.kind} sources are not available in this build")
        if "changed_since" not in extraction.facts:  # the source read every row (its columns changed, say)
            since = None
        if extraction.rows == 0 and not dataset.allow_empty and since is None:  # one guard for every source (a delta may be empty)
            from .sql import ExtractError

            where = extraction.facts.get("table") or dataset.source_table
            raise ExtractError(f"{dataset.id}: {dataset.kind} source {where} has 0 rows; refusing to stage an empty table (set allow_empty: true)")
        schema = extraction.schema
        if dataset.schema_override:
            try:
                schema = schema.with_overrides(TableSchema.loads(Path(dataset.schema_override).read_text(encoding="utf-8")))
            except SchemaError as exc:
                from .sql import ExtractError

                raise ExtractError(f"{dataset.id}: schema_override {dataset.schema_override}: {exc}") from None
        if since is not None:
            staged.delta = since.as_dict()
            if dataset.delete_stale:
                staged.delta["keys"] = _stage_keys(dataset, url, staged)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return writer.finish(schema, extraction.facts, created)


def keys_table(staged: StagedTable) -> StagedTable:
    """Where an incremental version's key set is staged: ``<dataset_id>__keys/<version>``."""
    return StagedTable(staged.store, f"{staged.dataset_id}__keys", staged.version)


def _stage_keys(dataset: Dataset, url: str, staged: StagedTable) -> dict[str, object]:
    """Every key the source holds now, staged beside the changed rows: a load of changed rows deletes the live
    rows whose key is not among them (``delete_stale``). Read after the changed rows, so a row deleted in between
    is deleted, and one inserted in between is merged now or at the next version."""
    from .sql import ExtractError, extract_table

    keys = keys_table(staged)
    with keys.writer() as writer:
        extraction = extract_table(dataset, url, writer, lambda *progress: None, only=dataset.primary_key)
        if extraction.rows == 0 and not dataset.allow_empty:
            raise ExtractError(f"{dataset.id}: source {dataset.source_table} has 0 rows; refusing to delete every row of the "
                               "published table (set allow_empty: true)")
        manifest = writer.finish(extraction.schema, extraction.facts, datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return {"staged_as": keys.dataset_id, "rows": manifest.rows}
