"""ArcGIS Online (AGO) destination: one staged version → a hosted feature layer, never half-loaded for readers.

AGO has no transactions (arcgis-online.md §5), so the guarantees come from the mode:

* ``swap`` (default): readers use a hosted feature layer *view*; the data lives in two source layers. A
  publish truncates and loads the source the view does not point at, verifies its count, adds indexes, then
  re-points the view (``deleteFromDefinition`` + ``addToDefinition`` on the view's admin service). Readers
  see the old rows until the switch and the new rows after; between the two admin calls the view has no
  layer (requests error, they never answer empty or partial). That window is measured and logged.
* ``upsert`` (``primary_key``): the layer is read once (paged by OBJECTID), rows are compared by key and by
  content, and only new/changed/stale rows are sent with ``applyEdits`` (``rollbackOnFailure``), deletes
  last. Readers never see an empty layer; during the load they see a mix of old and new rows.
* ``truncate_append`` (asked for explicitly): truncate, add in batches. Readers see an empty, then a growing
  layer for the whole load — the City's way, kept for layers that cannot have a view.

The marker (version, fingerprint, rows, counts) and the lease live in the readers' item's ``properties``
(key ``databridge_luigi``): one GET answers ``complete()``, nothing extra for the user to create, and the
marker travels with the item. AGO offers no compare-and-swap, so the lease is written, re-read after a
settle delay and checked again before the swap (fencing); see the README for what that does not cover.

The token is sent in the ``X-Esri-Authorization`` header and POST bodies, never in a URL; every token and
password is registered with the redactor.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

import requests

from ..connections import redact, register_secret, resolve
from ..config import AgoOptions
from .catalog import PushError, note_push_tried, post_webhook, published_payload, push_tried_here, set_revise_date, webhook_url
from .esri_json import ESRI_GEOMETRY_FOR, EsriGeometry, GeometryConversionError, latest_wkid

log = logging.getLogger(__name__)

PROPERTIES_KEY = "databridge_luigi"
KEEP_VERSIONS = 50
TOKEN_MINUTES = 60
TOKEN_RENEW_SECONDS = 300  # renew a token this long before it expires
REQUEST_TIMEOUT = 120.0
MAX_ATTEMPTS = 6
BACKOFF_INITIAL = 0.5  # seconds before the first retry; doubled each time, with jitter
BACKOFF_CAP = 60.0
RECOUNT_WAIT = 2.0  # AGO "has begun reporting the wrong number sometimes" right after a change (CITY)
LEASE_SETTLE = 0.5
SYSTEM_TYPES = ("esriFieldTypeOID", "esriFieldTypeGlobalID")
_HTML = re.compile(r"<\s*[A-Za-z/!?]|javascript:", re.I)

# Staged (Frictionless) type → the layer field types that can hold it.
COMPATIBLE = {
    "string": {"esriFieldTypeString", "esriFieldTypeGUID"},
    "integer": {"esriFieldTypeSmallInteger", "esriFieldTypeInteger", "esriFieldTypeBigInteger", "esriFieldTypeDouble"},
    "number": {"esriFieldTypeDouble", "esriFieldTypeSingle"},
    "float": {"esriFieldTypeDouble", "esriFieldTypeSingle"},
    "boolean": {"esriFieldTypeSmallInteger", "esriFieldTypeInteger", "esriFieldTypeString"},
    "date": {"esriFieldTypeDate", "esriFieldTypeDateOnly", "esriFieldTypeString"},
    "datetime": {"esriFieldTypeDate", "esriFieldTypeTimestampOffset", "esriFieldTypeString"},
    "timestamp": {"esriFieldTypeDate", "esriFieldTypeTimestampOffset", "esriFieldTypeString"},
    "time": {"esriFieldTypeTimeOnly", "esriFieldTypeString"},
    "object": {"esriFieldTypeString"},
    "array": {"esriFieldTypeString"},
}


class AgoLoadError(RuntimeError):
    """A publish to AGO that stopped; the message names dataset, layer and operation."""


class AgoApiError(RuntimeError):
    """An AGO answer that is an error (an ``error`` envelope in a 200 body, or an HTTP error)."""

    def __init__(self, operation: str, code: int | None, message: str, details: list[str] | None = None, *, uncertain: bool = False,
                 url: str | None = None):
        self.operation, self.code, self.message, self.details = operation, code, message, details or []
        self.uncertain = uncertain  # an edit that may have gone through (timeout, gateway error, dropped connection)
        detail = f" ({'; '.join(self.details)})" if self.details else ""
        at = f" at {url}" if url else ""
        super().__init__(redact(f"{operation}{at}: {message}{detail}" + (f" [code {code}]" if code is not None else "")))


@dataclass
class Connection:
    name: str
    scheme: str
    host: str
    path: str
    user: str
    password: str

    @property
    def api_key(self) -> str | None:
        return self.password if not self.user else None

    @property
    def portal(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}/sharing/rest"


def parse_connection(name: str, url: str) -> Connection:
    """``ago://USER:PASSWORD@ORG.maps.arcgis.com``, ``ago://:API_KEY@host``, ``ago+http://…`` (tests)."""
    parts = urlsplit(url)
    scheme = {"ago": "https", "ago+https": "https", "ago+http": "http"}.get(parts.scheme.lower())
    if scheme is None:
        raise AgoLoadError(f"connection {name!r}: not an ago:// URL")
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    register_secret(password)
    if not password:
        raise AgoLoadError(f"connection {name!r}: needs USER:PASSWORD@ or :API_KEY@ before the host")
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return Connection(name, scheme, host, parts.path.rstrip("/"), user, password)


