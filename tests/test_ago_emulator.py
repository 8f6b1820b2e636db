"""The AGO emulator (tests/emulators/ago.py) checked with independent clients over real HTTP.

Independent clients (none of our code): ``restapi`` (PyPI ``bmi-arcgis-restapi``, a third-party ArcGIS REST
client) for layer metadata, ``addFeatures``/``updateFeatures``/``deleteFeatures``/``applyEdits`` and their
per-item results, ids and counts, and its AGOL admin classes for ``truncate`` (async job and status
polling), ``addToDefinition`` and the view swap (``deleteFromDefinition`` + ``addToDefinition``); ``esridump`` (OpenAddresses' reader) for the read path — layer JSON,
``returnCountOnly``, ``outStatistics``, ``resultOffset`` paging under ``maxRecordCount`` — and its Esri JSON →
GeoJSON conversion, which reads ring winding (clockwise outers, counter-clockwise holes); ``arcgis2geojson``
for the same semantics on a query answer. Esri's own ``arcgis`` package is not installed here (hundreds of MB
of pandas/dask/pyarrow for a test-only check, and it wants TLS); the raw ``requests`` checks below follow the
wire forms the reference records from it (bearer header, multipart ``applyEdits``, the view swap sequence).
"""
from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import requests

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import restapi
    from restapi.rest_utils import Token

from arcgis2geojson import arcgis2geojson
from esridump.dumper import EsriDumper

from tests.emulators.ago import AgoEmulator, field_def

pytestmark = pytest.mark.filterwarnings("ignore")

USER, PASSWORD = "phl_etl", "secret-password"
FIELDS = [field_def("name", "esriFieldTypeString", 20), field_def("n", "esriFieldTypeInteger"),
          field_def("when", "esriFieldTypeDate")]


@pytest.fixture()
def emu() -> Iterator[AgoEmulator]:
    with AgoEmulator({USER: PASSWORD}, api_keys=["AAPK-test-key-123456"]) as server:
        yield server


def token(emu: AgoEmulator) -> str:
    reply = requests.post(f"{emu.url}/sharing/rest/generateToken",
                          data={"username": USER, "password": PASSWORD, "client": "referer", "referer": "http", "f": "json"})
    return reply.json()["token"]


def restapi_layer(emu: AgoEmulator, url: str) -> Any:
    """restapi's AGOL path: a Token marked isAGOL makes it send ``token`` as a form/query field."""
    reply = requests.post(f"{emu.url}/sharing/rest/generateToken", data={"username": USER, "password": PASSWORD, "f": "json"}).json()
    return restapi.FeatureLayer(url, token=Token({**reply, "isAGOL": True, "isPortal": False, "isAdmin": False,
                                                  "domain": emu.services_root}))


def post(url: str, tok: str | None = None, **data: Any) -> Any:
    data.setdefault("f", "json")
    headers = {"X-Esri-Authorization": f"Bearer {tok}"} if tok else {}
    reply = requests.post(url, data=data, headers=headers, timeout=10)
    assert reply.headers["Content-Type"].startswith("application/json")
    return reply.json()


# --- authentication (§1) ----------------------------------------------------------------------------------

def test_tokens_errors_in_200_bodies_and_expiry(emu: AgoEmulator) -> None:
    item = emu.create_service("pts", FIELDS)
    layer_url = f"{item.url}/0"
    bad = requests.post(f"{emu.url}/sharing/rest/generateToken", data={"username": USER, "password": "nope", "f": "json"})
    assert bad.status_code == 200 and bad.json()["error"]["code"] == 400 and bad.json()["error"]["details"]
    missing = requests.get(layer_url, params={"f": "json"})
    assert missing.status_code == 200 and missing.json()["error"] == {"code": 499, "message": "Token Required", "details": []}
    tok = token(emu)
    for how in ({"params": {"f": "json", "token": tok}}, {"params": {"f": "json"}, "headers": {"X-Esri-Authorization": f"Bearer {tok}"}},
                {"params": {"f": "json"}, "headers": {"Authorization": f"Bearer {tok}"}}):
        assert requests.get(layer_url, **how).json()["name"] == "pts"
    assert requests.get(layer_url, params={"f": "json", "token": "AAPK-test-key-123456"}).json()["name"] == "pts"
    assert requests.get(layer_url, params={"f": "json"}).json()["error"]["code"] == 499
    assert "html" in requests.get(layer_url, params={"token": tok}).headers["Content-Type"]  # no f: the HTML directory
    emu.expire_tokens()
    expired = requests.get(layer_url, params={"f": "json", "token": tok})
    assert expired.status_code == 200 and expired.json()["error"]["code"] == 498


