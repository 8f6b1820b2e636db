"""Tests of the source-side emulators (Knack, Airtable, AIS, Census, Slack) over real loopback HTTP.

pyairtable drives the Airtable emulator, as the project's client will; requests drives the others.
"""
from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
import requests
from pyairtable import Api

from tests.emulators.airtable import (READ_RECORDS, AirtableEmulator, AirtableTable, all_cell_types_tables,
                                      service_address)
from tests.emulators.ais import AISEmulator, CensusGeocoderEmulator, address_feature, normalize_query
from tests.emulators.base import FAULTS
from tests.emulators.knack import KnackEmulator, KnackObject, all_field_types_objects
from tests.emulators.slack import DEFAULT_WEBHOOK_PATH, ERROR_STATUS, SlackEmulator

REPO_ROOT = Path(__file__).resolve().parents[1]
APP_ID, KNACK_KEY = "5d79aaaaaaaaaaaaaaaaaaaa", "knack-key"
BASE_ID, PAT = "appTestBase000001", "patTestToken.secret"
AIS_KEY = "ais-test-key"


# =============================================================================================== fixtures
@pytest.fixture(scope="module")
def knack_objects() -> list[KnackObject]:
    return all_field_types_objects(2500)


@pytest.fixture()
def knack(knack_objects: list[KnackObject]) -> Iterator[KnackEmulator]:
    """Knack without the per-second limit, so pagination tests are not throttled."""
    with KnackEmulator(rate_limit_per_second=None) as emu:
        emu.add_app(APP_ID, KNACK_KEY, "America/New_York", knack_objects)
        yield emu


def knack_get(emu: KnackEmulator, path: str, key: str = KNACK_KEY, **params: Any) -> requests.Response:
    headers = {"X-Knack-Application-Id": APP_ID, "X-Knack-REST-API-KEY": key}
    return requests.get(f"{emu.url}{path}", headers=headers, params=params, timeout=10)


@pytest.fixture(scope="module")
def airtable_tables() -> dict[str, AirtableTable]:
    return all_cell_types_tables(2500)


@pytest.fixture()
def airtable(airtable_tables: dict[str, AirtableTable]) -> Iterator[AirtableEmulator]:
    with AirtableEmulator(rate_limit_per_second=None) as emu:
        emu.add_base(BASE_ID, PAT, airtable_tables)
        yield emu


def at_api(emu: AirtableEmulator, token: str = PAT, **kwargs: Any) -> Api:
    return Api(token, endpoint_url=emu.url, timeout=(5, 10), **kwargs)


@pytest.fixture()
def ais() -> Iterator[AISEmulator]:
    with AISEmulator(AIS_KEY) as emu:
        yield emu


def ais_search(emu: AISEmulator, query: str, **params: Any) -> requests.Response:
    return requests.get(f"{emu.url}/search/{query}", params={"gatekeeperKey": AIS_KEY, **params}, timeout=10)


@pytest.fixture()
def slack() -> Iterator[SlackEmulator]:
    with SlackEmulator() as emu:
        yield emu


# ================================================================================== base: fault injection
@pytest.mark.parametrize("status", [500, 502, 503])
def test_http_5xx_faults_answer_once_then_recover(ais: AISEmulator, status: int) -> None:
    ais.inject(f"http_{status}")
    assert ais_search(ais, "1234 Market St").status_code == status
    assert ais_search(ais, "1234 Market St").status_code == 200
    assert [r.fault for r in ais.requests] == [f"http_{status}", None]


def test_500_fault_uses_each_service_error_shape(ais: AISEmulator, slack: SlackEmulator) -> None:
    ais.inject("http_500")
    body = ais_search(ais, "1234 Market St").json()
    assert body["status"] == 500 and body["error"] == "Internal Server Error"
    slack.inject("http_500")
    response = requests.post(slack.webhook_url, json={"text": "x"}, timeout=5)
    assert (response.status_code, response.text) == (500, "rollup_error")


def test_reset_fault_drops_the_connection_without_a_response(ais: AISEmulator) -> None:
    ais.inject("reset")
    with pytest.raises(requests.ConnectionError):
        ais_search(ais, "1234 Market St")
    assert ais_search(ais, "1234 Market St").status_code == 200


def test_slow_fault_delays_then_answers_normally(ais: AISEmulator) -> None:
    ais.inject("slow", seconds=0.4)
    started = time.monotonic()
    assert ais_search(ais, "1234 Market St").status_code == 200
    assert time.monotonic() - started >= 0.4
    ais.inject("slow", seconds=1.0)
    with pytest.raises(requests.Timeout):
        requests.get(f"{ais.url}/search/1234 Market St", params={"gatekeeperKey": AIS_KEY}, timeout=0.2)


def test_truncated_json_fault_keeps_status_and_cuts_the_body(ais: AISEmulator) -> None:
    ais.inject("truncated_json")
    response = ais_search(ais, "1234 Market St")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    ais.inject("truncated_json", short_read=True)  # declared length > bytes sent: an incomplete read
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        ais_search(ais, "1234 Market St")


