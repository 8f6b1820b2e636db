"""Knack REST API emulator (object-based requests), per reference/external-apis.md §2.

Wire behaviour reproduced:

* ``GET /v1/objects/object_N/records[/]``: ``rows_per_page`` (default 25, capped at 1000), 1-based ``page``,
  envelope ``{total_pages, current_page, total_records, records}``, ``filters`` (JSON), ``sort_field`` /
  ``sort_order``; ``GET …/records/{id}``; ``GET /v1/objects/object_N/fields`` (display name under ``label``).
* ``GET /v1/applications/{app_id}``: metadata, no auth (display name under ``name``; ``settings.timezone``
  is a Knack zone name such as "Eastern Time (US & Canada)").
* Records carry ``field_N`` (display, often HTML) and ``field_N_raw``; an empty field is ``""`` with no raw
  key, except connections which keep ``field_N_raw: []``.
* Date/time raw values encode the app-local wall-clock time *labelled as UTC* (``unix_timestamp`` ms,
  ``iso_timestamp``), which is the Knack quirk clients must correct for.
* Headers ``X-Knack-Application-Id`` / ``X-Knack-REST-API-KEY``; 10 requests/second per app and a daily plan
  limit, both answered with 429 "Rate limit exceeded" and ``X-RateLimit-*`` / ``X-PlanLimit-*`` headers.

Knack does not document its auth/not-found bodies; this emulator answers them with
``{"errors": [{"message": …}]}`` (the shape of Knack's validation errors) and 401/404.
"""
from __future__ import annotations

import argparse
import calendar
import html
import json
import math
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.emulators.base import Emulator, SlidingWindow, json_response, run_cli, text_response

RATE_LIMIT_MESSAGE = "Rate limit exceeded"
DEFAULT_PLAN_LIMIT = 25_000  # the "Plus" plan; tests lower it to hit the daily limit quickly
_INHERIT = -1  # add_app(plan_limit=_INHERIT): use the emulator-wide plan limit

# IANA zone -> Knack's display name in application.settings.timezone (knackpy maps them back).
KNACK_TIMEZONE_NAMES = {
    "America/New_York": "Eastern Time (US & Canada)",
    "America/Chicago": "Central Time (US & Canada)",
    "America/Denver": "Mountain Time (US & Canada)",
    "America/Phoenix": "Arizona",
    "America/Los_Angeles": "Pacific Time (US & Canada)",
    "America/Anchorage": "Alaska",
    "Pacific/Honolulu": "Hawaii",
    "UTC": "UTC",
}


# ------------------------------------------------------------------------------------------- data model
@dataclass
class KnackField:
    key: str
    name: str
    type: str
    required: bool = False
    unique: bool = False
    format: dict[str, Any] | None = None
    relationship: dict[str, Any] | None = None


@dataclass
class KnackObject:
    """An object (table): field definitions plus records already in wire form (``field_N``/``field_N_raw``)."""

    key: str
    name: str
    fields: list[KnackField]
    records: list[dict[str, Any]] = field(default_factory=list)
    identifier: str | None = None


@dataclass
class KnackApp:
    app_id: str
    api_key: str
    timezone: str  # IANA name; exported as a Knack zone name
    name: str
    objects: dict[str, KnackObject]
    plan_limit: int | None
    window: SlidingWindow | None
    plan_used: int = 0
    plan_day: date = field(default_factory=lambda: datetime.now(timezone.utc).date())

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


# -------------------------------------------------------------------------------------- wire formatting
def knack_timestamp_raw(wall: datetime) -> dict[str, Any]:
    """Raw date/time object for an app-local wall-clock time, in Knack's local-as-UTC encoding."""
    hour12 = wall.hour % 12 or 12
    am_pm = "AM" if wall.hour < 12 else "PM"
    return {
        "date": wall.strftime("%m/%d/%Y"),
        "date_formatted": wall.strftime("%m/%d/%Y"),
        "hours": f"{hour12:02d}",
        "minutes": f"{wall.minute:02d}",
        "am_pm": am_pm,
        # The wall time is labelled as UTC: this is the documented Knack quirk, not a bug here.
        "unix_timestamp": calendar.timegm(wall.timetuple()) * 1000,
        "iso_timestamp": wall.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        "timestamp": f"{wall:%m/%d/%Y} {hour12:02d}:{wall.minute:02d} {am_pm.lower()}",
        "time": wall.hour * 60 + wall.minute,
    }


