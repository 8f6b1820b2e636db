"""What luigid knows: its running and failed tasks (its API), the finished and failed tasks of its task history
(a database), and links into its visualiser."""
from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from typing import Any

from .model import _when


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