def test_malformed_json_fault(ais: AISEmulator) -> None:
    ais.inject("malformed_json")
    response = ais_search(ais, "1234 Market St")
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)


def test_fault_match_times_and_persistence(ais: AISEmulator) -> None:
    ais.inject("http_503", times=2, match="Arch")
    assert ais_search(ais, "1234 Market St").status_code == 200  # path does not match: untouched
    assert [ais_search(ais, "700 Arch St").status_code for _ in range(3)] == [503, 503, 200]
    ais.inject("http_502", times=None)
    assert {ais_search(ais, "700 Arch St").status_code for _ in range(3)} == {502}
    ais.clear_faults()
    assert ais_search(ais, "700 Arch St").status_code == 200
    with pytest.raises(ValueError):
        ais.inject("teapot")
    assert "rate_limit" in FAULTS


def test_admin_endpoints_inject_faults_and_report_state(ais: AISEmulator) -> None:
    requests.post(f"{ais.url}/__emulator__/faults", json={"fault": "http_503", "times": 1}, timeout=5)
    assert ais_search(ais, "1234 Market St").status_code == 503
    assert ais_search(ais, "1234 Market St").status_code == 200
    state = requests.get(f"{ais.url}/__emulator__/state", timeout=5).json()
    assert [r["fault"] for r in state["requests"]] == ["http_503", None]  # admin calls are not logged
    assert state["calls"] == {"1234 MARKET ST": 2}


# ===================================================================================================== Knack
def test_knack_generator_is_fast_and_deterministic() -> None:
    started = time.monotonic()
    first = all_field_types_objects(3000)
    assert time.monotonic() - started < 3
    assert first[0].records[:50] == all_field_types_objects(50)[0].records
    assert len({r["id"] for r in first[0].records}) == 3000


@pytest.mark.parametrize(("n_records", "rows_per_page", "pages"), [(2000, 1000, 2), (2500, 1000, 3), (2000, 500, 4)])
def test_knack_pagination_ends_at_exact_multiples(n_records: int, rows_per_page: int, pages: int) -> None:
    with KnackEmulator(rate_limit_per_second=None) as emu:
        emu.seed_all_field_types(APP_ID, KNACK_KEY, n_records)
        seen: list[str] = []
        for page in range(1, pages + 2):
            body = knack_get(emu, "/v1/objects/object_1/records", page=page, rows_per_page=rows_per_page).json()
            assert list(body) == ["total_pages", "current_page", "total_records", "records"]
            assert (body["total_pages"], body["current_page"], body["total_records"]) == (pages, page, n_records)
            seen += [r["id"] for r in body["records"]]
            if page == pages + 1:
                assert body["records"] == []  # past the end: an empty page, which clients stop on
        assert len(seen) == len(set(seen)) == n_records


def test_knack_defaults_clamp_and_trailing_slash(knack: KnackEmulator) -> None:
    assert len(knack_get(knack, "/v1/objects/object_1/records").json()["records"]) == 25
    body = knack_get(knack, "/v1/objects/object_1/records/", rows_per_page=5000).json()
    assert len(body["records"]) == 1000 and body["total_pages"] == 3
    record_id = body["records"][7]["id"]
    assert knack_get(knack, f"/v1/objects/object_1/records/{record_id}").json()["id"] == record_id


def test_knack_records_use_raw_keys_and_drop_them_when_empty(knack: KnackEmulator) -> None:
    records = knack_get(knack, "/v1/objects/object_1/records", rows_per_page=100).json()["records"]
    blank, full = records[9], records[0]  # every 10th record has its optional fields empty
    for key in ("field_2", "field_7", "field_13", "field_17", "field_19"):
        assert blank[key] == "" and f"{key}_raw" not in blank
        assert full[f"{key}_raw"] not in ("", None)
    assert blank["field_26"] == "" and blank["field_26_raw"] == []  # connections keep []
    assert full["field_26_raw"][0].keys() == {"id", "identifier"}
    assert full["field_7"].startswith("$") and isinstance(full["field_7_raw"], str)  # currency raw is a string
    assert full["field_9_raw"] in (True, False) and full["field_9"] in ("Yes", "No")
    assert full["field_19_raw"].keys() == {"area", "number", "full", "formatted"}
    assert {"latitude", "longitude", "street", "zip"} <= full["field_20_raw"].keys()
    assert "東京" in full["field_2"] and "façade" in full["field_2"]
    assert records[96]["field_11"] == "" and records[96]["field_11_raw"] == [None]  # the multi-select quirk