def _clock(wall: datetime) -> str:
    """Knack's short time display, e.g. ``4:14pm``."""
    return f"{wall.hour % 12 or 12}:{wall.minute:02d}{'am' if wall.hour < 12 else 'pm'}"


def _object_id(*parts: int) -> str:
    """A deterministic 24-hex ObjectId-like id."""
    value = 0x5D79_0000
    for part in parts:
        value = value * 1_000_003 + part
    return f"{value % (1 << 96):024x}"


# ------------------------------------------------------------------------------------------ seed data
_FIRST = ["José", "Zoë", "Aaliyah", "Łukasz", "Renée", "Mohammed", "Siobhán", "Wei", "Chloé", "DeShawn"]
_LAST = ["Nguyễn", "O'Brien", "Müller", "García", "Washington", "Chen", "Kowalski", "Smith", "Núñez", "Park"]
_STREETS = ["Market St", "Chestnut St", "Walnut St", "Spruce St", "N Broad St", "W Girard Ave",
            "E Passyunk Ave", "Frankford Ave", "Germantown Ave", "Lancaster Ave"]
_ZIPS = ["19102", "19103", "19104", "19106", "19107", "19122", "19125", "19130", "19134", "19147"]
_KINDS = ["Recreation Center", "Library", "Pool", "Playground", "Health Center", "Fire Station"]
_STATUS = ["Open", "Closed", "Under Renovation", "Seasonal"]
_AMENITIES = ["Wi-Fi", "Restrooms", "Parking", "Wheelchair Access", "Water Fountain", "Café ☕"]
_DEPARTMENTS = ["Parks & Recreation", "Free Library", "Public Health", "Fire", "Streets", "Water",
                "Licenses & Inspections", "Police", "Planning", "Office of Immigrant Affairs", "Commerce", "Revenue"]

Value = tuple[Any, Any] | None  # (display, raw), or None for an empty cell
ValueMaker = Callable[[int, random.Random], Value]


@dataclass
class _Spec:
    field: KnackField
    make: ValueMaker


def _date_value(start: datetime, end: datetime | None = None, *, with_time: bool = True) -> tuple[str, dict]:
    raw = knack_timestamp_raw(start)
    display = f"{start:%m/%d/%Y}" + (f" {_clock(start)}" if with_time else "")
    if end is not None:
        raw["to"] = knack_timestamp_raw(end)
        same_day = end.date() == start.date()
        display += " to " + (_clock(end) if same_day else f"{end:%m/%d/%Y} {_clock(end)}")
    return display, raw


def _wall(i: int) -> datetime:
    """A working-hours local time; avoids DST gaps so every wall time exists in the app zone."""
    return datetime(2019, 1, 1, 8, 0) + timedelta(days=(i * 7) % 1800, minutes=(i * 37) % 540)


