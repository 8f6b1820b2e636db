"""Telling a catalog that a CARTO/PostGIS table's data changed: the dataset's ``on_published`` webhook.

After a load that rewrote the table its marker row is flagged pending (``pushed = false``) and the webhook
gets one JSON POST (catalog.published_payload: dataset, destination, version, rows, changed counts); a 2xx
flags it sent. A failure is logged and never fails the publish: the next load of the dataset, whatever its
outcome, sends what is still pending first. (ArcGIS Online keeps its own pending push in the item; publish/ago/push.py.)
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

from . import sql
from .catalog import PushError, note_push_tried, post_webhook, published_payload

log = logging.getLogger(__name__)


class SqlRunner(Protocol):
    def query(self, statement: str) -> list[dict[str, Any]]: ...


def announce(runner: SqlRunner, schema: str, dataset_id: str, where: str, url: str | None,
             rewritten_version: str | None) -> None:
    """Flag ``rewritten_version`` (if any) pending, then push every pending version, oldest first."""
    if url is None:
        return
    if rewritten_version is not None:
        runner.query(sql.mark_pushed(schema, dataset_id, rewritten_version, False))
    for row in runner.query(sql.pending_pushes(schema, dataset_id)):
        counts = {k: int(row[k]) for k in ("inserted", "updated", "deleted", "unchanged") if row.get(k) is not None}
        try:
            post_webhook(url, published_payload(dataset_id, where, str(row["version"]), int(row["row_count"]), counts))
        except PushError as exc:
            note_push_tried(dataset_id, str(row["version"]))
            log.warning("%s: on_published webhook not told about version %s (retried at the next load): %s",
                        dataset_id, row["version"], exc)
            return
        runner.query(sql.mark_pushed(schema, dataset_id, str(row["version"]), True))
        log.info("%s: on_published webhook told about version %s", dataset_id, row["version"])
