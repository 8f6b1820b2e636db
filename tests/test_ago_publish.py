"""Publishing to ArcGIS Online, end to end against the AGO emulator over real HTTP (tests/emulators/ago.py).

Real parts: a config tree loaded by config/, staged tables written by the staging writer on disk, the
publisher (databridge_luigi/publish/ago/) talking HTTP to the emulator. Faults come from the emulator
(throttling, expired tokens, timeouts after commit, refused rows), never from patched code.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests

from databridge_luigi.config import load_datasets
from databridge_luigi.publish.catalog import forget_push_attempts
from databridge_luigi.publish.ago import AgoClient, AgoLoadError, AgoPublisher
from databridge_luigi.publish.esri_json import EsriGeometry, signed_area
from databridge_luigi.schema import Column, TableSchema
from databridge_luigi.staging import StagedTable, open_store
from tests.emulators.ago import AgoEmulator, field_def

FIELDS = [field_def("parcel_id", "esriFieldTypeInteger"), field_def("name", "esriFieldTypeString", 40),
          field_def("value", "esriFieldTypeDouble"), field_def("sold", "esriFieldTypeDate")]
SCHEMA = TableSchema((Column("parcel_id", "integer"), Column("name", "string"), Column("value", "number"),
                      Column("sold", "datetime"), Column("shape", "geometry", geometry_type="point", srid=2272)))


def rows(n: int, tag: str = "a", changed: set[int] = frozenset()) -> list[list[str | None]]:
    return [[str(i), f"{tag}{i}{'*' if i in changed else ''}", f"{i * 1.5}", "2026-03-08 02:30:00-05",
             f"SRID=2272;POINT({2690000 + i} {230000 + i})"] for i in range(n)]


class World:
    """An emulator with a view over two source layers, a config tree and a staging directory."""

    def __init__(self, tmp: Path, emu: AgoEmulator, monkeypatch: pytest.MonkeyPatch, mode: str = "swap", **extra: Any):
        self.tmp, self.emu = tmp, emu
        self.blue = emu.create_service("parcels_blue", FIELDS)
        self.green = emu.create_service("parcels_green", FIELDS)
        self.view = emu.create_view("parcels", "parcels_blue")
        self.store = open_store(str(tmp / "staging"))
        monkeypatch.setenv("DATABRIDGE_CONN_AGO_TEST", emu.connection_url())
        if mode == "swap":
            ago = {"conn": "ago_test", "item": self.view.id, "sources": [self.blue.id, self.green.id], "batch_size": 40}
        else:
            ago = {"conn": "ago_test", "item": self.blue.id, "mode": mode, "batch_size": 40}
        ago.update(extra)
        config = {"schedule_interval": "0 6 * * *", "upload_to_carto": False, "upload_to_ago": True, "ago": ago,
                  "indexes": ["name"], "primary_key": ["parcel_id"]}
        path = tmp / "configs" / "databridge" / "dor" / "parcels.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config))
        datasets, problems = load_datasets(tmp / "configs")
        assert not problems, problems
        self.dataset = datasets[0]

    def stage(self, version: str, data: list[list[str | None]], schema: TableSchema = SCHEMA) -> StagedTable:
        table = StagedTable(self.store, self.dataset.id, version)
        with table.writer() as writer:
            writer.write_header(schema.names)
            writer.write_rows(data)
            writer.finish(schema, {}, "2026-12-01T00:00:00Z")
        return table

    def publisher(self, status: Any = lambda m: None, webhook: str | None = None) -> AgoPublisher:
        return AgoPublisher(self.dataset, self.dataset.ago, AgoClient.from_connection("ago_test"), status, webhook)

    def token(self) -> str:
        return requests.post(f"{self.emu.url}/sharing/rest/generateToken",
                             data={"username": "phl_etl", "password": "secret-password", "f": "json"}).json()["token"]


@pytest.fixture()
def emu() -> Iterator[AgoEmulator]:
    with AgoEmulator({"phl_etl": "secret-password"}) as server:
        yield server


@pytest.fixture()
def world(tmp_path: Path, emu: AgoEmulator, monkeypatch: pytest.MonkeyPatch) -> World:
    return World(tmp_path, emu, monkeypatch)


def names(emu: AgoEmulator, service: str) -> list[str]:
    return [r["attributes"]["name"] for r in emu.rows(service)]


def test_first_publish_noop_rerun_and_force(world: World, emu: AgoEmulator) -> None:
    staged = world.stage("20261201T060000Z", rows(100))
    result = world.publisher().load(staged)
    assert result.rewritten and result.rows == 100 and emu.view_source("parcels") == "parcels_green"
    assert len(emu.rows("parcels")) == 100 and names(emu, "parcels")[:2] == ["a0", "a1"]
    first = emu.rows("parcels")[0]
    assert first["attributes"]["sold"] == 1772955000000  # 2026-03-08 02:30 -05:00 as epoch ms UTC
    assert first["geometry"] == {"x": 2690000.0, "y": 230000.0}
    assert any(i["fields"] == "name" for i in emu.layer("parcels_green").indexes)
    assert world.publisher().is_published("20261201T060000Z")
    assert result.swap_window is not None and result.swap_window < 1.0
    props = emu.items[world.view.id].properties["databridge_luigi"]
    assert props["published"]["fingerprint"] == staged.manifest().sha256 and "lease" not in props
    assert "<reviseDate>" in emu.items[world.view.id].metadata_xml
    # Same data, next version: recorded, nothing rewritten, view not switched, no push.
    emu.clear_requests()
    again = world.publisher().load(world.stage("20261202T060000Z", rows(100)))
    assert not again.rewritten and emu.view_source("parcels") == "parcels_green"
    assert not emu.requests_to("addFeatures") and not emu.requests_to("Definition")
    assert world.publisher().is_published("20261202T060000Z")
    # --force rewrites: the other source is loaded and the view switches back.
    forced = world.publisher().load(world.stage("20261202T070000Z", rows(100)), force=True)
    assert forced.rewritten and emu.view_source("parcels") == "parcels_blue" and len(emu.rows("parcels")) == 100


def test_reader_polling_the_view_never_sees_empty_or_partial(world: World, emu: AgoEmulator) -> None:
    world.publisher().load(world.stage("20261201T060000Z", rows(300, "old")))
    token = world.token()
    answers: list[Any] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            reply = requests.get(f"{world.view.url}/0/query", params={"where": "1=1", "outFields": "name", "returnGeometry": "false",
                                                                      "resultRecordCount": 2000, "f": "json", "token": token}).json()
            if "error" in reply:
                answers.append(("error", reply["error"]["message"]))
            else:
                tags = {f["attributes"]["name"].rstrip("0123456789") for f in reply["features"]}
                answers.append((len(reply["features"]), tuple(sorted(tags))))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        result = world.publisher().load(world.stage("20261202T060000Z", rows(320, "new")))
    finally:
        time.sleep(0.05)
        stop.set()
        thread.join()
    data = [a for a in answers if a[0] != "error"]
    assert data and set(data) <= {(300, ("old",)), (320, ("new",))}, set(data)
    assert data[0] == (300, ("old",)) and data[-1] == (320, ("new",))
    errors = [a for a in answers if a[0] == "error"]
    assert all(message == "Invalid URL" for _, message in errors)  # only inside the swap window
    gap = emu.view_gaps[-1]
    print(f"swap window: client {result.swap_window * 1000:.2f} ms, server {(gap[2] - gap[1]) * 1000:.2f} ms, "
          f"reader answers {len(data)} data / {len(errors)} errors")


def test_failure_half_way_leaves_the_view_on_old_data(world: World, emu: AgoEmulator) -> None:
    world.publisher().load(world.stage("20261201T060000Z", rows(100, "old")))
    bad = rows(200, "new")
    bad[150][1] = "x" * 80  # longer than the field: refused before it is sent, after three batches went in
    with pytest.raises(AgoLoadError, match=r"dor__parcels: staged row 151, column name: 80 characters"):
        world.publisher().load(world.stage("20261202T060000Z", bad))
    assert emu.view_source("parcels") == "parcels_green" and set(names(emu, "parcels")) == {f"old{i}" for i in range(100)}
    assert not world.publisher().is_published("20261202T060000Z")
    assert "lease" not in emu.items[world.view.id].properties["databridge_luigi"]
    # the next run loads the idle source again from scratch and switches
    world.publisher().load(world.stage("20261202T070000Z", rows(200, "new")))
    assert emu.view_source("parcels") == "parcels_blue" and len(emu.rows("parcels")) == 200


def test_server_refusal_names_the_row_and_nothing_switches(world: World, emu: AgoEmulator) -> None:
    world.publisher().load(world.stage("20261201T060000Z", rows(50, "old")))
    data = rows(60, "new")
    data[45][1] = "<b>bold</b>"
    with pytest.raises(AgoLoadError, match=r"staged row 46, column name: .*looks like HTML"):
        world.publisher().load(world.stage("20261202T060000Z", data))
    assert emu.view_source("parcels") == "parcels_green"


def test_token_expiry_and_throttling_mid_load(world: World, emu: AgoEmulator) -> None:
    def status(message: str) -> None:
        if message.startswith("added 80 "):
            emu.expire_tokens()
        if message.startswith("added 160 "):
            emu.throttle(0.6)

    client_publisher = world.publisher(status)
    result = client_publisher.load(world.stage("20261201T060000Z", rows(240)))
    assert result.rewritten and len(emu.rows("parcels")) == 240
    assert client_publisher.client.token_renewals == 2 and client_publisher.client.retries >= 1
    throttled = [r for r in emu.requests if r.status == 429]
    assert throttled and all("token=" not in r.path and not r.query.get("token") for r in emu.requests)


def test_timed_out_edit_is_checked_not_doubled(world: World, emu: AgoEmulator) -> None:
    emu.inject("timeout_after_commit", times=1, match="/addFeatures")
    emu.inject("http_502", times=1, match="parcels_green/FeatureServer/0/query")
    world.publisher().load(world.stage("20261201T060000Z", rows(120)))
    assert len(emu.rows("parcels")) == 120 and len({r["attributes"]["parcel_id"] for r in emu.rows("parcels")}) == 120


def test_schema_mismatch_fails_before_anything_changes(world: World, emu: AgoEmulator) -> None:
    world.publisher().load(world.stage("20261201T060000Z", rows(30)))
    wider = TableSchema(SCHEMA.columns[:4] + (Column("zoning", "string"),) + SCHEMA.columns[4:])
    data = [r[:4] + ["RM1"] + r[4:] for r in rows(30)]
    emu.clear_requests()
    with pytest.raises(AgoLoadError, match=r"schema of .* does not match the staged table — no field zoning. Nothing was changed"):
        world.publisher().load(world.stage("20261202T060000Z", data, wider))
    assert not emu.requests_to("truncate") and not emu.requests_to("addFeatures") and emu.view_source("parcels") == "parcels_green"


def test_upsert_sends_only_changed_rows(tmp_path: Path, emu: AgoEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path, emu, monkeypatch, mode="upsert")
    first = world.publisher().load(world.stage("20261201T060000Z", rows(1000)))
    assert first.counts == {"inserted": 1000, "updated": 0, "deleted": 0, "unchanged": 0}
    oids = {r["attributes"]["parcel_id"]: r for r in emu.rows("parcels_blue")}
    changed = set(range(0, 1000, 100))  # 1%
    data = [r for r in rows(1005, changed=changed) if int(r[0]) not in (7, 8)]  # 5 new, 2 stale, 10 changed
    emu.clear_requests()
    second = world.publisher().load(world.stage("20261202T060000Z", data))
    assert second.counts == {"inserted": 5, "updated": 10, "deleted": 2, "unchanged": 988}
    forms = [parse_qs(r.body.decode()) for r in emu.requests_to("applyEdits")]
    assert sum(len(json.loads(f["updates"][0])) for f in forms if "updates" in f) == 10  # only changed rows are sent
    assert sum(len(json.loads(f["adds"][0])) for f in forms if "adds" in f) == 5
    after = {r["attributes"]["parcel_id"]: r for r in emu.rows("parcels_blue")}
    assert len(after) == 1003 and after[100]["attributes"]["name"] == "a100*" and 7 not in after
    assert all(after[k] == oids[k] for k in (1, 2, 3, 999))  # unchanged rows untouched


def test_webhook_and_revise_date_failure_is_retried_next_run(world: World, emu: AgoEmulator) -> None:
    received: list[dict[str, Any]] = []
    fail = {"on": True}

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if fail["on"]:
                self.send_response(503)
            else:
                received.append(json.loads(body))
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/catalog"
    try:
        result = world.publisher(webhook=url).load(world.stage("20261201T060000Z", rows(20)))
        assert result.rewritten and not result.pushed and len(emu.rows("parcels")) == 20  # the publish stands
        # Complete for the run that tried (luigi checks right after run(): a down catalog never fails a publish) …
        assert world.publisher(webhook=url).is_published("20261201T060000Z")
        forget_push_attempts()  # … and not for the next run, which comes back to push
        assert not world.publisher(webhook=url).is_published("20261201T060000Z")
        fail["on"] = False
        assert world.publisher(webhook=url).push_pending() is True
        assert world.publisher(webhook=url).is_published("20261201T060000Z")
        assert received[0]["dataset"] == "dor__parcels" and received[0]["version"] == "20261201T060000Z" and received[0]["rows"] == 20
        # unchanged data: no push at all
        world.publisher(webhook=url).load(world.stage("20261202T060000Z", rows(20)))
        assert len(received) == 1
    finally:
        server.shutdown()


def test_esri_geometry_rings_holes_reprojection_and_z() -> None:
    polygons = EsriGeometry("esriGeometryPolygon", 2272)
    # OGC order (exterior counter-clockwise, hole clockwise), two parts: Esri wants the opposite.
    wkt = "SRID=2272;MULTIPOLYGON(((0 0,10 0,10 10,0 10,0 0),(2 2,2 4,4 4,4 2,2 2)),((20 0,25 0,25 5,20 5,20 0)))"
    rings = polygons.convert(wkt)["rings"]
    assert len(rings) == 3 and signed_area(rings[0]) < 0 and signed_area(rings[1]) > 0 and signed_area(rings[2]) < 0
    projected = EsriGeometry("esriGeometryPoint", 102729).convert("SRID=4326;POINT(-75.1652 39.9526)")
    assert abs(projected["x"] - 2694000) < 3000 and abs(projected["y"] - 236000) < 3000
    z = EsriGeometry("esriGeometryPolyline", 2272, has_z=True).convert("SRID=2272;LINESTRING Z (1 2 3,4 5 6)")
    assert z["hasZ"] is True and z["paths"] == [[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]]
    flat = EsriGeometry("esriGeometryPoint", 2272).convert("SRID=2272;POINT ZM (1 2 3 4)")
    assert flat == {"x": 1.0, "y": 2.0, "spatialReference": {"wkid": 2272}}


def test_luigi_publish_to_carto_destination_and_ago_from_one_staged_version(pipeline: Any, emu: AgoEmulator,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Real luigi: Publish requires the SQL Load and LoadAgo; both read one Extract; a rerun does nothing;
    an unreachable AGO fails only LoadAgo, the PostGIS table is still published."""
    from databridge_luigi.tasks import LoadAgo, Publish
    from tests.pipeline import make_points_table

    make_points_table(pipeline, "gis_lni", "violations", 150)
    fields = [field_def("address", "esriFieldTypeString", 60),
              field_def("code", "esriFieldTypeString", 10), field_def("opened", "esriFieldTypeDate"),
              field_def("fine", "esriFieldTypeDouble")]
    blue, green = emu.create_service("viol_a", fields), emu.create_service("viol_b", fields)
    view = emu.create_view("violations", "viol_a")
    monkeypatch.setenv("DATABRIDGE_CONN_AGO", emu.connection_url())
    pipeline.config("lni__violations", f"""
        schedule_interval: "0 6 * * *"
        carto_users: []
        upload_to_ago: true
        ago: {{item: {view.id}, sources: [{blue.id}, {green.id}]}}
        """)
    first = pipeline.run(Publish(dataset_id="lni__violations"))
    assert first.ok, first.summary
    assert len(emu.rows("violations")) == 150 and emu.view_source("violations") == "viol_b"
    assert pipeline.dest("SELECT count(*) FROM public.violations")[0][0] == 150
    assert "LoadAgo" in first.summary and first.summary.count("Extract") == 1
    assert pipeline.run(Publish(dataset_id="lni__violations")).did_nothing
    monkeypatch.setenv("DATABRIDGE_CONN_AGO", "ago+http://phl_etl:secret-password@127.0.0.1:9")  # nothing listens
    emu.clear_requests()
    forced = pipeline.run(Publish(dataset_id="lni__violations", force=True))
    assert not forced.ok and "LoadAgo" in forced.summary
    assert len(pipeline.markers("lni__violations")) == 2  # the SQL load went ahead on its own


