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

import logging
from collections.abc import Callable

from ..config import Dataset
from ..connections import redact_exception
from ..sources.sql.base import ChangedSince
from ..staging import StagedTable

log = logging.getLogger(__package__)


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
    return ChangedSince(column, str(signal["newest"]), int(options.settle_seconds), base.version, tuple(manifest.columns)), ""


def changed_since_published(dataset: Dataset, published_version: Callable[[], str | None],
                            staged_for: Callable[[str], StagedTable]) -> ChangedSince | None:
    """What an incremental extract reads, from the version its destination holds (``published_version``, asked of
    the destination) and that version's manifest (``staged_for(version)``); None, logged with why, reads every row."""
    try:
        base = published_version()
    except Exception as exc:  # the load will report the destination; the extract reads every row meanwhile
        log.warning("%s: cannot ask %s for its published version (%s); extracting every row", dataset.id,
                    dataset.dest_conn, redact_exception(exc))
        return None
    if base is None:
        log.info("%s: %s has no published version yet; extracting every row", dataset.id, dataset.dest_conn)
        return None
    since, why_not = changed_since(dataset, staged_for(base))
    if since is None:
        log.info("%s: extracting every row: %s", dataset.id, why_not)
    return since
