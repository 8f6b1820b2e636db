"""Load modes on a real PostGIS: replace in place and merge by key keep the live table's identity and all
that hangs off it; the swap carries what it can and refuses, before copying a row, what it cannot.

Each test publishes version A (a first publish is always a swap: there is no table yet), attaches objects
to the live table as users do (row-level security, triggers, materialized views with indexes, chains of
views, a view owned by another role, grants, comments), changes the source and publishes version B.
"""
from __future__ import annotations

import logging

import pytest

from databridge_luigi.tasks import Publish
from tests.conftest import ensure_role
from tests.pipeline import make_points_table

V_A, V_B = "20261124T000000Z", "20261125T000000Z"


def config(mode: str | None = None, extra: str = "") -> str:
    lines = ["schedule_interval: false", "upload_to_carto: true", "carto_users: [publicuser]", "indexes: [code]"]
    if mode:
        lines.append(f"load_mode: {mode}")
    return "\n".join(lines + ([extra] if extra else [])) + "\n"


def publish(pipeline, version: str, **kwargs):
    return pipeline.run(Publish(dataset_id="lni__violations", version=version, **kwargs))


def first_publish(pipeline, rows: int = 200, mode: str | None = None, extra: str = "") -> int:
    make_points_table(pipeline, "gis_lni", "violations", rows)
    pipeline.config("lni__violations", config(mode, extra))
    run = publish(pipeline, V_A)
    assert run.ok, run.summary
    return pipeline.table_oid("violations")


def attach_everything(pipeline) -> None:
    """What production hangs off a live table, made the way its owners make it."""
    for role in ("analyst", "viewowner", "editor"):
        ensure_role(role)
    d = pipeline.dest
    d("ALTER TABLE violations ENABLE ROW LEVEL SECURITY")
    d("CREATE POLICY odd_only ON violations FOR SELECT TO analyst USING (objectid % 2 = 1)")
    d("GRANT SELECT ON violations TO analyst")
    d("GRANT INSERT, UPDATE ON violations TO editor")
    d("COMMENT ON TABLE violations IS 'L&I violations, published nightly'")
    d("CREATE TABLE audit (op text, n bigint)")
    d("CREATE FUNCTION audit_rows() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
      "INSERT INTO audit VALUES (TG_OP, 1); RETURN NULL; END $$")
    d("CREATE TRIGGER violations_audit AFTER INSERT OR DELETE OR UPDATE ON violations FOR EACH ROW EXECUTE FUNCTION audit_rows()")
    d("CREATE MATERIALIZED VIEW codes_mv AS SELECT code, count(*) AS n FROM violations GROUP BY code")
    d("CREATE UNIQUE INDEX codes_mv_code ON codes_mv (code)")
    d("CREATE VIEW open_v WITH (security_barrier) AS SELECT objectid, address, code FROM violations WHERE code <> 'C0'")
    d("CREATE VIEW open_v_market AS SELECT * FROM open_v WHERE address LIKE '%Market%'")  # a chain: view on a view
    d("GRANT SELECT ON open_v_market TO publicuser")
    d("CREATE VIEW owned_elsewhere AS SELECT objectid FROM violations")
    d("ALTER VIEW owned_elsewhere OWNER TO viewowner")
    d("GRANT SELECT ON violations TO viewowner")
    d("CREATE POLICY everything ON violations FOR SELECT TO viewowner USING (true)")


def _as_role(pipeline, role: str, statement: str):
    import psycopg

    with psycopg.connect(pipeline.dest_dsn) as conn:
        conn.execute(f"SET ROLE {role}")
        return conn.execute(statement).fetchall()


def assert_everything_survived(pipeline, oid: int, rows: int) -> None:
    d = pipeline.dest
    assert pipeline.table_oid("violations") == oid, "the live table was replaced, not written in place"
    assert d("SELECT relrowsecurity FROM pg_class WHERE oid = %s", (oid,))[0][0] is True
    assert d("SELECT count(*) FROM violations")[0][0] == rows
    # The policy still filters: the analyst sees only odd ids (a publish that dropped it showed them all).
    assert _as_role(pipeline, "analyst", "SELECT count(*) FROM violations")[0][0] == (rows + 1) // 2
    assert d("SELECT has_table_privilege('editor', 'violations', 'INSERT')")[0][0] is True
    assert d("SELECT obj_description('violations'::regclass, 'pg_class')")[0][0] == "L&I violations, published nightly"
    assert d("SELECT count(*) FROM pg_trigger WHERE tgname = 'violations_audit'")[0][0] == 1
    d("REFRESH MATERIALIZED VIEW CONCURRENTLY codes_mv")  # needs its unique index
    assert d("SELECT sum(n) FROM codes_mv")[0][0] == rows
    assert d("SELECT count(*) FROM open_v_market WHERE address LIKE 'new %'")[0][0] > 0
    assert d("SELECT has_table_privilege('publicuser', 'open_v_market', 'SELECT')")[0][0] is True
    assert d("SELECT reloptions FROM pg_class WHERE relname = 'open_v'")[0][0] == ["security_barrier=true"]
    assert d("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'owned_elsewhere'")[0][0] == "viewowner"
    assert d("SELECT count(*) FROM owned_elsewhere")[0][0] == rows
    assert d("SELECT count(*) FROM pg_class WHERE relname LIKE 'violations\\_\\_shadow%'")[0][0] == 0