class AgoClient:
    """Requests to one AGO organisation: token handling, retries with backoff, errors inside 200 bodies."""

    def __init__(self, connection: Connection, sleep: Callable[[float], None] = time.sleep):
        self.connection, self.sleep = connection, sleep
        self.session = requests.Session()
        self._token: str | None = connection.api_key
        self._expires = math.inf if connection.api_key else 0.0
        if connection.api_key:
            register_secret(connection.api_key)
        self.token_renewals = 0
        self.retries = 0

    @classmethod
    def from_connection(cls, name: str) -> "AgoClient":
        return cls(parse_connection(name, resolve(name)))

    # --- tokens ----------------------------------------------------------------------------------------------

    def token(self) -> str:
        if self._token is None or time.time() > self._expires - TOKEN_RENEW_SECONDS:
            self._generate_token()
        assert self._token is not None
        return self._token

    def _generate_token(self) -> None:
        c = self.connection
        data = {"username": c.user, "password": c.password, "client": "referer", "referer": f"{c.scheme}://{c.host}",
                "expiration": str(TOKEN_MINUTES), "f": "json"}
        body = self._send("POST", f"{c.portal}/generateToken", "generateToken", data, auth=False)
        if "token" not in body:
            raise AgoApiError("generateToken", None, "no token in the answer", url=f"{c.portal}/generateToken")
        register_secret(body["token"])
        self._token = str(body["token"])
        self._expires = float(body.get("expires") or (time.time() + TOKEN_MINUTES * 60) * 1000) / 1000.0
        self.token_renewals += 1

    def _invalidate_token(self) -> None:
        if self.connection.api_key is None:
            self._token = None

    # --- requests --------------------------------------------------------------------------------------------

    def get(self, url: str, operation: str, **params: Any) -> dict[str, Any]:
        return self.call("GET", url, operation, params)

    def post(self, url: str, operation: str, edit: bool = False, files: dict[str, Any] | None = None, **data: Any) -> dict[str, Any]:
        return self.call("POST", url, operation, data, edit=edit, files=files)

    def call(self, method: str, url: str, operation: str, data: dict[str, Any] | None = None, *, edit: bool = False,
             files: dict[str, Any] | None = None) -> dict[str, Any]:
        """One operation, retried on throttling, gateway errors, dropped connections and expired tokens.
        An ``edit`` is only retried where it cannot have been applied (429, a rejected token); a timeout or a
        5xx raises ``AgoApiError(uncertain=True)`` so the caller checks before resending."""
        attempt = 0
        renewed = False
        while True:
            attempt += 1
            try:
                return self._send(method, url, operation, dict(data or {}), files=files)
            except AgoApiError as exc:
                if exc.code in (498, 499) and not renewed and self.connection.api_key is None:
                    renewed = True  # expired mid-load: renew once and repeat (nothing was applied)
                    self._invalidate_token()
                    log.info("%s: token rejected (%s); renewing", operation, exc.code)
                    continue
                retryable = exc.code == 429 or (not edit and (exc.uncertain or exc.code in (500, 502, 503, 504)))
                if not retryable or attempt >= MAX_ATTEMPTS:
                    raise
                wait = self._backoff(attempt, getattr(exc, "retry_after", None))
                self.retries += 1
                log.warning("%s: %s; retry %d/%d in %.1fs", operation, exc.message, attempt, MAX_ATTEMPTS - 1, wait)
                self.sleep(wait)

    @staticmethod
    def _backoff(attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(float(retry_after), BACKOFF_CAP)
        return min(BACKOFF_CAP, BACKOFF_INITIAL * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)

    def _send(self, method: str, url: str, operation: str, data: dict[str, Any], *, files: dict[str, Any] | None = None,
              auth: bool = True) -> dict[str, Any]:
        data.setdefault("f", "json")
        headers = {"X-Esri-Authorization": f"Bearer {self.token()}"} if auth else {}
        try:
            if method == "GET":
                reply = self.session.get(url, params=data, headers=headers, timeout=REQUEST_TIMEOUT)
            else:
                reply = self.session.post(url, data=data, files=files, headers=headers, timeout=REQUEST_TIMEOUT)
        except (requests.ConnectionError, requests.Timeout, socket.timeout) as exc:
            raise AgoApiError(operation, None, f"{type(exc).__name__}: {exc}", uncertain=True, url=url) from None
        if reply.status_code == 429:
            error = AgoApiError(operation, 429, "throttled (HTTP 429)", url=url)
            retry_after = reply.headers.get("Retry-After")
            error.retry_after = float(retry_after) if retry_after and retry_after.isdigit() else None  # type: ignore[attr-defined]
            raise error
        if reply.status_code >= 500:
            raise AgoApiError(operation, reply.status_code, f"HTTP {reply.status_code}", uncertain=True, url=url)
        if reply.status_code >= 400:
            raise AgoApiError(operation, reply.status_code, f"HTTP {reply.status_code}: {reply.text[:200]}", url=url)
        try:
            body = reply.json()
        except ValueError:
            raise AgoApiError(operation, reply.status_code, f"not JSON: {reply.text[:120]!r}", uncertain=True, url=url) from None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            err = body["error"]
            message = str(err.get("message") or err.get("description") or "error")
            code = err.get("code")
            timed_out = "timed out" in message.lower()
            raise AgoApiError(operation, int(code) if isinstance(code, int) else None, message,
                              [str(d) for d in err.get("details") or []], uncertain=timed_out or code in (500, 502, 503, 504), url=url)
        if isinstance(body, dict) and "code" in body and "message" in body and "error" not in body and not body.get("success", True):
            raise AgoApiError(operation, int(body["code"]), str(body["message"]), url=url)  # billing-style top-level error (§4.2)
        return body


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


@dataclass
class AgoResult:
    dataset_id: str
    version: str
    where: str
    rows: int
    rewritten: bool
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)
    swap_window: float | None = None
    pushed: bool = True


