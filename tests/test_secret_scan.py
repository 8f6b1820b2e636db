"""One publish with distinctive secret values in every connection, then a search for them everywhere a
secret could leak: worker and luigid output, luigid's API and state file, the environment and argv of every
process on the machine while it ran, staged files, the Slack message, and a Batch submission's requests.

Every connection comes from Secrets Manager (moto's server over HTTP): the source's, Knack's and Slack's
from one secret per connection (DATABRIDGE_SECRETS_PREFIX), CARTO's from the shared JSON secret
(DATABRIDGE_SECRETS_ID). The worker's environment therefore holds secret *names* only. One dataset fails on
purpose, so exception texts, luigid's error view and a Slack alert are part of the scan.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
import pytest

from tests.conftest import ADMIN_DSN, create_postgis_database, drop_database, ensure_role
from tests.emulators.carto import CartoEmulator
from tests.emulators.knack import KnackEmulator
from tests.emulators.slack import SlackEmulator
from tests.test_batch_submit import SCRIPT, batch_setup, sent  # noqa: F401  (fixtures)
from tests.test_luigid import LUIGID, api, free_port, wait_until_ready

ROOT = Path(__file__).resolve().parents[1]
LUIGI = str(Path(LUIGID).with_name("luigi"))

SOURCE_PW = "ScanSrcPw-71d3e-Q"
CARTO_KEY = "ScanCartoKey-0c9f2-W"
KNACK_KEY = "ScanKnackKey-5a8b1-E"
SLACK_TOKEN = "ScanSlackTok-e44d7-R"
SECRETS = (SOURCE_PW, CARTO_KEY, KNACK_KEY, SLACK_TOKEN)
KNACK_APP = "5d79bbbbbbbbbbbbbbbbbbbb"
HOURLY = "schedule_interval: 0 * * * *\nupload_to_carto: true\ncarto_users: [publicuser]\n"
KNACK = HOURLY + "knack_object_id: 1\nknack_conn_id: knack\n"
BROKEN = HOURLY + "source: {table: no_such_table}\n"
UNREACHABLE = HOURLY.replace("upload_to_carto: true", "upload_to_carto: true\ncarto_conn_id: carto_down")


class ProcessWatcher:
    """Samples argv and environment of every process on the machine until stopped."""

    def __init__(self) -> None:
        self.seen: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        text = (entry / "cmdline").read_bytes() + b"\0" + (entry / "environ").read_bytes()
                    except OSError:  # gone, or not ours to read
                        continue
                    self.seen[int(entry.name)] = text.decode("utf-8", "replace")
            time.sleep(0.05)


@pytest.fixture()
def world(tmp_path, aws, postgis_dsn) -> Iterator[dict]:
    ensure_role("publicuser")
    ensure_role("tileuser")
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"DROP ROLE IF EXISTS dbl_scan_src; CREATE ROLE dbl_scan_src LOGIN SUPERUSER PASSWORD '{SOURCE_PW}'")
    with psycopg.connect(postgis_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS gis_scan; DROP TABLE IF EXISTS gis_scan.points")
        conn.execute("CREATE TABLE gis_scan.points AS SELECT g AS id, 'addr ' || g AS address, "
                     "ST_SetSRID(ST_MakePoint(2690000 + g, 230000 + g), 2272)::geometry(Point, 2272) AS shape "
                     "FROM generate_series(1, 300) g")
    carto_db = create_postgis_database("dbl_scan_carto")
    for rel, body in (("databridge/scan/points.yml", HOURLY), ("databridge/scan/broken.yml", BROKEN), ("databridge/scan/elsewhere.yml", UNREACHABLE),
                      ("knack/carto_phl/scan/facilities.yml", KNACK)):
        path = tmp_path / "configs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    with CartoEmulator(carto_db, {"phl": CARTO_KEY}) as carto, KnackEmulator() as knack, SlackEmulator() as slack:
        knack.seed_all_field_types(KNACK_APP, KNACK_KEY, 120)
        slack.add_webhook(f"/services/T0/B0/{SLACK_TOKEN}")
        prefix, shared = f"scan-{uuid.uuid4().hex[:8]}/conn/", f"scan-{uuid.uuid4().hex[:8]}/all"
        client = boto3.client("secretsmanager")
        source_url = postgis_dsn.replace("postgresql://postgres@", f"postgresql://dbl_scan_src:{SOURCE_PW}@")
        client.create_secret(Name=prefix + "databridge", SecretString=source_url)
        client.create_secret(Name=prefix + "knack", SecretString=f"knack+http://{KNACK_APP}:{KNACK_KEY}@{knack.url.split('://')[1]}")
        client.create_secret(Name=prefix + "slack", SecretString=json.dumps({"url": f"{slack.url}/services/T0/B0/{SLACK_TOKEN}"}))
        client.create_secret(Name=shared, SecretString=json.dumps({
            "carto_phl": carto.connection_url("phl"),
            "carto_down": f"carto+http://phl:{CARTO_KEY}@127.0.0.1:{free_port()}/user/phl",  # nobody listens
        }))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRIDGE_", "LUIGI_"))}
        env.update({"DATABRIDGE_CONFIG_DIR": str(tmp_path / "configs"), "DATABRIDGE_STAGING": str(tmp_path / "staging"),
                    "DATABRIDGE_SECRETS_PREFIX": prefix, "DATABRIDGE_SECRETS_ID": shared})
        yield {"env": env, "root": tmp_path, "carto_db": carto_db, "slack": slack, "carto": carto}
    drop_database(carto_db)


@pytest.fixture()
def luigid_logged(tmp_path) -> Iterator[tuple[int, Path, subprocess.Popen]]:
    port, log = free_port(), tmp_path / "luigid.log"
    with log.open("wb") as out:
        process = subprocess.Popen([LUIGID, "--address", "127.0.0.1", "--port", str(port), "--state-path",
                                    str(tmp_path / "state.pickle"), "--logdir", str(tmp_path)], stdout=out, stderr=out)
    wait_until_ready(port, process)
    yield port, tmp_path, process
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=20)


def test_no_secret_anywhere_after_a_publish_with_a_failure(world, luigid_logged, batch_setup, sent):  # noqa: F811
    port, luigid_dir, luigid = luigid_logged
    env = world["env"]
    assert not any(secret in json.dumps(env) for secret in SECRETS)  # the worker gets names, never values
    with ProcessWatcher() as watcher:
        worker = subprocess.run([LUIGI, "--module", "databridge_luigi", "PublishAll", "--scheduler-host", "127.0.0.1",
                                 "--scheduler-port", str(port)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    # One dataset fails in Extract (30) and one cannot even be checked (35, luigi.cfg [retcode] takes the max).
    assert worker.returncode == 35, worker.stderr[-3000:]
    assert "published 300 rows" in worker.stderr and "published 120 rows" in worker.stderr  # the others really ran
    assert "scan__broken" in worker.stderr and "no_such_table" in worker.stderr
    assert "destination 'carto_down'" in worker.stderr and "gave up after" in worker.stderr

    failed = api(port, "task_list", status="FAILED", upstream_status="", search="")
    assert failed, "the broken dataset's failure should be in luigid"
    errors = [api(port, "fetch_error", task_id=task_id) for task_id in failed]
    assert any("no_such_table" in json.dumps(e) for e in errors)
    done = api(port, "task_list", status="DONE", upstream_status="", search="")
    assert sum(1 for t in done.values() if t["name"] == "Load") == 2
    assert len(world["slack"].messages) == 1

    staged = []
    for path in (world["root"] / "staging").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            staged.append((gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8", "replace"))
    assert len(staged) >= 6  # data, schema and manifest of two datasets at least

    batch_env = dict(env, AWS_ENDPOINT_URL=batch_setup["url"], LUIGI_CONFIG_PATH=str(luigid_dir / "batch.cfg"))
    (luigid_dir / "batch.cfg").write_text(f"[databridge_batch]\njob_queue = {batch_setup['queue']}\n"
                                          f"job_definition = {batch_setup['definition']}\nscheduler_host = luigid.internal\n")
    submitted = subprocess.run([str(SCRIPT), "submit", "--all", "--no-wait"], cwd=ROOT, env=batch_env,
                               capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert len(sent) == 4  # every configured dataset
    luigid.terminate()  # luigid writes its state file on the way out
    luigid.wait(timeout=20)

    places = {
        "worker output": worker.stdout + worker.stderr,
        "luigid log": (luigid_dir / "luigid.log").read_text("utf-8", "replace"),
        "luigid API": json.dumps([failed, done, errors]),
        "luigid state file": (luigid_dir / "state.pickle").read_bytes().decode("latin-1"),
        "Slack message": json.dumps(world["slack"].messages),
        "staged files": "\n".join(staged),
        "Batch requests": json.dumps(sent) + submitted.stdout + submitted.stderr,
    }
    places.update({f"process {pid} argv/environ": text for pid, text in watcher.seen.items()})
    assert len(watcher.seen) > 3
    # Positive control: the search does find a key where it must be (what the CARTO server authenticated with:
    # the key now travels as HTTP Basic auth, which the emulator logs redacted and records apart).
    assert CARTO_KEY in json.dumps([(r.query, r.headers, r.api_key) for r in world["carto"].requests])
    leaks = [(where, secret) for where, text in places.items() for secret in SECRETS if secret in text]
    assert leaks == []


# --- ArcGIS Online (issue 13) ---------------------------------------------------------------------------------

AGO_PW = "ScanAgoPw-3e81c-T"


def test_no_ago_secret_or_token_anywhere(tmp_path, aws, postgis_dsn, luigid_logged):
    """A real worker process publishes to the AGO emulator with the password from Secrets Manager (one
    dataset fails on a missing item): neither the password nor any token the emulator issued appears in
    worker or luigid output, luigid's API and state file, or any process's argv/environment; no request
    carried a token in its URL."""
    from tests.emulators.ago import AgoEmulator, field_def

    port, luigid_dir, luigid = luigid_logged
    with psycopg.connect(postgis_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS gis_scan; DROP TABLE IF EXISTS gis_scan.ago_points")
        conn.execute("CREATE TABLE gis_scan.ago_points AS SELECT g AS id, 'addr ' || g AS address, "
                     "ST_SetSRID(ST_MakePoint(2690000 + g, 230000 + g), 2272)::geometry(Point, 2272) AS shape "
                     "FROM generate_series(1, 90) g")
    with AgoEmulator({"scan_user": AGO_PW}) as emu:
        fields = [field_def("id", "esriFieldTypeInteger"), field_def("address", "esriFieldTypeString", 40)]
        a, b = emu.create_service("scan_a", fields), emu.create_service("scan_b", fields)
        view = emu.create_view("scan_view", "scan_a")
        base = "schedule_interval: 0 * * * *\nupload_to_carto: false\nupload_to_ago: true\n"
        for name, item in (("ago_points", view.id), ("ago_missing", "f" * 32)):
            path = tmp_path / "configs" / "databridge" / "scan" / f"{name}.yml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(base + f"source: {{table: ago_points}}\nago: {{item: {item}, sources: [{a.id}, {b.id}]}}\n")
        prefix = f"scan-{uuid.uuid4().hex[:8]}/conn/"
        boto3.client("secretsmanager").create_secret(Name=prefix + "ago", SecretString=emu.connection_url("scan_user"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRIDGE_", "LUIGI_"))}
        env.update({"DATABRIDGE_CONFIG_DIR": str(tmp_path / "configs"), "DATABRIDGE_STAGING": str(tmp_path / "staging"),
                    "DATABRIDGE_SECRETS_PREFIX": prefix, "DATABRIDGE_CONN_DATABRIDGE": postgis_dsn})
        with ProcessWatcher() as watcher:
            worker = subprocess.run([LUIGI, "--module", "databridge_luigi", "PublishAll", "--scheduler-host", "127.0.0.1",
                                     "--scheduler-port", str(port)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert worker.returncode in (30, 35), worker.stderr[-3000:]
        assert len(emu.rows("scan_view")) == 90 and emu.view_source("scan_view") == "scan_b"
        assert "scan__ago_missing" in worker.stderr
        failed = api(port, "task_list", status="FAILED", upstream_status="", search="")
        errors = [api(port, "fetch_error", task_id=task_id) for task_id in failed]
        done = api(port, "task_list", status="DONE", upstream_status="", search="")
        assert any(t["name"] == "LoadAgo" for t in done.values())
        luigid.terminate()
        luigid.wait(timeout=20)
        tokens = list(emu.tokens)
        assert tokens and all(not r.query.get("token") and "token=" not in r.path for r in emu.requests)
        # Positive control: the emulator did receive the password and the tokens (body and header).
        assert AGO_PW in json.dumps([r.body.decode("utf-8", "replace") for r in emu.requests])
        assert tokens[0] in json.dumps([r.headers for r in emu.requests])
    places = {
        "worker output": worker.stdout + worker.stderr,
        "luigid log": (luigid_dir / "luigid.log").read_text("utf-8", "replace"),
        "luigid API": json.dumps([failed, done, errors]),
        "luigid state file": (luigid_dir / "state.pickle").read_bytes().decode("latin-1"),
    }
    places.update({f"process {pid} argv/environ": text for pid, text in watcher.seen.items()})
    leaks = [(where, secret[:6]) for where, text in places.items() for secret in [AGO_PW, *tokens] if secret in text]
    assert leaks == []
