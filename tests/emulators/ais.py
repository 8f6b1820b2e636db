"""Philadelphia AIS ``/search`` emulator and US Census batch geocoder emulator (reference/external-apis.md §4).

AIS (``AISEmulator``):

* ``GET [/ais/v1]/search/<query>``; key as ``?gatekeeperKey=`` or ``Authorization: Gatekeeper-Key <key>``
  (missing or wrong → 401, as the API gateway answers).
* 200: a paginated GeoJSON FeatureCollection with the top-level keys in AIS order (``search_type``,
  ``search_params``, ``query``, ``normalized``, ``crs``, ``page``, ``page_count``, ``page_size``,
  ``total_size``, ``type``, ``features``), ≤ 100 features per page, several features for ties, intersections,
  and ``match_type: "unmatched"`` estimates (still 200) for an unknown number on a known street.
* ``srid`` (4326 default; 2272 PA South ftUS via a real Lambert conformal conic projection; 3857), echoed
  in ``crs.properties.href``; ``opa_only``, ``estimate=false``, ``include_units``, ``max_range``, ``page``.
* No match → 404 ``{status, error, message, details: {query, normalized, search_type, search_params}}``;
  the 80-character query limit; ``;`` truncation.
* ``calls()`` / ``call_count(query)``: requests per normalized query, so tests can assert cache hits.

Census (``CensusGeocoderEmulator``): ``POST /geocoder/{locations|geographies}/addressbatch`` with a multipart
``addressFile`` (headerless CSV ``id,street,city,state,zip``, ≤ 10,000 rows), ``benchmark`` (and ``vintage``
for geographies); replies ``text/plain`` CSV, every field quoted, rows not in input order, ``Match`` /
``No_Match`` / ``Tie``, with ``"lon,lat"`` in one field.

Addresses are normalized with a small passyunk-like normalizer (upper case, suffix and direction
abbreviations, trailing city/state/zip dropped); the real parser knows far more forms.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import math
import random
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.emulators.base import Emulator, json_response, run_cli, text_response

MAX_FEATURES_PER_PAGE = 100
QUERY_CHARACTER_LIMIT = 80
SUPPORTED_SRIDS = (4326, 2272, 3857)

# --------------------------------------------------------------------------------------- normalization
_SUFFIXES = {"STREET": "ST", "AVENUE": "AVE", "BOULEVARD": "BLVD", "ROAD": "RD", "DRIVE": "DR", "LANE": "LN",
             "PLACE": "PL", "TERRACE": "TER", "PARKWAY": "PKWY", "COURT": "CT", "SQUARE": "SQ", "HIGHWAY": "HWY",
             "WAY": "WAY", "PIKE": "PIKE", "WALK": "WALK", "ALLEY": "ALY", "CIRCLE": "CIR"}
_SUFFIX_SET = set(_SUFFIXES.values())
_DIRECTIONS = {"NORTH": "N", "SOUTH": "S", "EAST": "E", "WEST": "W"}
_TRAILING_NOISE = {"PHILADELPHIA", "PHILA", "PA", "PENNSYLVANIA", "USA"}
_INTERSECTION = re.compile(r"\s+(?:AND|&|AT)\s+|\s*&\s*|\s*/\s*")


def _normalize_street(text: str) -> str:
    tokens = [t for t in re.sub(r"[.,]", " ", text.upper()).split()]
    while tokens and (tokens[-1] in _TRAILING_NOISE or re.fullmatch(r"\d{5}(-\d{4})?", tokens[-1])):
        tokens.pop()
    return " ".join(_DIRECTIONS.get(t, _SUFFIXES.get(t, t)) for t in tokens)


def parse_query(query: str) -> tuple[str, str]:
    """``(search_type, normalized)`` for a query; search_type is "address", "intersection_addr" or "none"."""
    query = query.split(";", 1)[0].strip()  # AIS ignores everything after ';' (batch queries are deprecated)
    sides = [s for s in _INTERSECTION.split(query.upper()) if s.strip()]
    if len(sides) == 2 and not re.match(r"\d", sides[0]):
        return "intersection_addr", " & ".join(_normalize_street(s) for s in sides)
    normalized = _normalize_street(query)
    if re.fullmatch(r"\d+[A-Z]?(-\d+)? .+", normalized):
        return "address", normalized
    return "none", normalized


def normalize_query(query: str) -> str:
    """The key the emulator files and counts queries under (intersections: streets in sorted order)."""
    search_type, normalized = parse_query(query)
    if search_type == "intersection_addr":
        # Order-insensitive and suffix-insensitive, as passyunk fills in a missing "ST".
        sides = [re.sub(rf" ({'|'.join(_SUFFIX_SET)})$", "", side) for side in normalized.split(" & ")]
        return " & ".join(sorted(sides))
    return normalized


def _synthetic_point(text: str) -> tuple[float, float]:
    """A stable lon/lat inside Philadelphia for any string (for seeding arbitrary address lists)."""
    digest = hashlib.sha1(text.encode()).digest()
    return (-75.25 + digest[0] / 255 * 0.2 + digest[1] / 255e3, 39.90 + digest[2] / 255 * 0.15 + digest[3] / 255e3)


# ---------------------------------------------------------------------------------------- projections
_US_FOOT = 1200 / 3937


def _lcc_pa_south(lon: float, lat: float) -> tuple[float, float]:
    """EPSG:2272 (NAD83 / Pennsylvania South, US feet): Lambert conformal conic, two standard parallels.

    NAD83 and WGS84 are treated as identical, as PostGIS does without a datum grid."""
    a, f = 6378137.0, 1 / 298.257222101
    e = math.sqrt(2 * f - f * f)
    phi1, phi2, phi0 = map(math.radians, (40 + 58 / 60, 39 + 56 / 60, 39 + 20 / 60))
    lam0, x0 = math.radians(-77.75), 600000.0

    def m(phi: float) -> float:
        return math.cos(phi) / math.sqrt(1 - (e * math.sin(phi)) ** 2)

    def t(phi: float) -> float:
        s = e * math.sin(phi)
        return math.tan(math.pi / 4 - phi / 2) / ((1 - s) / (1 + s)) ** (e / 2)

    n = (math.log(m(phi1)) - math.log(m(phi2))) / (math.log(t(phi1)) - math.log(t(phi2)))
    big_f = m(phi1) / (n * t(phi1) ** n)
    rho0, rho = a * big_f * t(phi0) ** n, a * big_f * t(math.radians(lat)) ** n
    theta = n * (math.radians(lon) - lam0)
    return (x0 + rho * math.sin(theta)) / _US_FOOT, (rho0 - rho * math.cos(theta)) / _US_FOOT


def _web_mercator(lon: float, lat: float) -> tuple[float, float]:
    r = 6378137.0
    return r * math.radians(lon), r * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))


def project(lon: float | None, lat: float | None, srid: int) -> list[float | None]:
    """Coordinates of a stored 4326 point in the requested SRID (``[None, None]`` stays as is)."""
    if lon is None or lat is None:
        return [None, None]
    if srid == 2272:
        return list(_lcc_pa_south(lon, lat))
    if srid == 3857:
        return list(_web_mercator(lon, lat))
    return [lon, lat]


# --------------------------------------------------------------------------------------------- features
_SERVICE_AREAS = [
    "census_tract_2010", "census_block_group_2010", "census_block_2010", "census_tract_2020",
    "census_block_group_2020", "census_block_2020", "council_district_2016", "council_district_2024",
    "political_ward", "political_division", "state_house_rep_2022", "state_senate_2022",
    "us_congressional_2022", "planning_district", "elementary_school", "middle_school", "high_school",
    "zoning", "zoning_rco", "commercial_corridor", "police_division", "police_district", "police_service_area",
    "rubbish_recycle_day", "recycling_diversion_rate", "leaf_collection_area", "sanitation_area",
    "sanitation_district", "sanitation_convenience_center", "clean_philly_block_captain", "historic_street",
    "highway_district", "highway_section", "highway_subsection", "traffic_district", "traffic_pm_district",
    "street_light_route", "lane_closure", "pwd_maint_district", "pwd_pressure_district", "pwd_treatment_plant",
    "pwd_water_plate", "pwd_center_city_district", "major_phila_watershed", "neighborhood_advisory_committee",
]


def _split_address(normalized: str) -> dict[str, Any]:
    tokens = normalized.split()
    low = re.match(r"(\d+)([A-Z]?)", tokens[0])
    rest = tokens[1:]
    predir = rest.pop(0) if len(rest) > 1 and rest[0] in _DIRECTIONS.values() else ""
    postdir = rest.pop() if len(rest) > 1 and rest[-1] in _DIRECTIONS.values() else ""
    suffix = rest.pop() if len(rest) > 1 and rest[-1] in _SUFFIX_SET else ""
    return {"address_low": int(low.group(1)) if low else None, "address_low_suffix": low.group(2) if low else "",
            "street_predir": predir, "street_name": " ".join(rest), "street_suffix": suffix,
            "street_postdir": postdir}


def _street_full(parts: dict[str, Any]) -> str:
    return " ".join(p for p in (parts["street_predir"], parts["street_name"], parts["street_suffix"],
                                parts["street_postdir"]) if p)


def address_properties(normalized: str, zip_code: str = "19107", opa_account_num: str | None = None,
                       **overrides: Any) -> dict[str, Any]:
    """The properties block of an AIS address feature, with every documented key present."""
    parts = _split_address(normalized)
    seed = int(hashlib.sha1(normalized.encode()).hexdigest()[:8], 16)
    opa = opa_account_num if opa_account_num is not None else f"{881000000 + seed % 99999999:09d}"
    props: dict[str, Any] = {
        "street_address": normalized, "address_low": parts["address_low"],
        "address_low_suffix": parts["address_low_suffix"], "address_low_frac": "", "address_high": None,
        "street_predir": parts["street_predir"], "street_name": parts["street_name"],
        "street_suffix": parts["street_suffix"], "street_postdir": parts["street_postdir"], "unit_type": None,
        "unit_num": None, "floor": None, "street_full": _street_full(parts), "street_code": 10000 + seed % 90000,
        "seg_id": 400000 + seed % 100000, "zip_code": zip_code, "zip_4": f"{seed % 10000:04d}",
        "usps_bldgfirm": "", "usps_type": "S", "election_block_id": str(seed % 99999),
        "election_precinct": f"{seed % 66 + 1:02d}{seed % 30 + 1:02d}", "pwd_parcel_id": str(seed % 600000),
        "dor_parcel_id": f"{seed % 200:03d}N{seed % 30:02d}{seed % 400:04d}", "li_address_key": str(seed % 900000),
        "eclipse_location_id": str(seed % 800000), "bin": str(seed % 700000), "li_parcel_id": str(seed % 600000),
        "zoning_document_ids": [], "pwd_account_nums": [str(seed % 9000000)], "opa_account_num": opa,
        "opa_owners": ["CITY OF PHILADELPHIA"] if opa else [], "opa_address": normalized if opa else "",
    }
    props["base_address"] = f"{parts['address_low']} {props['street_full']}"
    for k, area in enumerate(_SERVICE_AREAS):
        props[area] = str((seed >> (k % 16)) % 97 + 1)
    props.update(overrides)
    return props


def address_feature(normalized: str, lon: float | None, lat: float | None, *, match_type: str = "exact",
                    geocode_type: str = "pwd_parcel", properties: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "Feature", "ais_feature_type": "address", "match_type": match_type,
            "properties": properties if properties is not None else address_properties(normalized),
            "geometry": {"geocode_type": geocode_type, "type": "Point", "coordinates": [lon, lat]}}


def _street_object(street: str) -> dict[str, Any]:
    parts = _split_address("0 " + street)
    seed = int(hashlib.sha1(street.encode()).hexdigest()[:6], 16)
    return {"street_code": 10000 + seed % 90000, "street_full": _street_full(parts),
            "street_name": parts["street_name"], "street_predir": parts["street_predir"],
            "street_postdir": parts["street_postdir"], "street_suffix": parts["street_suffix"]}


def _json_error(status: int, message: str, details: dict[str, Any]) -> Response:
    """AIS's Flask error body (ais/api/errors.py ``json_error``)."""
    names = {401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}
    return json_response({"status": status, "error": names.get(status, "Error"), "message": message,
                          "details": details}, status=status)