def test_validate_list_and_plan_show_the_ago_destination(world: World, emu: AgoEmulator, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from databridge_luigi import cli

    bad = tmp_path / "configs" / "databridge" / "dor" / "broken.yml"
    bad.write_text(json.dumps({"schedule_interval": "0 6 * * *", "upload_to_carto": False, "upload_to_ago": True,
                               "ago": {"item": "nope", "mode": "sideways"}}))
    missing = tmp_path / "configs" / "databridge" / "dor" / "noblock.yml"
    missing.write_text(json.dumps({"schedule_interval": "0 6 * * *", "upload_to_carto": False, "upload_to_ago": True}))
    assert cli.main(["validate", str(tmp_path / "configs")]) == 1
    out = capsys.readouterr()
    text = out.out + out.err
    assert "broken.yml: ago.item: 'nope' is not an ArcGIS item id" in text and "broken.yml: ago.mode" in text
    assert "noblock.yml: ago: required when upload_to_ago is true" in text
    bad.unlink()
    missing.unlink()
    monkeypatch.setenv("DATABRIDGE_CONFIG_DIR", str(tmp_path / "configs"))
    monkeypatch.setenv("DATABRIDGE_STAGING", str(tmp_path / "staging"))
    cli.main(["list"])
    assert f"ago_test:item {world.view.id} [swap]" in capsys.readouterr().out
    from databridge_luigi.schedule import due_version

    due = due_version("0 6 * * *")
    cli.main(["plan"])
    assert "ago DUE" in capsys.readouterr().out
    world.publisher().load(world.stage(due, rows(10)))
    cli.main(["plan"])
    assert "ago yes" in capsys.readouterr().out


def test_a_second_loader_waits_for_the_lease_then_fails_naming_the_holder(world: World, emu: AgoEmulator) -> None:
    staged = world.stage("20261201T060000Z", rows(400))
    holder = world.publisher()
    holder._acquire_lease()
    second = world.publisher()
    started = time.monotonic()
    with pytest.raises(AgoLoadError, match=rf"being loaded by {holder.run_id}"):
        second._acquire_lease(wait_seconds=1.0)
    assert 1.0 <= time.monotonic() - started < 5
    assert not emu.requests_to("addFeatures")
    holder._release()
    assert second.load(staged).rewritten  # free again: the next loader goes ahead


def test_truncate_append_and_indexes_are_idempotent(tmp_path: Path, emu: AgoEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path, emu, monkeypatch, mode="truncate_append")
    world.publisher().load(world.stage("20261201T060000Z", rows(90)))
    world.publisher().load(world.stage("20261202T060000Z", rows(95, "b")), force=True)
    assert names(emu, "parcels_blue") == [f"b{i}" for i in range(95)]
    assert sum(1 for i in emu.layer("parcels_blue").indexes if i["fields"] == "name") == 1
    assert len([r for r in emu.requests_to("addToDefinition")]) == 1  # the second run saw the index and posted nothing


def test_emulator_runs_as_a_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "tests.emulators.ago", "--port", "0", "--user", "u1:pw-123456"],
                               cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, text=True)
    try:
        url = process.stdout.readline().strip()  # type: ignore[union-attr]
        made = requests.post(f"{url}/__emulator__/services", json={"name": "svc", "fields": FIELDS}).json()
        token = requests.post(f"{url}/sharing/rest/generateToken", data={"username": "u1", "password": "pw-123456", "f": "json"}).json()["token"]
        assert requests.get(f"{made['url']}/0", params={"f": "json"}, headers={"X-Esri-Authorization": f"Bearer {token}"}).json()["name"] == "svc"
        requests.post(f"{url}/__emulator__/expire_tokens")
        assert requests.get(f"{made['url']}/0", params={"f": "json", "token": token}).json()["error"]["code"] == 498
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_polygons_with_holes_reprojected_and_read_back_by_an_independent_reader(tmp_path: Path, emu: AgoEmulator,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """MULTIPOLYGONs with holes staged in EPSG:4326 (OGC winding) land in a 2272 layer as Esri rings; esridump,
    which reads clockwise rings as outers and counter-clockwise ones as holes, gets the same parts and holes."""
    from esridump.dumper import EsriDumper

    world = World(tmp_path, emu, monkeypatch)
    for name in ("parcels_blue", "parcels_green"):
        emu.layer(name).geometry_type = "esriGeometryPolygon"
    schema = TableSchema(SCHEMA.columns[:4] + (Column("shape", "geometry", geometry_type="multipolygon", srid=4326),))
    x, y = -75.165, 39.952
    d = 0.001
    shape = (f"SRID=4326;MULTIPOLYGON((({x} {y},{x + d} {y},{x + d} {y + d},{x} {y + d},{x} {y}),"
             f"({x + d / 4} {y + d / 4},{x + d / 4} {y + d / 2},{x + d / 2} {y + d / 2},{x + d / 2} {y + d / 4},{x + d / 4} {y + d / 4})),"
             f"(({x + 2 * d} {y},{x + 3 * d} {y},{x + 3 * d} {y + d},{x + 2 * d} {y + d},{x + 2 * d} {y})))")
    data = [[str(i), f"p{i}", "1.5", "2026-01-01", shape] for i in range(3)]
    world.publisher().load(world.stage("20261201T060000Z", data, schema))
    stored = emu.rows("parcels")[0]["geometry"]["rings"]
    assert len(stored) == 3 and abs(stored[0][0][0] - 2694000) < 5000  # feet in PA South, not degrees
    token = world.token()
    features = list(EsriDumper(f"{world.view.url}/0", extra_query_args={"token": token}, outSR="4326", timeout=10))
    geometry = features[0]["geometry"]
    assert geometry["type"] == "MultiPolygon" and [len(p) for p in geometry["coordinates"]] == [2, 1]
    corner = geometry["coordinates"][0][0][0]
    assert abs(corner[0] - x) < 1e-6 and abs(corner[1] - y) < 1e-6  # and back to the same degrees


def test_status_names_the_ago_destination(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from databridge_luigi import cli

    monkeypatch.setenv("DATABRIDGE_CONFIG_DIR", str(tmp_path / "configs"))
    monkeypatch.setenv("DATABRIDGE_STAGING", str(tmp_path / "staging"))
    cli.main(["status", "--json"])
    assert f"ago_test:ago item {world.view.id} [swap]" in capsys.readouterr().out