def service_name(service_url: str) -> str:
    match = re.search(r"/services/([^/]+)/FeatureServer", service_url, re.I)
    if not match:
        raise AgoLoadError(f"{service_url} is not a FeatureServer URL")
    return match.group(1)


class AgoPublisher:
    """Publishes one staged version of one dataset to AGO with the dataset's ``ago:`` options."""

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

    # --- the load ---------------------------------------------------------------------------------------------

    def load(self, staged: Any, force: bool = False) -> AgoResult:
        started = time.monotonic()
        manifest, table_schema = staged.manifest(), staged.schema()
        self._acquire_lease()
        try:
            _, state = self._state()
            # A push left over from an earlier run goes first; a failure is recorded again, never raised.
            self._retry_pending_push(state)
            published = state.get("published") or {}
            if not force and published.get("dataset") == self.dataset.id and published.get("fingerprint") == manifest.sha256:
                item, state = self._state()
                state = self._marker_state(state, manifest.version, manifest.sha256, manifest.rows, {}, published.get("source"))
                state["published"]["fingerprint"] = manifest.sha256
                state.pop("lease", None)
                self._write_state(item, state)
                log.info("%s: data unchanged since the last publish (sha256 %s…); recorded version %s in %s",
                         self.dataset.id, manifest.sha256[:12], manifest.version, self.where())
                return AgoResult(self.dataset.id, manifest.version, self.where(), manifest.rows, False, time.monotonic() - started)
            if manifest.rows == 0 and not self.dataset.allow_empty:
                raise AgoLoadError(f"{self.dataset.id}: refusing to publish an empty table to {self.where()} (set allow_empty: true)")
            if self.options.mode == "swap":
                counts, source, window = self._swap_load(staged, table_schema, manifest.rows)
            elif self.options.mode == "upsert":
                counts, source, window = self._upsert_load(staged, table_schema, manifest.rows), None, None
            else:
                counts, source, window = self._truncate_append_load(staged, table_schema, manifest.rows), None, None
            item, state = self._state()
            state = self._marker_state(state, manifest.version, manifest.sha256, manifest.rows, counts, source)
            changed = self.options.mode != "upsert" or any(counts.get(k) for k in ("inserted", "updated", "deleted"))
            if changed:
                state["pending_push"] = {"version": manifest.version, "rows": manifest.rows, "counts": counts,
                                         "webhook": bool(self.webhook_url), "revise": True}
            state.pop("lease", None)
            self._write_state(item, state)
        except BaseException as exc:
            self._release_quietly()
            if isinstance(exc, AgoApiError):
                raise AgoLoadError(f"{self.dataset.id}: {exc} (publish to {self.where()} stopped; {self._what_readers_see()})") from exc
            raise
        pushed = self._push(state) if changed else True
        elapsed = time.monotonic() - started
        log.info("%s: published %d rows to %s as version %s in %.1fs (%s)", self.dataset.id, manifest.rows, self.where(),
                 manifest.version, elapsed, ", ".join(f"{k} {v}" for k, v in counts.items()))
        return AgoResult(self.dataset.id, manifest.version, self.where(), manifest.rows, True, elapsed, counts, window, pushed)

    def _what_readers_see(self) -> str:
        return {"swap": "the view still shows the previous data", "upsert": "the layer holds the rows applied so far",
                "truncate_append": "the layer holds a partial load until the next run"}[self.options.mode]

    # --- swap ------------------------------------------------------------------------------------------------

    def _swap_load(self, staged: Any, table_schema: Any, rows: int) -> tuple[dict[str, int], str, float]:
        view_item = self.item(str(self.options.item))
        view_url = str(view_item.get("url") or "").rstrip("/")
        sources = self.client.get(f"{view_url}/sources", "read view sources").get("services") or []
        current = {s["name"] for s in sources}
        candidates = [self.layer_of(item_id) for item_id in self.options.sources]
        live = [c for c in candidates if c.service_name in current]
        if len(live) != 1:
            raise AgoLoadError(f"{self.dataset.id}: view {view_url} points at {sorted(current)}, not at exactly one of the configured sources "
                               f"{[c.service_name for c in candidates]}; point the view at one of them once")
        idle = next(c for c in candidates if c is not live[0])
        view_layer = self.client.post(f"{re.sub('/rest/services/', '/rest/admin/services/', view_url, flags=re.I)}/{self.options.layer}",
                                      "read view definition")
        self._check_schema(idle, table_schema)
        self._check_same_fields(idle, live[0])
        self.status(f"loading {idle.service_name} (idle source of the view)")
        self._truncate(idle)
        self._append(idle, staged, table_schema, rows)
        self._verify_count(idle, rows, "after loading the idle source")
        self._indexes(idle, table_schema)
        self._check_lease(renew=True)
        window = self._swap_view(view_url, view_layer, idle, live[0])
        return {"inserted": rows, "updated": 0, "deleted": 0, "unchanged": 0}, idle.service_name, window

    def _check_same_fields(self, idle: LayerInfo, live: LayerInfo) -> None:
        def shape(layer: LayerInfo) -> dict[str, str]:
            return {n: f["type"] for n, f in layer.fields.items() if not n.startswith("shape__")}
        if shape(idle) != shape(live) or idle.json.get("geometryType") != live.json.get("geometryType") or idle.wkid != live.wkid:
            raise AgoLoadError(f"{self.dataset.id}: the two sources {idle.service_name} and {live.service_name} differ in fields, geometry type "
                               f"or spatial reference; the view cannot be swapped between them")

    def _swap_view(self, view_url: str, view_layer: dict[str, Any], new: LayerInfo, old: LayerInfo) -> float:
        admin = re.sub("/rest/services/", "/rest/admin/services/", view_url, flags=re.I)
        definition = dict(view_layer)
        view_def = dict((definition.get("adminLayerInfo") or {}).get("viewLayerDefinition") or {})
        old_source = view_def.get("sourceServiceName", old.service_name)

        def layer_def(source: str) -> dict[str, Any]:
            keep = {k: v for k, v in definition.items() if k not in ("adminLayerInfo", "url", "currentVersion", "serviceItemId", "editingInfo")}
            return {**keep, "id": self.options.layer, "adminLayerInfo": {"viewLayerDefinition": {
                **view_def, "sourceServiceName": source, "sourceLayerId": self.options.layer,
                "sourceLayerFields": view_def.get("sourceLayerFields", "*")}}}

        self.status(f"switching the view to {new.service_name}")
        removed = {"layers": [{"id": self.options.layer}], "tables": []}
        self.client.post(f"{admin}/deleteFromDefinition", "view swap: deleteFromDefinition", deleteFromDefinition=json.dumps(removed), **{"async": "false"})
        gap_started = time.monotonic()
        try:
            self.client.post(f"{admin}/addToDefinition", "view swap: addToDefinition",
                             addToDefinition=json.dumps({"layers": [layer_def(new.service_name)]}), **{"async": "false"})
        except Exception as exc:
            try:  # put the old source back so readers keep the previous data
                self.client.post(f"{admin}/addToDefinition", "view swap: revert",
                                 addToDefinition=json.dumps({"layers": [layer_def(old_source)]}), **{"async": "false"})
                outcome = f"the view points at {old_source} again"
            except Exception as revert:
                outcome = f"THE VIEW HAS NO LAYER: re-adding {old_source} failed too ({redact(str(revert))})"
            raise AgoLoadError(f"{self.dataset.id}: switching view {view_url} to {new.service_name} failed ({redact(str(exc))}); {outcome}") from exc
        window = time.monotonic() - gap_started
        for url in (admin,):
            try:
                self.client.post(f"{url}/refresh", "view refresh")
            except AgoApiError as exc:
                log.warning("%s: refresh of %s failed (harmless): %s", self.dataset.id, url, exc)
        log.info("%s: view %s now reads %s (was %s); the view had no layer for %.1f ms between the two admin calls",
                 self.dataset.id, view_url, new.service_name, old_source, window * 1000)
        return window

    # --- truncate-append -----------------------------------------------------------------------------------------

    def _truncate_append_load(self, staged: Any, table_schema: Any, rows: int) -> dict[str, int]:
        target = self.layer_of(str(self.options.item))
        self._check_schema(target, table_schema)
        log.warning("%s: truncate_append on %s: readers see an empty, then a partial layer until the load ends", self.dataset.id, target.url)
        self._truncate(target)
        self._append(target, staged, table_schema, rows)
        self._verify_count(target, rows, "after truncate and append")
        self._indexes(target, table_schema)
        return {"inserted": rows, "updated": 0, "deleted": 0, "unchanged": 0}

    def _truncate(self, layer: LayerInfo) -> None:
        if not layer.json.get("supportsTruncate", False):
            raise AgoLoadError(f"{self.dataset.id}: {layer.url} does not support truncate (a view, or sync enabled)")
        self.status(f"truncating {layer.service_name}")
        body = self.client.post(f"{layer.admin_url}/truncate", "truncate", attachmentOnly="false", **{"async": "false"})
        if body.get("statusURL") or body.get("statusUrl"):
            self._wait_job(str(body.get("statusURL") or body.get("statusUrl")), f"truncate {layer.url}")
        elif not body.get("success"):
            raise AgoLoadError(f"{self.dataset.id}: truncate {layer.url} answered {body}")
        self._verify_count(layer, 0, "after truncate")

    def _wait_job(self, url: str, operation: str, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.2
        while time.monotonic() < deadline:
            status = str(self.client.get(url, f"{operation} status").get("status", "")).lower()
            if status in ("completed", "esrijobsucceeded"):
                return
            if status in ("failed", "esrijobfailed", "cancelled", "timedout"):
                raise AgoLoadError(f"{self.dataset.id}: {operation} job ended {status}")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AgoLoadError(f"{self.dataset.id}: {operation} job still running after {timeout:.0f}s")

    def count(self, layer: LayerInfo) -> int:
        return int(self.client.get(f"{layer.url}/query", "count", where="1=1", returnCountOnly="true")["count"])

    def _verify_count(self, layer: LayerInfo, expected: int, when: str) -> None:
        found = self.count(layer)
        if found != expected:  # AGO sometimes reports a stale count right after a change: look once more
            time.sleep(RECOUNT_WAIT)
            found = self.count(layer)
        if found != expected:
            raise AgoLoadError(f"{self.dataset.id}: {layer.url} holds {found} features {when}, expected {expected}")

    def _append(self, layer: LayerInfo, staged: Any, table_schema: Any, rows: int) -> None:
        converter = RowConverter(self.dataset, self.options, layer, table_schema)
        sent = 0
        for batch in converter.batches(staged, self.options.batch_size):
            features = [f for _, f in batch]
            self._add_batch(layer, features, batch[0][0], sent)
            sent += len(features)
            self.status(f"added {sent} of {rows} rows to {layer.service_name}")
            self._check_lease()

    def _add_batch(self, layer: LayerInfo, features: list[dict[str, Any]], first_row: int, before: int) -> None:
        payload = json.dumps(features, separators=(",", ":"), allow_nan=False)
        last_row = first_row + len(features) - 1
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                body = self.client.post(f"{layer.url}/addFeatures", f"addFeatures rows {first_row}–{last_row}",
                                        edit=True, features=payload, rollbackOnFailure="true")
            except AgoApiError as exc:
                if not exc.uncertain:
                    raise AgoLoadError(f"{self.dataset.id}: staged rows {first_row}–{last_row} were refused by {layer.url} "
                                       f"(batch rolled back): {exc}") from exc
                # It may have gone through (AGO answers "timed out" after committing): count before resending.
                time.sleep(RECOUNT_WAIT * (attempt - 1))
                found = self.count(layer)
                if found == before + len(features):
                    log.warning("%s: addFeatures rows %d–%d answered %s but went through", self.dataset.id, first_row, last_row, exc.message)
                    return
                if found != before:
                    raise AgoLoadError(f"{self.dataset.id}: after an uncertain addFeatures (rows {first_row}–{last_row}: {exc.message}) "
                                       f"{layer.url} holds {found} features, neither {before} nor {before + len(features)}") from exc
                log.warning("%s: addFeatures rows %d–%d did not go through (%s); resending", self.dataset.id, first_row, last_row, exc.message)
                continue
            results = body.get("addResults") or []
            failed = [(i, r) for i, r in enumerate(results) if not r.get("success")]
            if failed or len(results) != len(features):
                i, r = failed[0] if failed else (len(results), {"error": {"description": f"{len(results)} results for {len(features)} features"}})
                raise AgoLoadError(f"{self.dataset.id}: staged row {first_row + i} was refused by {layer.url}: "
                                   f"{(r.get('error') or {}).get('description')} (code {(r.get('error') or {}).get('code')})")
            return
        raise AgoLoadError(f"{self.dataset.id}: addFeatures rows {first_row}–{last_row} at {layer.url}/addFeatures did not go through after {MAX_ATTEMPTS} tries")

    # --- upsert ------------------------------------------------------------------------------------------------

    def _upsert_load(self, staged: Any, table_schema: Any, rows: int) -> dict[str, int]:
        target = self.layer_of(str(self.options.item))
        keys = list(self.options.primary_key or getattr(self.dataset, "primary_key", ()) or ())
        if not keys:
            raise AgoLoadError(f"{self.dataset.id}: upsert mode needs primary_key (in ago: or the dataset)")
        self._check_schema(target, table_schema)
        missing = [k for k in keys if k not in table_schema.names]
        if missing:
            raise AgoLoadError(f"{self.dataset.id}: primary_key column(s) {missing} are not staged columns")
        converter = RowConverter(self.dataset, self.options, target, table_schema)
        self.status(f"reading {target.service_name} to compare")
        existing: dict[tuple[Any, ...], tuple[int, str]] = {}
        duplicates: list[int] = []
        for feature in self._read_all(target):
            attrs = feature["attributes"]
            key = converter.key_of(attrs, keys)
            oid = int(attrs[target.oid_field])
            if key in existing:
                duplicates.append(oid)  # a duplicate key in the layer is stale
                continue
            existing[key] = (oid, converter.digest(attrs, feature.get("geometry")))
        counts = {"inserted": 0, "updated": 0, "deleted": 0, "unchanged": 0}
        seen: set[tuple[Any, ...]] = set()
        adds: list[tuple[int, dict[str, Any]]] = []
        updates: list[tuple[int, dict[str, Any]]] = []
        for row_number, feature in converter.features(staged):
            key = converter.key_of(feature["attributes"], keys)
            if key in seen:
                raise AgoLoadError(f"{self.dataset.id}: staged row {row_number} repeats primary key {dict(zip(keys, key))}")
            seen.add(key)
            found = existing.get(key)
            if found is None:
                adds.append((row_number, feature))
            elif found[1] != converter.digest(feature["attributes"], feature.get("geometry")):
                feature["attributes"][target.oid_field] = found[0]
                updates.append((row_number, feature))
            else:
                counts["unchanged"] += 1
            if len(adds) + len(updates) >= self.options.batch_size:
                self._apply(target, adds, updates, [], counts)
                adds, updates = [], []
        self._apply(target, adds, updates, [], counts)
        stale = [oid for key, (oid, _) in existing.items() if key not in seen] + duplicates
        for start in range(0, len(stale), self.options.batch_size):
            self._apply(target, [], [], stale[start:start + self.options.batch_size], counts)
        self._verify_count(target, rows, "after the upsert")
        self._indexes(target, table_schema)
        return counts

    def _read_all(self, layer: LayerInfo) -> Iterator[dict[str, Any]]:
        offset, page_size = 0, layer.max_records
        while True:
            page = self.client.get(f"{layer.url}/query", "read features", where="1=1", outFields="*", returnGeometry="true",
                                   orderByFields=layer.oid_field, resultOffset=str(offset), resultRecordCount=str(page_size),
                                   outSR=str(layer.wkid))
            features = page.get("features") or []
            yield from features
            offset += len(features)
            if not features or not page.get("exceededTransferLimit"):
                return

    def _apply(self, layer: LayerInfo, adds: list[tuple[int, dict[str, Any]]], updates: list[tuple[int, dict[str, Any]]],
               deletes: list[int], counts: dict[str, int]) -> None:
        if not (adds or updates or deletes):
            return
        data = {"adds": json.dumps([f for _, f in adds], allow_nan=False), "updates": json.dumps([f for _, f in updates], allow_nan=False),
                "deletes": ",".join(str(d) for d in deletes), "rollbackOnFailure": "true"}
        rows = [r for r, _ in adds + updates]
        label = f"applyEdits ({len(adds)} adds, {len(updates)} updates, {len(deletes)} deletes" + (f", staged rows {min(rows)}–{max(rows)})" if rows else ")")
        before = self.count(layer)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                body = self.client.post(f"{layer.url}/applyEdits", label, edit=True, **data)
            except AgoApiError as exc:
                if not exc.uncertain:
                    raise AgoLoadError(f"{self.dataset.id}: {label} refused by {layer.url} (rolled back): {exc}") from exc
                time.sleep(RECOUNT_WAIT * (attempt - 1))
                if self._edits_applied(layer, adds, updates, deletes, before):
                    log.warning("%s: %s answered %s but went through", self.dataset.id, label, exc.message)
                    break
                continue
            for kind, results, sent in (("add", body.get("addResults") or [], adds), ("update", body.get("updateResults") or [], updates)):
                for i, result in enumerate(results):
                    if not result.get("success"):
                        raise AgoLoadError(f"{self.dataset.id}: staged row {sent[i][0]} ({kind}) was refused by {layer.url}: "
                                           f"{(result.get('error') or {}).get('description')}")
            bad = [r for r in body.get("deleteResults") or [] if not r.get("success")]
            if bad:
                raise AgoLoadError(f"{self.dataset.id}: deleting OBJECTID {bad[0].get('objectId')} from {layer.url} failed: {(bad[0].get('error') or {}).get('description')}")
            break
        else:
            raise AgoLoadError(f"{self.dataset.id}: {label} at {layer.url}/applyEdits did not go through after {MAX_ATTEMPTS} tries")
        counts["inserted"] += len(adds)
        counts["updated"] += len(updates)
        counts["deleted"] += len(deletes)

    def _edits_applied(self, layer: LayerInfo, adds: list[Any], updates: list[Any], deletes: list[int], before: int) -> bool:
        """After an uncertain applyEdits (rollback on: all or nothing): did it go through?"""
        after = self.count(layer)
        if after == before + len(adds) - len(deletes) and (adds or deletes):
            return True
        if after != before:
            raise AgoLoadError(f"{self.dataset.id}: after an uncertain applyEdits {layer.url} holds {after} features, "
                               f"neither {before} nor {before + len(adds) - len(deletes)}")
        if adds or deletes or not updates:
            return False
        oid_field = layer.oid_field
        sample = updates[0][1]
        got = self.client.get(f"{layer.url}/query", "re-read edited feature", objectIds=str(sample["attributes"][oid_field]), outFields="*", returnGeometry="false")
        current = (got.get("features") or [{}])[0].get("attributes", {})
        return all(_same(current.get(k), v) for k, v in sample["attributes"].items())

    # --- schema and indexes --------------------------------------------------------------------------------

    def _check_schema(self, layer: LayerInfo, table_schema: Any) -> None:
        """Field names and types and the geometry type of the layer against the staged schema: a mismatch
        fails before anything changes."""
        fields = layer.fields
        problems = []
        geometry = table_schema.geometry
        for column in table_schema.columns:
            if (geometry is not None and column.name == geometry.name) or column.name.lower() == layer.oid_field.lower():
                continue  # the source's OBJECTID is not sent: AGO numbers features itself (ignored on add)
            found = fields.get(column.name.lower())
            if found is None:
                problems.append(f"no field {column.name}")
            elif found["type"] not in COMPATIBLE.get(column.type, {"esriFieldTypeString"}):
                problems.append(f"{column.name} is {found['type']}, staged as {column.type}")
        staged = {c.name.lower() for c in table_schema.columns}
        extra = [f["name"] for n, f in fields.items() if n not in staged and f["type"] not in SYSTEM_TYPES
                 and not n.startswith("shape__") and f.get("editable", True)]
        if extra:
            problems.append(f"fields not staged: {', '.join(extra)}")
        layer_geometry = layer.json.get("geometryType")
        if geometry is None and layer_geometry:
            problems.append(f"the layer has {layer_geometry} geometry, the staged table none")
        elif geometry is not None:
            base = (geometry.geometry_type or "geometry").lower().rstrip("zm") if geometry.geometry_type else "geometry"
            base = base if base in ESRI_GEOMETRY_FOR else (geometry.geometry_type or "").lower()
            for suffix in ("zm", "z", "m"):
                if base.endswith(suffix) and base[: -len(suffix)] in ESRI_GEOMETRY_FOR:
                    base = base[: -len(suffix)]
            wanted = ESRI_GEOMETRY_FOR.get(base)
            if not layer_geometry:
                problems.append("the layer is a table, the staged data has geometry")
            elif wanted is not None and wanted != layer_geometry:
                problems.append(f"the layer holds {layer_geometry}, staged geometry is {geometry.geometry_type}")
        if problems:
            raise AgoLoadError(f"{self.dataset.id}: schema of {layer.url} does not match the staged table — {'; '.join(problems)}. "
                               "Nothing was changed; fix the layer (addToDefinition) or the dataset's columns")

    def _indexes(self, layer: LayerInfo, table_schema: Any) -> None:
        existing = {str(i.get("fields", "")).replace(" ", "").lower() for i in layer.json.get("indexes") or []}
        for spec in getattr(self.dataset, "indexes", ()) or ():
            columns = [c.lower() for c in spec.split("+")]
            if any(c not in layer.fields for c in columns):
                log.warning("%s: index %s skipped: not a field of %s", self.dataset.id, spec, layer.url)
                continue
            names = [layer.fields[c]["name"] for c in columns]
            if ",".join(names).lower() in existing:
                continue
            index = {"name": f"{'_'.join(columns)}_idx"[:60], "fields": ",".join(names), "isUnique": False, "isAscending": True,
                     "description": "databridge-luigi"}
            try:
                self.client.post(f"{layer.admin_url}/addToDefinition", f"addToDefinition index {index['name']}",
                                 addToDefinition=json.dumps({"indexes": [index]}), **{"async": "false"})
            except AgoApiError as exc:
                if "invalid definition" not in exc.message.lower():
                    raise
                log.info("%s: index %s already on %s", self.dataset.id, index["name"], layer.url)

    # --- catalog pushes --------------------------------------------------------------------------------------

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
            reply = self.client.session.get(f"{portal}/content/items/{item['id']}/info/metadata/metadata.xml",
                                            headers={"X-Esri-Authorization": f"Bearer {self.client.token()}"}, timeout=REQUEST_TIMEOUT)
            current = reply.text if reply.ok and reply.text.lstrip().startswith("<") and '"error"' not in reply.text[:50] else None
        except requests.RequestException:
            current = None
        xml = set_revise_date(current, datetime.now(timezone.utc))
        url = f"{portal}/content/users/{item['owner']}/items/{item['id']}/update"
        body = self.client.post(url, f"update metadata of item {item['id']}", files={"metadata": ("metadata.xml", xml.encode(), "application/xml")})
        if not body.get("success"):
            raise PushError(f"metadata update of item {item['id']} answered {body}")


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-9)
        except (TypeError, ValueError):
            return False
    return bool(a == b)


