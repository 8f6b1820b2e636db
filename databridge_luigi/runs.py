"""Run records: each failed (and each finished) Extract/Geocode/Load leaves one small JSON object in staging,
so ``databridge-luigi status`` can say "failing since …, at step …, because …" without luigid — a
``--local-scheduler`` run under cron shows up as failing the next morning.

Key: ``<staging root>/_runs/<dataset_id>/<UTC time>-<step>-<outcome>-<pid>-<random>.json``, written with the store's
exclusive create (never overwritten; S3 or a directory alike). A record holds the dataset id, step, version,
outcome (``failed`` / ``done``), time, seconds, one redacted error line, host, luigi task id and the log link;
it never holds a connection URL (everything passes ``connections.redact``). Writing a record never fails or
delays a task: a store that refuses it is logged once and left alone.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from .connections import redact
from .staging import Store

log = logging.getLogger(__name__)

PREFIX = "_runs"
ERROR_LIMIT = 300
_warned = False


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
        return key
    except Exception as exc:  # a run record must never turn a result into another failure
        if not _warned:
            _warned = True
            log.warning("run record not written (%s): %s", key, one_line(f"{type(exc).__name__}: {exc}"))
        return None


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
