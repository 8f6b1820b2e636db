"""The status for a terminal (``text_table``, ``history_table``) and as JSON (``as_json``)."""
from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from .cells import _changed, _secs, _short_time, _without_id
from .model import STATES, DatasetStatus, _iso


def text_table(rows: list[DatasetStatus]) -> str:
    """The status as a terminal table; long texts (errors, problems) become numbered notes under it."""
    numbered: dict[str, int] = {}  # one note per distinct text: an unreachable destination is one note

    def note(text: str) -> int:
        return numbered.setdefault(text, len(numbered) + 1)

    table = [("DATASET", "STATE", "LAST VERSION", "PUBLISHED (UTC)", "ROWS", "SECS", "CHANGED", "NEXT DUE (UTC)", "LAST FAILURE")]
    for s in rows:
        failure = "-"
        if s.last_failure:
            number = note(f"{s.dataset_id}: {s.last_failure.step} {s.last_failure.version}: {_without_id(s.last_failure.error, s.dataset_id)}")
            failure = f"{_short_time(s.last_failure.at)} {s.last_failure.step} [{number}]"
        elif s.problem:
            failure = f"[{note(s.problem if s.state != 'broken config' else f'{s.config}: {s.problem}')}]"
        state = s.state + (" (running)" if s.running else "")
        table.append((s.dataset_id, state, s.last_version or "-", _short_time(s.published_at),
                      "-" if s.rows is None else f"{s.rows:,}", _secs(s.seconds), _changed(s.changed),
                      _short_time(s.next_due) if s.next_due else ("manual" if s.state != "broken config" else "-"), failure))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
    counts = {state: sum(1 for s in rows if s.state == state) for state in STATES}
    lines.append("")
    lines.append(f"{len(rows)} dataset(s): " + ", ".join(f"{n} {state}" for state, n in counts.items() if n))
    for text, number in numbered.items():  # notes are whole (they may wrap): the table above fits the terminal
        lines.append(f"[{number}] {text}")
    return "\n".join(lines)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def history_table(dataset_id: str, entries: list[dict[str, Any]]) -> str:
    table = [("WHEN (UTC)", "VERSION", "OUTCOME", "ROWS", "SECS", "CHANGED", "DETAIL (+inserted ~updated -deleted =unchanged)")]
    for e in entries:
        signs = {"inserted": "+", "updated": "~", "deleted": "-", "unchanged": "="}
        counts = " ".join(f"{signs[k]}{v:,}" for k, v in e["counts"].items()) if e["counts"] else ""
        table.append((_short_time(e["at"]), e["version"], e["outcome"], "-" if e["rows"] is None else f"{e['rows']:,}",
                      _secs(e["seconds"]), _changed(e["changed"]), _cut(" ".join(filter(None, [counts, e["detail"]])), 120) or "-"))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = [f"{dataset_id}: {len(entries)} run(s)"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
    return "\n".join(lines)


def as_json(rows: list[DatasetStatus]) -> str:
    return json.dumps({"generated_at": _iso(datetime.now(timezone.utc)), "datasets": [asdict(s) for s in rows]}, indent=2)