def test_restapi_reads_layer_and_edits_with_per_item_results(emu: AgoEmulator) -> None:
    item = emu.create_service("pts", FIELDS)
    layer = restapi_layer(emu, f"{item.url}/0")
    assert layer.name == "pts" and layer.geometryType == "esriGeometryPoint"
    assert [f.name for f in layer.fields] == ["OBJECTID", "name", "n", "when"]
    added = layer.addFeatures([{"attributes": {"name": f"p{i}", "n": i, "when": 1700000000000}, "geometry": {"x": 2690000 + i, "y": 230000}}
                               for i in range(5)])
    assert [r["success"] for r in added.json["addResults"]] == [True] * 5
    assert [r["objectId"] for r in added.json["addResults"]] == [1, 2, 3, 4, 5]
    assert layer.getCount() == 5
    updated = layer.updateFeatures([{"attributes": {"OBJECTID": 2, "n": 20}}])
    assert updated.json["updateResults"][0]["success"] is True
    assert emu.rows("pts")[1]["attributes"]["n"] == 20 and emu.rows("pts")[1]["attributes"]["name"] == "p1"  # omitted kept
    # rollbackOnFailure=false: good items commit, a bad one answers success:false with code and description.
    mixed = layer.addFeatures([{"attributes": {"name": "ok", "n": 1}, "geometry": {"x": 1, "y": 1}},
                               {"attributes": {"name": "x" * 30, "n": 1}, "geometry": {"x": 1, "y": 1}}], rollbackOnFailure=False)
    results = mixed.json["addResults"]
    assert results[0]["success"] is True and results[1]["success"] is False
    assert results[1]["error"]["code"] == 1000 and "length" in results[1]["error"]["description"]
    assert layer.getCount() == 6
    deleted = layer.deleteFeatures(oids="1,3")
    assert [r["success"] for r in deleted.json["deleteResults"]] == [True, True]
    assert layer.getOIDs() == [2, 4, 5, 6]
    edits = layer.applyEdits(adds=[{"attributes": {"name": "new", "n": 7}, "geometry": {"x": 5, "y": 5}}],
                             updates=[{"attributes": {"OBJECTID": 4, "name": "four"}}], deletes="5")
    assert edits.json["addResults"][0]["objectId"] == 7 and edits.json["deleteResults"][0]["objectId"] == 5
    assert layer.getOIDs() == [2, 4, 6, 7]


def test_rollback_is_all_or_nothing(emu: AgoEmulator) -> None:
    item = emu.create_service("pts", FIELDS)
    tok = token(emu)
    feats = [{"attributes": {"name": "ok", "n": 1}, "geometry": {"x": 1, "y": 1}},
             {"attributes": {"name": "<b>x</b>", "n": 2}, "geometry": {"x": 1, "y": 1}}]
    reply = post(f"{item.url}/0/addFeatures", tok, features=json.dumps(feats))  # rollbackOnFailure defaults to true
    assert reply["error"]["message"] == "Unable to complete operation."
    assert reply["error"]["details"][0] == "Operation rolled back." and "invalid html content" in reply["error"]["details"][1]
    assert emu.rows("pts") == []
    missing = post(f"{item.url}/0/applyEdits", tok, updates=json.dumps([{"attributes": {"OBJECTID": 99, "n": 1}}]), rollbackOnFailure="false")
    assert missing["updateResults"][0]["error"]["code"] == 1019
    wrong_sr = post(f"{item.url}/0/addFeatures", tok, features=json.dumps([{"attributes": {}, "geometry": {"x": -75.1, "y": 39.9, "spatialReference": {"wkid": 4326}}}]))
    assert "spatial reference" in wrong_sr["error"]["details"][1]
    bad_json = post(f"{item.url}/0/addFeatures", tok, features="[{")
    assert bad_json["error"]["message"] == "Cannot perform operation. Invalid operation parameters."


