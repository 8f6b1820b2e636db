"""The morning view: every dataset's state, from the destinations' marker tables, the run records in staging
(``runs.py``) and, when given, luigid.

    databridge-luigi status [ID…] [--json] [--html FILE] [--luigid URL]
    databridge-luigi history ID
    databridge-luigi serve [--host 127.0.0.1] [--port 8090]

States, worst first: ``broken config`` (the file does not validate), ``failing`` (the last run failed after the
last success), ``unknown`` (the destination could not be asked), ``due`` (the due version is not published),
``fresh`` (it is), ``stage-only`` (``upload_to_carto: false``), ``manual`` (no schedule), ``disabled``.
It only reads (``write_page`` writes the page file); every error text passes ``connections.redact``.
"""
from __future__ import annotations

import html
import json
import os
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from . import runs
from .config import Dataset, Registry, dataset_id_for
from .connections import redact, redact_exception
from .schedule import due_version, next_fire_time

STATES = ("broken config", "failing", "unknown", "due", "fresh", "stage-only", "manual", "disabled")
ALARMING = ("broken config", "failing", "unknown")
COLOURS = {  # background, text
    "broken config": ("#7b1fa2", "#fff"), "failing": ("#c62828", "#fff"), "unknown": ("#ef6c00", "#fff"),
    "due": ("#f9a825", "#000"), "fresh": ("#2e7d32", "#fff"), "stage-only": ("#00838f", "#fff"),
    "manual": ("#607d8b", "#fff"), "disabled": ("#bdbdbd", "#000"),
}


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


# --- reading ------------------------------------------------------------------------------------------------

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


class Markers:
    """The marker rows of each destination (connection, schema), read once per destination."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
        self._errors: dict[tuple[str, str], str] = {}

    def where(self, dataset: Dataset) -> tuple[str, str]:
        from .publish import transports

        transport = transports.get(dataset.dest_conn)
        return dataset.dest_conn, dataset.dest_schema or transport.default_schema

    def of(self, dataset: Dataset) -> list[dict[str, Any]]:
        """The dataset's marker rows whose table still exists, newest first; raises RuntimeError (one
        redacted line) when the destination cannot be read."""
        try:
            key = self.where(dataset)
        except Exception as exc:
            raise RuntimeError(_one(redact_exception(exc))) from None
        if key not in self._rows and key not in self._errors:
            try:
                self._rows[key] = self._read(*key)
            except Exception as exc:
                self._errors[key] = _one(f"{dataset.dest_conn}: {redact_exception(exc)}")
        if key in self._errors:
            raise RuntimeError(self._errors[key])
        return [r for r in self._rows[key].get(dataset.id, []) if r.get("table_name") in (None, dataset.dest_table)]

    @staticmethod
    def _read(conn: str, schema: str) -> dict[str, list[dict[str, Any]]]:
        from .publish import sql, transports

        transport = transports.get(conn)
        if not transport.query(sql.table_exists(schema, sql.MARKER_TABLE))[0]["present"]:
            return {}
        table = sql.qualified(schema, sql.MARKER_TABLE)
        rows = transport.query(  # SELECT *: columns added later (mode, counts, seconds, run_id) come along
            f"SELECT m.*, to_regclass(quote_ident({sql.literal(schema)}) || '.' || quote_ident(m.table_name)) IS NOT NULL "
            f"AS table_present FROM {table} m ORDER BY m.published_at DESC, m.version DESC")
        found: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            found.setdefault(str(row["dataset_id"]), []).append(dict(row))
        return found


def _one(text: str, limit: int = 300) -> str:
    return runs.one_line(text, limit)


def _luigid_tasks(url: str) -> dict[str, list[dict[str, Any]]]:
    """luigid's FAILED and RUNNING tasks by dataset id (empty when luigid cannot be asked)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for status in ("FAILED", "RUNNING"):
        query = urllib.parse.urlencode({"data": json.dumps({"status": status, "upstream_status": "", "search": ""})})
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/api/task_list?{query}", timeout=5) as reply:
                tasks = json.load(reply).get("response", {})
        except (OSError, ValueError):
            continue
        for task_id, task in tasks.items():
            dataset_id = (task.get("params") or {}).get("dataset_id")
            if dataset_id:
                found.setdefault(dataset_id, []).append(dict(task, task_id=task_id))
    return found


