"""ArcGIS Online (AGO) emulator: portal (sharing API) and hosted feature services, in memory.

Follows ``shared/reference/arcgis-online.md`` (section numbers below are that file's): tokens from
``generateToken`` with expiry, accepted as a ``token`` field or an ``X-Esri-Authorization``/``Authorization``
bearer header (§1.2); API keys (§1.3); errors inside HTTP 200 bodies with ``details`` always present (§4.3);
items and their ``properties``/``metadata.xml`` (§6); service, layer and admin JSON (§1.5); ``query`` with a
small SQL subset, ``maxRecordCount`` paging, ids, counts and statistics (§2.1); ``applyEdits`` /
``addFeatures`` / ``updateFeatures`` / ``deleteFeatures`` with per-item results and ``rollbackOnFailure``
(§2.2–2.3); admin ``truncate`` (sync, or async with a ``statusURL`` job), ``addToDefinition`` /
``deleteFromDefinition`` / ``updateDefinition`` / ``refresh`` (§2.5); views over one source service, swapped
with ``deleteFromDefinition`` + ``addToDefinition`` and listed by ``/sources`` (§5); Esri JSON geometry
checks (§3.1), spatial references (project or reject, §3.2), field types, string lengths and the HTML
filter (§3.3–3.5); throttling (429 with a cool-off), gateway 5xx pages, "Your request has timed out"
*after* the edit committed, and a stale count right after a truncate (§4, checklist §8.12).

Every edit request is applied under one lock, so a reader never sees part of a request; a view reads its
source's rows at query time. Run it as a process with ``python -m tests.emulators.ago --port N --user
u:pw``; another process drives it through ``/__emulator__/`` (state, faults, services, expire_tokens,
throttle), the admin prefix of ``base.py``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.emulators.base import FAULTS as BASE_FAULTS
from tests.emulators.base import Emulator, Fault, json_response, run_cli

ORG_ID = "fLeGjb7u4uXqeF9q"
EXTRA_FAULTS = frozenset({"timeout_after_commit", "stale_count", "esri_error"})
SYSTEM_FIELD_TYPES = ("esriFieldTypeOID", "esriFieldTypeGlobalID")
INVALID_URL = "Invalid URL"
TIMED_OUT = "Your request has timed out."
WKID_ALIASES = {102100: 3857, 102113: 3857, 900913: 3857, 102729: 2272, 4326: 4326}
GEOMETRY_KEYS = {
    "esriGeometryPoint": "x",
    "esriGeometryMultipoint": "points",
    "esriGeometryPolyline": "paths",
    "esriGeometryPolygon": "rings",
}


class AgoError(Exception):
    """An error answered as ``{"error": {...}}`` (HTTP 200 unless ``status`` says otherwise)."""

    def __init__(self, code: int, message: str, details: list[str] | None = None, status: int = 200, **extra: Any):
        super().__init__(message)
        self.code, self.message, self.details, self.status, self.extra = code, message, details or [], status, extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details, **self.extra}}


def invalid_url() -> AgoError:
    return AgoError(400, INVALID_URL, ["The requested URL is invalid."])


def _latest(wkid: int | None) -> int | None:
    return WKID_ALIASES.get(wkid, wkid) if wkid is not None else None


def _sr(wkid: int) -> dict[str, int]:
    latest = _latest(wkid) or wkid
    return {"wkid": wkid, "latestWkid": latest}


# --- data model ---------------------------------------------------------------------------------------------

@dataclass
class Layer:
    id: int
    name: str
    geometry_type: str | None  # None: a table
    fields: list[dict[str, Any]]
    wkid: int = 2272
    has_z: bool = False
    has_m: bool = False
    max_record_count: int = 2000
    xss: str = "reject"  # or "sanitize"
    features: dict[int, dict[str, Any]] = field(default_factory=dict)  # oid -> {"attributes", "geometry"}
    next_oid: int = 1
    indexes: list[dict[str, Any]] = field(default_factory=list)
    last_edit: int = 0
    stale_count: tuple[int, float] | None = None  # (count to report, until)

    @property
    def oid_field(self) -> str:
        return next((f["name"] for f in self.fields if f["type"] == "esriFieldTypeOID"), "OBJECTID")

    def field(self, name: str) -> dict[str, Any] | None:
        lowered = name.lower()
        return next((f for f in self.fields if f["name"].lower() == lowered), None)


@dataclass
class ViewLayer:
    """A view's layer: its own definition over one source layer (rows read from the source at query time)."""

    id: int
    name: str
    source_service: str
    source_layer: int
    source_fields: str  # "*" or a comma list


@dataclass
class Service:
    name: str
    item_id: str
    layers: dict[int, Any]  # Layer, or ViewLayer for a view
    is_view: bool = False
    wkid: int = 2272


@dataclass
class Item:
    id: str
    owner: str
    title: str
    name: str
    url: str
    type: str = "Feature Service"
    type_keywords: list[str] = field(default_factory=list)
    properties: dict[str, Any] | None = None
    metadata_xml: str | None = None
    created: int = 0
    modified: int = 0
    access: str = "private"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "owner": self.owner, "title": self.title, "name": self.name, "type": self.type,
                "typeKeywords": self.type_keywords, "url": self.url, "created": self.created,
                "modified": self.modified, "access": self.access, "properties": self.properties}


@dataclass
class Job:
    id: str
    status: str = "Pending"
    polls: int = 0
    error: str | None = None


def field_def(name: str, type_: str, length: int | None = None, nullable: bool = True, alias: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "type": type_, "alias": alias or name, "sqlType": "sqlTypeOther",
                           "nullable": nullable, "editable": type_ not in SYSTEM_FIELD_TYPES, "domain": None,
                           "defaultValue": None}
    if type_ == "esriFieldTypeString":
        out["length"] = length or 256
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- the where clause: a small SQL-92 subset (§2.1) -------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<num>-?\d+(?:\.\d+)?)|(?P<str>'(?:[^']|'')*')|(?P<op><>|!=|>=|<=|=|<|>|\(|\)|,)|(?P<word>[A-Za-z_][A-Za-z0-9_.]*))")


class WhereError(ValueError):
    pass


