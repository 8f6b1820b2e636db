"""Reading each dataset's state now (``collect``) and one dataset's past versions and failures (``history``),
from the marker tables, the run records in staging and luigid."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

from .. import runs
from ..config import Dataset, Registry, dataset_id_for
from ..connections import redact
from ..schedule import due_version, next_fire_time
from .luigid import _history_tasks, _luigid_tasks, task_link
from .markers import Markers
from .model import DatasetStatus, Failure, _float, _int, _iso, _one, _when


def collect(registry: Registry, store: Any, ids: Iterable[str] = (), luigid: str | None = None,
            now: datetime | None = None, history: str | None = None) -> list[DatasetStatus]:
    """One DatasetStatus per dataset (valid ones and broken files), in id order; ``ids`` narrows it.
    ``luigid``: its URL (running and failed tasks); ``history``: its task-history database URL."""
    wanted = set(ids)
    markers = Markers()
    in_luigid = _luigid_tasks(luigid) if luigid else {}
    for dataset_id, events in (_history_tasks(history) if history else {}).items():
        in_luigid.setdefault(dataset_id, []).extend(events)
    found: list[DatasetStatus] = []
    for dataset in registry:
        if wanted and dataset.id not in wanted:
            continue
        found.append(_status(dataset, markers, store, in_luigid.get(dataset.id, []), luigid, now))
    for path, problems in registry.broken_files().items():
        dataset_id = dataset_id_for(registry.root, path) or path
        if wanted and dataset_id not in wanted:
            continue
        found.append(DatasetStatus(dataset_id=dataset_id, state="broken config", config=path,
                                   problem=_one("; ".join(f"{p.key}: {p.reason}" for p in problems))))
    unknown = wanted - {s.dataset_id for s in found}
    if unknown:
        close = sorted(unknown)
        raise KeyError(f"no dataset {', '.join(map(repr, close))} in {registry.root}")
    return sorted(found, key=lambda s: s.dataset_id)


def _status(dataset: Dataset, markers: Markers, store: Any, luigid_tasks: list[dict[str, Any]], luigid: str | None,
            now: datetime | None) -> DatasetStatus:
    destination = "(staging only)"
    if dataset.publish:
        destination = f"{dataset.dest_conn}:{(dataset.dest_schema + '.') if dataset.dest_schema else ''}{dataset.dest_table}"
    if dataset.ago is not None:  # ArcGIS Online, published by its own task (LoadAgo)
        ago = f"{dataset.ago.conn}:ago item {dataset.ago.item} [{dataset.ago.mode}]"
        destination = ago if not dataset.publish else f"{destination} + {ago}"
    row = DatasetStatus(dataset_id=dataset.id, state="", kind=dataset.kind, schedule=dataset.schedule or "manual",
                        destination=destination, config=dataset.path)
    if dataset.schedule:
        row.due_version = due_version(dataset.schedule, now) if now else due_version(dataset.schedule)
        row.next_due = _iso(next_fire_time(dataset.schedule, now) if now else next_fire_time(dataset.schedule))
    records = runs.read(store, dataset.id) if store is not None else []
    done = [r for r in records if r.outcome == "done"]
    failed = [r for r in records if r.outcome == "failed"]
    published: set[str] = set()
    last_success: datetime | None = None
    if dataset.publish:
        try:
            rows = markers.of(dataset)
        except RuntimeError as exc:
            rows, row.problem = [], str(exc)
        current = [r for r in rows if r.get("table_present", True)]
        published = {str(r["version"]) for r in current}
        if current:
            latest = current[0]
            row.last_version = str(latest["version"])
            row.published_at = _iso(latest.get("published_at"))
            row.rows = _int(latest.get("row_count"))
            row.mode = latest.get("mode")
            row.counts = {k: int(latest[k]) for k in ("inserted", "updated", "deleted", "unchanged") if latest.get(k) is not None}
            if row.counts:
                row.changed = any(row.counts.get(k, 0) for k in ("inserted", "updated", "deleted"))
            elif latest.get("rewritten") is not None:
                row.changed = bool(latest["rewritten"])
            row.seconds = _float(latest.get("seconds"))
            if row.seconds is None:
                row.seconds = next((r.seconds for r in done if r.version == row.last_version and r.step == "Load"), None)
            last_success = _when(latest.get("published_at"))
    elif done:
        latest_done = done[0]
        row.last_version, row.published_at, row.seconds = latest_done.version, latest_done.at, latest_done.seconds
        published = {r.version for r in done}
        last_success = latest_done.when
    if done and (last_success is None or done[0].when > last_success):
        last_success = done[0].when
    final_steps = ("Load",) if dataset.publish else ("Extract", "Geocode")
    for task in luigid_tasks:  # a publish luigid's history saw finish counts as a success too
        if task.get("status") == "DONE" and task.get("name") in final_steps:
            when = datetime.fromtimestamp(float(task.get("last_updated") or 0), timezone.utc)
            last_success = when if last_success is None or when > last_success else last_success
    failure = failed[0] if failed else None
    if failure is not None and (last_success is None or failure.when > last_success):
        row.last_failure = Failure(at=_iso(failure.at) or failure.at, step=failure.step, version=failure.version,
                                   error=_one(failure.error), log_url=failure.log_url, task_id=failure.task_id)
        row.log_url = failure.log_url
    for task in sorted(luigid_tasks, key=lambda t: -float(t.get("last_updated") or 0)):  # newest first
        if task.get("status") == "RUNNING":
            row.running = True
        elif task.get("status") == "FAILED" and row.last_failure is None:
            when = datetime.fromtimestamp(float(task.get("last_updated") or 0), timezone.utc)
            if last_success is None or when > last_success:
                row.last_failure = Failure(at=_iso(when) or "", step=str(task.get("name", "")), version=str((task.get("params") or {}).get("version", "")),
                                           error=_one(redact(str(task.get("status_message") or "failed (see luigid)"))), task_id=task["task_id"])
    task_id = row.last_failure.task_id if row.last_failure else ""
    row.task_url = task_link(luigid, dataset.id, task_id)
    if not dataset.enabled:
        row.state = "disabled"
    elif row.last_failure is not None:
        row.state = "failing"
    elif row.problem:
        row.state = "unknown"
    elif dataset.schedule is None:
        row.state = "manual"
    elif not dataset.publish:
        row.state = "stage-only"
    else:
        row.state = "fresh" if row.due_version in published else "due"
    return row


def history(registry: Registry, store: Any, dataset_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The dataset's versions (marker rows) and failed runs, newest first."""
    dataset = registry.get(dataset_id)
    records = runs.read(store, dataset.id, limit=limit * 3) if store is not None else []
    seconds = {(r.version, r.step): r.seconds for r in records if r.outcome == "done"}
    entries: list[dict[str, Any]] = []
    if dataset.publish:
        for marker in Markers().of(dataset)[:limit]:
            counts = {k: int(marker[k]) for k in ("inserted", "updated", "deleted", "unchanged") if marker.get(k) is not None}
            changed = any(counts.get(k, 0) for k in ("inserted", "updated", "deleted")) if counts else bool(marker.get("rewritten"))
            outcome = ("published" if changed else "unchanged") + (f" ({marker['mode']})" if marker.get("mode") else "")
            if not marker.get("table_present", True):
                outcome += " (table since replaced)"
            entries.append({"at": _iso(marker.get("published_at")), "version": str(marker["version"]), "outcome": outcome,
                            "rows": _int(marker.get("row_count")), "changed": changed, "counts": counts,
                            "seconds": _float(marker.get("seconds")) if marker.get("seconds") is not None else seconds.get((str(marker["version"]), "Load")),
                            "detail": ""})
    else:
        entries += [{"at": r.at, "version": r.version, "outcome": "staged", "rows": None, "changed": None, "counts": {},
                     "seconds": r.seconds, "detail": ""} for r in records if r.outcome == "done"]
    entries += [{"at": r.at, "version": r.version, "outcome": f"failed at {r.step}", "rows": None, "changed": None,
                 "counts": {}, "seconds": None, "detail": _one(r.error)} for r in records if r.outcome == "failed"]
    entries.sort(key=lambda e: _when(e["at"]) or datetime.min.replace(tzinfo=timezone.utc), reverse=True)
    return entries[:limit]