def _flag(args: Any, name: str) -> bool:
    """AIS flags: present without a value means on; any value other than "false" is on."""
    return name in args and str(args.get(name, "")).lower() != "false"


# ----------------------------------------------------------------------------------------------- AIS
@dataclass(frozen=True)
class PhillyPlace:
    address: str
    zip_code: str
    lon: float
    lat: float


# Approximate locations of well-known addresses; enough for a realistic default gazetteer.
DEFAULT_PLACES = (
    PhillyPlace("1401 John F Kennedy Blvd", "19102", -75.16379, 39.95352),
    PhillyPlace("1234 Market St", "19107", -75.16047, 39.95142),
    PhillyPlace("1500 Market St", "19102", -75.16593, 39.95225),
    PhillyPlace("700 Arch St", "19106", -75.15088, 39.95265),
    PhillyPlace("2600 Benjamin Franklin Pkwy", "19130", -75.18096, 39.96558),
    PhillyPlace("3400 Civic Center Blvd", "19104", -75.19424, 39.94813),
    PhillyPlace("400 N Broad St", "19130", -75.16226, 39.96047),
    PhillyPlace("1 Citizens Bank Way", "19148", -75.16618, 39.90607),
    PhillyPlace("5000 Parkside Ave", "19131", -75.21528, 39.97710),
    PhillyPlace("2100 E Susquehanna Ave", "19125", -75.12921, 39.97628),
)