def _history_tasks(db_url: str, limit: int = 5000) -> dict[str, list[dict[str, Any]]]:
    """The newest FAILED and DONE events of luigid's task history (``[task_history] db_connection``, what
    ``scripts/luigid.sh`` records), by dataset id, shaped like ``_luigid_tasks``'s; empty when unreadable.
    luigid forgets finished tasks after a while; its history keeps them, without their error text."""
    import sqlalchemy as sa

    found: dict[str, list[dict[str, Any]]] = {}
    query = sa.text(
        "SELECT t.task_id, t.name, p.value AS dataset_id, v.value AS version, e.event_name, e.ts "
        "FROM tasks t JOIN task_parameters p ON p.task_id = t.id AND p.name = 'dataset_id' "
        "LEFT JOIN task_parameters v ON v.task_id = t.id AND v.name = 'version' "
        "JOIN task_events e ON e.task_id = t.id WHERE e.event_name IN ('FAILED', 'DONE') "
        "ORDER BY e.ts DESC LIMIT :limit")
    try:
        engine = sa.create_engine(db_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(query, {"limit": limit}).mappings().all()
        finally:
            engine.dispose()
    except Exception:
        return {}
    for row in rows:
        when = row["ts"] if isinstance(row["ts"], datetime) else _when(row["ts"])
        if when is None:
            continue
        if when.tzinfo is None:  # luigid writes its local time
            when = when.astimezone(timezone.utc)
        found.setdefault(str(row["dataset_id"]), []).append({
            "status": row["event_name"], "last_updated": when.timestamp(), "name": row["name"],
            "params": {"dataset_id": row["dataset_id"], "version": row["version"] or ""},
            "status_message": "failed (luigid task history; see the log for the error)", "task_id": row["task_id"]})
    return found


def history_url() -> str | None:
    """luigid's task-history database: env DATABRIDGE_LUIGID_HISTORY, else luigi's [task_history] db_connection."""
    if os.environ.get("DATABRIDGE_LUIGID_HISTORY"):
        return os.environ["DATABRIDGE_LUIGID_HISTORY"]
    try:
        import luigi.configuration

        return luigi.configuration.get_config().get("task_history", "db_connection", fallback=None) or None
    except Exception:
        return None


def task_link(luigid: str | None, dataset_id: str, task_id: str = "") -> str:
    if not luigid:
        return ""
    base = f"{luigid.rstrip('/')}/static/visualiser/index.html"
    if task_id:
        return f"{base}#tab=graph&taskId={urllib.parse.quote(task_id)}"
    return f"{base}#tab=tasks&search__search={urllib.parse.quote(dataset_id)}"


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


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


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


# --- showing ------------------------------------------------------------------------------------------------

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


_PAGE_STYLE = """
body{font:14px/1.35 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:18px;color:#212121}
h1{font-size:20px;margin:0 0 4px} .meta{color:#555;margin:0 0 10px}
.chips span{display:inline-block;padding:2px 8px;margin:0 6px 6px 0;border-radius:10px;font-weight:600}
table{border-collapse:collapse;width:100%} th,td{padding:5px 8px;text-align:left;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#263238;color:#fff;cursor:pointer;user-select:none;white-space:nowrap;position:sticky;top:0}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums} td.state span{padding:1px 7px;border-radius:9px;font-weight:600;white-space:nowrap}
td{white-space:nowrap} td.err{color:#b71c1c;white-space:normal;min-width:24em;max-width:46em} a{color:#0d47a1}
tr:hover td{filter:brightness(0.96)} td.dest{color:#555;font-size:12px}
""" + "".join(f"tr.state-{state.replace(' ', '-')} td{{background:{tint}}}" for state, tint in {
    "broken config": "#f3e5f5", "failing": "#ffebee", "unknown": "#fff3e0", "due": "#fffde7"}.items())
_PAGE_SCRIPT = """
(function(){
 var t=document.getElementById('status'),hs=t.tHead.rows[0].cells;
 function sortBy(i,asc){
  for(const h of hs){h.classList.remove('sorted-asc','sorted-desc');}
  hs[i].classList.add(asc?'sorted-asc':'sorted-desc');
  var b=t.tBodies[0],rs=Array.from(b.rows),num=hs[i].dataset.type==='num';
  rs.sort(function(x,y){
   var a=x.cells[i].dataset.sort||x.cells[i].textContent,c=y.cells[i].dataset.sort||y.cells[i].textContent;
   var r=num?(parseFloat(a)-parseFloat(c)):a.localeCompare(c);return asc?r:-r;});
  rs.forEach(function(r){b.appendChild(r);});
 }
 for(let i=0;i<hs.length;i++){hs[i].addEventListener('click',function(){sortBy(i,!hs[i].classList.contains('sorted-asc'));});}
 // A link can carry its sort: #sort=Rows&order=desc
 var q=new URLSearchParams(location.hash.slice(1)),col=q.get('sort');
 if(col){for(let i=0;i<hs.length;i++){if(hs[i].textContent.toLowerCase()===col.toLowerCase()){sortBy(i,q.get('order')!=='desc');}}}
})();
"""


def html_page(rows: list[DatasetStatus], title: str = "databridge-luigi status") -> str:
    """One self-contained page: a row per dataset, coloured by state, sortable by any column."""
    e = html.escape
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    counts = [(state, sum(1 for s in rows if s.state == state)) for state in STATES]
    chips = "".join(f'<span style="background:{COLOURS[st][0]};color:{COLOURS[st][1]}">{n} {e(st)}</span>' for st, n in counts if n)
    head = [("Dataset", "text"), ("State", "text"), ("Last version", "text"), ("Published (UTC)", "text"), ("Rows", "num"),
            ("Seconds", "num"), ("Changed", "text"), ("Next due (UTC)", "text"), ("Last failure", "text"), ("Destination", "text")]
    body: list[str] = []
    for s in rows:
        bg, fg = COLOURS.get(s.state, ("#fff", "#000"))
        rank = STATES.index(s.state) if s.state in STATES else len(STATES)
        link = s.task_url or s.log_url
        name = f'<a href="{e(link)}">{e(s.dataset_id)}</a>' if link else e(s.dataset_id)
        if s.last_failure:
            log = f' <a href="{e(s.last_failure.log_url)}">log</a>' if s.last_failure.log_url else ""
            failure = (f"{e(_short_time(s.last_failure.at))} {e(s.last_failure.step)}: {e(_without_id(s.last_failure.error, s.dataset_id))}{log}")
        elif s.state == "broken config":
            failure = f"{e(os.path.basename(s.config))}: {e(s.problem)}"
        else:
            failure = e(s.problem) if s.problem else ""
        state = s.state + (" (running)" if s.running else "")
        body.append(
            f'<tr class="state-{e(s.state.replace(" ", "-"))}" data-state="{e(s.state)}">'
            f'<td>{name}</td><td class="state" data-sort="{rank} {e(s.dataset_id)}"><span style="background:{bg};color:{fg}">{e(state)}</span></td>'
            f'<td>{e(s.last_version or "-")}</td><td>{e(_short_time(s.published_at))}</td>'
            f'<td class="num" data-sort="{s.rows if s.rows is not None else -1}">{"-" if s.rows is None else f"{s.rows:,}"}</td>'
            f'<td class="num" data-sort="{s.seconds if s.seconds is not None else -1}">{_secs(s.seconds)}</td>'
            f'<td>{_changed(s.changed)}</td><td>{e(_short_time(s.next_due) if s.next_due else "manual" if s.state != "broken config" else "-")}</td>'
            f'<td class="err">{failure}</td><td class="dest">{e(s.destination or s.config)}</td></tr>')
    heads = "".join(f'<th data-type="{kind}">{e(label)}</th>' for label, kind in head)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f'<meta http-equiv="refresh" content="300">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_PAGE_STYLE}</style></head><body>'
            f'<h1>{e(title)}</h1><p class="meta">{len(rows)} datasets · generated {e(generated)}</p>'
            f'<div class="chips">{chips}</div>'
            f'<table id="status"><thead><tr>{heads}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            f'<script>{_PAGE_SCRIPT}</script></body></html>')


def sort_key(s: DatasetStatus) -> tuple[int, str]:
    return (STATES.index(s.state) if s.state in STATES else len(STATES), s.dataset_id)


def write_page(path: str, rows: list[DatasetStatus]) -> None:
    """Write the page atomically (a reader never sees half of it)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as out:
            out.write(html_page(sorted(rows, key=sort_key)))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
