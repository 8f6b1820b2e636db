"""What the status view says about a dataset: the states (worst first), ``DatasetStatus`` and its ``Failure``,
the order rows are shown in, and how raw marker and run values (times, numbers, error texts) become its fields."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .. import runs

STATES = ("broken config", "failing", "unknown", "due", "fresh", "stage-only", "manual", "disabled")
ALARMING = ("broken config", "failing", "unknown")


@dataclass
class Failure:
    at: str
    step: str
    version: str
    error: str
    log_url: str = ""
    task_id: str = ""


@dataclass
class DatasetStatus:
    dataset_id: str
    state: str
    kind: str = ""
    schedule: str = ""
    destination: str = ""
    config: str = ""
    due_version: str | None = None
    next_due: str | None = None
    last_version: str | None = None
    published_at: str | None = None
    rows: int | None = None
    seconds: float | None = None
    changed: bool | None = None
    mode: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    last_failure: Failure | None = None
    running: bool = False
    problem: str = ""
    task_url: str = ""
    log_url: str = ""


def _when(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _iso(value: Any) -> str | None:
    when = _when(value)
    return when.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z") if when else None


def _one(text: str, limit: int = 300) -> str:
    return runs.one_line(text, limit)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def sort_key(s: DatasetStatus) -> tuple[int, str]:
    return (STATES.index(s.state) if s.state in STATES else len(STATES), s.dataset_id)