def test_knack_timestamps_are_local_wall_time_labelled_utc(knack: KnackEmulator) -> None:
    record = knack_get(knack, "/v1/objects/object_1/records", rows_per_page=1).json()["records"][0]
    raw = record["field_13_raw"]
    wall = datetime.strptime(raw["timestamp"], "%m/%d/%Y %I:%M %p")
    assert datetime.fromtimestamp(raw["unix_timestamp"] / 1000, timezone.utc).replace(tzinfo=None) == wall
    assert raw["iso_timestamp"] == wall.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert raw["time"] == wall.hour * 60 + wall.minute and raw["am_pm"] in ("AM", "PM")
    true_utc = wall.replace(tzinfo=ZoneInfo("America/New_York")).astimezone(timezone.utc).replace(tzinfo=None)
    assert (true_utc - wall).total_seconds() in (4 * 3600, 5 * 3600)  # clients must correct by the offset
    assert "to" in record["field_14_raw"] and record["field_15_raw"]["times"][0].keys() == {"from", "to"}


def test_knack_auth_errors(knack: KnackEmulator) -> None:
    url = f"{knack.url}/v1/objects/object_1/records"
    assert requests.get(url, timeout=5).status_code == 401
    wrong = knack_get(knack, "/v1/objects/object_1/records", key="nope")
    assert wrong.status_code == 401 and wrong.json()["errors"][0]["message"]
    other_app = requests.get(url, headers={"X-Knack-Application-Id": "f" * 24, "X-Knack-REST-API-KEY": "x"}, timeout=5)
    assert other_app.status_code == 404
    assert knack_get(knack, "/v1/objects/object_99/records").status_code == 404


def test_knack_fields_endpoint_and_application_metadata(knack: KnackEmulator) -> None:
    fields = knack_get(knack, "/v1/objects/object_1/fields").json()["fields"]
    assert fields[0] == {"key": "field_1", "label": "Facility Name", "type": "short_text", "required": True,
                         "unique": False}
    types = {f["type"] for f in fields}
    assert {"short_text", "paragraph_text", "rich_text", "number", "auto_increment", "equation", "currency",
            "rating", "boolean", "multiple_choice", "date_time", "timer", "name", "email", "link", "phone",
            "address", "file", "image", "signature", "connection", "concatenation", "sum", "average", "count",
            "min", "max"} <= types
    meta = requests.get(f"{knack.url}/v1/applications/{APP_ID}", timeout=5).json()["application"]  # no auth
    assert meta["settings"]["timezone"] == "Eastern Time (US & Canada)"
    assert meta["id"] == APP_ID and meta["account"]["slug"] and meta["counts"]["total_entries"] == 2512
    facilities = meta["objects"][0]
    assert (facilities["key"], facilities["identifier"]) == ("object_1", "field_1")
    by_key = {f["key"]: f for f in facilities["fields"]}
    assert by_key["field_1"]["name"] == "Facility Name" and by_key["field_1"]["object_key"] == "object_1"
    assert by_key["field_26"]["relationship"] == {"object": "object_2", "has": "many", "belongs_to": "many"}
    assert by_key["field_11"]["format"]["type"] == "multi" and by_key["field_21"]["format"]["input"] == "lat_long"
    assert meta["scenes"][0]["views"][0]["columns"][0] == {"field": {"key": "field_1"}, "header": "Facility Name"}


def test_knack_filters_and_sort(knack: KnackEmulator) -> None:
    filters = json.dumps({"match": "and", "rules": [{"field": "field_10", "operator": "is", "value": "Seasonal"},
                                                    {"field": "field_4", "operator": "higher than", "value": 400}]})
    body = knack_get(knack, "/v1/objects/object_1/records", filters=filters, rows_per_page=1000,
                     sort_field="field_4", sort_order="desc").json()
    values = [r["field_4_raw"] for r in body["records"]]
    assert body["total_records"] == len(values) > 0 and values == sorted(values, reverse=True)
    assert all(r["field_10"] == "Seasonal" and r["field_4_raw"] > 400 for r in body["records"])
    assert knack_get(knack, "/v1/objects/object_1/records", filters="{not json").status_code == 400


def test_knack_per_second_rate_limit_429_with_headers() -> None:
    with KnackEmulator(rate_limit_per_second=10) as emu:
        emu.seed_all_field_types(APP_ID, KNACK_KEY, 5)
        responses = [knack_get(emu, "/v1/objects/object_1/records") for _ in range(12)]
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) == 10 and statuses.count(429) == 2
        limited = next(r for r in responses if r.status_code == 429)
        assert limited.text == "Rate limit exceeded"
        assert limited.headers["X-RateLimit-Limit"] == "10" and limited.headers["X-RateLimit-Remaining"] == "0"
        assert int(limited.headers["X-RateLimit-Reset"]) >= int(time.time())
        assert {"X-PlanLimit-Limit", "X-PlanLimit-Remaining", "X-PlanLimit-Reset"} <= limited.headers.keys()
        assert responses[0].headers["X-RateLimit-Remaining"] == "9"
        time.sleep(1.05)
        assert knack_get(emu, "/v1/objects/object_1/records").status_code == 200


