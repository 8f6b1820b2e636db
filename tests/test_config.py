"""Config discovery and validation (databridge_luigi/config/).

The expected inventory below is transcribed from the old system's reference (seed-system.md §2.1), not
from the files in ``configs/``, so that these tests catch a config that was lost or changed in the port.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest

from databridge_luigi.config import (
    DEFAULT_CARTO_CONN,
    MAX_TABLE_NAME,
    ConfigError,
    ConfigProblem,
    Registry,
    load_datasets,
)
from databridge_luigi.schedule import latest_fire_time

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
EXAMPLES = CONFIGS / "examples"
BROKEN = Path(__file__).resolve().parent / "broken_configs"

OK_BODY = "upload_to_carto: true\ncarto_users: [publicuser, tileuser]\n"

# --- the old system's inventory (seed-system.md §2.1) ------------------------------------------------------

_LNI_MINUTES = {
    "unsafe": 1, "case_investigations": 2, "permits": 3, "violations": 4, "clean_seal": 5, "imm_dang": 6,
    "business_licenses": 7, "complaints": 8, "demolitions": 9, "contractor_violations": 10,
    "trade_licenses": 10, "appeals": 11, "board_decisions": 12, "subcontractors": 12, "court_appeals": 13,
    "com_act_licenses": 14, "violation_definition": 14, "building_certs": 16,
}
_QUARTERLY = "0 5 * Jan,Apr,Jul,Oct 0#1"
SCHEDULED = {
    "311__public_cases_fc": "15 6 * * *",
    "311__salesforce_cases": "15 6 * * *",
    "ais_sources__ais_zoning_documents": "0 8 * * *",
    "dor__condominium": "0 15 * * 6",
    "dor__dor_parcel": "0 10 * * 0",
    "elections__polling_places": "0 5 * * *",
    "elections__splits": "0 5 * * *",
    **{f"lni__{table}": f"{minute} 11 * * *" for table, minute in _LNI_MINUTES.items()},
    "oddt__opa_properties_public": "0 6 * * *",
    "oddt__opa_properties_public_pde": "0 6 * * *",
    "oddt__opa_properties_public_test": "0 6 * * *",
    "opa__assessments": "0 6 * * *",
    "planning__land_use": "0 7 1 * *",
    "planning__zoning_basedistricts": "0 5 * * *",
    "planning__zoning_overlays": "0 5 * * *",
    "police__car_ped_stops": "0 7 * * *",
    "police__incidents_part1_part2": "30 11 * * *",
    "police__shootings": "00 15 * * *",
    **{f"ppr__ppr_{t}": _QUARTERLY for t in ("adult_exercise_equipment", "picnic_sites", "playgrounds", "properties",
                                              "spraygrounds", "swimming_pools", "tennis_courts")},
    "ppr__ppr_hydration_stations": "0 5 * * *",
    "ppr__ppr_website_locatorpoints": "0 8 * * 1",
    "streets__legal_cards": "0 5 * * *",
    "streets__streets_code_violation_notices": "30 6 * * *",
    "streets__wastebaskets_big_belly": "30 6 * * *",
    "water__inlets": "0 12 * * 0",
    "water__pwd_parcels": "0 10 * * 0",
    "watersheds__stormwater_grants": "0 7 * * *",
}
MANUAL_NON_HEALTH = {
    "ams__ams_sensor_data_aqi_24hrs", "ams__ams_sensor_data_aqi_hourly",
    "commerce__empowerment_zones", "commerce__keystone_innovation_zones", "commerce__koz_parcels",
    "dor__rtt_summary", "elections__elected_officials", "oddt__employee_salaries",
    "ohcd__neighborhood_energy_centers", "planning__percent_for_art_public",
    "police__ppd_complaints", "police__ppd_complaint_disciplines", "revenue__real_estate_tax_delinquencies",
}
STAGE_ONLY = {"commerce__empowerment_zones", "commerce__keystone_innovation_zones", "commerce__koz_parcels"}
INDEXES = {
    "311__public_cases_fc": ("requested_datetime",),
    "311__salesforce_cases": ("service_name", "agency_responsible", "requested_datetime", "status"),
    "ais_sources__ais_zoning_documents": ("doc_id",),
    "dor__condominium": ("mapref", "status"),
    "elections__elected_officials": ("office", "district"),
    "elections__polling_places": ("precinct",),
    "elections__splits": ("ballot_file_id", "state_house", "state_senate", "city_district", "federal_house"),
    "lni__appeals": ("scheduleddate", "opa_account_num"),
    "lni__business_licenses": ("opa_account_num",),
    "lni__case_investigations": ("opa_account_num",),
    "lni__permits": ("opa_account_num",),
    "lni__violations": ("address", "addressobjectid"),
    "police__incidents_part1_part2": ("dispatch_date",),
}
DEPT_COUNTS = {
    "311": 2, "ais_sources": 1, "ams": 2, "commerce": 3, "dor": 3, "elections": 3, "health": 15, "lni": 18,
    "oddt": 4, "ohcd": 1, "opa": 1, "planning": 4, "police": 5, "ppr": 9, "revenue": 1, "streets": 3,
    "water": 2, "watersheds": 1,
}


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def load_ok(root: Path, **kwargs) -> dict:
    datasets, problems = load_datasets(root, **kwargs)
    assert problems == []
    return {d.id: d for d in datasets}


@pytest.fixture(scope="module")
def shipped() -> dict:
    """The 78 Databridge configs of the old system (Knack and Airtable ones are checked in test_knack_airtable)."""
    return {i: d for i, d in load_ok(CONFIGS).items() if d.kind == "databridge"}


# --- the shipped tree ---------------------------------------------------------------------------------------

def test_every_shipped_config_loads_with_no_problem():
    datasets, problems = load_datasets(CONFIGS)
    assert [str(p) for p in problems] == []
    assert len(datasets) == 99
    assert len({d.id for d in datasets}) == 99
    kinds = [d.kind for d in datasets]
    assert (kinds.count("databridge"), kinds.count("knack"), kinds.count("airtable")) == (78, 20, 1)


def test_shipped_totals_match_the_old_system(shipped):
    values = list(shipped.values())
    assert all(d.kind == "databridge" for d in values)
    assert sum(d.schedule is None for d in values) == 28
    assert sum(not d.publish for d in values) == 3
    assert sum(bool(d.indexes) for d in values) == 13
    non_public = [d.id for d in values if set(d.grants) != {"publicuser", "tileuser"}]
    assert non_public == ["311__salesforce_cases"]
    assert shipped["311__salesforce_cases"].grants == ("tileuser", "cartodb_user_5219a680-1104-4b8d-bf75-f02f304849e1")


def test_shipped_departments_and_ids(shipped):
    counts: dict[str, int] = {}
    for d in shipped.values():
        counts[d.dept] = counts.get(d.dept, 0) + 1
        assert d.id == f"{d.dept}__{d.table}"
        assert Path(d.path).name.split(".")[0] == d.table
        assert Path(d.path).parent.name == d.dept
    assert counts == DEPT_COUNTS
    assert not any(i.startswith("demo__") for i in shipped)  # configs/examples is not part of the main tree


def test_shipped_schedules_match_the_inventory(shipped):
    scheduled = {i: d.schedule for i, d in shipped.items() if d.schedule is not None}
    assert scheduled == SCHEDULED
    manual = {i for i, d in shipped.items() if d.schedule is None}
    assert manual - {i for i in manual if i.startswith("health__covid_")} == MANUAL_NON_HEALTH
    assert len([i for i in manual if i.startswith("health__covid_")]) == 15


def test_shipped_schedules_are_all_evaluable(shipped):
    from datetime import datetime, timezone

    now = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
    for d in shipped.values():
        if d.schedule:
            assert latest_fire_time(d.schedule, now) <= now, d.id


def test_shipped_stage_only_and_indexes(shipped):
    assert {i for i, d in shipped.items() if not d.publish} == STAGE_ONLY
    assert {i: d.indexes for i, d in shipped.items() if d.indexes} == INDEXES


def test_shipped_defaults(shipped):
    for d in shipped.values():
        assert d.source_conn == "databridge"
        assert d.source_schema == f"gis_{d.dept}"
        assert d.source_table == d.table
        assert d.dest_conn == DEFAULT_CARTO_CONN == "carto_phl"
        assert d.dest_table == d.table
        assert d.dest_schema is None
        assert d.enabled is True
        assert d.carto_env is None and d.knack_object_id is None and d.airtable_base is None
        assert d.staging_segment == d.dept
        assert d.allow_empty is False
        assert d.row_count_tolerance == pytest.approx(0.15)


def test_lni_violations_derived_names(shipped):
    d = shipped["lni__violations"]
    assert (d.dept, d.table, d.kind) == ("lni", "violations", "databridge")
    assert d.indexes == ("address", "addressobjectid")
    assert d.schedule == "4 11 * * *"
    assert (d.source_conn, d.source_schema, d.source_table) == ("databridge", "gis_lni", "violations")
    assert (d.dest_conn, d.dest_table) == ("carto_phl", "violations")
    assert d.grants == ("publicuser", "tileuser")
    assert d.publish is True


def test_numeric_department_source_schema(shipped):
    assert shipped["311__public_cases_fc"].source_schema == "gis_311"


def test_trailing_yaml_comment_is_stripped_but_nth_weekday_kept(shipped):
    assert shipped["ppr__ppr_playgrounds"].schedule == "0 5 * Jan,Apr,Jul,Oct 0#1"
    # "false # manually triggered" and "false #manually triggered" are manual, not strings
    assert shipped["police__ppd_complaints"].schedule is None
    assert shipped["police__shootings"].schedule == "00 15 * * *"


def test_default_carto_conn_argument(tmp_path):
    write(tmp_path, "databridge/lni/a.yml", OK_BODY)
    write(tmp_path, "databridge/lni/b.yml", OK_BODY + "carto_conn_id: carto_gsg\n")
    write(tmp_path, "databridge/lni/c.yml", OK_BODY + "carto_conn_id: carto_gsg\ndestination: {conn: pg_local, table: c2, schema: open_data}\n")
    found = load_ok(tmp_path, default_carto_conn="pg_demo")
    assert found["lni__a"].dest_conn == "pg_demo"
    assert found["lni__b"].dest_conn == "carto_gsg"
    c = found["lni__c"]
    assert (c.dest_conn, c.dest_table, c.dest_schema) == ("pg_local", "c2", "open_data")
    assert c.id == "lni__c"  # the id follows the file, not the destination table


def test_new_optional_keys(tmp_path):
    (tmp_path / "databridge/lni").mkdir(parents=True)
    (tmp_path / "databridge/lni/violations.json").write_text('{"fields": []}')
    write(tmp_path, "databridge/lni/violations.yml", OK_BODY + (
        "indexes: [Address, STATUS+Violation_Date]\n"
        "source: {conn: databridge_test, schema: GIS_LNI_NEW, table: VIOLATIONS_V}\n"
        "geometry: {column: SHAPE, srid: 2272}\n"
        "allow_empty: true\nrow_count_tolerance: 0.5\ntimezone: UTC\nenabled: false\n"
        "schema_override: violations.json\n"))
    d = load_ok(tmp_path)["lni__violations"]
    assert d.indexes == ("address", "status+violation_date")  # lower-cased, as the old system did
    assert (d.source_conn, d.source_schema, d.source_table) == ("databridge_test", "GIS_LNI_NEW", "VIOLATIONS_V")
    assert (d.geometry_column, d.geometry_srid) == ("shape", 2272)
    assert (d.allow_empty, d.row_count_tolerance, d.timezone, d.enabled) == (True, 0.5, "UTC", False)
    assert d.schema_override == str(tmp_path / "databridge/lni/violations.json")
    assert d.staging_segment == "lni"  # only Knack datasets get the "_test" segment


def test_dataset_is_immutable(shipped):
    with pytest.raises(dataclasses.FrozenInstanceError):
        shipped["lni__violations"].schedule = "* * * * *"  # type: ignore[misc]


# --- examples -----------------------------------------------------------------------------------------------

def test_examples_load():
    found = load_ok(EXAMPLES)
    assert sorted(found) == ["demo__permit_types", "demo__violations", "demo__zoning_districts"]
    assert all(d.source_schema == "main" for d in found.values())
    assert found["demo__violations"].indexes == ("address", "status+violation_date")
    assert found["demo__violations"].schedule == "0 6 * * *"
    assert found["demo__permit_types"].schedule == "00 15 * * *"
    assert found["demo__permit_types"].allow_empty is True
    assert found["demo__zoning_districts"].schedule == "0 5 * Jan,Apr,Jul,Oct 0#1"
    assert all(d.grants == ("publicuser",) and d.dest_conn == "carto_phl" for d in found.values())


# --- Knack and Airtable layouts -----------------------------------------------------------------------------

KNACK_GSG = """\
schedule_interval: "25 8 * * 2-6"
upload_to_carto: true
carto_conn_id: carto_gsg
upload_to_ago:
carto_users: [publicuser, tileuser]
knack_object_id: 2
knack_conn_id: knack_test
"""


def test_knack_layout(tmp_path):
    write(tmp_path, "knack/carto_gsg/ppr/ppr_facilities.yml", KNACK_GSG)
    write(tmp_path, "knack/carto_phl/ppr/ppr_facilities.yml",
          KNACK_GSG.replace("carto_gsg", "carto_phl").replace("knack_test", "knack"))
    found = load_ok(tmp_path)
    assert sorted(found) == ["ppr__ppr_facilities__carto_gsg", "ppr__ppr_facilities__carto_phl"]
    gsg = found["ppr__ppr_facilities__carto_gsg"]
    assert (gsg.kind, gsg.dept, gsg.table, gsg.carto_env) == ("knack", "ppr", "ppr_facilities", "carto_gsg")
    assert gsg.knack_object_id == 2
    assert gsg.source_conn == "knack_test"
    assert gsg.source_schema is None
    assert gsg.dest_conn == "carto_gsg"
    assert gsg.dest_table == "ppr_facilities"
    assert gsg.schedule == "25 8 * * 2-6"
    assert gsg.staging_segment == "ppr_test"
    phl = found["ppr__ppr_facilities__carto_phl"]
    assert (phl.source_conn, phl.dest_conn, phl.staging_segment) == ("knack", "carto_phl", "ppr")


def test_knack_defaults_destination_to_env_folder_and_source_to_knack(tmp_path):
    write(tmp_path, "knack/carto_gsg/ppr/ppr_days.yml", OK_BODY + "knack_object_id: 25\n")
    d = load_ok(tmp_path)["ppr__ppr_days__carto_gsg"]
    assert (d.source_conn, d.dest_conn, d.staging_segment) == ("knack", "carto_gsg", "ppr")


def test_airtable_layout(tmp_path):
    write(tmp_path, "airtable/oia/oia_services.yml",
          "schedule_interval: null\nsource: {base: appABC123, table: immigrant_services}\n" + OK_BODY)
    d = load_ok(tmp_path)["oia__oia_services"]
    assert (d.kind, d.source_conn, d.airtable_base, d.source_table) == ("airtable", "airtable", "appABC123", "immigrant_services")
    assert d.source_schema is None
    assert (d.dest_conn, d.dest_table, d.schedule) == ("carto_phl", "oia_services", None)


# --- manual datasets ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("line", ["schedule_interval: false\n", "schedule_interval: null\n", "schedule_interval:\n",
                                  "schedule_interval: false # manually triggered\n", ""],
                         ids=["false", "null", "empty-value", "false-with-comment", "absent"])
def test_manual_schedules(tmp_path, line):
    write(tmp_path, "databridge/lni/t.yml", line + OK_BODY)
    assert load_ok(tmp_path)["lni__t"].schedule is None


def test_numeric_schedule_interval_is_rejected_not_made_manual(tmp_path):
    # YAML reads "schedule_interval: 0" as the integer 0; it must not silently become a manual dataset.
    write(tmp_path, "databridge/lni/t.yml", "schedule_interval: 0\n" + OK_BODY)
    datasets, problems = load_datasets(tmp_path)
    assert datasets == []
    assert [p.key for p in problems] == ["schedule_interval"]


def test_stage_only_needs_no_carto_users(tmp_path):
    write(tmp_path, "databridge/commerce/koz_parcels.yml", "schedule_interval: false\nupload_to_carto: false\n")
    d = load_ok(tmp_path)["commerce__koz_parcels"]
    assert (d.publish, d.grants) == (False, ())


def test_table_name_is_file_name_up_to_first_dot(tmp_path):
    write(tmp_path, "databridge/lni/permits.v2.yaml", OK_BODY)
    d = load_ok(tmp_path)["lni__permits"]
    assert d.table == "permits"


def test_max_table_name_leaves_room_for_shadow_suffix(tmp_path):
    assert MAX_TABLE_NAME + len("__shadow") == 63
    name = "t" * MAX_TABLE_NAME
    write(tmp_path, f"databridge/lni/{name}.yml", OK_BODY)
    assert f"lni__{name}" in load_ok(tmp_path)


def test_missing_root_is_one_problem(tmp_path):
    datasets, problems = load_datasets(tmp_path / "nope")
    assert datasets == []
    assert len(problems) == 1
    assert problems[0].path == str(tmp_path / "nope")
    assert "does not exist" in problems[0].reason


def test_config_problem_str_and_config_error():
    p = ConfigProblem("a/b.yml", "indexes", "bad")
    q = ConfigProblem("a/c.yml", "-", "worse")
    assert str(p) == "a/b.yml: indexes: bad"
    err = ConfigError([p, q])
    assert err.problems == [p, q]
    assert str(err).splitlines() == ["a/b.yml: indexes: bad", "a/c.yml: -: worse"]


# --- Registry -----------------------------------------------------------------------------------------------

def test_registry_get_and_did_you_mean():
    registry = Registry(CONFIGS)
    assert len(registry) == 99  # 78 Databridge + 20 Knack + 1 Airtable
    assert registry.get("lni__violations").indexes == ("address", "addressobjectid")
    assert {d.id for d in registry} >= {"lni__violations", "311__salesforce_cases"}
    with pytest.raises(KeyError) as excinfo:
        registry.get("lni__violation")
    message = excinfo.value.args[0]
    assert "'lni__violation'" in message
    assert str(CONFIGS) in message
    assert "did you mean 'lni__violations'?" in message
    with pytest.raises(KeyError) as excinfo:
        registry.get("zzzzzzzz")
    assert "did you mean" not in excinfo.value.args[0]


def test_registry_strict_raises_every_problem(tmp_path):
    write(tmp_path, "databridge/lni/ok.yml", OK_BODY)
    write(tmp_path, "databridge/lni/a.yml", "schedule_interval: 61 * * * *\n" + OK_BODY)
    write(tmp_path, "databridge/lni/b.yml", "indexes: address\n" + OK_BODY)
    with pytest.raises(ConfigError) as excinfo:
        Registry(tmp_path, strict=True)
    assert sorted(Path(p.path).name for p in excinfo.value.problems) == ["a.yml", "b.yml"]
    assert len(str(excinfo.value).splitlines()) == 2


def test_registry_a_broken_file_breaks_only_its_dataset(tmp_path):
    write(tmp_path, "databridge/lni/ok.yml", OK_BODY)
    write(tmp_path, "databridge/lni/a.yml", "schedule_interval: 61 * * * *\n" + OK_BODY)
    write(tmp_path, "knack/carto_gsg/ppr/days.yml", "knack_object_id: 0\n" + OK_BODY)
    write(tmp_path, "databridge/flat.yml", OK_BODY)
    registry = Registry(tmp_path)
    assert [d.id for d in registry] == ["lni__ok"]
    assert sorted(Path(p).name for p in registry.broken_files()) == ["a.yml", "days.yml", "flat.yml"]
    assert sorted(registry.broken_ids()) == ["lni__a", "ppr__days__carto_gsg"]  # flat.yml names no dataset
    with pytest.raises(ConfigError) as excinfo:
        registry.get("lni__a")
    assert str(excinfo.value) == f"{tmp_path / 'databridge/lni/a.yml'}: schedule_interval: not a valid cron expression: '61 * * * *'"
    with pytest.raises(KeyError, match="no dataset 'lni__b'"):
        registry.get("lni__b")


# --- the broken-config corpus -------------------------------------------------------------------------------
# case -> (key: exact string, or re.Pattern matched in full; reason: regex searched, case-insensitive)

BROKEN_CASES: dict[str, tuple[str | re.Pattern, str]] = {
    "cron_six_fields": ("schedule_interval", r"5 fields.*got 6"),
    "cron_minute_61": ("schedule_interval", r"not a valid cron expression: '61 \* \* \* \*'"),
    "cron_garbage": ("schedule_interval", r"not a valid cron expression: 'every day at noon please'"),
    "cron_never_fires": ("schedule_interval", r"never|does not fire|no (fire|date)|cannot"),
    "schedule_none_string": ("schedule_interval", r"'None' is a string.*false"),
    "schedule_true": ("schedule_interval", r"cron expression.*false/null"),
    "schedule_number": ("schedule_interval", r"cron|string"),
    "unknown_key_schedule_intervall": ("schedule_intervall", r"unknown key \(did you mean 'schedule_interval'\?\)"),
    "unknown_key_carto_user": ("carto_user", r"unknown key \(did you mean 'carto_users'\?\)"),
    "unknown_nested_key_source_tabel": ("source.tabel", r"unknown key \(did you mean 'table'\?\)"),
    "indexes_string": ("indexes", r"valid list"),
    "upload_to_carto_maybe": ("upload_to_carto", r"valid boolean"),
    "carto_users_string": ("carto_users", r"valid list"),
    "carto_users_bad_role": ("carto_users", r"'tile user' is not a role name"),
    "carto_users_missing": ("carto_users", r"required when upload_to_carto is true"),
    "row_count_tolerance_negative": ("row_count_tolerance", r"greater than or equal to 0"),
    "geometry_srid_zero": ("geometry.srid", r"greater than 0"),
    "index_sql_injection": ("indexes", r"'addr;drop table' is not a column name"),
    "index_double_plus": ("indexes", r"'a\+\+b' is not a column name"),
    "table_name_bad": ("file name", r"'Bad-Name' must be lower-case"),
    "table_name_too_long": ("file name", r"at most 55 characters"),
    "department_bad": ("directory", r"department 'Bad-Dept' must be lower-case"),
    "timezone_unknown": ("timezone", r"unknown time zone 'Mars/Olympus_Mons'"),
    "yaml_tab_indent": ("line 4, column 1", r"YAML syntax error: .*'\\t'"),
    "yaml_bad_indent": ("line 3, column 14", r"YAML syntax error: mapping values are not allowed"),
    "yaml_unclosed_bracket": ("line 4, column 1", r"YAML syntax error: expected ',' or ']'"),
    "empty_file": ("-", r"file is empty"),
    "list_not_mapping": ("-", r"must be a mapping of keys, got list"),
    "not_utf8": ("-", r"not UTF-8"),
    "knack_missing_object_id": ("knack_object_id", r"required for a Knack dataset"),
    "knack_object_id_in_databridge": ("knack_object_id", r"only Knack datasets"),
    "knack_conn_id_in_databridge": ("knack_conn_id", r"only Knack datasets"),
    "airtable_missing_base": ("source.base", r"required for an Airtable dataset"),
    "wrong_depth_flat": ("-", r"not at databridge/<dept>/<table>\.yml"),
    "wrong_depth_nested": ("-", r"not at databridge/<dept>/<table>\.yml"),
    "knack_wrong_depth": ("-", r"not at knack/<carto_env>/<dept>/<table>\.yml"),
    "duplicate_id": ("-", r"duplicate dataset id 'lni__duplicate_id' \(also .*duplicate_id\.ya?ml\)"),
    "duplicate_key": ("line 3, column 1", r"key .upload_to_carto. appears twice"),
    "config_symlink_outside": ("-", r"resolves outside the config tree"),
    "schema_override_symlink_outside": ("schema_override", r"'schemas/link\.json' resolves outside the config's directory"),
    "cron_random": ("schedule_interval", r"'R' is a random/hashed cron field"),
    "index_the_geom": ("indexes", r"'the_geom' is made and indexed by CARTO itself and does not exist on PostGIS"),
    "config_too_large": ("-", r"over the 64 KiB limit"),
    "source_table_too_long": ("source.table", r"is 64 bytes; source table names are limited to 63"),
    "destination_table_twice": ("destination.table", r"carto_phl:twice_target is also written by lni__destination_table_twice \(.*destination_table_twice\.yml\)"),
    "schema_override_missing": ("schema_override", r"'schemas/missing\.json' not found"),
    "schema_override_outside": ("schema_override", r"must be a path inside the config's directory"),
    "schema_override_injection": ("schema_override", r"schemas/injection\.json: column 'code': .* is not a type name"),
    "destination_schema_injection": ("destination.schema", r"must be lower-case letters, digits, _ and -"),
    "source_table_nul": ("source.table", r"is not a table or schema name"),
    "geometry_column_too_long": ("geometry.column", r"over 63 bytes"),
    "destination_conn_bad": ("destination.conn", r"connection name 'bad name!'"),
    "destination_table_bad": ("destination.table", r"'Violations 2024' must be lower-case"),
    "geocode_query_fields_missing": ("geocode.query_fields", r"field required"),
    "geocode_unknown_key_feilds": ("geocode.feilds", r"unknown key \(did you mean 'fields'\?\)"),
}


def _case_files(case: str) -> list[Path]:
    return sorted(p for p in (BROKEN / case).rglob("*") if p.is_file())


def test_broken_corpus_matches_expectation_table():
    on_disk = {p.name for p in BROKEN.iterdir() if p.is_dir()}
    assert on_disk == set(BROKEN_CASES)
    assert len(on_disk) >= 30
    for case in on_disk:
        assert _case_files(case), case


@pytest.mark.parametrize("case", sorted(BROKEN_CASES))
def test_broken_config_is_reported(case):
    key, reason = BROKEN_CASES[case]
    files = [str(p) for p in _case_files(case)]
    datasets, problems = load_datasets(BROKEN / case)
    assert len(problems) == 1, [str(p) for p in problems]
    problem = problems[0]
    assert problem.path in files
    assert problem.key == key
    assert re.search(reason, problem.reason, re.I), problem.reason
    assert str(problem) == f"{problem.path}: {problem.key}: {problem.reason}"
    if case in ("duplicate_id", "destination_table_twice"):  # one of the two files still loads
        assert [d.id for d in datasets] == [f"lni__{case}"]
        assert any(f in problem.reason for f in files if f != problem.path)
    else:
        assert datasets == []


def test_load_datasets_reports_every_broken_file_at_once(tmp_path):
    """Every case merged into one tree (with two good configs): all problems come back from a single call."""
    expected: set[tuple[str, str, str]] = set()
    for case in BROKEN_CASES:
        shutil.copytree(BROKEN / case, tmp_path, dirs_exist_ok=True, symlinks=True)
        _, problems = load_datasets(BROKEN / case)
        expected |= {(str(Path(p.path).relative_to(BROKEN / case)), p.key, p.reason.replace(str(BROKEN / case), "<root>"))
                     for p in problems}
    write(tmp_path, "databridge/lni/violations.yml", "schedule_interval: 4 11 * * *\n" + OK_BODY)
    write(tmp_path, "knack/carto_gsg/ppr/ppr_facilities.yml", KNACK_GSG)
    datasets, problems = load_datasets(tmp_path)
    got = {(str(Path(p.path).relative_to(tmp_path)), p.key, p.reason.replace(str(tmp_path), "<root>")) for p in problems}
    assert got == expected
    assert len({path for path, _, _ in got}) >= 30  # dozens of files, each named, from one call
    assert {"lni__violations", "ppr__ppr_facilities__carto_gsg", "lni__duplicate_id", "lni__destination_table_twice"} <= {d.id for d in datasets}


def test_upper_case_yml_suffix_is_loaded(tmp_path):
    write(tmp_path, "databridge/lni/loud.YML", OK_BODY)
    datasets, problems = load_datasets(tmp_path)
    assert not problems and [d.id for d in datasets] == ["lni__loud"]
