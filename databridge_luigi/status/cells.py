"""How one value reads in a table cell, the same in the terminal table and on the HTML page."""
from __future__ import annotations

from datetime import timezone

from .model import _when


def _short_time(value: str | None) -> str:
    when = _when(value)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M") if when else "-"


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}" if value < 10 else f"{value:.1f}"


def _without_id(error: str, dataset_id: str) -> str:
    """Errors name their dataset; beside the dataset's own row that is said already."""
    return error[len(dataset_id) + 2:] if error.startswith(f"{dataset_id}: ") else error


def _changed(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")