class RowConverter:
    """Staged CSV rows → Esri JSON features for one layer (values by the layer's field types)."""

    def __init__(self, dataset: Any, options: AgoOptions, layer: LayerInfo, table_schema: Any):
        self.dataset, self.options, self.layer = dataset, options, layer
        self.zone = ZoneInfo(getattr(dataset, "timezone", None) or "America/New_York")
        self.columns = list(table_schema.columns)
        self.geometry_column = table_schema.geometry.name if table_schema.geometry else None
        self.fields = layer.fields
        self.geometry = None
        if self.geometry_column and layer.json.get("geometryType"):
            self.geometry = EsriGeometry(layer.json["geometryType"], layer.wkid, bool(layer.json.get("hasZ")), bool(layer.json.get("hasM")),
                                         table_schema.geometry.srid)
        self.resolution = 1e-8 if layer.wkid == 4326 else 1e-4  # AGO's default xy resolution (degrees / projected units)

    def features(self, staged: Any) -> Iterator[tuple[int, dict[str, Any]]]:
        with staged.open_csv() as raw:
            reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
            header = next(reader, None) or []
            for number, values in enumerate(reader, start=1):
                yield number, self.feature(number, dict(zip(header, values)))

    def batches(self, staged: Any, size: int) -> Iterator[list[tuple[int, dict[str, Any]]]]:
        batch: list[tuple[int, dict[str, Any]]] = []
        for item in self.features(staged):
            batch.append(item)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def feature(self, row: int, values: dict[str, str]) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        geometry = None
        for column in self.columns:
            text = values.get(column.name, "")
            if column.name == self.geometry_column:
                if text and self.geometry is not None:
                    try:
                        geometry = self.geometry.convert(text)
                    except (GeometryConversionError, ValueError) as exc:
                        raise AgoLoadError(f"{self.dataset.id}: staged row {row}, column {column.name}: {exc}") from None
                continue
            if column.name.lower() == self.layer.oid_field.lower():
                continue  # AGO assigns OBJECTIDs; a staged objectid column is not sent
            f = self.fields[column.name.lower()]
            try:
                attrs[f["name"]] = self.value(f, column.type, text)
            except ValueError as exc:
                raise AgoLoadError(f"{self.dataset.id}: staged row {row}, column {column.name}: {exc}") from None
        feature: dict[str, Any] = {"attributes": attrs}
        if self.geometry is not None:
            feature["geometry"] = geometry
        return feature

    def value(self, f: dict[str, Any], staged_type: str, text: str) -> Any:
        if text == "":
            return None  # the CSV reader cannot tell NULL from "": both publish as null (as the City's tool does)
        t = f["type"]
        if t in ("esriFieldTypeString", "esriFieldTypeGUID"):
            if staged_type == "boolean":
                text = "true" if text.lower() in ("true", "t", "1") else "false"
            if _HTML.search(text):
                if self.options.html_text == "fail":
                    raise ValueError(f"{text[:40]!r} looks like HTML, which AGO rejects; set ago.html_text: clean to strip < > \" '")
                text = re.sub(r"[<>\"']", "", text)
            length = f.get("length")
            if length and len(text) > int(length):
                raise ValueError(f"{len(text)} characters, field {f['name']} holds {length}")
            return text
        if t in ("esriFieldTypeSmallInteger", "esriFieldTypeInteger", "esriFieldTypeBigInteger"):
            if staged_type == "boolean":
                return 1 if text.lower() in ("true", "t", "1") else 0
            number = float(text) if ("." in text or "e" in text.lower()) else int(text)
            if isinstance(number, float) and not number.is_integer():
                raise ValueError(f"{text} is not an integer")
            return int(number)
        if t in ("esriFieldTypeDouble", "esriFieldTypeSingle"):
            number = float(text)
            if not math.isfinite(number):
                raise ValueError(f"{text} cannot be stored in an AGO number field")
            return number
        if t == "esriFieldTypeDate":
            return _epoch_ms(text, self.zone)
        if t == "esriFieldTypeDateOnly":
            return text[:10]
        if t == "esriFieldTypeTimeOnly":
            return text[:8]
        if t == "esriFieldTypeTimestampOffset":
            moment = _parse_moment(text, self.zone)
            return moment.isoformat(timespec="seconds")
        return text

    def key_of(self, attrs: dict[str, Any], keys: list[str]) -> tuple[Any, ...]:
        lowered = {k.lower(): v for k, v in attrs.items()}
        return tuple(_norm(lowered.get(k)) for k in keys)

    def digest(self, attrs: dict[str, Any], geometry: dict[str, Any] | None) -> str:
        """What a row looks like on the layer: staged fields (names case-insensitive) and geometry rounded
        to the layer's resolution, so a row read back compares equal to the same row about to be sent."""
        lowered = {k.lower(): v for k, v in attrs.items()}
        oid = self.layer.oid_field.lower()
        values = [_norm(lowered.get(c.name.lower())) for c in self.columns if c.name != self.geometry_column and c.name.lower() != oid]
        shape = _round_geometry(geometry, self.resolution) if self.geometry is not None else None
        return hashlib.sha256(json.dumps([values, shape], sort_keys=True, default=str).encode()).hexdigest()