def test_esridump_pages_and_reads_rings(emu: AgoEmulator) -> None:
    """esridump pages with resultOffset under maxRecordCount and turns rings into GeoJSON by winding."""
    item = emu.create_service("polys", FIELDS, "esriGeometryPolygon", max_record_count=7)
    tok = token(emu)
    outer = [[0, 0], [0, 10], [10, 10], [10, 0], [0, 0]]  # clockwise
    hole = [[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]  # counter-clockwise
    second = [[20, 0], [20, 5], [25, 5], [25, 0], [20, 0]]
    feats = [{"attributes": {"name": f"p{i}", "n": i}, "geometry": {"rings": [outer, hole, second]}} for i in range(23)]
    assert all(r["success"] for r in post(f"{item.url}/0/addFeatures", tok, features=json.dumps(feats))["addResults"])
    dumper = EsriDumper(f"{item.url}/0", extra_query_args={"token": tok}, outSR="2272", timeout=10)
    rows = list(dumper)
    assert len(rows) == 23 and sorted(r["properties"]["n"] for r in rows) == list(range(23))
    geometry = rows[0]["geometry"]
    assert geometry["type"] == "MultiPolygon" and len(geometry["coordinates"]) == 2 and len(geometry["coordinates"][0]) == 2
    pages = [r for r in emu.requests_to("/query") if r.method == "POST" and "resultOffset" in r.body.decode()]
    assert len(pages) >= 4  # 23 rows at 7 per page
    answer = requests.get(f"{item.url}/0/query", params={"where": "n = 3", "outFields": "*", "f": "json", "token": tok}).json()
    assert answer["geometryType"] == "esriGeometryPolygon"
    converted = arcgis2geojson(answer["features"][0])
    assert converted["geometry"]["type"] == "MultiPolygon" and len(converted["geometry"]["coordinates"][0]) == 2


def test_query_paging_ids_statistics_and_bad_sql(emu: AgoEmulator) -> None:
    item = emu.create_service("pts", FIELDS, max_record_count=4)
    tok = token(emu)
    post(f"{item.url}/0/addFeatures", tok, features=json.dumps([{"attributes": {"name": f"p{i}", "n": i}, "geometry": {"x": i, "y": i}} for i in range(10)]))
    page = requests.get(f"{item.url}/0/query", params={"where": "1=1", "outFields": "*", "resultRecordCount": 100, "f": "json", "token": tok}).json()
    assert len(page["features"]) == 4 and page["exceededTransferLimit"] is True
    last = requests.get(f"{item.url}/0/query", params={"where": "1=1", "resultOffset": 8, "orderByFields": "OBJECTID", "f": "json", "token": tok}).json()
    assert [f["attributes"]["OBJECTID"] for f in last["features"]] == [9, 10] and "exceededTransferLimit" not in last
    ids = requests.get(f"{item.url}/0/query", params={"where": "n >= 5 AND name <> 'p9'", "returnIdsOnly": "true", "f": "json", "token": tok}).json()
    assert ids == {"objectIdFieldName": "OBJECTID", "objectIds": [6, 7, 8, 9]}
    stats = requests.get(f"{item.url}/0/query", params={"f": "json", "token": tok, "outStatistics": json.dumps(
        [{"statisticType": "max", "onStatisticField": "OBJECTID", "outStatisticFieldName": "hi"}])}).json()
    assert stats["features"][0]["attributes"] == {"hi": 10}
    bad = requests.get(f"{item.url}/0/query", params={"where": "nope = 1", "f": "json", "token": tok}).json()
    assert bad["error"]["code"] == 400 and bad["error"]["message"] == "Cannot perform query. Invalid query parameters."
    assert requests.get(f"{emu.services_root}/nothere/FeatureServer/0", params={"f": "json", "token": tok}).json()["error"]["message"] == "Invalid URL"


# --- admin, views, items (§2.5, §5, §6) ------------------------------------------------------------------------

def test_truncate_async_job_indexes_and_views(emu: AgoEmulator) -> None:
    blue, green = emu.create_service("t_blue", FIELDS), emu.create_service("t_green", FIELDS)
    view = emu.create_view("t_view", "t_blue")
    tok = token(emu)
    admin = f"{emu.url}/fLeGjb7u4uXqeF9q/arcgis/rest/admin/services"
    post(f"{blue.url}/0/addFeatures", tok, features=json.dumps([{"attributes": {"n": 1}, "geometry": {"x": 1, "y": 1}}] * 3))
    view_layer = requests.get(f"{view.url}/0", params={"f": "json", "token": tok}).json()
    assert view_layer["isView"] is True and view_layer["supportsTruncate"] is False
    assert requests.get(f"{view.url}/0/query", params={"where": "1=1", "returnCountOnly": "true", "f": "json", "token": tok}).json() == {"count": 3}
    assert post(f"{admin}/t_view/FeatureServer/0/truncate", tok)["error"]["code"] == 400
    assert post(f"{view.url}/0/addFeatures", tok, features="[]")["error"]["code"] == 400  # views are read-only here
    # sources, then the swap: deleteFromDefinition, addToDefinition with viewLayerDefinition.
    assert [s["name"] for s in requests.get(f"{view.url}/sources", params={"f": "json", "token": tok}).json()["services"]] == ["t_blue"]
    definition = post(f"{admin}/t_view/FeatureServer/0", tok)
    assert definition["adminLayerInfo"]["viewLayerDefinition"]["sourceServiceName"] == "t_blue"
    assert post(f"{admin}/t_view/FeatureServer/deleteFromDefinition", tok, deleteFromDefinition=json.dumps({"layers": [{"id": 0}]})) == {"success": True}
    assert requests.get(f"{view.url}/0/query", params={"where": "1=1", "f": "json", "token": tok}).json()["error"]["message"] == "Invalid URL"
    new_layer = {**definition, "adminLayerInfo": {"viewLayerDefinition": {"sourceServiceName": "t_green", "sourceLayerId": 0, "sourceLayerFields": "*"}}}
    assert post(f"{admin}/t_view/FeatureServer/addToDefinition", tok, addToDefinition=json.dumps({"layers": [new_layer]})) == {"success": True}
    assert requests.get(f"{view.url}/0/query", params={"where": "1=1", "returnCountOnly": "true", "f": "json", "token": tok}).json() == {"count": 0}
    assert emu.view_source("t_view") == "t_green" and emu.view_gaps[0][2] is not None
    # truncate (async job with statusURL), OBJECTID restarts at 1; indexes; duplicates refused.
    job = post(f"{admin}/t_blue/FeatureServer/0/truncate", tok, attachmentOnly="false", **{"async": "true"})
    statuses = [requests.get(job["statusURL"], params={"f": "json", "token": tok}).json()["status"] for _ in range(2)]
    assert statuses == ["Processing", "Completed"]
    assert requests.get(job["statusURL"] + "/status", params={"f": "json", "token": tok}).json()["status"] == "Completed"
    added = post(f"{blue.url}/0/addFeatures", tok, features=json.dumps([{"attributes": {"n": 1}, "geometry": {"x": 1, "y": 1}}]))
    assert added["addResults"][0]["objectId"] == 1
    index = {"indexes": [{"name": "n_idx", "fields": "n", "isUnique": False, "isAscending": True, "description": ""}]}
    assert post(f"{admin}/t_blue/FeatureServer/0/addToDefinition", tok, addToDefinition=json.dumps(index)) == {"success": True}
    assert "Invalid definition" in post(f"{admin}/t_blue/FeatureServer/0/addToDefinition", tok, addToDefinition=json.dumps(index))["error"]["message"]
    # an item's properties and metadata.xml
    update = f"{emu.url}/sharing/rest/content/users/{USER}/items/{view.id}/update"
    assert requests.post(update, data={"f": "json", "token": tok, "properties": json.dumps({"a": 1})},
                         files={"metadata": ("metadata.xml", b"<metadata/>", "application/xml")}).json()["success"] is True
    got = requests.get(f"{emu.url}/sharing/rest/content/items/{view.id}", params={"f": "json", "token": tok}).json()
    assert got["properties"] == {"a": 1} and "View Service" in got["typeKeywords"]
    assert requests.get(f"{emu.url}/sharing/rest/content/items/{view.id}/info/metadata/metadata.xml", params={"token": tok}).text == "<metadata/>"


def test_faults_throttle_timeout_after_commit_and_stale_count(emu: AgoEmulator) -> None:
    item = emu.create_service("pts", FIELDS)
    tok = token(emu)
    emu.throttle(0.3, retry_after=1)
    throttled = requests.get(f"{item.url}/0", params={"f": "json", "token": tok})
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1" and throttled.json()["error"]["code"] == 429
    time.sleep(0.35)
    emu.inject("timeout_after_commit", match="/addFeatures")
    reply = post(f"{item.url}/0/addFeatures", tok, features=json.dumps([{"attributes": {"n": 1}, "geometry": {"x": 1, "y": 1}}]))
    assert reply["error"]["message"] == "Your request has timed out." and len(emu.rows("pts")) == 1  # it went through
    emu.inject("http_502", match="/query")
    assert requests.get(f"{item.url}/0/query", params={"where": "1=1", "f": "json", "token": tok}).status_code == 502
    emu.inject("stale_count", match="/truncate", seconds=0.3)
    post(f"{emu.url}/fLeGjb7u4uXqeF9q/arcgis/rest/admin/services/pts/FeatureServer/0/truncate", tok)
    count = lambda: requests.get(f"{item.url}/0/query", params={"where": "1=1", "returnCountOnly": "true", "f": "json", "token": tok}).json()["count"]
    assert count() == 1  # stale for a moment, as the City saw
    time.sleep(0.35)
    assert count() == 0


def test_restapi_admin_truncate_async_indexes_and_view_swap(emu: AgoEmulator) -> None:
    """restapi's AGOL admin classes: truncate with runAsync (its waitForAsync polls statusURL for exactly
    "Completed"), addToDefinition (then refresh and a reload of the admin JSON), and the view swap as two
    service-level calls; an index posted twice comes back as an error restapi raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from restapi.admin import AGOLFeatureLayer, AGOLFeatureService

    blue, green = emu.create_service("s_blue", FIELDS), emu.create_service("s_green", FIELDS)
    emu.create_view("s_view", "s_blue")
    tok = token(emu)
    post(f"{blue.url}/0/addFeatures", tok, features=json.dumps([{"attributes": {"n": i}, "geometry": {"x": i, "y": i}} for i in range(4)]))
    reply = requests.post(f"{emu.url}/sharing/rest/generateToken", data={"username": USER, "password": PASSWORD, "f": "json"}).json()
    admin_token = Token({**reply, "isAGOL": True, "isPortal": False, "isAdmin": True, "domain": emu.services_root})
    admin = f"{emu.url}/fLeGjb7u4uXqeF9q/arcgis/rest/admin/services"
    layer = AGOLFeatureLayer(f"{admin}/s_blue/FeatureServer/0", token=admin_token)
    assert layer.json["supportsTruncate"] is True
    assert layer.truncate(attachmentOnly=False, runAsync=True)["status"] == "Completed"
    assert emu.rows("s_blue") == [] and len(emu.requests_to("/jobs/")) >= 2
    index = {"indexes": [{"name": "n_idx", "fields": "n", "isUnique": False, "isAscending": True, "description": ""}]}
    assert layer.addToDefinition(index)["success"] is True
    assert any(i["name"] == "n_idx" for i in emu.layer("s_blue").indexes)
    with pytest.raises(Exception, match="Invalid definition"):
        layer.addToDefinition(index)
    view = AGOLFeatureService(f"{admin}/s_view/FeatureServer", token=admin_token)
    assert view.deleteFromDefinition({"layers": [{"id": 0}], "tables": []})["success"] is True
    swap = {"layers": [{"id": 0, "name": "s_view", "adminLayerInfo": {"viewLayerDefinition": {
        "sourceServiceName": "s_green", "sourceLayerId": 0, "sourceLayerFields": "*"}}}]}
    assert view.addToDefinition(swap)["success"] is True
    assert emu.view_source("s_view") == "s_green"
    with pytest.raises(Exception, match="Truncate|truncate|not support"):
        AGOLFeatureLayer(f"{admin}/s_view/FeatureServer/0", token=admin_token).truncate(attachmentOnly=False)