def test_replace_in_place_keeps_identity_and_everything_attached(pipeline):
    oid = first_publish(pipeline)
    attach_everything(pipeline)
    pipeline.source("UPDATE gis_lni.violations SET address = 'new ' || address")
    run = publish(pipeline, V_B)
    assert run.ok, run.summary
    assert_everything_survived(pipeline, oid, 200)
    # The trigger saw the load: every old row deleted, every new row inserted.
    assert pipeline.dest("SELECT op, count(*) FROM audit GROUP BY op ORDER BY op") == [("DELETE", 200), ("INSERT", 200)]
    assert pipeline.dest("SELECT mode, inserted, updated, deleted, unchanged FROM databridge_luigi_publications "
                         "WHERE version = %s", (V_B,)) == [("replace", 200, 0, 200, 0)]


def test_merge_touches_only_changed_rows_and_counts_them(pipeline):
    oid = first_publish(pipeline, rows=1000, extra="primary_key: [objectid]")
    attach_everything(pipeline)
    untouched_before = pipeline.dest("SELECT objectid, xmin::text FROM violations WHERE objectid > 20 ORDER BY objectid")
    # 1% of rows change: 5 updated, 3 deleted, 2 new.
    pipeline.source("UPDATE gis_lni.violations SET address = 'new ' || address WHERE objectid <= 5")
    pipeline.source("DELETE FROM gis_lni.violations WHERE objectid BETWEEN 6 AND 8")
    pipeline.source("INSERT INTO gis_lni.violations SELECT objectid + 5000, address, code, opened, fine, shape "
                    "FROM gis_lni.violations WHERE objectid IN (9, 10)")
    run = publish(pipeline, V_B)
    assert run.ok, run.summary
    assert pipeline.dest("SELECT mode, inserted, updated, deleted, unchanged FROM databridge_luigi_publications "
                         "WHERE version = %s", (V_B,)) == [("merge", 2, 5, 3, 992)]
    assert pipeline.dest("SELECT op, count(*) FROM audit GROUP BY op ORDER BY op") == [("DELETE", 3), ("INSERT", 2), ("UPDATE", 5)]
    # Unchanged rows were not written at all: same row versions.
    assert pipeline.dest("SELECT objectid, xmin::text FROM violations WHERE objectid > 20 AND objectid < 5000 ORDER BY objectid") == untouched_before
    assert pipeline.table_oid("violations") == oid
    assert pipeline.dest("SELECT count(*) FROM violations WHERE address LIKE 'new %'")[0][0] == 5
    assert pipeline.dest("SELECT count(*) FROM violations WHERE objectid BETWEEN 6 AND 8")[0][0] == 0
    # The merged table equals the source, value for value.
    source = pipeline.source("SELECT objectid, address, code, fine, ST_AsEWKT(shape) FROM gis_lni.violations ORDER BY 1")
    dest = pipeline.dest("SELECT objectid, address, code, fine, ST_AsEWKT(shape) FROM violations ORDER BY 1")
    assert source == dest


def test_merge_keeps_stale_rows_when_asked(pipeline):
    first_publish(pipeline, rows=100, extra="primary_key: [objectid]\ndelete_stale: false")
    pipeline.source("DELETE FROM gis_lni.violations WHERE objectid <= 10")
    run = publish(pipeline, V_B)
    assert run.ok, run.summary
    assert pipeline.dest("SELECT count(*) FROM violations")[0][0] == 100
    assert pipeline.dest("SELECT deleted, unchanged FROM databridge_luigi_publications WHERE version = %s", (V_B,)) == [(0, 90)]


def test_merge_refuses_a_duplicate_key_before_anything_is_visible(pipeline, caplog):
    first_publish(pipeline, rows=100, extra="primary_key: [code]")  # code repeats: C0..C6
    before = pipeline.table_digest("violations")
    pipeline.source("UPDATE gis_lni.violations SET address = 'x'")
    with caplog.at_level(logging.ERROR):
        assert not publish(pipeline, V_B).ok
    assert "primary_key (code) has a duplicate value" in caplog.text
    assert pipeline.table_digest("violations") == before