def _norm(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _round_geometry(geometry: dict[str, Any] | None, resolution: float) -> Any:
    if not geometry:
        return None

    def r(v: Any) -> Any:
        if isinstance(v, list):
            return [r(x) for x in v]
        if isinstance(v, float) or isinstance(v, int):
            return round(round(v / resolution) * resolution, 10)
        return v

    return {k: r(v) for k, v in geometry.items() if k in ("x", "y", "z", "m", "points", "paths", "rings")}


def _parse_moment(text: str, zone: ZoneInfo) -> datetime:
    value = text.strip().replace(" ", "T", 1) if len(text) > 10 else text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    if len(value) == 10:
        moment = datetime.combine(date.fromisoformat(value), datetime.min.time())
    else:
        moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


def _epoch_ms(text: str, zone: ZoneInfo) -> int:
    """Dates and timestamps → epoch milliseconds UTC (a date is midnight in the dataset's time zone)."""
    try:
        moment = _parse_moment(text, zone)
    except ValueError:
        raise ValueError(f"{text!r} is not a date or timestamp") from None
    return int(round(moment.timestamp() * 1000))


# --- luigi wiring (used by tasks.LoadAgo) ---------------------------------------------------------------------

_clients: dict[tuple[int, str, str], AgoClient] = {}


def client_for(conn: str) -> AgoClient:
    """One client (one token) per connection per process, so completion checks do not each log in."""
    url = resolve(conn)
    key = (os.getpid(), conn, hashlib.sha256(url.encode()).hexdigest())  # a rotated secret gets a new client
    if key not in _clients:
        _clients[key] = AgoClient(parse_connection(conn, url))
    return _clients[key]


def publisher_for(dataset: Any, status: Callable[[str], None] = lambda m: None) -> AgoPublisher:
    if dataset.ago is None:
        raise AgoLoadError(f"{dataset.id}: no ago: block (upload_to_ago needs one)")
    return AgoPublisher(dataset, dataset.ago, client_for(dataset.ago.conn), status, webhook_url(dataset))


def publish_to_ago(dataset: Any, staged: Any, version: str, force: bool = False,
                   status: Callable[[str], None] = lambda m: None) -> AgoResult:
    """Publish ``staged`` unless this version is already recorded (then only a pending catalog push runs)."""
    publisher = publisher_for(dataset, status)
    if not force:
        _, state = publisher._state()
        if version in (state.get("versions") or {}).get(dataset.id, []):
            pushed = publisher.push_pending()
            return AgoResult(dataset.id, version, publisher.where(), int((state.get("published") or {}).get("rows", 0)), False, 0.0, pushed=pushed)
    return publisher.load(staged, force=force)


class AgoPublishedTarget:
    """Exists when the item's properties record this dataset version and no catalog push is pending."""

    def __init__(self, dataset: Any, version: str):
        self.dataset, self.version = dataset, version

    def exists(self) -> bool:
        return publisher_for(self.dataset).is_published(self.version)

    def __repr__(self) -> str:
        ago = self.dataset.ago
        return f"AgoPublishedTarget({ago.conn if ago else '-'}:item {ago.item if ago else '-'}@{self.version})"
