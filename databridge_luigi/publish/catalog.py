"""Telling catalogs that a dataset's data changed: the AGO item's metadata ``reviseDate`` and a webhook.

``reviseDate`` is what the City's open-data site shows as "Data Updated" (arcgis-online.md §6, the City's
DAG ``update_ago_data_last_updated``): ``dataIdInfo/idCitation/date/reviseDate`` in the item's ArcGIS
metadata XML, written as America/New_York wall-clock time without an offset, re-uploaded through the item's
``update`` with a ``metadata`` file. The webhook (``on_published: {url: …}``) gets one JSON POST per publish
that changed data. Callers never let a failure here fail a publish: they record it and retry next run.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from urllib.parse import urlsplit

import requests

from ..connections import redact, register_secret, resolve

WEBHOOK_TIMEOUT = 10.0


class PushError(RuntimeError):
    """A catalog push that did not go through (the publish itself stands)."""


# (dataset id, version) whose pending push this process has tried. A version with a pending push is "not yet
# complete", so the next run comes back to push it — but not within the run that just tried: luigi checks
# completion right after run(), and a catalog that is down must never fail a publish.
_tried_here: set[tuple[str, str]] = set()


def note_push_tried(dataset_id: str, version: str) -> None:
    _tried_here.add((dataset_id, version))


def push_tried_here(dataset_id: str, version: str) -> bool:
    return (dataset_id, version) in _tried_here


def forget_push_attempts() -> None:
    """A new run (tests run several "processes" in one)."""
    _tried_here.clear()


def revise_date_text(when: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` in America/New_York, no offset (ESRI does not handle offsets here)."""
    return when.astimezone(ZoneInfo("America/New_York")).strftime("%Y-%m-%dT%H:%M:%S")


def set_revise_date(metadata_xml: str | None, when: datetime) -> str:
    """The metadata document with ``dataIdInfo/idCitation/date/reviseDate`` set (created when missing)."""
    root = ET.fromstring(metadata_xml) if metadata_xml and metadata_xml.strip() else ET.Element("metadata")
    node = root
    for name in ("dataIdInfo", "idCitation", "date", "reviseDate"):
        child = node.find(name)
        if child is None:
            child = ET.SubElement(node, name)
        node = child
    node.text = revise_date_text(when)
    return ET.tostring(root, encoding="unicode")


def post_webhook(url: str, payload: dict[str, Any], session: requests.Session | None = None) -> None:
    sender = session or requests
    try:
        reply = sender.post(url, data=json.dumps(payload), headers={"Content-Type": "application/json"}, timeout=WEBHOOK_TIMEOUT)
    except requests.RequestException as exc:
        raise PushError(redact(f"webhook {url}: {type(exc).__name__}: {exc}")) from None
    if not 200 <= reply.status_code < 300:
        raise PushError(redact(f"webhook {url}: HTTP {reply.status_code} {reply.text[:200]}"))


def published_payload(dataset_id: str, destination: str, version: str, rows: int, counts: dict[str, int],
                      when: datetime | None = None) -> dict[str, Any]:
    return {"dataset": dataset_id, "destination": destination, "version": version, "rows": rows, "changed": counts,
            "published_at": (when or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")}


def webhook_url(dataset: Any) -> str | None:
    """The dataset's ``on_published`` URL (given, or from a named connection whose path is treated as secret)."""
    hook = getattr(dataset, "on_published", None)
    if hook is None:
        return None
    if hook.conn:
        url = resolve(hook.conn)
        register_secret(urlsplit(url).path.strip("/"))  # a webhook's path is often its secret
        return url
    return str(hook.url)
