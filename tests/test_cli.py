"""The ``databridge-luigi`` console script, run for real as a subprocess (databridge_luigi/cli.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
EXAMPLES = CONFIGS / "examples"
BROKEN = Path(__file__).resolve().parent / "broken_configs"
SCRIPT = Path(sys.executable).parent / "databridge-luigi"

PASSWORD = "Qx7-pl4nTest-s3cret-9Zk"
UNREACHABLE = f"postgresql://nobody:{PASSWORD}@127.0.0.1:1/x"
VERSION = re.compile(r"^\d{8}T\d{6}Z$")
OK_BODY = "upload_to_carto: true\ncarto_users: [publicuser]\n"


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the console script with a clean environment (no inherited DATABRIDGE_* or luigi config)."""
    assert SCRIPT.is_file(), f"console script not installed next to {sys.executable}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRIDGE_", "LUIGI_"))}
    clean.update(env or {})
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=60)


def assert_no_traceback(result: subprocess.CompletedProcess) -> None:
    both = result.stdout + result.stderr
    assert "Traceback" not in both
    assert 'File "' not in both


def table_rows(stdout: str) -> list[list[str]]:
    """The printed table, split on runs of 2+ spaces; the header row first."""
    return [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines() if line.strip()]


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- validate -----------------------------------------------------------------------------------------------