class Where:
    """Parses ``where`` into a predicate over an attributes dict (field names case-insensitive)."""

    def __init__(self, text: str):
        self.tokens: list[tuple[str, Any]] = []
        pos, text = 0, text.strip()
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if not match or match.end() == pos:
                raise WhereError(f"bad token at {text[pos:pos + 20]!r}")
            pos = match.end()
            kind = match.lastgroup
            value = match.group(kind)  # type: ignore[arg-type]
            if kind == "num":
                self.tokens.append(("val", float(value) if "." in value else int(value)))
            elif kind == "str":
                self.tokens.append(("val", value[1:-1].replace("''", "'")))
            elif kind == "word" and value.upper() in ("AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE"):
                self.tokens.append(("kw", value.upper()))
            else:
                self.tokens.append((kind or "", value))
        self.pos = 0
        self.tree = self._or() if self.tokens else ("true",)
        if self.pos != len(self.tokens):
            raise WhereError("trailing tokens")

    def _peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self, kind: str, value: Any = None) -> bool:
        token = self._peek()
        if token and token[0] == kind and (value is None or token[1] == value):
            self.pos += 1
            return True
        return False

    def _or(self) -> tuple:
        node = self._and()
        while self._take("kw", "OR"):
            node = ("or", node, self._and())
        return node

    def _and(self) -> tuple:
        node = self._not()
        while self._take("kw", "AND"):
            node = ("and", node, self._not())
        return node

    def _not(self) -> tuple:
        if self._take("kw", "NOT"):
            return ("not", self._not())
        if self._take("op", "("):
            node = self._or()
            if not self._take("op", ")"):
                raise WhereError("missing )")
            return node
        return self._comparison()

    def _operand(self) -> tuple:
        token = self._peek()
        if token is None:
            raise WhereError("unexpected end")
        self.pos += 1
        if token[0] == "val":
            return ("val", token[1])
        if token[0] == "word":
            return ("field", token[1])
        raise WhereError(f"unexpected {token[1]!r}")

    def _comparison(self) -> tuple:
        left = self._operand()
        if self._take("kw", "IS"):
            negate = self._take("kw", "NOT")
            if not self._take("kw", "NULL"):
                raise WhereError("IS needs NULL")
            return ("not", ("null", left)) if negate else ("null", left)
        negate = self._take("kw", "NOT")
        if self._take("kw", "IN"):
            if not self._take("op", "("):
                raise WhereError("IN needs (")
            values = [self._operand()]
            while self._take("op", ","):
                values.append(self._operand())
            if not self._take("op", ")"):
                raise WhereError("missing )")
            node: tuple = ("in", left, values)
            return ("not", node) if negate else node
        if self._take("kw", "LIKE"):
            node = ("like", left, self._operand())
            return ("not", node) if negate else node
        if negate:
            raise WhereError("NOT must precede IN or LIKE here")
        token = self._peek()
        if not token or token[0] != "op" or token[1] in ("(", ")", ","):
            raise WhereError("expected a comparison")
        self.pos += 1
        return ("cmp", token[1], left, self._operand())

    def check_fields(self, layer: Layer) -> None:
        def walk(node: Any) -> None:
            if isinstance(node, tuple):
                if node and node[0] == "field" and layer.field(node[1]) is None:
                    raise WhereError(f"unknown field {node[1]}")
                for child in node[1:]:
                    walk(child)
            elif isinstance(node, list):
                for child in node:
                    walk(child)
        walk(self.tree)

    def matches(self, attrs: dict[str, Any]) -> bool:
        lowered = {k.lower(): v for k, v in attrs.items()}

        def value(node: tuple) -> Any:
            return lowered.get(node[1].lower()) if node[0] == "field" else node[1]

        def ev(node: tuple) -> bool:
            kind = node[0]
            if kind == "true":
                return True
            if kind == "or":
                return ev(node[1]) or ev(node[2])
            if kind == "and":
                return ev(node[1]) and ev(node[2])
            if kind == "not":
                return not ev(node[1])
            if kind == "null":
                return value(node[1]) is None
            if kind == "in":
                v = value(node[1])
                return v is not None and any(_eq(v, value(o)) for o in node[2])
            if kind == "like":
                v, pattern = value(node[1]), value(node[2])
                if v is None:
                    return False
                regex = "^" + re.escape(str(pattern)).replace("%", ".*").replace("_", ".") + "$"
                return re.match(regex, str(v), re.S) is not None
            op, a, b = node[1], value(node[2]), value(node[3])
            if a is None or b is None:
                return False
            try:
                if op == "=":
                    return _eq(a, b)
                if op in ("<>", "!="):
                    return not _eq(a, b)
                return {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]
            except TypeError:
                return False

        return ev(self.tree)


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, str):
        try:
            return a == float(b)
        except ValueError:
            return False
    if isinstance(b, (int, float)) and isinstance(a, str):
        return _eq(b, a)
    return bool(a == b)


# --- geometry ---------------------------------------------------------------------------------------------

_transformers: dict[tuple[int, int], Any] = {}


def _project_point(x: float, y: float, from_wkid: int, to_wkid: int) -> tuple[float, float]:
    from pyproj import Transformer

    key = (_latest(from_wkid) or from_wkid, _latest(to_wkid) or to_wkid)
    if key[0] == key[1]:
        return x, y
    if key not in _transformers:
        _transformers[key] = Transformer.from_crs(f"EPSG:{key[0]}", f"EPSG:{key[1]}", always_xy=True)
    return _transformers[key].transform(x, y)


def project_geometry(geometry: dict[str, Any], from_wkid: int, to_wkid: int) -> dict[str, Any]:
    if (_latest(from_wkid) or from_wkid) == (_latest(to_wkid) or to_wkid):
        return geometry
    out = copy.deepcopy(geometry)

    def coords(c: list[Any]) -> list[Any]:
        x, y = _project_point(c[0], c[1], from_wkid, to_wkid)
        return [x, y, *c[2:]]

    if "x" in out and isinstance(out["x"], (int, float)):
        out["x"], out["y"] = _project_point(out["x"], out["y"], from_wkid, to_wkid)
    for key in ("rings", "paths"):
        if key in out:
            out[key] = [[coords(c) for c in part] for part in out[key]]
    if "points" in out:
        out["points"] = [coords(c) for c in out["points"]]
    return out


def ring_area(ring: list[list[float]]) -> float:
    """Shoelace signed area: negative for a clockwise ring (an Esri exterior), positive counter-clockwise."""
    return sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring, ring[1:])) / 2.0


def check_geometry(layer: Layer, geometry: Any) -> str | None:
    """A reason the geometry is refused for this layer, or None."""
    if layer.geometry_type is None:
        return "Geometry is not allowed for a table." if geometry else None
    if geometry is None:
        return None
    if not isinstance(geometry, dict):
        return "Geometry is invalid."
    key = GEOMETRY_KEYS[layer.geometry_type]
    present = [k for k in ("x", "points", "paths", "rings") if k in geometry]
    if present != [key]:
        return f"Geometry type does not match the layer ({layer.geometry_type})."
    dims = 2 + int(bool(geometry.get("hasZ"))) + int(bool(geometry.get("hasM")))
    if key == "x":
        x, y = geometry.get("x"), geometry.get("y")
        if x in (None, "NaN") or y in (None, "NaN"):
            return None
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (x, y)):
            return "Geometry is invalid."
        return None
    parts = geometry[key]
    if not isinstance(parts, list):
        return "Geometry is invalid."
    if key == "points":
        parts = [parts]
    for part in parts:
        if not isinstance(part, list) or (key != "points" and len(part) < (4 if key == "rings" else 2)):
            return "Geometry is invalid."
        for c in part:
            if not isinstance(c, list) or len(c) < 2 or len(c) > 4 or not all(isinstance(v, (int, float)) or v is None for v in c):
                return "Geometry is invalid."
            if len(c) != dims and len(c) != 2:
                return "Geometry is invalid: coordinate dimension does not match hasZ/hasM."
        if key == "rings" and part[0][:2] != part[-1][:2]:
            return "Geometry is invalid: ring is not closed."
    return None


