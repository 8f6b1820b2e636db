"""Run records: each failed (and each finished) Extract/Geocode/Load leaves one small JSON object in staging,
so ``databridge-luigi status`` can say "failing since …, at step …, because …" without luigid — a
``--local-scheduler`` run under cron shows up as failing the next morning.

Key: ``<staging root>/_runs/<dataset_id>/<UTC time>-<step>-<outcome>-<pid>-<random>.json``, written with the store's
exclusive create (never overwritten; S3 or a directory alike). A record holds the dataset id, step, version,
outcome (``failed`` / ``done``), time, seconds, one redacted error line, host, luigi task id and the log link;
it never holds a connection URL (everything passes ``connections.redact``). Writing a record never fails or
delays a task: a store that refuses it is logged once and left alone.

Records are pruned: a finished run keeps its dataset's newest ``KEEP`` records and deletes the older ones (at
most once an hour per dataset and process: one listing), so ``status`` — which lists a dataset's records to read
its newest — costs the same after a year of runs every 15 minutes as on the first day.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from .connections import redact
from .staging import Store

log = logging.getLogger(__name__)

PREFIX = "_runs"
ERROR_LIMIT = 300
KEEP = 500  # per dataset: `status` reads the newest 50 records, `history` the newest 150
PRUNE_EVERY_SECONDS = 3600.0
_warned = False
_pruned_at: dict[str, float] = {}  # dataset id → when this process last pruned its records (time.monotonic)


@dataclass(frozen=True)
class RunRecord:
    dataset_id: str
    step: str
    version: str
    outcome: str  # "failed" or "done"
    at: str  # ISO-8601 UTC
    seconds: float | None = None
    error: str = ""
    host: str = ""
    task_id: str = ""
    log_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def when(self) -> datetime:
        return datetime.fromisoformat(self.at)


def one_line(text: str, limit: int = ERROR_LIMIT) -> str:
    """The first non-empty line of ``text``, redacted and cut to ``limit`` characters."""
    line = next((part.strip() for part in redact(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def error_line(exception: BaseException) -> str:
    """One line for an exception: its message, or its type when the message is empty."""
    from .luigi_defaults import with_hint

    text = " ".join(part.strip() for part in str(exception).splitlines() if part.strip())
    line = one_line(text if text else type(exception).__name__, ERROR_LIMIT * 4)
    hinted = with_hint(line)
    if len(hinted) > ERROR_LIMIT:  # keep the hint: cut the driver's text instead
        hint = hinted[len(line):]
        hinted = line[: max(40, ERROR_LIMIT - len(hint) - 1)] + "…" + hint
    return hinted


def record(store: Store, run: RunRecord) -> str | None:
    """Write ``run``; return its key, or None when the store refused it (logged once per process)."""
    global _warned
    stamp = run.when.strftime("%Y%m%dT%H%M%S.%fZ")
    # The random part: two records of one step in one process within a clock tick must not collide.
    key = f"{PREFIX}/{run.dataset_id}/{stamp}-{run.step}-{run.outcome}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    body = asdict(run)
    body["error"] = one_line(body["error"]) if body["error"] else ""
    body["log_url"] = redact(body["log_url"])
    try:
        store.create_exclusive(key, json.dumps(body, sort_keys=True).encode())
    except Exception as exc:  # a run record must never turn a result into another failure
        if not _warned:
            _warned = True
            log.warning("run record not written (%s): %s", key, one_line(f"{type(exc).__name__}: {exc}"))
        return None
    if run.outcome == "done":
        _prune_now_and_then(store, run.dataset_id)
    return key


def prune(store: Store, dataset_id: str, keep: int = KEEP) -> int:
    """Delete all but the dataset's newest ``keep`` run records; return how many were deleted. Keys begin with
    their UTC time, so the listing's order is their age; a record written meanwhile is newer than all of them."""
    keys = store.list_prefix(f"{PREFIX}/{dataset_id}/")
    old = keys[: max(0, len(keys) - keep)]
    for key in old:
        store.delete(key)
    return len(old)


def _prune_now_and_then(store: Store, dataset_id: str) -> None:
    now = time.monotonic()
    if now - _pruned_at.get(dataset_id, -PRUNE_EVERY_SECONDS) < PRUNE_EVERY_SECONDS:
        return
    _pruned_at[dataset_id] = now
    try:
        deleted = prune(store, dataset_id, KEEP)
    except Exception as exc:  # the next run tries again; the records are only history
        log.warning("%s: old run records not pruned: %s", dataset_id, one_line(f"{type(exc).__name__}: {exc}"))
        return
    if deleted:
        log.info("%s: deleted %d old run records (keeping the newest %d)", dataset_id, deleted, KEEP)


def new(dataset_id: str, step: str, version: str, outcome: str, *, seconds: float | None = None, error: str = "",
        task_id: str = "", log_url: str | None = None, **extra: Any) -> RunRecord:
    return RunRecord(dataset_id=dataset_id, step=step, version=version, outcome=outcome,
                     at=datetime.now(timezone.utc).isoformat(timespec="seconds"), seconds=seconds, error=error,
                     host=socket.gethostname(), task_id=task_id,
                     log_url=log_url or os.environ.get("DATABRIDGE_RUN_LOG", ""), extra=extra)


def read(store: Store, dataset_id: str, limit: int = 50) -> list[RunRecord]:
    """The dataset's newest ``limit`` run records, newest first (unreadable ones skipped)."""
    keys = sorted(store.list_prefix(f"{PREFIX}/{dataset_id}/"), reverse=True)[:limit]
    runs: list[RunRecord] = []
    for key in keys:
        try:
            data = json.loads(store.read_bytes(key) or b"null")
            runs.append(RunRecord(**{k: v for k, v in data.items() if k in RunRecord.__dataclass_fields__}))
        except (ValueError, TypeError):
            continue
    return runs