def test_validate_shipped_configs(tmp_path):
    result = run("validate", str(CONFIGS), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"99 dataset(s) valid, 0 problem(s) in {CONFIGS}" in result.stdout
    assert_no_traceback(result)


def test_validate_with_config_dir_option(tmp_path):
    result = run("--config-dir", str(EXAMPLES), "validate", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 dataset(s) valid, 0 problem(s)" in result.stdout


@pytest.mark.parametrize("case, key, reason", [
    ("cron_minute_61", "schedule_interval", "not a valid cron expression: '61 * * * *'"),
    ("unknown_nested_key_source_tabel", "source.tabel", "unknown key (did you mean 'table'?)"),
    ("yaml_unclosed_bracket", "line 4, column 1", "YAML syntax error"),
    ("not_utf8", "-", "file is not UTF-8 text"),
    ("knack_missing_object_id", "knack_object_id", "required for a Knack dataset"),
])
def test_validate_broken_case(tmp_path, case, key, reason):
    root = BROKEN / case
    (path,) = [p for p in root.rglob("*") if p.is_file()]
    result = run("validate", str(root), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith(f"{path}: {key}: {reason}")
    assert "0 dataset(s) valid, 1 problem(s)" in result.stderr
    assert_no_traceback(result)


def test_validate_lists_every_problem_of_a_tree(tmp_path):
    write(tmp_path, "cfg/databridge/lni/good.yml", OK_BODY)
    write(tmp_path, "cfg/databridge/lni/a.yml", "schedule_interval: 61 * * * *\n" + OK_BODY)
    write(tmp_path, "cfg/databridge/lni/b.yml", "indexes: [a++b]\n" + OK_BODY)
    write(tmp_path, "cfg/databridge/lni/c.yml", "carto_user: [x]\n" + OK_BODY)
    result = run("validate", "cfg", cwd=tmp_path)
    assert result.returncode == 1
    assert sorted(line.split(":")[0] for line in result.stdout.splitlines()) == [
        f"cfg/databridge/lni/{n}.yml" for n in "abc"]
    assert "1 dataset(s) valid, 3 problem(s)" in result.stderr
    assert_no_traceback(result)


def test_validate_missing_directory(tmp_path):
    result = run("validate", str(tmp_path / "nope"), cwd=tmp_path)
    assert result.returncode == 1
    assert f"{tmp_path / 'nope'}: -: config directory does not exist" in result.stdout
    assert_no_traceback(result)


# --- list ---------------------------------------------------------------------------------------------------

def test_list_shipped_configs(tmp_path):
    result = run("--config-dir", str(CONFIGS), "list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert rows[0] == ["DATASET", "KIND", "SCHEDULE (UTC)", "SOURCE", "DESTINATION"]
    body = {row[0]: row[1:] for row in rows[1:]}
    assert len(rows) - 1 == len(body) == 99  # 78 Databridge + 20 Knack + 1 Airtable
    assert [row[0] for row in body.values()].count("knack") == 20
    assert body["airtable__immigrant_services"] == ["airtable", "manual", "airtable:immigrant_services", "carto_phl:oia_services"]
    assert body["lni__violations"] == ["databridge", "4 11 * * *", "databridge:gis_lni.violations", "carto_phl:violations"]
    assert body["ppr__ppr_playgrounds"][1] == "0 5 * Jan,Apr,Jul,Oct 0#1"
    assert body["commerce__koz_parcels"] == ["databridge", "manual", "databridge:gis_commerce.koz_parcels", "(staging only)"]
    assert sum(row[1] == "manual" for row in body.values()) == 29  # 28 Databridge + the Airtable one
    assert sum(row[3] == "(staging only)" for row in body.values()) == 3
    assert_no_traceback(result)


def test_list_examples_with_config_dir():
    result = run("--config-dir", "configs/examples", "list", cwd=REPO)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)[1:]
    assert [row[0] for row in rows] == ["demo__permit_types", "demo__violations", "demo__zoning_districts"]
    assert rows[1] == ["demo__violations", "databridge", "0 6 * * *", "databridge:main.violations", "carto_phl:violations"]


def test_list_uses_env_config_dir(tmp_path):
    result = run("list", cwd=tmp_path, env={"DATABRIDGE_CONFIG_DIR": str(EXAMPLES)})
    assert result.returncode == 0, result.stderr
    assert len(table_rows(result.stdout)) == 1 + 3


def test_list_marks_disabled_and_knack(tmp_path):
    write(tmp_path, "cfg/databridge/lni/off.yml", "enabled: false\n" + OK_BODY)
    write(tmp_path, "cfg/knack/carto_gsg/ppr/ppr_days.yml", "schedule_interval: 20 8 * * 2-6\nknack_object_id: 25\nknack_conn_id: knack_test\n" + OK_BODY)
    result = run("--config-dir", "cfg", "list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    body = {row[0]: row[1:] for row in table_rows(result.stdout)[1:]}
    assert body["lni__off"][3] == "carto_phl:off [disabled]"
    assert body["ppr__ppr_days__carto_gsg"] == ["knack", "20 8 * * 2-6", "knack_test:ppr_days", "carto_gsg:ppr_days"]


def test_list_names_a_broken_file_without_traceback(tmp_path):
    result = run("--config-dir", str(BROKEN / "cron_minute_61"), "list", cwd=tmp_path)
    assert result.returncode == 1
    assert table_rows(result.stdout) == [["DATASET", "KIND", "SCHEDULE (UTC)", "SOURCE", "DESTINATION"]]
    assert "schedule_interval: not a valid cron expression" in result.stderr
    assert "1 broken config file(s)" in result.stderr
    assert_no_traceback(result)


@pytest.mark.parametrize("command", ["list", "plan", "status"])
def test_a_broken_file_leaves_the_valid_datasets_listed(tmp_path, command):
    write(tmp_path, "cfg/databridge/lni/good.yml", "schedule_interval: 4 11 * * *\n" + OK_BODY)
    write(tmp_path, "cfg/databridge/lni/typo.yml", "schedule_intervall: 4 11 * * *\n" + OK_BODY)
    env = {"DATABRIDGE_CONN_CARTO_PHL": UNREACHABLE, "DATABRIDGE_STAGING": str(tmp_path / "staging")}
    result = run(command, "--config-dir", "cfg", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "lni__good" in result.stdout
    both = result.stdout + result.stderr
    assert "cfg/databridge/lni/typo.yml: schedule_intervall: unknown key (did you mean 'schedule_interval'?)" in both
    assert PASSWORD not in both
    assert_no_traceback(result)


def test_options_after_the_command(tmp_path):
    before = run("--config-dir", str(EXAMPLES), "list", cwd=tmp_path)
    after = run("list", "--config-dir", str(EXAMPLES), cwd=tmp_path)
    assert before.returncode == after.returncode == 0, after.stderr
    assert before.stdout == after.stdout and "demo__violations" in after.stdout
    plan = run("plan", "--config-dir", str(EXAMPLES), cwd=tmp_path)
    assert "demo__violations" in plan.stdout, plan.stderr


def test_user_errors_are_one_line_and_debug_adds_the_traceback(tmp_path):
    env = {"DATABRIDGE_STAGING": str(tmp_path / "staging")}
    unknown = run("history", "demo__violatons", "--config-dir", str(EXAMPLES), cwd=tmp_path, env=env)
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines() == [
        f"databridge-luigi history: no dataset 'demo__violatons' in {EXAMPLES}; did you mean 'demo__violations'?"]
    debug = run("history", "demo__violatons", "--config-dir", str(EXAMPLES), "--debug", cwd=tmp_path, env=env)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_no_command_is_a_usage_error(tmp_path):
    result = run(cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: databridge-luigi" in result.stderr


# --- plan ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, password", [
    (UNREACHABLE, PASSWORD),
    (f"postgresql://nobody:{PASSWORD}@127.0.0.1:notaport/x", PASSWORD),
    # libpq echoes a badly percent-encoded password in its error text: only redaction keeps it out
    ("postgresql://nobody:Qx7%pl4nTest-s3cret-9Zk@127.0.0.1:1/x", "Qx7%pl4nTest-s3cret-9Zk"),
], ids=["refused", "bad-port", "password-in-driver-error"])
def test_plan_with_unreachable_destination(tmp_path, url, password):
    result = run("--config-dir", str(EXAMPLES), "plan", cwd=tmp_path, env={"DATABRIDGE_CONN_CARTO_PHL": url})
    both = result.stdout + result.stderr
    assert password not in both
    assert "pl4nTest" not in both
    assert result.returncode == 1, both  # the plan is printed, and the exit says some rows are unknown
    assert_no_traceback(result)
    rows = table_rows(result.stdout)
    assert rows[0] == ["DATASET", "DUE VERSION", "PUBLISHED", "NEXT RUN (UTC)"]
    assert [row[0] for row in rows[1:4]] == ["demo__permit_types", "demo__violations", "demo__zoning_districts"]
    body, notes = rows[1:4], rows[4:]
    for row in body:
        assert len(row) == 4, row
        assert VERSION.match(row[1]), row
        assert row[2] == "unknown [1]", row
        assert re.match(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}$", row[3]), row
    assert {row[1][9:] for row in body} == {"150000Z", "060000Z", "050000Z"}
    # The error is said once, in a footer, not cut off in every row
    assert notes[0] == ["3 dataset(s) could not be checked:"]
    assert len(notes) == 2 and notes[1][0].startswith("[1] carto_phl: ")
    assert max(len(line) for line in result.stdout.splitlines()[:4]) < 100


def test_plan_with_no_destination_configured(tmp_path):
    result = run("--config-dir", str(EXAMPLES), "plan", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    rows = table_rows(result.stdout)[1:]
    assert len(rows) == 3 + 2
    assert all(row[2] == "unknown [1]" for row in rows[:3])
    assert rows[4][0].startswith("[1] carto_phl: UnknownConnectionError: unknown connection 'carto_phl'")


def test_plan_manual_disabled_and_stage_only(tmp_path):
    write(tmp_path, "cfg/databridge/lni/by_hand.yml", "schedule_interval: false\n" + OK_BODY)
    write(tmp_path, "cfg/databridge/lni/switched_off.yml", "schedule_interval: 4 11 * * *\nenabled: false\n" + OK_BODY)
    write(tmp_path, "cfg/databridge/commerce/koz_parcels.yml", "schedule_interval: 0 6 * * *\nupload_to_carto: false\n")
    write(tmp_path, "cfg/databridge/lni/violations.yml", "schedule_interval: 4 11 * * *\n" + OK_BODY)
    env = {"DATABRIDGE_CONN_CARTO_PHL": UNREACHABLE, "DATABRIDGE_STAGING": str(tmp_path / "staging")}
    result = run("--config-dir", "cfg", "plan", cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stderr  # lni__violations's destination is unreachable
    assert PASSWORD not in result.stdout + result.stderr
    assert_no_traceback(result)
    body = {row[0]: row[1:] for row in table_rows(result.stdout)[1:]}
    assert body["lni__by_hand"] == ["-", "manual", "manual"]
    assert body["lni__switched_off"] == ["-", "disabled", "-"]
    assert body["commerce__koz_parcels"][1] == "due (staging only)"
    assert VERSION.match(body["commerce__koz_parcels"][0])
    assert body["lni__violations"][1] == "unknown [1]"


def test_plan_check_fails_while_a_due_version_is_not_published(tmp_path):
    """The cron wrapper's test after luigi's exit 25: nothing due is unpublished → 0; one due → 1, named."""
    write(tmp_path, "cfg/databridge/lni/by_hand.yml", "schedule_interval: false\n" + OK_BODY)
    write(tmp_path, "cfg/databridge/lni/switched_off.yml", "schedule_interval: 4 11 * * *\nenabled: false\n" + OK_BODY)
    env = {"DATABRIDGE_STAGING": str(tmp_path / "staging")}
    nothing_due = run("--config-dir", "cfg", "plan", "--check", cwd=tmp_path, env=env)
    assert nothing_due.returncode == 0, nothing_due.stdout + nothing_due.stderr
    write(tmp_path, "cfg/databridge/commerce/koz_parcels.yml", "schedule_interval: 0 6 * * *\nupload_to_carto: false\n")
    assert run("--config-dir", "cfg", "plan", cwd=tmp_path, env=env).returncode == 0  # without --check: a plan, not a verdict
    due = run("--config-dir", "cfg", "plan", "--check", cwd=tmp_path, env=env)
    assert due.returncode == 1, due.stdout + due.stderr
    assert due.stdout.rstrip().endswith("1 dataset(s) due and not published yet: commerce__koz_parcels")
    assert_no_traceback(due)


def test_validate_rejects_a_cron_that_never_fires(tmp_path):
    # "0 5 30 2 *" passes validate today, and then `plan` dies with exit 2 (CroniterBadDateError) for the
    # whole tree; validate must catch it first.
    root = BROKEN / "cron_never_fires"
    result = run("validate", str(root), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert ": schedule_interval: " in result.stdout
    assert_no_traceback(result)


def test_list_into_a_closed_pipe_is_quiet(tmp_path):
    result = subprocess.run(f"'{SCRIPT}' --config-dir '{CONFIGS}' list | head -1", shell=True, capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("DATASET")
    assert "BrokenPipe" not in result.stderr