def esri_to_geojson(geometry: dict[str, Any] | None) -> dict[str, Any] | None:
    """Esri JSON → GeoJSON: clockwise rings start polygons, counter-clockwise ones are holes of the last outer."""
    if not geometry:
        return None
    if "x" in geometry:
        if geometry["x"] in (None, "NaN"):
            return None
        return {"type": "Point", "coordinates": [geometry["x"], geometry["y"], *([geometry["z"]] if "z" in geometry else [])]}
    if "points" in geometry:
        return {"type": "MultiPoint", "coordinates": geometry["points"]}
    if "paths" in geometry:
        paths = geometry["paths"]
        return {"type": "LineString", "coordinates": paths[0]} if len(paths) == 1 else {"type": "MultiLineString", "coordinates": paths}
    polygons: list[list[Any]] = []
    for ring in geometry.get("rings", []):
        if ring_area(ring) <= 0 or not polygons:  # clockwise: an outer ring
            polygons.append([ring])
        else:
            polygons[-1].append(ring)
    if not polygons:
        return None
    return {"type": "Polygon", "coordinates": polygons[0]} if len(polygons) == 1 else {"type": "MultiPolygon", "coordinates": polygons}


# --- values ----------------------------------------------------------------------------------------------

_HTML = re.compile(r"<\s*[A-Za-z/!?]|javascript:", re.I)
_INT_RANGES = {"esriFieldTypeSmallInteger": 2**15, "esriFieldTypeInteger": 2**31, "esriFieldTypeBigInteger": 2**63}


def check_value(layer: Layer, f: dict[str, Any], value: Any) -> tuple[Any, str | None]:
    """(stored value, None) or (None, the reason the server refuses it)."""
    if value is None:
        if not f.get("nullable", True):
            return None, f"Field {f['name']} cannot be null."
        return None, None
    t = f["type"]
    if t == "esriFieldTypeString":
        if not isinstance(value, str):
            value = str(value)  # AGO stores a number sent to a text field as its text
        if len(value) > int(f.get("length") or 256):
            return None, f"Field {f['name']} exceeds the maximum length of {f.get('length')}."
        if _HTML.search(value):
            if layer.xss == "reject":
                return None, f"Field {f['name']} has invalid html content."
            value = re.sub(r"<[^>]*>", "", value)
        return value, None
    if t in _INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
            return None, f"Field {f['name']} has an invalid value {value!r} for type {t}."
        limit = _INT_RANGES[t]
        if not -limit <= int(value) < limit:
            return None, f"Field {f['name']} value {value!r} is out of range for type {t}."
        return int(value), None
    if t in ("esriFieldTypeDouble", "esriFieldTypeSingle"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"Field {f['name']} has an invalid value {value!r} for type {t}."
        return float(value), None
    if t == "esriFieldTypeDate":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"Field {f['name']} has an invalid date value {value!r} (epoch milliseconds expected)."
        return int(value), None
    if t == "esriFieldTypeDateOnly":
        if not isinstance(value, str) or not re.match(r"^\d{4}-\d\d-\d\d$", value):
            return None, f"Field {f['name']} has an invalid date-only value {value!r}."
        return value, None
    if t == "esriFieldTypeTimeOnly":
        if not isinstance(value, str) or not re.match(r"^\d\d:\d\d:\d\d(\.\d+)?$", value):
            return None, f"Field {f['name']} has an invalid time-only value {value!r}."
        return value, None
    if t == "esriFieldTypeTimestampOffset":
        if not isinstance(value, str) or not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)$", value):
            return None, f"Field {f['name']} has an invalid timestamp-offset value {value!r}."
        return value, None
    return value, None


# --- the emulator ------------------------------------------------------------------------------------------