@pytest.mark.parametrize("attach, refusal", [
    ("ALTER TABLE violations ENABLE ROW LEVEL SECURITY", "row-level security violations"),
    ("CREATE POLICY p ON violations USING (true)", "policy p"),
    ("CREATE FUNCTION nop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$; "
     "CREATE TRIGGER t AFTER INSERT ON violations FOR EACH ROW EXECUTE FUNCTION nop()", "trigger t"),
    ("CREATE VIEW theirs AS SELECT * FROM violations; ALTER VIEW theirs OWNER TO viewowner", "view public.theirs owned by viewowner"),
])
def test_swap_refuses_what_it_cannot_carry_before_copying(pipeline, caplog, attach, refusal):
    ensure_role("viewowner")
    oid = first_publish(pipeline, mode="swap")
    pipeline.dest(attach)
    pipeline.source("UPDATE gis_lni.violations SET address = 'new ' || address")
    with caplog.at_level(logging.INFO):
        assert not publish(pipeline, V_B).ok
    assert f"has {refusal}, which a swap (a new table) would lose; publish in place instead (load_mode: replace" in caplog.text
    assert "copying" not in caplog.text.split(refusal)[0].split(V_B)[-1]
    assert pipeline.table_oid("violations") == oid
    assert pipeline.dest("SELECT count(*) FROM violations WHERE address LIKE 'new %'")[0][0] == 0


def test_swap_carries_view_chains_options_indexes_grants_and_comments(pipeline):
    ensure_role("editor")
    oid = first_publish(pipeline, mode="swap")
    d = pipeline.dest
    d("CREATE VIEW open_v WITH (security_barrier, check_option = cascaded) AS SELECT objectid, address, code FROM violations WHERE code <> 'C0'")
    d("CREATE VIEW open_v_market AS SELECT * FROM open_v WHERE address LIKE '%Market%'")
    d("CREATE VIEW open_v_market_ids AS SELECT objectid FROM open_v_market")  # depth 3
    d("CREATE MATERIALIZED VIEW codes_mv AS SELECT code, count(*) AS n FROM open_v GROUP BY code")
    d("CREATE UNIQUE INDEX codes_mv_code ON codes_mv (code)")
    d("GRANT SELECT, INSERT ON open_v TO editor")
    d("GRANT SELECT ON open_v_market_ids TO publicuser")
    d("GRANT UPDATE ON violations TO editor")
    d("COMMENT ON VIEW open_v IS 'open ones'")
    d("COMMENT ON TABLE violations IS 'nightly'")
    pipeline.source("UPDATE gis_lni.violations SET address = 'new ' || address")
    run = publish(pipeline, V_B)
    assert run.ok, run.summary
    assert pipeline.table_oid("violations") != oid  # a new table, as asked
    assert d("SELECT count(*) FROM open_v_market_ids")[0][0] == d("SELECT count(*) FROM violations WHERE code <> 'C0' AND address LIKE '%Market%'")[0][0] > 0
    assert sorted(d("SELECT reloptions FROM pg_class WHERE relname = 'open_v'")[0][0]) == ["check_option=cascaded", "security_barrier=true"]
    d("REFRESH MATERIALIZED VIEW CONCURRENTLY codes_mv")
    assert d("SELECT has_table_privilege('editor', 'open_v', 'INSERT'), has_table_privilege('publicuser', 'open_v_market_ids', 'SELECT'), "
             "has_table_privilege('editor', 'violations', 'UPDATE')")[0] == (True, True, True)
    assert d("SELECT obj_description('open_v'::regclass, 'pg_class'), obj_description('violations'::regclass, 'pg_class')")[0] == ("open ones", "nightly")
    assert d("SELECT mode FROM databridge_luigi_publications WHERE version = %s", (V_B,)) == [("swap",)]


def test_accepted_schema_change_swaps_even_in_replace_mode(pipeline):
    oid = first_publish(pipeline)
    pipeline.source("ALTER TABLE gis_lni.violations ADD COLUMN ward integer DEFAULT 7")
    run = publish(pipeline, V_B, accept_schema_change=True)
    assert run.ok, run.summary
    assert pipeline.table_oid("violations") != oid
    assert pipeline.dest("SELECT count(*) FROM violations WHERE ward = 7")[0][0] == 200
    assert pipeline.dest("SELECT mode FROM databridge_luigi_publications WHERE version = %s", (V_B,)) == [("swap",)]
    # The shadow began unlogged (scratch for an in-place load); as the new live table it must be a normal one.
    assert pipeline.dest("SELECT relpersistence FROM pg_class WHERE oid = 'violations'::regclass") == [("p",)]