def _facility_specs(app_id: str, departments: list[dict[str, Any]]) -> list[_Spec]:
    """One field of every Knack type in reference §2.3, with realistic values."""

    def f(n: int, name: str, type_: str, make: ValueMaker, **extra: Any) -> _Spec:
        return _Spec(KnackField(f"field_{n}", name, type_, **extra), make)

    def blank_every(k: int, make: ValueMaker) -> ValueMaker:
        return lambda i, rng: None if i % k == k - 1 else make(i, rng)

    def name(i: int) -> tuple[str, dict]:
        first, last = _FIRST[i % len(_FIRST)], _LAST[(i // 3) % len(_LAST)]
        return f"{last}, {first}", {"first": first, "middle": "", "last": last}

    def address(i: int, rng: random.Random) -> tuple[str, dict]:
        street = f"{100 + (i * 13) % 4900} {_STREETS[i % len(_STREETS)]}"
        zip_code = _ZIPS[i % len(_ZIPS)]
        raw = {"street": street, "street2": "", "city": "Philadelphia", "state": "PA", "zip": zip_code,
               "latitude": round(39.90 + rng.random() * 0.15, 6), "longitude": round(-75.25 + rng.random() * 0.2, 6)}
        return f"{street}<br />Philadelphia, PA {zip_code}", raw

    def lat_long(i: int, rng: random.Random) -> tuple[str, dict]:
        lat, lon = round(39.90 + rng.random() * 0.15, 6), round(-75.25 + rng.random() * 0.2, 6)
        return f"{lat}, {lon}", {"latitude": lat, "longitude": lon}

    def phone(i: int) -> tuple[str, dict]:
        number = f"{(6861776 + i * 7919) % 10_000_000:07d}"
        formatted = f"(215) {number[:3]}-{number[3:]}"
        return formatted, {"area": "215", "number": number, "full": f"215{number}", "formatted": formatted}

    def asset(i: int, field_key: str, kind: str) -> dict[str, Any]:
        asset_id = _object_id(9, i, int(field_key[6:]))
        filename = f"site-plan-{i + 1}.pdf" if kind == "file" else f"photo-{i + 1}.jpg"
        url = f"https://api.knack.com/v1/applications/{app_id}/download/asset/{asset_id}/{filename}"
        return {"id": asset_id, "application_id": app_id, "s3": True, "type": kind, "filename": filename,
                "url": url, "thumb_url": url.replace("/asset/", "/thumb/") if kind == "image" else "",
                "size": 20_000 + i * 17, "field_key": field_key}

    def file_value(i: int) -> tuple[str, dict]:
        raw = asset(i, "field_22", "file")
        return (f'<a class="kn-view-asset" data-field-key="field_22" data-asset-id="{raw["id"]}" '
                f'href="{raw["url"]}">{raw["filename"]}</a>'), raw

    def image_value(i: int) -> tuple[str, dict]:
        raw = asset(i, "field_23", "image")
        return f'<img src="{raw["thumb_url"]}" />', raw

    def signature(i: int) -> tuple[str, dict]:
        svg = f'<svg xmlns="http://www.w3.org/2000/svg"><path d="M{i % 50} 10 L 40 {i % 30}"/></svg>'
        b64 = "PHN2ZyB4bWxucz0iaHR0cDovL3d3dy53My5vcmcvMjAwMC9zdmciPjwvc3ZnPg=="
        return f'<img src="data:image/svg+xml;base64,{b64}" />', {"base30": f"7UZ3{i % 97}_1Y", "svg": svg}

    def connection(i: int) -> tuple[str, list] | None:
        if i % 10 == 9:
            return None
        linked = [departments[i % len(departments)]]
        if i % 4 == 0:
            linked.append(departments[(i + 5) % len(departments)])
        display = "<br />".join(f'<span class="{d["id"]}">{html.escape(d["field_40"])}</span>' for d in linked)
        return display, [{"id": d["id"], "identifier": d["field_40"]} for d in linked]

    def amenities(i: int, rng: random.Random) -> tuple[Any, Any] | None:
        if i % 97 == 96:
            return "", [None]  # the documented empty multi-select quirk
        chosen = [a for k, a in enumerate(_AMENITIES) if (i >> k) & 1]
        return (", ".join(chosen), chosen) if chosen else None

    def timer(i: int) -> tuple[str, dict]:
        start = _wall(i)
        end = start + timedelta(hours=1 + i % 4)
        hours = (end - start).seconds // 3600
        display = (f"<span>{start:%m/%d/%y}</span>&nbsp;{_clock(start)} to {_clock(end)} = {hours}:00 hours")
        raw = {"total_time": hours * 3_600_000,
               "times": [{"from": knack_timestamp_raw(start), "to": knack_timestamp_raw(end)}]}
        return display, raw

    def capacity(i: int) -> int:
        return 25 + (i * 37) % 475

    def staff(i: int) -> int:
        return 2 + i % 7

    def facility_name(i: int) -> str:
        street_name = _STREETS[i % len(_STREETS)].rsplit(" ", 1)[0]
        return f"{street_name} {_KINDS[i % len(_KINDS)]} #{i + 1}"

    def same(value: Any) -> tuple[Any, Any]:
        return value, value

    return [
        f(1, "Facility Name", "short_text", lambda i, r: same(facility_name(i)), required=True),
        f(2, "Description", "paragraph_text", blank_every(10, lambda i, r: same(
            f"Centre communautaire — “{_FIRST[i % 10]}” café ☕ 東京 naïve façade, line {i}\nsecond line"))),
        f(3, "Notes", "rich_text", lambda i, r: same(f"<p><strong>Inspected</strong> by {_LAST[i % 10]}</p>")),
        f(4, "Capacity", "number", lambda i, r: same(capacity(i)), format={"format": "none", "precision": 0}),
        f(5, "Facility ID", "auto_increment", lambda i, r: same(i + 1), unique=True),
        f(6, "Capacity per Staff", "equation",
          lambda i, r: (round(capacity(i) / staff(i), 2), capacity(i) / staff(i)),
          format={"equation_type": "numeric", "precision": 2}),
        f(7, "Budget", "currency", blank_every(10, lambda i, r: (
            f"${1000 + i * 12.5:,.2f}", f"{1000 + i * 12.5:.2f}")), format={"format": "$"}),
        f(8, "Rating", "rating", lambda i, r: (f"{i % 6:.2f}", i % 6), format={"max": 5}),
        f(9, "Is Open", "boolean", lambda i, r: ("Yes", True) if i % 3 else ("No", False),
          format={"format": "yes_no", "default": False}),
        f(10, "Status", "multiple_choice", lambda i, r: same(_STATUS[i % len(_STATUS)]),
          format={"type": "single", "options": _STATUS}),
        f(11, "Amenities", "multiple_choice", blank_every(10, amenities),
          format={"type": "multi", "options": _AMENITIES}),
        f(12, "Opened On", "date_time", lambda i, r: _date_value(_wall(i).replace(hour=0, minute=0), with_time=False),
          format={"date_format": "mm/dd/yyyy", "time_format": "Ignore Time"}),
        f(13, "Last Inspection", "date_time", blank_every(10, lambda i, r: _date_value(_wall(i))),
          format={"date_format": "mm/dd/yyyy", "time_format": "h:mm a"}),
        f(14, "Event Window", "date_time",
          lambda i, r: _date_value(_wall(i), _wall(i) + timedelta(hours=1, days=i % 2)),
          format={"date_format": "mm/dd/yyyy", "time_format": "h:mm a", "calendar": True}),
        f(15, "Staff Hours", "timer", lambda i, r: timer(i)),
        f(16, "Manager", "name", lambda i, r: name(i), format={"format": "Last, First"}),
        f(17, "Email", "email", blank_every(10, lambda i, r: (
            f'<a href="mailto:facility{i + 1}@phila.gov">facility{i + 1}@phila.gov</a>',
            {"email": f"facility{i + 1}@phila.gov"}))),
        f(18, "Website", "link", lambda i, r: (
            f'<a href="https://www.phila.gov/facilities/{i + 1}">https://www.phila.gov/facilities/{i + 1}</a>',
            {"url": f"https://www.phila.gov/facilities/{i + 1}"})),
        f(19, "Phone", "phone", blank_every(10, lambda i, r: phone(i)), format={"format": "(###) ###-####"}),
        f(20, "Address", "address", address, format={"format": "US", "input": "address"}),
        f(21, "Location", "address", lat_long, format={"format": "lat_long", "input": "lat_long"}),
        f(22, "Site Plan", "file", blank_every(5, lambda i, r: file_value(i))),
        f(23, "Photo", "image", blank_every(5, lambda i, r: image_value(i)), format={"source": "upload"}),
        f(24, "Photo URL", "image", lambda i, r: (
            f'<img src="https://images.phila.gov/{i + 1}.jpg" />', f"https://images.phila.gov/{i + 1}.jpg"),
          format={"source": "url"}),
        f(25, "Signature", "signature", blank_every(5, lambda i, r: signature(i))),
        f(26, "Department", "connection", lambda i, r: connection(i),
          relationship={"object": "object_2", "has": "many", "belongs_to": "many"}),
        f(27, "Label", "concatenation", lambda i, r: same(f"{facility_name(i)} ({_STATUS[i % len(_STATUS)]})")),
        f(28, "Inspection Count", "count", lambda i, r: same(i % 12)),
        f(29, "Total Fees", "sum", lambda i, r: same(round(i * 3.25, 2))),
        f(30, "Average Score", "average", lambda i, r: (f"{(i % 100) / 10:.1f}", (i % 100) / 10)),
        f(31, "Lowest Score", "min", lambda i, r: same(i % 40)),
        f(32, "Highest Score", "max", lambda i, r: same(60 + i % 40)),
    ]


def _records(specs: list[_Spec], n_records: int, object_number: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records = []
    for i in range(n_records):
        record: dict[str, Any] = {"id": _object_id(seed, object_number, i)}
        for spec in specs:
            key = spec.field.key
            value = spec.make(i, rng)
            if value is None:
                record[key] = ""
                if spec.field.type == "connection":
                    record[f"{key}_raw"] = []  # connections keep an empty raw list; other types drop the key
            else:
                record[key], record[f"{key}_raw"] = value
        records.append(record)
    return records


def all_field_types_objects(n_records: int, *, seed: int = 0,
                            app_id: str = "5d79aaaaaaaaaaaaaaaaaaaa") -> list[KnackObject]:
    """Two objects: ``object_1`` "Facilities" with a field of every Knack type and ``n_records`` records,
    and ``object_2`` "Departments" (12 records) that its connection field points to. Deterministic."""
    dept_fields = [KnackField("field_40", "Department Name", "short_text", required=True),
                   KnackField("field_41", "Code", "short_text")]
    dept_specs = [_Spec(dept_fields[0], lambda i, r: (_DEPARTMENTS[i],) * 2),
                  _Spec(dept_fields[1], lambda i, r: (f"D{i + 1:02d}",) * 2)]
    departments = KnackObject("object_2", "Departments", dept_fields,
                              _records(dept_specs, len(_DEPARTMENTS), 2, seed), identifier="field_40")
    specs = _facility_specs(app_id, departments.records)
    facilities = KnackObject("object_1", "Facilities", [s.field for s in specs],
                             _records(specs, n_records, 1, seed), identifier="field_1")
    return [facilities, departments]


# --------------------------------------------------------------------------------------------- filters
def _display_text(record: dict[str, Any], key: str) -> str:
    return re.sub(r"<[^>]+>", " ", str(record.get(key, ""))).strip()


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, dict):
        value = value.get("unix_timestamp", json.dumps(value, sort_keys=True))
    if isinstance(value, list):
        value = ",".join(str(v.get("identifier", v) if isinstance(v, dict) else v) for v in value)
    if value is None or value == "":
        return (2, "")
    return (0, value) if isinstance(value, (int, float)) else (1, str(value).lower())


def _rule_matches(record: dict[str, Any], rule: dict[str, Any]) -> bool:
    key, operator = str(rule.get("field", "")), str(rule.get("operator", "")).lower()
    text, wanted = _display_text(record, key).lower(), str(rule.get("value", "")).lower()
    raw = record.get(f"{key}_raw")
    checks: dict[str, Callable[[], bool]] = {
        "is": lambda: text == wanted,
        "is not": lambda: text != wanted,
        "contains": lambda: wanted in text,
        "does not contain": lambda: wanted not in text,
        "starts with": lambda: text.startswith(wanted),
        "ends with": lambda: text.endswith(wanted),
        "is blank": lambda: text == "",
        "is not blank": lambda: text != "",
        "higher than": lambda: isinstance(raw, (int, float)) and raw > float(wanted),
        "lower than": lambda: isinstance(raw, (int, float)) and raw < float(wanted),
    }
    if operator not in checks:
        raise ValueError(f"unsupported filter operator {operator!r}")
    return checks[operator]()


def _parse_filters(text: str) -> tuple[str, list[dict[str, Any]]]:
    parsed = json.loads(text)
    if isinstance(parsed, list):
        return "and", parsed
    return str(parsed.get("match", "and")).lower(), list(parsed.get("rules", []))


# -------------------------------------------------------------------------------------------- emulator
def _errors(message: str, status: int) -> Response:
    return json_response({"errors": [{"message": message}]}, status=status)


def _int_arg(request: Request, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.args.get(name, default))
    except ValueError:
        return default
    return min(max(value, low), high)


class KnackEmulator(Emulator):
    """Knack object-based API. Seed with ``add_app``; see module docstring for the wire behaviour."""

    def __init__(self, *, rate_limit_per_second: int | None = 10, plan_limit: int | None = DEFAULT_PLAN_LIMIT,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.rate_limit_per_second = rate_limit_per_second
        self.default_plan_limit = plan_limit
        self.apps: dict[str, KnackApp] = {}
        self._routes: list[tuple[re.Pattern[str], Callable[..., Response]]] = [
            (re.compile(r"/v1/applications/(?P<app_id>[^/]+)"), self._get_application),
            (re.compile(r"/v1/objects/(?P<object_key>[^/]+)/fields"), self._object_call(self._get_fields)),
            (re.compile(r"/v1/objects/(?P<object_key>[^/]+)/records"), self._object_call(self._list_records)),
            (re.compile(r"/v1/objects/(?P<object_key>[^/]+)/records/(?P<record_id>[^/]+)"),
             self._object_call(self._get_record)),
        ]

    # -------------------------------------------------------------------------------------- seeding
    def add_app(self, app_id: str, api_key: str, timezone: str = "America/New_York",
                objects: Iterable[KnackObject] = (), *, name: str | None = None,
                plan_limit: int | None = _INHERIT) -> KnackApp:
        """Register an application. ``timezone`` is an IANA name; ``plan_limit=None`` disables the daily cap."""
        limit = self.default_plan_limit if plan_limit == _INHERIT else plan_limit
        window = SlidingWindow(self.rate_limit_per_second) if self.rate_limit_per_second else None
        app = KnackApp(app_id, api_key, timezone, name or f"Test App {app_id[-4:]}",
                       {obj.key: obj for obj in objects}, limit, window)
        with self._lock:
            self.apps[app_id] = app
        return app

    def seed_all_field_types(self, app_id: str, api_key: str, n_records: int, *, seed: int = 0,
                             timezone: str = "America/New_York") -> KnackApp:
        """Shortcut: ``add_app`` with ``all_field_types_objects(n_records)``."""
        objects = all_field_types_objects(n_records, seed=seed, app_id=app_id)
        return self.add_app(app_id, api_key, timezone, objects)

    def state(self) -> dict[str, Any]:
        return {"plan_used": {app_id: app.plan_used for app_id, app in self.apps.items()}}

    # -------------------------------------------------------------------------------------- routing
    def handle(self, request: Request) -> Response:
        path = request.path.rstrip("/")  # knackpy adds a trailing slash to record URLs
        for pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match:
                if request.method != "GET":
                    return _errors("Method not supported by the emulator", 405)
                return handler(request, **match.groupdict())
        return _errors("Route not found", 404)

    def _object_call(self, action: Callable[..., Response]) -> Callable[..., Response]:
        """Wrap an object-based endpoint: auth, then rate and plan limits, then the object lookup."""

        def call(request: Request, object_key: str, **kwargs: str) -> Response:
            app, error = self._authenticate(request)
            if error is not None:
                return error
            assert app is not None
            now = time.time()
            with self._lock:
                exceeded = self._consume_quota(app, now)
                headers = self._limit_headers(app, now)
            if exceeded:
                return text_response(RATE_LIMIT_MESSAGE, status=429, headers=headers)
            obj = app.objects.get(object_key)
            response = action(request, obj, **kwargs) if obj else _errors(f"Object {object_key} not found", 404)
            response.headers.extend(headers)
            return response

        return call

    def _authenticate(self, request: Request) -> tuple[KnackApp | None, Response | None]:
        app_id = request.headers.get("X-Knack-Application-Id", "")
        api_key = request.headers.get("X-Knack-REST-API-KEY", "")
        if not app_id:
            return None, _errors("An application ID is required (X-Knack-Application-Id)", 401)
        app = self.apps.get(app_id)
        if app is None:
            return None, _errors("Application not found", 404)
        if api_key != app.api_key:
            return None, _errors("Invalid API key", 401)
        return app, None

    # ------------------------------------------------------------------------------------- limits
    def _consume_quota(self, app: KnackApp, now: float) -> bool:
        """Count one object-based call; True when it must be refused with a 429."""
        today = datetime.fromtimestamp(now, timezone.utc).date()
        if today != app.plan_day:
            app.plan_day, app.plan_used = today, 0
        if app.plan_limit is not None and app.plan_used >= app.plan_limit:
            return True
        if app.window is not None and not app.window.try_acquire(now):
            return True
        app.plan_used += 1
        return False

    def _limit_headers(self, app: KnackApp | None, now: float, *, exhaust: str | None = None) -> dict[str, str]:
        headers: dict[str, str] = {}
        window = app.window if app else None
        limit = window.limit if window else (self.rate_limit_per_second or 10)
        remaining = window.remaining(now) if window else limit
        headers["X-RateLimit-Limit"] = str(limit)
        headers["X-RateLimit-Remaining"] = "0" if exhaust == "rate" else str(remaining)
        headers["X-RateLimit-Reset"] = str(math.ceil(window.resets_at(now) if window else now + 1))
        plan_limit = app.plan_limit if app else self.default_plan_limit
        if plan_limit is not None:
            used = app.plan_used if app else 0
            midnight = datetime.combine(datetime.fromtimestamp(now, timezone.utc).date() + timedelta(days=1),
                                        datetime.min.time(), timezone.utc)
            headers["X-PlanLimit-Limit"] = str(plan_limit)
            headers["X-PlanLimit-Remaining"] = "0" if exhaust == "plan" else str(max(0, plan_limit - used))
            headers["X-PlanLimit-Reset"] = str(int(midnight.timestamp()))
        return headers

    def rate_limit_response(self, request: Request, *, plan: bool = False, **options: Any) -> Response:
        """Injected 429: the per-second limit, or with ``plan=True`` the daily plan limit."""
        app = self.apps.get(request.headers.get("X-Knack-Application-Id", ""))
        with self._lock:
            headers = self._limit_headers(app, time.time(), exhaust="plan" if plan else "rate")
        return text_response(RATE_LIMIT_MESSAGE, status=429, headers=headers)

    # ----------------------------------------------------------------------------------- endpoints
    def _get_application(self, request: Request, app_id: str) -> Response:
        app = self.apps.get(app_id)
        if app is None:
            return _errors("Application not found", 404)
        return json_response({"application": _application_metadata(app)})

    def _get_fields(self, request: Request, obj: KnackObject) -> Response:
        fields = []
        for fld in obj.fields:
            entry: dict[str, Any] = {"key": fld.key, "label": fld.name, "type": fld.type,
                                     "required": fld.required, "unique": fld.unique}
            if fld.format is not None:
                entry["format"] = fld.format
            if fld.relationship is not None:
                entry["relationship"] = fld.relationship
            fields.append(entry)
        return json_response({"fields": fields})

    def _list_records(self, request: Request, obj: KnackObject) -> Response:
        rows_per_page = _int_arg(request, "rows_per_page", 25, 1, 1000)
        page = _int_arg(request, "page", 1, 1, 10**9)
        records = list(obj.records)  # a snapshot: tests may mutate obj.records between pages
        if request.args.get("filters"):
            try:
                match, rules = _parse_filters(request.args["filters"])
                combine = any if match == "or" else all
                records = [r for r in records if combine(_rule_matches(r, rule) for rule in rules)]
            except (ValueError, TypeError, AttributeError) as exc:
                return _errors(f"Invalid filters: {exc}", 400)
        sort_field = request.args.get("sort_field")
        if sort_field:
            records.sort(key=lambda r: _sort_key(r.get(f"{sort_field}_raw", r.get(sort_field))),
                         reverse=request.args.get("sort_order", "asc").lower() == "desc")
        start = (page - 1) * rows_per_page
        return json_response({
            "total_pages": math.ceil(len(records) / rows_per_page),
            "current_page": page,
            "total_records": len(records),
            "records": records[start:start + rows_per_page],
        })

    def _get_record(self, request: Request, obj: KnackObject, record_id: str) -> Response:
        for record in obj.records:
            if record["id"] == record_id:
                return json_response(record)
        return _errors("Record not found", 404)


def _application_metadata(app: KnackApp) -> dict[str, Any]:
    objects = []
    for obj in app.objects.values():
        fields = []
        for fld in obj.fields:
            entry: dict[str, Any] = {"key": fld.key, "name": fld.name, "type": fld.type, "required": fld.required,
                                     "unique": fld.unique, "object_key": obj.key, "rules": [], "validation": []}
            if fld.format is not None:
                entry["format"] = fld.format
            if fld.relationship is not None:
                entry["relationship"] = fld.relationship
            fields.append(entry)
        entry_obj: dict[str, Any] = {"key": obj.key, "name": obj.name, "type": "StandardObject",
                                     "inflections": {"singular": obj.name.rstrip("s"), "plural": obj.name},
                                     "sort": {"field": obj.identifier or "id", "order": "asc"}, "fields": fields}
        if obj.identifier:
            entry_obj["identifier"] = obj.identifier
        objects.append(entry_obj)
    scenes = [{"key": f"scene_{n}", "name": obj.name, "slug": obj.name.lower(),
               "views": [{"key": f"view_{n}", "name": f"{obj.name} table", "type": "table",
                          "source": {"object": obj.key},
                          "columns": [{"field": {"key": fld.key}, "header": fld.name} for fld in obj.fields]}]}
              for n, obj in enumerate(app.objects.values(), start=1)]
    return {
        "id": app.app_id,
        "name": app.name,
        "slug": app.slug,
        "account": {"id": f"{app.app_id[:20]}acct", "slug": f"{app.slug}-account", "name": f"{app.name} account"},
        "settings": {"timezone": KNACK_TIMEZONE_NAMES.get(app.timezone, app.timezone)},
        "counts": {"total_entries": sum(len(o.records) for o in app.objects.values()), "asset_size": 0,
                   "total_objects": len(app.objects)},
        "objects": objects,
        "scenes": scenes,
    }


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--app", default="5d79aaaaaaaaaaaaaaaaaaaa:knack-test-key", help="APP_ID:API_KEY")
    parser.add_argument("--records", type=int, default=100, help="records in the all-field-types object")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timezone", default="America/New_York")
    parser.add_argument("--rate-limit", type=int, default=10, help="requests/second per app; 0 disables")
    parser.add_argument("--plan-limit", type=int, default=DEFAULT_PLAN_LIMIT, help="daily calls; 0 disables")


def _build(args: argparse.Namespace) -> KnackEmulator:
    emulator = KnackEmulator(rate_limit_per_second=args.rate_limit or None, plan_limit=args.plan_limit or None,
                             host=args.host, port=args.port)
    app_id, _, api_key = args.app.partition(":")
    emulator.seed_all_field_types(app_id, api_key, args.records, seed=args.seed, timezone=args.timezone)
    return emulator


if __name__ == "__main__":
    run_cli("Knack API emulator", _build, _add_arguments)
