"""Telling the catalog about a publish: the item's metadata reviseDate and the ``on_published`` webhook.

A push that fails never fails the publish: it stays pending in the item's properties (``pending_push``) and
the next run, or a rerun of the same version, sends it again.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import requests

from ...connections import redact
from ..catalog import PushError, note_push_tried, post_webhook, published_payload, set_revise_date
from .item import AgoItem

log = logging.getLogger(__package__)  # one logger for the AGO destination


class CatalogPush(AgoItem):
    """The catalog push of a published version, and its retry while it is pending."""

    def _retry_pending_push(self, state: dict[str, Any]) -> None:
        if state.get("pending_push"):
            log.info("%s: retrying the catalog push left from version %s", self.dataset.id, state["pending_push"].get("version"))
            self._push(state)

    def push_pending(self) -> bool:
        """Only the catalog push of an already published version (a rerun after a failed push)."""
        _, state = self._state()
        return self._push(state) if state.get("pending_push") else True

    def _push(self, state: dict[str, Any]) -> bool:
        pending = dict(state.get("pending_push") or {})
        if not pending:
            return True
        failures = []
        if pending.get("revise"):
            try:
                self._push_revise_date()
                pending["revise"] = False
            except Exception as exc:
                failures.append(f"reviseDate: {redact(str(exc))}")
        if pending.get("webhook") and self.webhook_url:
            try:
                post_webhook(self.webhook_url, published_payload(self.dataset.id, self.where(), str(pending["version"]),
                                                                 int(pending.get("rows", 0)), pending.get("counts") or {}))
                pending["webhook"] = False
            except PushError as exc:
                failures.append(str(exc))
        done = not pending.get("revise") and not (pending.get("webhook") and self.webhook_url)
        try:
            item, fresh = self._state()
            if done:
                fresh.pop("pending_push", None)
            else:
                fresh["pending_push"] = pending
            self._write_state(item, fresh)
        except Exception as exc:
            failures.append(f"recording the push: {redact(str(exc))}")
        if failures:
            note_push_tried(self.dataset.id, str(pending.get("version")))
            log.warning("%s: publish stands, but the catalog was not told (retried next run): %s", self.dataset.id, "; ".join(failures))
        return not failures

    def _push_revise_date(self) -> None:
        item = self.item(str(self.options.item))
        portal = self.client.connection.portal
        try:
            reply = self.client.get_document(f"{portal}/content/items/{item['id']}/info/metadata/metadata.xml")
            current = reply.text if reply.ok and reply.text.lstrip().startswith("<") and '"error"' not in reply.text[:50] else None
        except requests.RequestException:
            current = None
        xml = set_revise_date(current, datetime.now(timezone.utc))
        url = f"{portal}/content/users/{item['owner']}/items/{item['id']}/update"
        body = self.client.post(url, f"update metadata of item {item['id']}", files={"metadata": ("metadata.xml", xml.encode(), "application/xml")})
        if not body.get("success"):
            raise PushError(f"metadata update of item {item['id']} answered {body}")