class AgoEmulator(Emulator):
    """AGO portal + hosted feature services. ``url`` is the portal root (``<url>/sharing/rest``); services live
    under ``<url>/<org>/arcgis/rest/services``; connection URLs are ``ago+http://user:pw@127.0.0.1:port``."""

    def __init__(self, users: dict[str, str] | None = None, api_keys: list[str] | None = None, *,
                 token_minutes: float = 60.0, project_input: bool = False, api_key_admin: bool = True,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.users = dict(users or {"phl_etl": "secret-password"})
        self.api_keys = set(api_keys or [])
        self.token_minutes = token_minutes
        self.project_input = project_input  # False: a geometry in another SR is refused (the switch of §8.7)
        self.api_key_admin = api_key_admin
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (user, expires epoch s)
        self.services: dict[str, Service] = {}
        self.items: dict[str, Item] = {}
        self.jobs: dict[str, Job] = {}
        self.throttled_until = 0.0
        self.throttle_retry_after: int | None = None
        self.view_gaps: list[tuple[str, float, float | None]] = []  # (view, layer removed at, re-added at)
        self.edit_requests = 0
        self.data_lock = threading.RLock()

    # --- setup API (tests) ---------------------------------------------------------------------------------

    @property
    def services_root(self) -> str:
        return f"{self.url}/{ORG_ID}/arcgis/rest/services"

    def connection_url(self, user: str | None = None, password: str | None = None, api_key: str | None = None) -> str:
        hostport = f"{self.host}:{self.port}"
        if api_key is not None:
            return f"ago+http://:{api_key}@{hostport}"
        user = user or next(iter(self.users))
        return f"ago+http://{user}:{password or self.users[user]}@{hostport}"

    def create_service(self, name: str, fields: list[dict[str, Any]], geometry_type: str | None = "esriGeometryPoint",
                       wkid: int = 2272, *, layer_name: str | None = None, has_z: bool = False, has_m: bool = False,
                       max_record_count: int = 2000, xss: str = "reject", owner: str | None = None) -> Item:
        """A hosted feature service with one layer (id 0); returns its item."""
        with self.data_lock:
            all_fields = [field_def("OBJECTID", "esriFieldTypeOID", nullable=False)] + [dict(f) for f in fields]
            lowered = [f["name"].lower() for f in all_fields]
            if len(set(lowered)) != len(lowered):
                raise ValueError(f"field names repeat (AGO compares them case-insensitively): {lowered}")
            layer = Layer(0, layer_name or name, geometry_type, all_fields, wkid, has_z, has_m, max_record_count, xss)
            layer.indexes.append({"name": "PK__OBJECTID", "fields": "OBJECTID", "isUnique": True, "isAscending": True,
                                  "description": "clustered, unique, primary key"})
            if geometry_type:
                layer.indexes.append({"name": "user_shape_idx", "fields": "Shape", "isUnique": False,
                                      "isAscending": True, "description": "Shape Index"})
            item = self._new_item(name, owner, ["Hosted Service", "Feature Service"])
            self.services[name] = Service(name, item.id, {0: layer}, wkid=wkid)
            return item

    def create_view(self, name: str, source: str, *, owner: str | None = None) -> Item:
        """A hosted feature layer view (one layer, id 0) over source service ``source``'s layer 0."""
        with self.data_lock:
            src = self.services[source]
            item = self._new_item(name, owner, ["Hosted Service", "View Service", "Feature Service"])
            self.services[name] = Service(name, item.id, {0: ViewLayer(0, src.layers[0].name, source, 0, "*")},
                                          is_view=True, wkid=src.wkid)
            return item

    def _new_item(self, name: str, owner: str | None, keywords: list[str]) -> Item:
        item_id = uuid.uuid4().hex
        now = _now_ms()
        item = Item(item_id, owner or next(iter(self.users)), name, name, f"{self.services_root}/{name}/FeatureServer",
                    type_keywords=keywords, created=now, modified=now)
        self.items[item_id] = item
        return item

    def layer(self, service: str, layer_id: int = 0) -> Layer:
        """The stored layer (a view resolves to its source's layer)."""
        with self.data_lock:
            found = self.services[service].layers[layer_id]
            if isinstance(found, ViewLayer):
                return self.services[found.source_service].layers[found.source_layer]
            return found

    def rows(self, service: str, layer_id: int = 0) -> list[dict[str, Any]]:
        with self.data_lock:
            return [copy.deepcopy(f) for _, f in sorted(self.layer(service, layer_id).features.items())]

    def view_source(self, view: str) -> str | None:
        with self.data_lock:
            layer = self.services[view].layers.get(0)
            return layer.source_service if isinstance(layer, ViewLayer) else None

    def expire_tokens(self) -> None:
        with self._lock:
            self.tokens = {t: (u, 0.0) for t, (u, _) in self.tokens.items()}

    def throttle(self, seconds: float, retry_after: int | None = None) -> None:
        """Answer 429 to every request for ``seconds`` (the org's request-unit cool-off, §4.1)."""
        self.throttled_until = time.monotonic() + seconds
        self.throttle_retry_after = retry_after

    def inject(self, fault: str, times: int | None = 1, match: str | None = None, **options: Any) -> None:
        """Base faults plus ``timeout_after_commit`` (the edit is applied, the answer is "Your request has timed
        out."), ``stale_count`` (after the next truncate, counts report the old number for ``seconds``) and
        ``esri_error`` (an error envelope with ``code``/``message``)."""
        if fault in EXTRA_FAULTS:
            with self._lock:
                self._faults.append(Fault(fault, times, match, dict(options)))
            return
        super().inject(fault, times, match, **options)

    def state(self) -> dict[str, Any]:
        with self.data_lock:
            return {"services": {n: {"is_view": s.is_view, "source": self.view_source(n) if s.is_view else None,
                                     "rows": len(self.layer(n).features) if s.layers else None} for n, s in self.services.items()},
                    "view_gaps": self.view_gaps, "edit_requests": self.edit_requests}

    # --- WSGI ----------------------------------------------------------------------------------------------

    def _respond(self, request: Request, fault: Fault | None, environ: dict[str, Any]) -> Response:
        if time.monotonic() < self.throttled_until:
            return self.rate_limit_response(request)
        if fault is not None and fault.name in EXTRA_FAULTS:
            request.environ["ago.fault"] = fault
            return self.handle(request)
        return super()._respond(request, fault, environ)

    def rate_limit_response(self, request: Request, **options: Any) -> Response:
        headers = {}
        retry_after = options.get("retry_after", self.throttle_retry_after)
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return json_response({"error": {"code": 429, "message": "Too many requests. Please try again later.",
                                        "details": []}}, status=429, headers=headers)

    def _admin(self, request: Request) -> Response:
        action = request.path[len("/__emulator__/"):].strip("/")
        if action == "expire_tokens" and request.method == "POST":
            self.expire_tokens()
            return json_response({"ok": True})
        if action == "throttle" and request.method == "POST":
            spec = request.get_json(force=True)
            self.throttle(float(spec["seconds"]), spec.get("retry_after"))
            return json_response({"ok": True})
        if action == "services" and request.method == "POST":
            spec = request.get_json(force=True)
            if spec.get("view_of"):
                item = self.create_view(spec["name"], spec["view_of"])
            else:
                item = self.create_service(spec["name"], spec["fields"], spec.get("geometry_type", "esriGeometryPoint"),
                                           spec.get("wkid", 2272), max_record_count=spec.get("max_record_count", 2000))
            return json_response({"id": item.id, "url": item.url})
        if action.startswith("rows/") and request.method == "GET":
            return json_response({"rows": self.rows(action[5:])})
        return super()._admin(request)

    def handle(self, request: Request) -> Response:
        try:
            params = self._params(request)
            fmt = params.get("f")
            if fmt == "geojson" and request.path.endswith("/query"):
                return json_response(self._route(request, params))
            if fmt not in ("json", "pjson") and not request.path.endswith("/metadata.xml"):
                return Response("<html><body>ArcGIS REST Services Directory</body></html>", content_type="text/html")
            return json_response(self._route(request, params))
        except AgoError as exc:
            return json_response(exc.body(), status=exc.status)
        except _RawXml as raw:
            return Response(raw.text, content_type="application/xml")

    @staticmethod
    def _params(request: Request) -> dict[str, Any]:
        params: dict[str, Any] = {k: v for k, v in request.args.items()}
        if request.method == "POST":
            params.update({k: v for k, v in request.form.items()})
            for name, upload in request.files.items():
                params[name] = upload.read().decode("utf-8", "replace")
        return params

    # --- auth ----------------------------------------------------------------------------------------------

    def _token(self, request: Request, params: dict[str, Any]) -> str | None:
        for header in ("X-Esri-Authorization", "Authorization"):
            value = request.headers.get(header, "")
            if value.lower().startswith("bearer "):
                return value[7:].strip()
        return params.get("token") or None

    def _auth(self, request: Request, params: dict[str, Any], admin: bool = False) -> str:
        token = self._token(request, params)
        if not token:
            raise AgoError(499, "Token Required")
        if token in self.api_keys:
            if admin and not self.api_key_admin:
                raise AgoError(403, "You do not have permissions to access this resource or perform this operation.",
                               messageCode="GWM_0003")
            return "api-key"
        with self._lock:
            found = self.tokens.get(token)
        if found is None or found[1] <= time.time():
            raise AgoError(498, "Invalid token.")
        return found[0]

    # --- routing -------------------------------------------------------------------------------------------

    def _route(self, request: Request, params: dict[str, Any]) -> Any:
        path = request.path.rstrip("/")
        if path.startswith("/sharing/rest") or path.startswith("/sharing"):
            return self._sharing(request, params, path.split("/sharing/rest", 1)[-1] if "/sharing/rest" in path else "")
        match = re.match(rf"^/{ORG_ID}/arcgis/rest/(?P<admin>admin/)?services/(?P<name>[^/]+)/FeatureServer(?P<rest>/.*)?$", path, re.I)
        if not match:
            raise invalid_url()
        service = self.services.get(match["name"])
        if service is None:
            raise invalid_url()
        rest = (match["rest"] or "").strip("/")
        if match["admin"]:
            self._auth(request, params, admin=True)
            return self._admin_op(request, params, service, rest)
        self._auth(request, params)
        return self._service_op(request, params, service, rest)

    def _require_post(self, request: Request) -> None:
        if request.method != "POST":
            raise AgoError(405, "Method not supported.", ["This operation is only supported via POST."])

    # --- sharing API ---------------------------------------------------------------------------------------

    def _sharing(self, request: Request, params: dict[str, Any], path: str) -> Any:
        if path in ("", "/"):
            return {"currentVersion": "2026.1"}
        if path == "/info":
            return {"owningSystemUrl": self.url, "authInfo": {"isTokenBasedSecurity": True,
                                                               "tokenServicesUrl": f"{self.url}/sharing/rest/generateToken"}}
        if path == "/generateToken":
            self._require_post(request)
            user, password = params.get("username"), params.get("password")
            if user not in self.users or self.users[user] != password:
                raise AgoError(400, "Unable to generate token.", ["Invalid username or password."])
            minutes = min(float(params.get("expiration") or self.token_minutes), 20160.0, self.token_minutes)
            token = uuid.uuid4().hex + uuid.uuid4().hex
            expires = time.time() + minutes * 60
            with self._lock:
                self.tokens[token] = (user, expires)
            return {"token": token, "expires": int(expires * 1000), "ssl": False}
        user = self._auth(request, params)
        if path == "/portals/self":
            return {"id": "0123456789ABCDEF", "name": "City of Philadelphia", "urlKey": "phl", "portalMode": "multitenant",
                    "isPortal": False, "user": {"username": user}}
        if path == "/community/self" or path == "/community/users/me":
            return {"username": user, "role": "org_admin"}
        if path == "/search":
            return self._search(params)
        match = re.match(r"^/content/items/(?P<id>[0-9a-f]+)(?P<rest>/.*)?$", path)
        if match:
            item = self.items.get(match["id"])
            if item is None:
                raise AgoError(400, "Item does not exist or is inaccessible.", [], messageCode="CONT_0001")
            if not match["rest"]:
                return item.to_json()
            if match["rest"] == "/info/metadata/metadata.xml":
                if item.metadata_xml is None:
                    raise AgoError(404, "File not found.")
                raise _RawXml(item.metadata_xml)
            raise invalid_url()
        match = re.match(r"^/content/users/(?P<user>[^/]+)/items/(?P<id>[0-9a-f]+)/update$", path)
        if match:
            self._require_post(request)
            item = self.items.get(match["id"])
            if item is None:
                raise AgoError(400, "Item does not exist or is inaccessible.", [], messageCode="CONT_0001")
            if user != "api-key" and user != item.owner:
                raise AgoError(403, "You do not have permissions to access this resource or perform this operation.",
                               messageCode="GWM_0003")
            with self.data_lock:
                if "properties" in params:
                    try:
                        props = json.loads(params["properties"]) if params["properties"] else None
                    except json.JSONDecodeError:
                        raise AgoError(400, "Unable to update item.", ["Invalid properties: not a JSON object."]) from None
                    if props is not None and not isinstance(props, dict):
                        raise AgoError(400, "Unable to update item.", ["Invalid properties: not a JSON object."])
                    item.properties = props
                if "metadata" in params:
                    item.metadata_xml = params["metadata"]
                for key in ("title", "snippet"):
                    if key in params:
                        setattr(item, key, params[key]) if key == "title" else None
                item.modified = _now_ms()
            return {"success": True, "id": item.id}
        raise invalid_url()

    def _search(self, params: dict[str, Any]) -> Any:
        q = params.get("q", "")
        title = re.search(r'title:"?([^"]+)"?', q)
        results = [i.to_json() for i in self.items.values() if not title or i.title.lower() == title.group(1).strip().lower()]
        start, num = int(params.get("start") or 1), int(params.get("num") or 10)
        page = results[start - 1:start - 1 + num]
        next_start = start + len(page) if start - 1 + num < len(results) else -1
        return {"total": len(results), "start": start, "num": num, "nextStart": next_start, "results": page}

    # --- services ------------------------------------------------------------------------------------------

    def _service_json(self, service: Service) -> dict[str, Any]:
        layers = [{"id": lid, "name": (l.name), "geometryType": self._layer(service, lid).geometry_type,
                   "type": "Feature Layer"} for lid, l in sorted(service.layers.items())]
        return {"currentVersion": 11.5, "serviceItemId": service.item_id, "serviceDescription": "",
                "hasVersionedData": False, "supportsDisconnectedEditing": False, "maxRecordCount": 2000,
                "supportedQueryFormats": "JSON, geoJSON, PBF", "capabilities": "Query" if service.is_view else "Create,Delete,Query,Update,Editing",
                "spatialReference": _sr(service.wkid), "layers": layers, "tables": [],
                "isView": service.is_view}

    def _layer(self, service: Service, layer_id: int) -> Layer:
        found = service.layers.get(layer_id)
        if found is None:
            raise invalid_url()
        if isinstance(found, ViewLayer):
            source = self.services.get(found.source_service)
            if source is None or found.source_layer not in source.layers:
                raise invalid_url()
            return source.layers[found.source_layer]
        return found

    def _layer_json(self, service: Service, layer_id: int, admin: bool = False) -> dict[str, Any]:
        layer = self._layer(service, layer_id)
        own = service.layers[layer_id]
        fields = copy.deepcopy(layer.fields)
        if isinstance(own, ViewLayer) and own.source_fields != "*":
            wanted = {n.strip().lower() for n in own.source_fields.split(",")}
            fields = [f for f in fields if f["name"].lower() in wanted or f["type"] == "esriFieldTypeOID"]
        if layer.geometry_type == "esriGeometryPolygon":
            fields += [field_def("Shape__Area", "esriFieldTypeDouble"), field_def("Shape__Length", "esriFieldTypeDouble")]
            fields[-1]["editable"] = fields[-2]["editable"] = False
        elif layer.geometry_type == "esriGeometryPolyline":
            fields.append(field_def("Shape__Length", "esriFieldTypeDouble"))
            fields[-1]["editable"] = False
        out: dict[str, Any] = {
            "currentVersion": 11.5, "id": layer_id, "name": own.name, "type": "Feature Layer" if layer.geometry_type else "Table",
            "serviceItemId": service.item_id, "isView": service.is_view, "geometryType": layer.geometry_type,
            "objectIdField": layer.oid_field, "globalIdField": "", "fields": fields,
            "indexes": copy.deepcopy(layer.indexes), "hasZ": layer.has_z, "hasM": layer.has_m,
            "maxRecordCount": layer.max_record_count, "standardMaxRecordCount": layer.max_record_count,
            "supportsAppend": not service.is_view, "supportedAppendFormats": "geojson,featureCollection",
            "supportsTruncate": not service.is_view, "supportsRollbackOnFailureParameter": True,
            "advancedQueryCapabilities": {"supportsPagination": True, "supportsStatistics": True,
                                          "supportsOrderBy": True, "supportsReturningQueryExtent": True},
            "supportsStatistics": True, "supportsPagination": True,
            "capabilities": "Query" if service.is_view else "Create,Delete,Query,Update,Editing",
            "editingInfo": {"lastEditDate": layer.last_edit, "dataLastEditDate": layer.last_edit,
                            "schemaLastEditDate": layer.last_edit},
            "extent": {"spatialReference": _sr(layer.wkid)},
            "xssPreventionInfo": {"xssPreventionEnabled": True, "xssPreventionRule": "InputOnly",
                                  "xssInputRule": "rejectInvalid" if layer.xss == "reject" else "sanitizeInvalid"},
        }
        if admin and isinstance(own, ViewLayer):
            out["adminLayerInfo"] = {"viewLayerDefinition": {"sourceServiceName": own.source_service,
                                                             "sourceLayerId": own.source_layer,
                                                             "sourceLayerFields": own.source_fields}}
        return out

    def _service_op(self, request: Request, params: dict[str, Any], service: Service, rest: str) -> Any:
        with self.data_lock:
            if rest == "":
                return self._service_json(service)
            if rest == "sources":
                names = sorted({l.source_service for l in service.layers.values() if isinstance(l, ViewLayer)})
                return {"currentVersion": 11.5, "services": [
                    {"name": n, "type": "FeatureServer", "url": f"{self.services_root}/{n}/FeatureServer",
                     "serviceItemId": self.services[n].item_id} for n in names if n in self.services]}
            if rest == "layers":
                return {"layers": [self._layer_json(service, lid) for lid in sorted(service.layers)], "tables": []}
            match = re.match(r"^(?P<id>\d+)(?:/(?P<op>[A-Za-z]+))?$", rest)
            if not match:
                raise invalid_url()
            layer_id, op = int(match["id"]), match["op"]
            if op is None:
                return self._layer_json(service, layer_id)
            layer = self._layer(service, layer_id)
            if op == "query":
                return self._query(layer, params)
        if op in ("applyEdits", "addFeatures", "updateFeatures", "deleteFeatures"):
            self._require_post(request)
            if service.is_view:
                raise AgoError(400, "Requested operation is not supported by this service.",
                               ["The view does not allow editing."])
            return self._edit(request, params, layer, op)
        raise invalid_url()

    # --- query ---------------------------------------------------------------------------------------------

    def _query(self, layer: Layer, params: dict[str, Any]) -> Any:
        try:
            where = Where(params.get("where") or "1=1")
            where.check_fields(layer)
        except WhereError as exc:
            raise AgoError(400, "Cannot perform query. Invalid query parameters.",
                           [f"Unable to perform query. Please check your parameters. ({exc})"]) from None
        oid = layer.oid_field
        rows = [(o, f) for o, f in sorted(layer.features.items()) if where.matches({**f["attributes"], oid: o})]
        if params.get("objectIds"):
            wanted = {int(x) for x in str(params["objectIds"]).split(",") if x.strip()}
            rows = [(o, f) for o, f in rows if o in wanted]
        geojson = params.get("f") == "geojson"
        if _true(params.get("returnCountOnly")):
            count = len(rows)
            if layer.stale_count and time.monotonic() < layer.stale_count[1]:
                count = layer.stale_count[0]
            # f=geojson changes only feature answers: counts and ids keep their JSON form (restapi's getOIDs,
            # written against AGO, reads a top-level objectIds from its f=geojson ids query) (inference).
            return {"count": count}
        if _true(params.get("returnIdsOnly")):
            return {"objectIdFieldName": oid, "objectIds": [o for o, _ in rows]}
        if params.get("outStatistics"):
            return self._statistics(layer, rows, params["outStatistics"])
        order = params.get("orderByFields")
        if order:
            name, _, direction = order.strip().partition(" ")
            key_field = layer.field(name)
            if key_field is None:
                raise AgoError(400, "Cannot perform query. Invalid query parameters.", ["'orderByFields' is invalid"])
            rows.sort(key=lambda r: (_sort_key(r[0] if key_field["name"] == oid else r[1]["attributes"].get(key_field["name"]))),
                      reverse=direction.strip().upper() == "DESC")
        offset = int(params.get("resultOffset") or 0)
        count = min(int(params.get("resultRecordCount") or layer.max_record_count), layer.max_record_count)
        page = rows[offset:offset + count]
        out_fields = params.get("outFields") or ""
        wanted_fields = None if out_fields.strip() in ("*", "") else {n.strip().lower() for n in out_fields.split(",")}
        if out_fields.strip() == "":
            wanted_fields = {oid.lower()}
        out_sr = _parse_sr(params.get("outSR")) or (4326 if geojson else layer.wkid)
        features = []
        for o, f in page:
            attrs = {oid: o, **f["attributes"]}
            if wanted_fields is not None:
                attrs = {k: v for k, v in attrs.items() if k.lower() in wanted_fields}
            feature: dict[str, Any] = {"attributes": attrs}
            if layer.geometry_type and params.get("returnGeometry", "true").lower() != "false" and f.get("geometry") is not None:
                feature["geometry"] = project_geometry(f["geometry"], layer.wkid, out_sr)
            features.append(feature)
        if geojson:
            collection: dict[str, Any] = {"type": "FeatureCollection", "features": [
                {"type": "Feature", "id": f["attributes"][oid], "geometry": esri_to_geojson(f.get("geometry")),
                 "properties": f["attributes"]} for f in features]}
            if offset + len(page) < len(rows):
                collection["properties"] = {"exceededTransferLimit": True}
            return collection
        out = {"objectIdFieldName": oid, "uniqueIdField": {"name": oid, "isSystemMaintained": True},
               "globalIdFieldName": "", "geometryType": layer.geometry_type, "spatialReference": _sr(out_sr),
               "fields": [f for f in layer.fields if wanted_fields is None or f["name"].lower() in wanted_fields],
               "features": features}
        if offset + len(page) < len(rows):
            out["exceededTransferLimit"] = True
        return out

    def _statistics(self, layer: Layer, rows: list[tuple[int, dict[str, Any]]], spec_text: str) -> Any:
        try:
            specs = json.loads(spec_text)
        except json.JSONDecodeError:
            raise AgoError(400, "Cannot perform query. Invalid query parameters.", ["'outStatistics' parameter is invalid"]) from None
        attrs = {}
        for spec in specs:
            name = spec["onStatisticField"]
            values = [o if name.lower() == layer.oid_field.lower() else f["attributes"].get(name) for o, f in rows]
            values = [v for v in values if v is not None]
            kind = spec["statisticType"].lower()
            result = {"min": min(values, default=None), "max": max(values, default=None), "count": len(values),
                      "sum": sum(values) if values else None,
                      "avg": (sum(values) / len(values)) if values else None}[kind]
            attrs[spec.get("outStatisticFieldName") or f"{kind}_{name}"] = result
        return {"displayFieldName": "", "fields": [], "features": [{"attributes": attrs}]}

    # --- edits ---------------------------------------------------------------------------------------------

    def _edit(self, request: Request, params: dict[str, Any], layer: Layer, op: str) -> Any:
        fault: Fault | None = request.environ.get("ago.fault")
        if fault is not None and fault.name == "esri_error":
            raise AgoError(int(fault.options.get("code", 500)), str(fault.options.get("message", "An error occurred.")),
                           list(fault.options.get("details", [])))

        def load(name: str) -> Any:
            text = params.get(name)
            if text in (None, ""):
                return []
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                raise AgoError(400, "Cannot perform operation. Invalid operation parameters.",
                               [f"'{name}' parameter is invalid"]) from None

        rollback = params.get("rollbackOnFailure", "true").lower() != "false"
        if op == "applyEdits":
            adds, updates = load("adds"), load("updates")
            deletes_param = params.get("deletes") or ""
            deletes = load("deletes") if deletes_param.strip().startswith("[") else [int(x) for x in deletes_param.split(",") if x.strip()]
        elif op == "addFeatures":
            adds, updates, deletes = load("features"), [], []
        elif op == "updateFeatures":
            adds, updates, deletes = [], load("features"), []
        else:
            adds = updates = []
            if params.get("objectIds"):
                deletes = [int(x) for x in str(params["objectIds"]).split(",") if x.strip()]
            elif params.get("where"):
                try:
                    where = Where(params["where"])
                    where.check_fields(layer)
                except WhereError:
                    raise AgoError(400, "Unable to complete operation.", ["Invalid where clause."]) from None
                with self.data_lock:
                    deletes = [o for o, f in layer.features.items() if where.matches({**f["attributes"], layer.oid_field: o})]
            else:
                deletes = []
        for name, value in (("adds", adds), ("updates", updates), ("deletes", deletes)):
            if not isinstance(value, list):
                raise AgoError(400, "Cannot perform operation. Invalid operation parameters.", [f"'{name}' parameter is invalid"])

        with self.data_lock:
            self.edit_requests += 1
            staged = dict(layer.features)  # shallow: rows are replaced, never mutated
            next_oid = layer.next_oid
            add_results, update_results, delete_results = [], [], []
            failed = False
            for feature in adds:
                reason, stored = self._feature(layer, feature, None)
                if reason:
                    add_results.append({"objectId": None, "uniqueId": None, "globalId": None, "success": False,
                                        "error": {"code": 1000, "description": reason}})
                    failed = True
                    continue
                staged[next_oid] = stored
                add_results.append({"objectId": next_oid, "uniqueId": next_oid, "globalId": None, "success": True})
                next_oid += 1
            for feature in updates:
                attrs = (feature or {}).get("attributes") or {}
                oid = next((v for k, v in attrs.items() if k.lower() == layer.oid_field.lower()), None)
                if not isinstance(oid, int) or oid not in staged:
                    update_results.append({"objectId": oid, "uniqueId": oid, "globalId": None, "success": False,
                                           "error": {"code": 1019, "description": "Feature could not be updated: it does not exist."}})
                    failed = True
                    continue
                reason, stored = self._feature(layer, feature, staged[oid])
                if reason:
                    update_results.append({"objectId": oid, "uniqueId": oid, "globalId": None, "success": False,
                                           "error": {"code": 1000, "description": reason}})
                    failed = True
                    continue
                staged[oid] = stored
                update_results.append({"objectId": oid, "uniqueId": oid, "globalId": None, "success": True})
            for oid in deletes:
                if oid not in staged:
                    delete_results.append({"objectId": oid, "uniqueId": oid, "globalId": None, "success": False,
                                           "error": {"code": 1019, "description": "Delete for the object was not attempted. Object may not exist."}})
                    failed = True
                    continue
                del staged[oid]
                delete_results.append({"objectId": oid, "uniqueId": oid, "globalId": None, "success": True})
            if failed and rollback:
                first = next(r["error"]["description"] for r in add_results + update_results + delete_results if not r["success"])
                raise AgoError(400, "Unable to complete operation.", ["Operation rolled back.", first],
                               extendedCode=-2147467259)
            layer.features = staged
            layer.next_oid = next_oid
            if adds or updates or deletes:
                layer.last_edit = _now_ms()
        if fault is not None and fault.name == "timeout_after_commit":
            raise AgoError(504, TIMED_OUT, [])
        if op == "deleteFeatures" and params.get("returnDeleteResults", "true").lower() == "false":
            return {"success": not failed}
        if op == "applyEdits":
            if params.get("returnEditResults", "true").lower() == "false":
                return {"success": not failed}
            return {"addResults": add_results, "updateResults": update_results, "deleteResults": delete_results}
        key = {"addFeatures": "addResults", "updateFeatures": "updateResults", "deleteFeatures": "deleteResults"}[op]
        return {key: {"addFeatures": add_results, "updateFeatures": update_results, "deleteFeatures": delete_results}[op]}

    def _feature(self, layer: Layer, feature: Any, old: dict[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
        if not isinstance(feature, dict):
            return "Invalid feature.", {}
        attrs_in = feature.get("attributes") or {}
        attrs = dict(old["attributes"]) if old else {}
        if old is None:
            for f in layer.fields:
                if f["type"] not in SYSTEM_FIELD_TYPES:
                    attrs.setdefault(f["name"], f.get("defaultValue"))
        for name, value in attrs_in.items():
            f = layer.field(name)
            if f is None or f["type"] in SYSTEM_FIELD_TYPES:
                continue  # unknown attributes are dropped silently; the OID is ignored (§2.3)
            stored, reason = check_value(layer, f, value)
            if reason:
                return reason, {}
            attrs[f["name"]] = stored
        for f in layer.fields:
            if old is None and not f.get("nullable", True) and f["type"] not in SYSTEM_FIELD_TYPES and attrs.get(f["name"]) is None:
                return f"Field {f['name']} cannot be null.", {}
        geometry = feature.get("geometry", old.get("geometry") if old else None)
        reason = check_geometry(layer, geometry)
        if reason:
            return reason, {}
        if geometry is not None:
            geometry = dict(geometry)
            sr = geometry.pop("spatialReference", None)
            wkid = _parse_sr(sr) if sr else None
            if wkid is not None and _latest(wkid) != _latest(layer.wkid):
                if not self.project_input:
                    return f"Geometry spatial reference {wkid} does not match the layer's ({layer.wkid}).", {}
                geometry = project_geometry(geometry, wkid, layer.wkid)
            if not layer.has_z:
                geometry.pop("hasZ", None)
            if not layer.has_m:
                geometry.pop("hasM", None)
        return None, {"attributes": attrs, "geometry": geometry}

    # --- admin ---------------------------------------------------------------------------------------------

    def _admin_op(self, request: Request, params: dict[str, Any], service: Service, rest: str) -> Any:
        if rest == "":
            with self.data_lock:
                out = self._service_json(service)
                out["adminServiceInfo"] = {"name": service.name, "type": "FeatureServer", "status": "Started"}
                out["layers"] = [self._layer_json(service, lid, admin=True) for lid in sorted(service.layers)]
                return out
        match = re.match(r"^(?:(?P<id>\d+)(?:/(?P<op>[A-Za-z]+))?|(?P<sop>[A-Za-z]+))(?:/(?P<job>[0-9a-f]+)(?:/status)?)?$", rest)
        if not match:
            raise invalid_url()
        if match["sop"]:
            op = match["sop"]
            if op in ("refresh",):
                return {"success": True}
            self._require_post(request)
            if op == "deleteFromDefinition":
                return self._service_delete_from_definition(service, params)
            if op == "addToDefinition":
                return self._service_add_to_definition(service, params)
            if op == "updateDefinition":
                return {"success": True}
            raise invalid_url()
        layer_id, op = int(match["id"]), match["op"]
        if op == "jobs" and match["job"]:
            return self._job_status(match["job"])
        with self.data_lock:
            if op is None:
                return self._layer_json(service, layer_id, admin=True)
            layer = self._layer(service, layer_id)
        if op == "refresh":
            return {"success": True}
        self._require_post(request)
        if op == "truncate":
            if service.is_view:
                raise AgoError(400, "Truncate is not supported on this layer.", ["supportsTruncate is false for views."])
            return self._truncate(request, params, service, layer, layer_id)
        if op == "addToDefinition":
            return self._layer_add_to_definition(layer, params)
        if op == "deleteFromDefinition":
            return self._layer_delete_from_definition(layer, params)
        if op == "updateDefinition":
            spec = _json_param(params, "updateDefinition")
            with self.data_lock:
                if "maxRecordCount" in spec:
                    layer.max_record_count = int(spec["maxRecordCount"])
                rule = (spec.get("xssPreventionInfo") or {}).get("xssInputRule")
                if rule:
                    layer.xss = "sanitize" if rule == "sanitizeInvalid" else "reject"
            return {"success": True}
        raise invalid_url()

    def _truncate(self, request: Request, params: dict[str, Any], service: Service, layer: Layer, layer_id: int) -> Any:
        fault: Fault | None = request.environ.get("ago.fault")
        attachments_only = params.get("attachmentOnly", "false").lower() == "true"
        with self.data_lock:
            if not attachments_only:
                before = len(layer.features)
                layer.features = {}
                layer.next_oid = 1
                layer.last_edit = _now_ms()
                if fault is not None and fault.name == "stale_count":
                    layer.stale_count = (before, time.monotonic() + float(fault.options.get("seconds", 1.0)))
        if _true(params.get("async")):
            job = Job(uuid.uuid4().hex)
            with self._lock:
                self.jobs[job.id] = job
            url = f"{self.url}/{ORG_ID}/arcgis/rest/admin/services/{service.name}/FeatureServer/{layer_id}/jobs/{job.id}"
            return {"statusURL": url}
        return {"success": True}

    def _job_status(self, job_id: str) -> Any:
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                raise invalid_url()
            job.polls += 1
            job.status = "Processing" if job.polls < 2 else "Completed"
            return {"submissionTime": _now_ms(), "lastUpdatedTime": _now_ms(), "status": job.status}

    def _layer_add_to_definition(self, layer: Layer, params: dict[str, Any]) -> Any:
        spec = _json_param(params, "addToDefinition")
        with self.data_lock:
            for f in spec.get("fields", []):
                if layer.field(f["name"]) is not None:
                    raise AgoError(400, "Invalid definition for 'fields'.", [f"Field '{f['name']}' already exists."])
            for index in spec.get("indexes", []):
                names = {i["name"].lower() for i in layer.indexes}
                columns = {i["fields"].replace(" ", "").lower() for i in layer.indexes}
                if index["name"].lower() in names or index["fields"].replace(" ", "").lower() in columns:
                    raise AgoError(400, "Invalid definition for 'indexes'.", [f"Index '{index['name']}' already exists."])
                for column in index["fields"].split(","):
                    if layer.field(column.strip()) is None:
                        raise AgoError(400, "Invalid definition for 'indexes'.", [f"Field '{column.strip()}' does not exist."])
            for f in spec.get("fields", []):
                layer.fields.append(field_def(f["name"], f["type"], f.get("length"), f.get("nullable", True)))
            for index in spec.get("indexes", []):
                layer.indexes.append({"name": index["name"], "fields": index["fields"], "isUnique": bool(index.get("isUnique")),
                                      "isAscending": index.get("isAscending", True), "description": index.get("description", "")})
        return {"success": True}

    def _layer_delete_from_definition(self, layer: Layer, params: dict[str, Any]) -> Any:
        spec = _json_param(params, "deleteFromDefinition")
        with self.data_lock:
            for f in spec.get("fields", []):
                found = layer.field(f["name"])
                if found is None:
                    raise AgoError(400, "Invalid definition for 'fields'.", [f"Field '{f['name']}' does not exist."])
                layer.fields.remove(found)
            for index in spec.get("indexes", []):
                layer.indexes = [i for i in layer.indexes if i["name"].lower() != index["name"].lower()]
        return {"success": True}

    def _service_delete_from_definition(self, service: Service, params: dict[str, Any]) -> Any:
        spec = _json_param(params, "deleteFromDefinition")
        with self.data_lock:
            for entry in spec.get("layers", []):
                lid = int(entry["id"])
                if lid not in service.layers:
                    raise AgoError(400, "Invalid definition for 'layers'.", [f"Layer {lid} does not exist."])
                del service.layers[lid]
                if service.is_view:
                    self.view_gaps.append((service.name, time.monotonic(), None))
        return {"success": True}

    def _service_add_to_definition(self, service: Service, params: dict[str, Any]) -> Any:
        spec = _json_param(params, "addToDefinition")
        with self.data_lock:
            if not service.is_view:
                raise AgoError(400, "Invalid definition for 'layers'.", ["Only views take layers by definition here."])
            new_layers = spec.get("layers", [])
            sources = set()
            for entry in new_layers:
                view_def = ((entry.get("adminLayerInfo") or {}).get("viewLayerDefinition")) or {}
                source_name = view_def.get("sourceServiceName")
                source = self.services.get(source_name or "")
                if source is None or source.is_view:
                    raise AgoError(400, "Invalid definition for 'layers'.", [f"Source service '{source_name}' not found."])
                sources.add(source_name)
                lid = int(entry.get("id", 0))
                if lid in service.layers:
                    raise AgoError(400, "Invalid definition for 'layers'.", [f"Layer {lid} already exists."])
                src_layer = source.layers.get(int(view_def.get("sourceLayerId", 0)))
                if src_layer is None:
                    raise AgoError(400, "Invalid definition for 'layers'.", ["Source layer not found."])
                if _latest(src_layer.wkid) != _latest(service.wkid):
                    raise AgoError(400, "Invalid definition for 'layers'.", ["The source has a different spatial reference."])
                if entry.get("geometryType") and entry["geometryType"] != src_layer.geometry_type:
                    raise AgoError(400, "Invalid definition for 'layers'.", ["The source has a different geometry type."])
                wanted = view_def.get("sourceLayerFields", "*")
                for f in entry.get("fields") or []:
                    if f.get("type") in SYSTEM_FIELD_TYPES or f["name"].startswith("Shape__"):
                        continue
                    if wanted != "*" and f["name"].lower() not in {n.strip().lower() for n in wanted.split(",")}:
                        continue
                    have = src_layer.field(f["name"])
                    if have is None or have["type"] != f["type"]:
                        raise AgoError(400, "Invalid definition for 'layers'.",
                                       [f"Field '{f['name']}' of the view is missing or has another type in the source."])
            existing = {l.source_service for l in service.layers.values() if isinstance(l, ViewLayer)}
            if len(sources | existing) > 1:
                raise AgoError(400, f"View layers can reference only one source service ({sorted(existing | sources)[0]})", [])
            for entry in new_layers:
                view_def = entry["adminLayerInfo"]["viewLayerDefinition"]
                lid = int(entry.get("id", 0))
                service.layers[lid] = ViewLayer(lid, entry.get("name") or view_def["sourceServiceName"], view_def["sourceServiceName"],
                                                int(view_def.get("sourceLayerId", 0)), view_def.get("sourceLayerFields", "*"))
            if new_layers:
                for i, (name, removed, back) in enumerate(self.view_gaps):
                    if name == service.name and back is None:
                        self.view_gaps[i] = (name, removed, time.monotonic())
        return {"success": True}


class _RawXml(Exception):
    def __init__(self, text: str):
        super().__init__("xml")
        self.text = text


def _true(value: Any) -> bool:
    return str(value).lower() == "true"


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, "") if value is None else (1, value)


def _parse_sr(value: Any) -> int | None:
    if value in (None, ""):
        return None
    if isinstance(value, dict):
        wkid = value.get("latestWkid") or value.get("wkid")
        return int(wkid) if wkid else None
    text = str(value).strip()
    if text.startswith("{"):
        return _parse_sr(json.loads(text))
    return int(text)


def _json_param(params: dict[str, Any], name: str) -> dict[str, Any]:
    try:
        value = json.loads(params.get(name) or "{}")
    except json.JSONDecodeError:
        raise AgoError(400, "Invalid definition.", [f"'{name}' is not valid JSON."]) from None
    if not isinstance(value, dict):
        raise AgoError(400, "Invalid definition.", [f"'{name}' must be a JSON object."])
    return value


def main(argv: list[str] | None = None) -> None:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--user", action="append", default=[], help="user:password (repeatable)")
        parser.add_argument("--api-key", action="append", default=[])
        parser.add_argument("--token-minutes", type=float, default=60.0)

    def build(args: argparse.Namespace) -> AgoEmulator:
        users = dict(u.split(":", 1) for u in args.user) or None
        return AgoEmulator(users, args.api_key, token_minutes=args.token_minutes, host=args.host, port=args.port)

    run_cli("ArcGIS Online emulator", build, add, argv)


if __name__ == "__main__":
    main()