def test_knack_daily_plan_limit_and_injected_429() -> None:
    with KnackEmulator(rate_limit_per_second=None, plan_limit=3) as emu:
        emu.seed_all_field_types(APP_ID, KNACK_KEY, 5)
        statuses = [knack_get(emu, "/v1/objects/object_1/records").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        refused = knack_get(emu, "/v1/objects/object_1/records")
        assert refused.headers["X-PlanLimit-Remaining"] == "0" and refused.headers["X-PlanLimit-Limit"] == "3"
        assert requests.get(f"{emu.url}/v1/applications/{APP_ID}", timeout=5).status_code == 200  # not counted
    with KnackEmulator() as emu:
        emu.seed_all_field_types(APP_ID, KNACK_KEY, 5)
        emu.inject("rate_limit")
        emu.inject("rate_limit", plan=True)
        first, second = (knack_get(emu, "/v1/objects/object_1/records") for _ in range(2))
        assert first.status_code == second.status_code == 429
        assert first.headers["X-RateLimit-Remaining"] == "0" and second.headers["X-PlanLimit-Remaining"] == "0"


# ================================================================================================== Airtable
def test_pyairtable_reads_2500_records_across_25_pages(airtable: AirtableEmulator) -> None:
    rows = at_api(airtable).table(BASE_ID, "Services").all()
    assert len(rows) == 2500 and len({r["id"] for r in rows}) == 2500
    assert len(airtable.requests_to("/Services")) == 25
    assert all(r["id"].startswith("rec") and len(r["id"]) == 17 for r in rows)
    assert rows[0]["createdTime"] == "2023-01-02T14:00:00.000Z"
    for row in rows:  # empty values are never sent
        assert not any(value is False or value is None or value in ("", [], {}) for value in row["fields"].values())
    assert "Active" not in rows[0]["fields"] and rows[1]["fields"]["Active"] is True  # unchecked → absent
    assert "Notes" not in rows[9]["fields"] and "Photos" not in rows[3]["fields"]
    assert "café ☕" in rows[0]["fields"]["Name"] and "中文" in json.dumps(rows, ensure_ascii=False)
    assert rows[0]["fields"]["Address"] == service_address(0)


def test_airtable_cell_formats(airtable: AirtableEmulator) -> None:
    fields = at_api(airtable).table(BASE_ID, "Services").first(cell_format="json")["fields"]  # type: ignore[index]
    assert fields["Neighborhood"][0].startswith("rec") and fields["Neighborhood Name"] == ["Fishtown"]
    assert fields["Owner"].keys() == {"id", "email", "name"} and fields["Owner"]["id"].startswith("usr")
    photo = fields["Photos"][0]
    assert {"id", "url", "filename", "size", "type", "width", "height", "thumbnails"} <= photo.keys()
    assert fields["Start Date"] == "2023-02-01" and fields["Updated At"].endswith(".000Z")
    assert isinstance(fields["Completion"], float) and isinstance(fields["Languages"], list)
    assert fields["Barcode"]["text"] and fields["Open Map"]["label"] == "Open map"
    assert fields["Summary"]["state"] == "generated"


@pytest.mark.parametrize(("n_records", "expected_requests"), [(200, 2), (201, 3), (100, 1), (0, 1)])
def test_airtable_pagination_ends_at_exact_multiples(n_records: int, expected_requests: int) -> None:
    with AirtableEmulator(rate_limit_per_second=None) as emu:
        emu.add_base(BASE_ID, PAT, {"People": [{"Name": f"Person {i}"} for i in range(n_records)]})
        rows = at_api(emu).table(BASE_ID, "People").all(page_size=100)
        assert [r["fields"]["Name"] for r in rows] == [f"Person {i}" for i in range(n_records)]
        # pyairtable follows "offset" until it is absent: the request count proves where the pages ended.
        assert [bool(r.arg("offset")) for r in emu.requests] == [False] + [True] * (expected_requests - 1)


def test_airtable_options_fields_sort_max_records(airtable: AirtableEmulator) -> None:
    table = at_api(airtable, retry_strategy=None).table(BASE_ID, "Neighborhoods")
    rows = table.all(fields=["Name", "Population"], sort=["-Population"], max_records=3, page_size=2)
    assert [set(r["fields"]) for r in rows] == [{"Name", "Population"}] * 3
    pops = [r["fields"]["Population"] for r in rows]
    assert pops == sorted(pops, reverse=True) and len(airtable.requests_to("/Neighborhoods")) == 2
    with pytest.raises(requests.HTTPError, match="UNKNOWN_FIELD_NAME"):
        table.all(fields=["No such field"])
    with pytest.raises(requests.HTTPError, match="422"):
        table.all(page_size=101)
    with pytest.raises(requests.HTTPError, match="INVALID_FILTER_BY_FORMULA"):
        table.all(formula="{Name} = 'Olney'")
    by_id = table.first(use_field_ids=True)
    assert by_id is not None and all(k.startswith("fld") for k in by_id["fields"])
    as_text = table.first(cell_format="string", time_zone="America/New_York", user_locale="en-us")
    assert as_text is not None and isinstance(as_text["fields"]["Services"], str)


def test_airtable_auth_errors(airtable: AirtableEmulator) -> None:
    with pytest.raises(requests.HTTPError, match="401.*AUTHENTICATION_REQUIRED"):
        at_api(airtable, token="patWrong", retry_strategy=None).table(BASE_ID, "Services").first()
    airtable.add_base("appOtherBase00001", "patOther", {"T": [{"a": 1}]})
    with pytest.raises(requests.HTTPError, match="403.*INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND"):
        at_api(airtable, token="patOther", retry_strategy=None).table(BASE_ID, "Services").first()
    with pytest.raises(requests.HTTPError, match="403"):
        at_api(airtable, retry_strategy=None).table(BASE_ID, "No Such Table").first()
    body = requests.get(f"{airtable.url}/v0/{BASE_ID}/Services", timeout=5).json()
    assert body == {"error": {"type": "AUTHENTICATION_REQUIRED", "message": "Authentication required"}}


def test_airtable_bad_and_expired_offsets(airtable: AirtableEmulator) -> None:
    url, headers = f"{airtable.url}/v0/{BASE_ID}/Services", {"Authorization": f"Bearer {PAT}"}
    offset = requests.get(url, headers=headers, timeout=5).json()["offset"]
    assert requests.get(url, headers=headers, params={"offset": offset}, timeout=5).status_code == 200
    bad = requests.get(url, headers=headers, params={"offset": "itrNOTAREALTOKEN/recNOTAREALRECORD"}, timeout=5)
    assert bad.status_code == 422 and bad.json()["error"]["type"] == "INVALID_OFFSET_VALUE"
    airtable.expire_iterators()
    gone = requests.get(url, headers=headers, params={"offset": offset}, timeout=5)
    assert gone.status_code == 422 and gone.json()["error"]["type"] == "LIST_RECORDS_ITERATOR_NOT_AVAILABLE"


def test_airtable_post_list_records(airtable: AirtableEmulator) -> None:
    url, headers = f"{airtable.url}/v0/{BASE_ID}/Neighborhoods/listRecords", {"Authorization": f"Bearer {PAT}"}
    first = requests.post(url, headers=headers, json={"pageSize": 15, "fields": ["Name"]}, timeout=5).json()
    second = requests.post(url, headers=headers, json={"offset": first["offset"], "pageSize": 15}, timeout=5).json()
    assert len(first["records"]) + len(second["records"]) == 20 and "offset" not in second


def test_airtable_rate_limit_penalty() -> None:
    with AirtableEmulator(rate_limit_per_second=5, penalty_seconds=0.5) as emu:
        emu.add_base(BASE_ID, PAT, {"People": [{"Name": "A"}]})
        table = at_api(emu, retry_strategy=None).table(BASE_ID, "People")
        for _ in range(5):
            table.all()
        with pytest.raises(requests.HTTPError, match="429.*RATE_LIMIT_REACHED"):
            table.all()
        time.sleep(0.1)  # the window has room again, but the penalty still applies
        with pytest.raises(requests.HTTPError, match="429"):
            table.all()
        time.sleep(0.5)
        assert table.all()[0]["fields"] == {"Name": "A"}
        emu.inject("rate_limit")
        with pytest.raises(requests.HTTPError, match="429"):
            table.all()


def test_pyairtable_default_retry_rides_out_short_penalties(airtable_tables: dict[str, AirtableTable]) -> None:
    with AirtableEmulator(rate_limit_per_second=5, penalty_seconds=0.3) as emu:
        emu.add_base(BASE_ID, PAT, {"Services": airtable_tables["Services"]})
        rows = at_api(emu).table(BASE_ID, "Services").all(max_records=1000)
        assert len(rows) == 1000
        assert 429 in {r.status for r in emu.requests}  # penalties happened and urllib3's retries rode them out


def test_airtable_meta_api_and_scopes(airtable: AirtableEmulator) -> None:
    api = at_api(airtable, retry_strategy=None)
    schema = api.table(BASE_ID, "Services").schema()
    types = {f.type for f in schema.fields}
    assert {"singleLineText", "multilineText", "richText", "email", "url", "phoneNumber", "number", "currency",
            "percent", "rating", "duration", "autoNumber", "count", "checkbox", "singleSelect", "multipleSelects",
            "date", "dateTime", "createdTime", "lastModifiedTime", "multipleRecordLinks", "multipleLookupValues",
            "rollup", "formula", "singleCollaborator", "createdBy", "lastModifiedBy", "multipleCollaborators",
            "multipleAttachments", "barcode", "button", "aiText"} <= types
    assert schema.primary_field_id == schema.fields[0].id and schema.views[0].visible_field_ids
    link = schema.field("Neighborhood")
    assert link.options.linked_table_id == api.table(BASE_ID, "Neighborhoods").schema().id  # type: ignore[union-attr]
    assert [b.id for b in api.bases()] == [BASE_ID]
    assert api.table(BASE_ID, schema.id).first() is not None  # a table id works wherever a name does
    meta_url = f"{airtable.url}/v0/meta/bases/{BASE_ID}/tables"
    airtable.set_scopes(PAT, {READ_RECORDS})
    denied = requests.get(meta_url, headers={"Authorization": f"Bearer {PAT}"}, timeout=5)
    assert denied.status_code == 403 and denied.json()["error"]["type"] == "INVALID_PERMISSIONS_OR_MODEL_NOT_FOUND"
    assert len(api.table(BASE_ID, "Neighborhoods").all()) == 20  # records still readable
    airtable.meta_api_enabled = False
    assert requests.get(meta_url, headers={"Authorization": f"Bearer {PAT}"}, timeout=5).status_code == 404


def test_airtable_schema_inferred_from_plain_records() -> None:
    with AirtableEmulator(rate_limit_per_second=None) as emu:
        emu.add_base(BASE_ID, PAT, {"People": [{"Name": "Zoë", "Ok": True, "Tags": ["a", "b"], "When": "2024-05-01"},
                                               {"Name": "", "Ok": False, "Tags": []}]})
        api = at_api(emu)
        rows = api.table(BASE_ID, "People").all()
        assert rows[1]["fields"] == {}
        schema = api.table(BASE_ID, "People").schema()
        assert [(f.name, f.type) for f in schema.fields] == [
            ("Name", "singleLineText"), ("Ok", "checkbox"), ("Tags", "multipleSelects"), ("When", "date")]


# ======================================================================================================== AIS
def test_ais_match_envelope(ais: AISEmulator) -> None:
    response = ais_search(ais, "1234 Market Street, Philadelphia, PA 19107", srid=4326, max_range=0)
    assert response.status_code == 200 and response.headers["Cache-Control"] == "max-age=3600"
    body = response.json()
    assert list(body) == ["search_type", "search_params", "query", "normalized", "crs", "page", "page_count",
                          "page_size", "total_size", "type", "features"]
    assert (body["search_type"], body["normalized"], body["type"]) == ("address", "1234 MARKET ST",
                                                                      "FeatureCollection")
    assert body["search_params"] == {"srid": "4326", "max_range": "0"}  # the key is not echoed
    assert body["crs"]["properties"]["href"] == "http://spatialreference.org/ref/epsg/4326/proj4/"
    feature = body["features"][0]
    assert (feature["ais_feature_type"], feature["match_type"]) == ("address", "exact")
    assert feature["geometry"] == {"geocode_type": "pwd_parcel", "type": "Point", "coordinates": [-75.16047, 39.95142]}
    props = feature["properties"]
    assert props["street_address"] == "1234 MARKET ST" and props["zip_code"] == "19107"
    assert isinstance(props["opa_owners"], list) and props["opa_account_num"] and len(props) > 70


def test_ais_srid_2272_agrees_with_postgis(ais: AISEmulator, postgis_dsn: str) -> None:
    body = ais_search(ais, "1234 Market St", srid=2272).json()
    assert body["crs"]["properties"]["href"] == "http://spatialreference.org/ref/epsg/2272/proj4/"
    x, y = body["features"][0]["geometry"]["coordinates"]
    with psycopg.connect(postgis_dsn) as conn:
        row = conn.execute("SELECT ST_X(g), ST_Y(g) FROM (SELECT ST_Transform(ST_SetSRID("
                           "ST_MakePoint(-75.16047, 39.95142), 4326), 2272) AS g) s").fetchone()
    assert row is not None
    px, py = row
    assert abs(x - px) < 0.01 and abs(y - py) < 0.01


def test_ais_no_match_and_unrecognised_are_404_json(ais: AISEmulator) -> None:
    missing = ais_search(ais, "99 Nowhere Ln")
    assert missing.status_code == 404
    assert missing.json() == {"status": 404, "error": "Not Found",
                              "message": "Could not find any addresses matching query.",
                              "details": {"query": "99 Nowhere Ln", "normalized": "99 NOWHERE LN",
                                          "search_type": "address", "search_params": {}}}
    assert ais_search(ais, "hello world").json()["message"] == "Query not recognized."
    assert ais_search(ais, "1234 Market St " + "x" * 70).json()["message"] == "Query exceeds character limit."
    assert ais_search(ais, "1234 Market St;700 Arch St").json()["normalized"] == "1234 MARKET ST"


def test_ais_unmatched_estimates_and_flags(ais: AISEmulator) -> None:
    estimate = ais_search(ais, "1240 Market St")
    assert estimate.status_code == 200
    feature = estimate.json()["features"][0]
    assert feature["match_type"] == "unmatched" and feature["ais_feature_type"] == "address"
    assert feature["geometry"]["geocode_type"] == "full_range"
    assert ais_search(ais, "1240 Market St", estimate="false").json()["message"] == \
        "Could not find any known addresses matching the query."
    assert ais_search(ais, "1240 Market St", opa_only="").json()["message"] == \
        "Could not find any opa addresses matching the query."
    assert ais_search(ais, "1234 Market St", opa_only="true").status_code == 200
    ais.add_unmatched("1250 Market St", -75.1606, 39.9515, geocode_type="true_range")
    assert ais_search(ais, "1250 Market St").json()["features"][0]["geometry"]["geocode_type"] == "true_range"
    assert ais_search(ais, "1300 Market St").json()["features"][0]["geometry"]["coordinates"] == [None, None]


def test_ais_ties_intersections_and_pages(ais: AISEmulator) -> None:
    tie = ais_search(ais, "440 Broad St").json()
    assert tie["total_size"] == 2 and {f["properties"]["zip_code"] for f in tie["features"]} == {"19130", "19146"}
    crossing = ais_search(ais, "N 12th and Market St").json()
    assert crossing["search_type"] == "intersection_addr"
    feature = crossing["features"][0]
    assert (feature["ais_feature_type"], feature["geometry"]["geocode_type"]) == ("intersection", "intersection")
    assert feature["street_address"] == "N 12TH ST & MARKET ST" and feature["properties"]["int_id"]
    for k in range(150):
        ais.add_feature("1 Many Units St", address_feature("1 MANY UNITS ST", -75.1, 39.9, match_type="unit_child"))
    page_two = ais_search(ais, "1 Many Units St", page=2).json()
    assert (page_two["page_count"], page_two["page_size"], page_two["total_size"]) == (2, 50, 150)
    assert ais_search(ais, "1 Many Units St", page=3).status_code == 404


def test_ais_auth(ais: AISEmulator) -> None:
    url = f"{ais.url}/ais/v1/search/1234 Market St"  # the gateway's path prefix is accepted too
    assert requests.get(url, timeout=5).status_code == 401
    assert requests.get(url, params={"gatekeeperKey": "wrong"}, timeout=5).status_code == 401
    assert requests.get(url, headers={"Authorization": f"Gatekeeper-Key {AIS_KEY}"}, timeout=5).status_code == 200


def test_ais_call_counter_per_normalized_query(ais: AISEmulator) -> None:
    ais_search(ais, "1234 Market St")
    ais_search(ais, "1234 market street")
    ais_search(ais, "Market St & N 12th St")
    ais_search(ais, "N 12th and Market")
    assert ais.call_count("1234 MARKET ST") == 2 and ais.call_count("N 12th St & Market St") == 2
    assert ais.call_count("700 Arch St") == 0
    assert normalize_query("1234 Market Street Philadelphia PA 19107") == "1234 MARKET ST"


def test_ais_429_fault_has_retry_after(ais: AISEmulator) -> None:
    ais.inject("rate_limit", retry_after=3)
    response = ais_search(ais, "1234 Market St")
    assert response.status_code == 429 and response.headers["Retry-After"] == "3"
    assert response.json()["status"] == 429


def test_ais_synthetic_seeding_covers_generated_airtable_addresses(ais: AISEmulator) -> None:
    addresses = [service_address(i) for i in range(30)]
    ais.add_synthetic(addresses)
    assert ais_search(ais, addresses[0]).json()["features"][0]["match_type"] == "exact"
    assert ais_search(ais, service_address(24)).status_code == 404  # "PO Box 1234" stays a miss


# ===================================================================================================== Census
def census_post(emu: CensusGeocoderEmulator, rows: list[list[str]], kind: str = "locations",
                **form: str) -> requests.Response:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    data = {"benchmark": "Public_AR_Current", **form}
    return requests.post(f"{emu.url}/geocoder/{kind}/addressbatch", data=data,
                         files={"addressFile": ("addresses.csv", buffer.getvalue(), "text/csv")}, timeout=10)


def test_census_batch_round_trip() -> None:
    rows = [["1", "1234 Market St", "Philadelphia", "PA", "19107"],
            ["2", "99 Nowhere Ln", "Philadelphia", "PA", "19107"],
            ["3", "440 Broad St", "Philadelphia", "PA", ""],
            ["4", "700 Arch Street", "Philadelphia", "PA", "19106"],
            ["5", "1500 Market St", "Philadelphia", "PA"]]  # a short row
    with CensusGeocoderEmulator() as emu:
        response = census_post(emu, rows)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
        assert response.headers["Content-Disposition"] == "attachment; filename=GeocodeResults.csv"
        lines = response.text.strip().split("\n")
        assert all(line.startswith('"') and line.endswith('"') for line in lines)  # every field quoted
        results = list(csv.reader(io.StringIO(response.text)))
        assert [r[0] for r in results] != ["1", "2", "3", "4", "5"]  # not in input order
        by_id = {r[0]: r for r in results}
        assert by_id["1"][1:5] == ["1234 Market St, Philadelphia, PA, 19107", "Match", "Exact",
                                   "1234 MARKET ST, PHILADELPHIA, PA, 19107"]
        lon, lat = map(float, by_id["1"][5].split(","))  # lon first, both in one field
        assert (round(lon, 5), round(lat, 5)) == (-75.16047, 39.95142) and by_id["1"][7] in ("L", "R")
        assert by_id["2"][2:] == ["No_Match"] and by_id["3"][2:] == ["Tie"]
        assert by_id["4"][2] == "Match" and len(by_id["4"]) == 8
        assert by_id["5"][2] == "Match"  # padded: no zip, so any entry for the street matches
        assert emu.batches == [5]


def test_census_geographies_and_limits() -> None:
    with CensusGeocoderEmulator() as emu:
        row = [["9", "1234 Market St", "Philadelphia", "PA", "19107"]]
        assert census_post(emu, row, "geographies").status_code == 400  # vintage required
        geo = list(csv.reader(io.StringIO(census_post(emu, row, "geographies", vintage="Current_Current").text)))
        assert len(geo[0]) == 12 and geo[0][8:10] == ["42", "101"]
        assert census_post(emu, row, benchmark="Nope").status_code == 400
        too_many = [[str(i), f"{i} Market St", "Philadelphia", "PA", "19107"] for i in range(10_001)]
        assert census_post(emu, too_many).status_code == 400
        assert emu.batches == [1]


# ====================================================================================================== Slack
def test_slack_accepts_and_records_messages(slack: SlackEmulator) -> None:
    response = requests.post(slack.webhook_url, json={"text": "Load done ✅", "username": "databridge"}, timeout=5)
    assert (response.status_code, response.text) == (200, "ok")
    assert response.headers["Content-Type"].startswith("text/plain")
    legacy = requests.post(slack.webhook_url, data={"payload": json.dumps({"text": "form"})}, timeout=5)
    assert legacy.text == "ok"
    blocks = {"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "*x*"}}]}
    assert requests.post(slack.webhook_url, json=blocks, timeout=5).text == "ok"
    assert [m.get("text") for m in slack.messages] == ["Load done ✅", "form", None]
    assert slack.messages_for(DEFAULT_WEBHOOK_PATH)[0]["username"] == "databridge"


def test_slack_payload_errors(slack: SlackEmulator) -> None:
    def post(**kwargs: Any) -> tuple[int, str]:
        response = requests.post(slack.webhook_url, timeout=5, **kwargs)
        return response.status_code, response.text

    assert post(data="not json", headers={"Content-Type": "application/json"}) == (400, "invalid_payload")
    assert post(json={"username": "x"}) == (400, "no_text")
    assert post(json={"text": "x", "blocks": "nope"}) == (400, "invalid_blocks")
    unknown = requests.post(f"{slack.url}/services/T1/B1/revoked", json={"text": "x"}, timeout=5)
    assert (unknown.status_code, unknown.text) == (404, "no_service")
    assert slack.messages == []


@pytest.mark.parametrize("error", sorted(ERROR_STATUS))
def test_slack_switchable_error_modes(slack: SlackEmulator, error: str) -> None:
    slack.set_error(error, times=1)
    response = requests.post(slack.webhook_url, json={"text": "x"}, timeout=5)
    assert (response.status_code, response.text) == (ERROR_STATUS[error], error)
    assert requests.post(slack.webhook_url, json={"text": "x"}, timeout=5).text == "ok"


def test_slack_rate_limits_send_retry_after() -> None:
    with SlackEmulator(rate_limit_per_second=1) as emu:
        first = requests.post(emu.webhook_url, json={"text": "1"}, timeout=5)
        second = requests.post(emu.webhook_url, json={"text": "2"}, timeout=5)
        assert first.text == "ok" and second.status_code == 429 and int(second.headers["Retry-After"]) >= 1
        emu.inject("rate_limit", retry_after=30)
        injected = requests.post(emu.webhook_url, json={"text": "3"}, timeout=5)
        assert injected.status_code == 429 and injected.headers["Retry-After"] == "30"
        assert [m["text"] for m in emu.messages] == ["1"]


# ===================================================================================== command-line processes
@pytest.mark.parametrize(("module", "args", "probe"), [
    ("knack", ["--records", "30"], "/v1/applications/5d79aaaaaaaaaaaaaaaaaaaa"),
    ("airtable", ["--records", "30"], "/v0/meta/bases"),
    ("ais", [], "/search/1234 Market St?gatekeeperKey=ais-test-key"),
    ("ais", ["--service", "census"], "/__emulator__/state"),
    ("slack", [], "/__emulator__/state"),
])
def test_emulators_run_as_processes_until_sigterm(module: str, args: list[str], probe: str) -> None:
    process = subprocess.Popen([sys.executable, "-m", f"tests.emulators.{module}", "--port", "0", *args],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        headers = {"Authorization": "Bearer patEmulatorToken"} if module == "airtable" else {}
        assert requests.get(url + probe, headers=headers, timeout=5).status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