def test_guards_apply_to_the_in_place_modes(pipeline, caplog):
    first_publish(pipeline, extra="primary_key: [objectid]")
    before = pipeline.table_digest("violations")
    pipeline.source("DELETE FROM gis_lni.violations WHERE objectid > 100")  # -50%
    with caplog.at_level(logging.ERROR):
        assert not publish(pipeline, V_B).ok
    assert "row count would change from 200 to 100" in caplog.text
    assert pipeline.table_digest("violations") == before


def test_a_destination_statement_over_the_timeout_is_reported_as_a_timeout(pipeline, caplog):
    oid = first_publish(pipeline, extra="timeout: 1")
    pipeline.dest("CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$")
    pipeline.dest("CREATE TRIGGER slow AFTER DELETE ON violations FOR EACH STATEMENT EXECUTE FUNCTION slow()")
    before = pipeline.table_digest("violations")
    pipeline.source("UPDATE gis_lni.violations SET address = 'new ' || address")
    with caplog.at_level(logging.ERROR):
        assert not publish(pipeline, V_B).ok
    assert "timed out: a statement ran longer than the dataset's timeout of 1s (timeout: in" in caplog.text
    assert pipeline.table_digest("violations") == before and pipeline.table_oid("violations") == oid


def test_configured_index_added_later_is_built_on_the_live_table(pipeline):
    oid = first_publish(pipeline)
    pipeline.config("lni__violations", config(extra="indexes: [code, address]").replace("indexes: [code]\n", ""))
    pipeline.source("UPDATE gis_lni.violations SET address = 'new ' || address")
    assert publish(pipeline, V_B).ok
    assert pipeline.table_oid("violations") == oid
    assert pipeline.dest("SELECT indisvalid FROM pg_index WHERE indexrelid = 'violations_address'::regclass") == [(True,)]


def test_accept_schema_change_set_for_good_does_not_block_in_place_loads_of_a_table_with_rls(pipeline):
    oid = first_publish(pipeline, extra="accept_schema_change: true")
    pipeline.dest("ALTER TABLE violations ENABLE ROW LEVEL SECURITY")
    pipeline.source("UPDATE gis_lni.violations SET address = 'new ' || address")
    assert publish(pipeline, V_B).ok  # same columns: replace in place, RLS untouched
    assert pipeline.table_oid("violations") == oid
    pipeline.source("ALTER TABLE gis_lni.violations ADD COLUMN ward integer")
    run = publish(pipeline, "20261126T000000Z")
    assert not run.ok  # now a new table is needed, and it would lose the RLS: refused, table untouched
    assert pipeline.table_oid("violations") == oid


def test_merge_updates_a_value_that_is_equal_but_reads_back_differently(pipeline):
    """numeric 1.0 → 1.00 and json key order are "equal" to some operators; merge must still write them."""
    pipeline.source("CREATE SCHEMA IF NOT EXISTS gis_lni")
    pipeline.source("DROP TABLE IF EXISTS gis_lni.violations")
    pipeline.source("CREATE TABLE gis_lni.violations (objectid integer PRIMARY KEY, amount numeric, doc json, note text, "
                    "shape geometry(Point, 2272))")
    pipeline.source("INSERT INTO gis_lni.violations SELECT g, 1.0, '{\"a\": 1, \"b\": 2}', 'n' || g, "
                    "ST_SetSRID(ST_MakePoint(2690000 + g, 230000), 2272) FROM generate_series(1, 100) g")
    pipeline.config("lni__violations", config(extra="primary_key: [objectid]").replace("indexes: [code]\n", ""))
    assert publish(pipeline, V_A).ok
    pipeline.source("UPDATE gis_lni.violations SET amount = 1.00 WHERE objectid = 1")
    pipeline.source("UPDATE gis_lni.violations SET doc = '{\"b\": 2, \"a\": 1}' WHERE objectid = 2")
    pipeline.source("UPDATE gis_lni.violations SET shape = ST_SetSRID(ST_MakePoint(2690003.0000001, 230000), 2272) WHERE objectid = 3")
    pipeline.source("UPDATE gis_lni.violations SET note = 'changed' WHERE objectid = 4")
    run = publish(pipeline, V_B)
    assert run.ok, run.summary
    assert pipeline.dest("SELECT updated, unchanged FROM databridge_luigi_publications WHERE version = %s", (V_B,)) == [(4, 96)]
    assert pipeline.dest("SELECT amount::text, doc::text FROM violations WHERE objectid IN (1, 2) ORDER BY objectid") == \
        [("1.00", '{"a": 1, "b": 2}'), ("1.0", '{"b": 2, "a": 1}')]