class AISEmulator(Emulator):
    """AIS ``/search``. ``key=None`` disables the key check; ``estimate_unknown`` makes an unknown number on
    a known street return a 200 ``unmatched`` estimate, as AIS's street-segment cascade does."""

    def __init__(self, key: str | None = "ais-test-key", *, default_gazetteer: bool = True,
                 estimate_unknown: bool = True, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.key = key
        self.estimate_unknown = estimate_unknown
        self.gazetteer: dict[str, list[dict[str, Any]]] = {}
        if default_gazetteer:
            self._seed_defaults()

    # -------------------------------------------------------------------------------------- seeding
    def add_address(self, address: str, lon: float | None, lat: float | None, *, zip_code: str = "19107",
                    match_type: str = "exact", geocode_type: str = "pwd_parcel", opa_account_num: str | None = None,
                    **properties: Any) -> dict[str, Any]:
        """Add an address feature; calling it twice for one address makes a multi-feature (tie) answer."""
        normalized = parse_query(address)[1]
        props = address_properties(normalized, zip_code, opa_account_num, **properties)
        feature = address_feature(normalized, lon, lat, match_type=match_type, geocode_type=geocode_type,
                                  properties=props)
        return self.add_feature(address, feature)

    def add_unmatched(self, address: str, lon: float, lat: float, *, zip_code: str = "19107",
                      geocode_type: str = "true_range") -> dict[str, Any]:
        """An address AIS does not know but can place on its street segment (200, ``match_type: unmatched``)."""
        normalized = parse_query(address)[1]
        props = address_properties(normalized, zip_code, "", pwd_parcel_id=None, dor_parcel_id=None,
                                   li_address_key=None, pwd_account_nums=None)
        feature = address_feature(normalized, lon, lat, match_type="unmatched", geocode_type=geocode_type,
                                  properties=props)
        return self.add_feature(address, feature)

    def add_intersection(self, street_1: str, street_2: str, lon: float, lat: float) -> dict[str, Any]:
        s1, s2 = _normalize_street(street_1), _normalize_street(street_2)
        seed = int(hashlib.sha1(f"{s1}&{s2}".encode()).hexdigest()[:6], 16)
        feature = {"type": "Feature", "ais_feature_type": "intersection", "match_type": "exact",
                   "street_address": f"{s1} & {s2}",
                   "properties": {"int_id": 20000 + seed % 80000, "street_1": _street_object(s1),
                                  "street_2": _street_object(s2)},
                   "geometry": {"geocode_type": "intersection", "type": "Point", "coordinates": [lon, lat]}}
        return self.add_feature(f"{s1} & {s2}", feature)

    def add_feature(self, query: str, feature: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.gazetteer.setdefault(normalize_query(query), []).append(feature)
        return feature

    def add_synthetic(self, addresses: Iterable[str]) -> None:
        """Register exact matches at stable made-up points for every parseable address given."""
        for address in addresses:
            if parse_query(address)[0] == "address" and normalize_query(address) not in self.gazetteer:
                self.add_address(address, *_synthetic_point(normalize_query(address)))

    def _seed_defaults(self) -> None:
        for place in DEFAULT_PLACES:
            self.add_address(place.address, place.lon, place.lat, zip_code=place.zip_code)
        # "440 Broad St" is AIS's classic ambiguous query: North and South Broad both have a 440.
        self.add_address("440 N Broad St", -75.16232, 39.96132, zip_code="19130")
        self.add_address("440 S Broad St", -75.16490, 39.94407, zip_code="19146")
        for side in ("440 N Broad St", "440 S Broad St"):
            for feature in self.gazetteer[normalize_query(side)]:
                self.add_feature("440 Broad St", feature)
        self.add_address("1300 Market St", None, None, geocode_type="pwd_parcel")  # a match with no geometry
        self.add_intersection("N 12th St", "Market St", -75.16008, 39.95178)

    # ----------------------------------------------------------------------------------- counters
    def calls(self) -> Counter[str]:
        """Number of ``/search`` requests per normalized query (faulted requests included)."""
        with self._lock:
            paths = [r.path for r in self.requests if "/search/" in r.path]
        return Counter(normalize_query(p.split("/search/", 1)[1]) for p in paths)

    def call_count(self, query: str) -> int:
        return self.calls()[normalize_query(query)]

    def state(self) -> dict[str, Any]:
        return {"calls": dict(self.calls())}

    # ---------------------------------------------------------------------------------- responses
    def rate_limit_response(self, request: Request, *, retry_after: int = 1, **options: Any) -> Response:
        response = _json_error(429, "Rate limit exceeded", {})
        response.headers["Retry-After"] = str(retry_after)
        return response

    def server_error_response(self, status: int, request: Request) -> Response:
        if status == 500:
            return _json_error(500, "The server encountered an internal error and was unable to complete your "
                                    "request.", {})
        return super().server_error_response(status, request)

    def handle(self, request: Request) -> Response:
        if "/search/" not in request.path or request.method != "GET":
            return _json_error(404, "The requested URL was not found on the server.", {})
        supplied = request.args.get("gatekeeperKey")
        header = request.headers.get("Authorization", "")
        if header.startswith("Gatekeeper-Key "):
            supplied = header[len("Gatekeeper-Key "):].strip()
        if self.key is not None and supplied != self.key:
            return _json_error(401, "Invalid API key", {})
        query = request.path.split("/search/", 1)[1].split(";", 1)[0].strip("/")
        return self._search(request, query)

    def _search(self, request: Request, query: str) -> Response:
        params = {k: v for k, v in request.args.items() if k != "gatekeeperKey"}
        search_type, normalized = parse_query(query)
        details = {"query": query, "normalized": normalized, "search_type": search_type, "search_params": params}
        if len(query) + sum(len(name) for name in request.args) >= QUERY_CHARACTER_LIMIT:
            return _json_error(404, "Query exceeds character limit.", {"query": query})
        if search_type == "none":
            return _json_error(404, "Query not recognized.", {"query": query})
        features = list(self.gazetteer.get(normalize_query(query), []))
        if not features and search_type == "address" and self.estimate_unknown:
            features = self._estimate(normalized)
        if not features:
            return _json_error(404, "Could not find any addresses matching query.", details)
        if _flag(request.args, "opa_only"):
            features = [f for f in features if f.get("properties", {}).get("opa_account_num")]
            if not features:
                return _json_error(404, "Could not find any opa addresses matching the query.", details)
        if all(f["match_type"] == "unmatched" for f in features) and \
                str(request.args.get("estimate", "")).lower() == "false":
            return _json_error(404, "Could not find any known addresses matching the query.", details)
        try:
            srid = int(request.args.get("srid", 4326))
            page = int(request.args.get("page", 1))
        except ValueError:
            return _json_error(404, "Invalid query.", details)
        if srid not in SUPPORTED_SRIDS:
            return _json_error(404, "Invalid query.", details)
        page_count = max(1, math.ceil(len(features) / MAX_FEATURES_PER_PAGE))
        if not 1 <= page <= page_count:
            return _json_error(404, "Invalid page.", details)
        shown = features[(page - 1) * MAX_FEATURES_PER_PAGE:page * MAX_FEATURES_PER_PAGE]
        response = json_response({
            "search_type": search_type,
            "search_params": params,
            "query": query,
            "normalized": normalized,
            "crs": {"type": "link", "properties": {
                "type": "proj4", "href": f"http://spatialreference.org/ref/epsg/{srid}/proj4/"}},
            "page": page,
            "page_count": page_count,
            "page_size": len(shown),
            "total_size": len(features),
            "type": "FeatureCollection",
            "features": [self._in_srid(f, srid) for f in shown],
        })
        response.headers["Cache-Control"] = "max-age=3600"  # AIS's @cache_for(hours=1)
        return response

    @staticmethod
    def _in_srid(feature: dict[str, Any], srid: int) -> dict[str, Any]:
        lon, lat = feature["geometry"]["coordinates"]
        return {**feature, "geometry": {**feature["geometry"], "coordinates": project(lon, lat, srid)}}

    def _estimate(self, normalized: str) -> list[dict[str, Any]]:
        """AIS's street-segment cascade, approximated: place the number near a known address on the street."""
        wanted = _split_address(normalized)
        street = _street_full(wanted)
        known = [(f, _split_address(key)) for key, fs in self.gazetteer.items() for f in fs
                 if f["ais_feature_type"] == "address" and f["geometry"]["coordinates"][0] is not None
                 and " & " not in key and _street_full(_split_address(key)) == street]
        if not known or wanted["address_low"] is None:
            return []
        feature, parts = min(known, key=lambda fp: abs((fp[1]["address_low"] or 0) - wanted["address_low"]))
        lon, lat = feature["geometry"]["coordinates"]
        shift = ((wanted["address_low"] - (parts["address_low"] or 0)) % 100) * 1e-5  # ~1 m per house number
        props = address_properties(normalized, feature["properties"].get("zip_code", ""), "",
                                   pwd_parcel_id=None, dor_parcel_id=None, li_address_key=None,
                                   pwd_account_nums=None)
        return [address_feature(normalized, lon + shift, lat, match_type="unmatched", geocode_type="full_range",
                                properties=props)]


# -------------------------------------------------------------------------------------------- Census
MAX_BATCH_ROWS = 10_000
CENSUS_BENCHMARKS = frozenset({"Public_AR_Current", "Public_AR_ACS2025", "Public_AR_Census2020", "4", "8", "2020"})
CENSUS_VINTAGES = frozenset({"Current_Current", "Census2020_Current", "ACS2025_Current", "Census2020_Census2020"})


@dataclass(frozen=True)
class CensusMatch:
    lon: float
    lat: float
    matched_address: str
    exact: bool = True
    tiger_line_id: str = "131432218"
    side: str = "L"
    state_fips: str = "42"
    county_fips: str = "101"
    tract: str = "000500"
    block: str = "1001"


TIE = "Tie"


def _census_key(street: str, zip_code: str) -> tuple[str, str]:
    return _normalize_street(street), zip_code.strip()[:5]


class CensusGeocoderEmulator(Emulator):
    """US Census batch geocoder. ``seed`` drives the (deliberately shuffled) output row order."""

    def __init__(self, *, default_gazetteer: bool = True, seed: int = 0, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        super().__init__(host, port)
        self.seed = seed
        self.gazetteer: dict[tuple[str, str], CensusMatch | str] = {}
        self.batches: list[int] = []  # rows per accepted batch, in arrival order
        if default_gazetteer:
            for place in DEFAULT_PLACES:
                self.add_match(place.address, "Philadelphia", "PA", place.zip_code, place.lon, place.lat)
            self.add_tie("440 Broad St", "Philadelphia", "PA", "")

    def add_match(self, street: str, city: str, state: str, zip_code: str, lon: float, lat: float, *,
                  exact: bool = True, matched_address: str | None = None, **geography: str) -> CensusMatch:
        matched = matched_address or f"{_normalize_street(street)}, {city.upper()}, {state.upper()}, {zip_code}"
        match = CensusMatch(lon, lat, matched, exact, **geography)
        with self._lock:
            self.gazetteer[_census_key(street, zip_code)] = match
        return match

    def add_tie(self, street: str, city: str, state: str, zip_code: str) -> None:
        with self._lock:
            self.gazetteer[_census_key(street, zip_code)] = TIE

    def state(self) -> dict[str, Any]:
        return {"batches": list(self.batches)}

    def _lookup(self, street: str, zip_code: str) -> CensusMatch | str | None:
        found = self.gazetteer.get(_census_key(street, zip_code))
        if found is None and not zip_code.strip():  # no zip given: any entry for that street
            found = next((v for (s, _), v in self.gazetteer.items() if s == _normalize_street(street)), None)
        return found

    def handle(self, request: Request) -> Response:
        match = re.fullmatch(r"/geocoder/(locations|geographies)/addressbatch/?", request.path)
        if match is None or request.method != "POST":
            return text_response("Not Found", status=404)
        with_geographies = match.group(1) == "geographies"
        upload = request.files.get("addressFile")
        benchmark = request.form.get("benchmark", "")
        if upload is None:
            return text_response("Error: addressFile is required", status=400)
        if benchmark not in CENSUS_BENCHMARKS:
            return text_response(f"Error: invalid benchmark '{benchmark}'", status=400)
        if with_geographies and request.form.get("vintage", "") not in CENSUS_VINTAGES:
            return text_response("Error: invalid vintage", status=400)
        text = upload.read().decode("utf-8", "replace")
        rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
        if len(rows) > MAX_BATCH_ROWS:
            return text_response(f"Error: the file exceeds the {MAX_BATCH_ROWS} record limit", status=400)
        with self._lock:
            self.batches.append(len(rows))
        return self._reply([self._result(row, with_geographies) for row in rows])

    def _result(self, row: list[str], with_geographies: bool) -> list[str]:
        row_id, street, city, state, zip_code = (row + [""] * 5)[:5]  # short rows are padded with blanks
        echoed = ", ".join(part.strip() for part in (street, city, state, zip_code))
        found = self._lookup(street, zip_code)
        if found is None:
            return [row_id, echoed, "No_Match"]
        if found == TIE:
            return [row_id, echoed, "Tie"]
        assert isinstance(found, CensusMatch)
        result = [row_id, echoed, "Match", "Exact" if found.exact else "Non_Exact", found.matched_address,
                  f"{found.lon:.6f},{found.lat:.6f}", found.tiger_line_id, found.side]
        if with_geographies:
            result += [found.state_fips, found.county_fips, found.tract, found.block]
        return result

    def _reply(self, results: list[list[str]]) -> Response:
        shuffled = list(results)
        random.Random(self.seed).shuffle(shuffled)
        if len(shuffled) > 1 and shuffled == results:
            shuffled.reverse()  # the real service never promises input order; make sure tests notice
        out = io.StringIO()
        csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(shuffled)
        return Response(out.getvalue(), status=200, content_type="text/plain;charset=utf-8",
                        headers={"Content-Disposition": "attachment; filename=GeocodeResults.csv"})


# ---------------------------------------------------------------------------------------------- CLIs
def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--service", choices=("ais", "census"), default="ais")
    parser.add_argument("--key", default="ais-test-key", help="AIS gatekeeper key; empty disables the check")
    parser.add_argument("--synthetic", nargs="*", default=[], help="extra AIS addresses to match exactly")


def _build(args: argparse.Namespace) -> Emulator:
    if args.service == "census":
        return CensusGeocoderEmulator(host=args.host, port=args.port)
    emulator = AISEmulator(args.key or None, host=args.host, port=args.port)
    emulator.add_synthetic(args.synthetic)
    return emulator


if __name__ == "__main__":
    run_cli("AIS (or, with --service census, Census batch geocoder) emulator", _build, _add_arguments)
