"""Incremental extracts (``change_signal: {column: updated_at, incremental: true}``): which rows to read.

The base is the version the destination has published most recently. Its manifest holds the ``column``
signal read just before its rows were extracted, and so the newest value of the column that version can have
missed nothing below. The next extract reads the rows whose column is newer than that value less
``settle_seconds`` (a row stamped before the base was read but committed after it is read again; merging it
twice changes nothing), and the load merges them by primary key. Anything that leaves the base in doubt —
no published version, its manifest gone, a signal of another kind or column, an empty table — means a full
extract, which merges every row as before.
"""
from __future__ import annotations

from ..config import Dataset
from ..sources.sql.base import ChangedSince
from ..staging import StagedTable


def incremental_column(dataset: Dataset) -> str | None:
    """The updated_at column of an incremental dataset (config validation made sure it is one), else None."""
    options = getattr(dataset, "change_signal", None)
    return options.column if getattr(options, "incremental", False) else None


def changed_since(dataset: Dataset, base: StagedTable) -> tuple[ChangedSince | None, str]:
    """What an incremental extract after ``base`` (the destination's newest published version) reads, or None
    and why the extract must read every row."""
    column = incremental_column(dataset)
    if column is None:
        return None, "the dataset is not incremental"
    try:
        manifest = base.manifest()
    except Exception as exc:  # gone from staging, unreadable: a doubt, so read everything
        return None, f"the published version {base.version} cannot be read from staging ({str(exc)[:200]})"
    signal = manifest.change_signal or {}
    if signal.get("kind") != f"column {column}":
        return None, f"the published version {base.version} has no {column} change signal"
    if signal.get("newest") is None:
        return None, f"the published version {base.version} had no {column} value (an empty table)"
    options = dataset.change_signal
    return ChangedSince(column, str(signal["newest"]), int(options.settle_seconds), base.version), ""
