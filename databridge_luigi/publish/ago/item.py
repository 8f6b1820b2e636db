"""The readers' item: its layers, and the marker and lease kept in the item's ``properties``.

The marker (version, fingerprint, rows, counts) and the lease live under the key ``databridge_luigi``: one
GET answers ``complete()``, nothing extra for the user to create, and the marker travels with the item. AGO
offers no compare-and-swap, so the lease is written, re-read after a settle delay and checked again before
readers' data changes (fencing). ``AgoItem`` is the base of ``AgoPublisher``: it holds the dataset, its
``ago:`` options, the client and the run's id.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ...config import AgoOptions
from ...connections import redact
from ..catalog import push_tried_here
from .client import AgoClient, AgoLoadError

log = logging.getLogger(__package__)  # one logger for the AGO destination

PROPERTIES_KEY = "databridge_luigi"
KEEP_VERSIONS = 50
LEASE_SETTLE = 0.5


@dataclass
class LayerInfo:
    url: str  # .../FeatureServer/<id>
    service_url: str  # .../FeatureServer
    service_name: str
    layer_id: int
    json: dict[str, Any]

    @property
    def admin_service_url(self) -> str:
        return re.sub(r"/rest/services/", "/rest/admin/services/", self.service_url, count=1, flags=re.I)

    @property
    def admin_url(self) -> str:
        return f"{self.admin_service_url}/{self.layer_id}"

    @property
    def fields(self) -> dict[str, dict[str, Any]]:
        return {f["name"].lower(): f for f in self.json.get("fields") or []}

    @property
    def oid_field(self) -> str:
        return str(self.json.get("objectIdField") or "OBJECTID")

    @property
    def wkid(self) -> int:
        sr = (self.json.get("extent") or {}).get("spatialReference") or self.json.get("spatialReference") or {}
        return int(sr.get("latestWkid") or sr.get("wkid") or 4326)

    @property
    def max_records(self) -> int:
        return int(self.json.get("maxRecordCount") or 1000)


def service_name(service_url: str) -> str:
    match = re.search(r"/services/([^/]+)/FeatureServer", service_url, re.I)
    if not match:
        raise AgoLoadError(f"{service_url} is not a FeatureServer URL")
    return match.group(1)


class AgoItem:
    """One dataset's readers' item on AGO: its layers, the marker of what was published, the lease."""

    def __init__(self, dataset: Any, options: AgoOptions, client: AgoClient, status: Callable[[str], None] = lambda m: None,
                 webhook_url: str | None = None):
        self.dataset, self.options, self.client, self.status = dataset, options, client, status
        self.webhook_url = webhook_url
        self.run_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._item_cache: dict[str, dict[str, Any]] = {}
        self._lease_renewed = 0.0

    # --- items and layers --------------------------------------------------------------------------------------

    def item(self, item_id: str) -> dict[str, Any]:
        return self.client.get(f"{self.client.connection.portal}/content/items/{item_id}", f"read item {item_id}")

    def layer_of(self, item_id: str) -> LayerInfo:
        item = self.item(item_id)
        url = str(item.get("url") or "").rstrip("/")
        if not url:
            raise AgoLoadError(f"{self.dataset.id}: item {item_id} has no service URL (is it a hosted feature layer?)")
        layer_url = f"{url}/{self.options.layer}"
        info = self.client.get(layer_url, "read layer")
        return LayerInfo(layer_url, url, service_name(url), self.options.layer, info)

    def where(self) -> str:
        return f"{self.client.connection.name}:item {self.options.item} layer {self.options.layer}"

    # --- marker and lease (item properties) -------------------------------------------------------------------

    def _state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        item = self.item(str(self.options.item))
        props = item.get("properties") or {}
        return item, dict(props.get(PROPERTIES_KEY) or {})

    def _write_state(self, item: dict[str, Any], state: dict[str, Any]) -> None:
        props = dict(item.get("properties") or {})
        props[PROPERTIES_KEY] = state
        url = f"{self.client.connection.portal}/content/users/{item['owner']}/items/{item['id']}/update"
        body = self.client.post(url, f"update item {item['id']} properties", properties=json.dumps(props))
        if not body.get("success"):
            raise AgoLoadError(f"{self.dataset.id}: could not update item {item['id']} properties: {body}")

    def is_published(self, version: str) -> bool:
        """The version is recorded in the item and nothing is left to push for it."""
        _, state = self._state()
        versions = state.get("versions") or {}
        pending = state.get("pending_push") or {}
        return version in versions.get(self.dataset.id, []) and (pending.get("version") != version or push_tried_here(self.dataset.id, version))

    def _acquire_lease(self, wait_seconds: float = 60.0) -> None:
        deadline = time.monotonic() + wait_seconds
        while True:
            item, state = self._state()
            lease = state.get("lease") or {}
            if lease and lease.get("run") != self.run_id and float(lease.get("expires", 0)) > time.time():
                if time.monotonic() > deadline:
                    raise AgoLoadError(f"{self.dataset.id}: {self.where()} is being loaded by {lease.get('run')} "
                                       f"(lease until {datetime.fromtimestamp(float(lease['expires']), timezone.utc):%H:%M:%S} UTC); not loading it twice")
                time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
                continue
            state["lease"] = {"run": self.run_id, "dataset": self.dataset.id, "expires": time.time() + self.options.lease_minutes * 60}
            self._write_state(item, state)
            time.sleep(LEASE_SETTLE)  # no compare-and-swap in AGO: let a racing writer land, then read back
            _, check = self._state()
            if (check.get("lease") or {}).get("run") == self.run_id:
                self._lease_renewed = time.monotonic()
                return

    def _check_lease(self, renew: bool = False) -> None:
        """Fencing: the lease is still ours (and renewed when half its time has passed)."""
        item, state = self._state()
        lease = state.get("lease") or {}
        if lease.get("run") != self.run_id:
            raise AgoLoadError(f"{self.dataset.id}: lost the lease on {self.where()} to {lease.get('run')}; stopping before changing what readers see")
        if renew or time.monotonic() - self._lease_renewed > self.options.lease_minutes * 30:
            lease["expires"] = time.time() + self.options.lease_minutes * 60
            state["lease"] = lease
            self._write_state(item, state)
            self._lease_renewed = time.monotonic()

    def _release(self, extra: dict[str, Any] | None = None) -> None:
        item, state = self._state()
        if (state.get("lease") or {}).get("run") == self.run_id:
            state.pop("lease", None)
        state.update(extra or {})
        self._write_state(item, state)

    def _release_quietly(self) -> None:
        try:
            self._release()
        except Exception as exc:  # the lease expires by itself; the original error matters more
            log.warning("%s: could not release the lease on %s: %s", self.dataset.id, self.where(), redact(str(exc)))

    def _marker_state(self, state: dict[str, Any], version: str, fingerprint: str, rows: int, counts: dict[str, int], source: str | None) -> dict[str, Any]:
        versions = dict(state.get("versions") or {})
        mine = [v for v in versions.get(self.dataset.id, []) if v != version] + [version]
        versions[self.dataset.id] = mine[-KEEP_VERSIONS:]
        state["versions"] = versions
        state["published"] = {"dataset": self.dataset.id, "version": version, "fingerprint": fingerprint, "rows": rows,
                              "counts": counts, "source": source, "at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        return state
