"""Identifiers (issue 7): awkward names in the source and SQL in config values.

Each name is either quoted correctly (it lands, and nothing else happens: an injected statement has no effect,
asserted on a ``victim`` table in both databases) or refused with a clear error naming the file and key
(config) or the dataset and column (data).

Decisions:

* Source column names land lower-cased and quoted: reserved words (``select``, ``order``, ``user``),
  ``MixedCase``, ``#``, spaces, quotes, ``x"; DROP TABLE …; --``, 63-byte multibyte names.
* Source column names longer than 63 bytes (SQLite allows them) are refused: PostgreSQL would silently
  truncate them (and two long names could collide).
* Destination table names: reserved words land (``user``, ``select``, ``order``); anything else that is not
  ``[a-z_][a-z0-9_]*`` of at most 55 characters is refused by config validation (file, key).
* Config values: ``indexes`` and ``carto_users`` holding SQL are refused by validation; ``source.schema``,
  ``source.table``, ``destination.schema`` and ``geometry.column`` are quoted or compared, never pasted: a
  real table/schema with such a name lands, an injection attempt only finds nothing; a schema override whose
  type is SQL is refused; ``geometry.column`` naming no geometry column is refused.
"""
from __future__ import annotations

import sqlite3

import pytest

from databridge_luigi.config import MAX_TABLE_NAME, ConfigError, load_datasets
from databridge_luigi.sources.sql import ExtractError
from databridge_luigi.tasks import Publish
from tests.conftest import ensure_role
from tests.test_bad_data import CONFIG, SQLITE_CONFIG, publish

INJECTION = 'x"; DROP TABLE public.victim; --'
LONG_MULTIBYTE = "é" * 31 + "x"  # 63 bytes in UTF-8: PostgreSQL's limit, exactly
NAMES = ["select", "order", "user", "MixedCase", "permit#", "has space", 'quote"d', "it's", INJECTION, LONG_MULTIBYTE, "Ünïcödé"]


@pytest.fixture()
def victims(pipeline):
    """A table named victim in both databases: every injected statement targets it."""
    for run in (pipeline.source, pipeline.dest):
        run("CREATE TABLE IF NOT EXISTS public.victim (id integer)")
        run("DELETE FROM public.victim; INSERT INTO public.victim VALUES (1)")
    yield
    for run in (pipeline.source, pipeline.dest):
        assert run("SELECT count(*) FROM public.victim") == [(1,)], "an injected statement ran"


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def test_awkward_source_column_names_land_lower_cased_and_quoted(pipeline, victims):
    pipeline.source("CREATE SCHEMA IF NOT EXISTS gis_ids")
    pipeline.source('DROP TABLE IF EXISTS gis_ids."user"')
    columns = ", ".join(f"{quoted(n)} text" for n in NAMES)
    pipeline.source(f'CREATE TABLE gis_ids."user" (id integer, {columns}, "Shape" geometry(Point, 2272))')
    values = [f"value of {n}" for n in NAMES]
    pipeline.source(f'INSERT INTO gis_ids."user" VALUES (1, {", ".join(["%s"] * len(NAMES))}, \'SRID=2272;POINT(1 2)\')', values)
    # Published through luigi to a table named "user", with indexes on reserved / '#' names and a grant.
    pipeline.config("ids__user", "schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: [publicuser]\n"
                                  "indexes: [order, permit#, select+user]\n")
    run = pipeline.run(Publish(dataset_id="ids__user", force=True))
    assert run.ok, run.summary
    landed = [r[0] for r in pipeline.dest("SELECT attname FROM pg_attribute WHERE attrelid = 'public.user'::regclass AND attnum > 0 ORDER BY attnum")]
    assert landed == ["id"] + [n.lower() for n in NAMES] + ["shape"]
    got = pipeline.dest(f'SELECT {", ".join(quoted(n.lower()) for n in NAMES)} FROM public."user"')
    assert got == [tuple(values)]
    indexes = {r[0] for r in pipeline.dest("SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'user'")}
    assert indexes == {"user_order", "user_permit#", "user_select_user", "user_shape"}
    assert pipeline.dest("SELECT has_table_privilege('publicuser', 'public.user', 'SELECT')") == [(True,)]


@pytest.mark.parametrize("table", ["select", "order", "user"])
def test_reserved_words_as_source_and_destination_table_names_land(pipeline, victims, table):
    pipeline.source("CREATE SCHEMA IF NOT EXISTS gis_ids")
    pipeline.source(f'DROP TABLE IF EXISTS gis_ids."{table}"; CREATE TABLE gis_ids."{table}" ("from" integer, "where" text)')
    pipeline.source(f'INSERT INTO gis_ids."{table}" VALUES (1, \'a\'), (2, NULL)')
    pipeline.config(f"ids__{table}", CONFIG + "indexes: [from, where]\n")
    publish(pipeline, f"ids__{table}", "v1")
    publish(pipeline, f"ids__{table}", "v2")  # a second publish swaps over the live table of that name
    assert pipeline.dest(f'SELECT "from", "where" FROM public."{table}" ORDER BY 1') == [(1, "a"), (2, None)]
    assert pipeline.dest("SELECT to_regclass(%s)", (f'public."{table}__shadow"',)) == [(None,)]
    assert [m[0] for m in pipeline.markers(f"ids__{table}")] == ["v1", "v2"]


def test_source_table_and_schema_names_are_quoted_never_pasted(pipeline, victims):
    # A real source schema and table with hostile names: quoted, they are found and land.
    pipeline.source(f"CREATE SCHEMA IF NOT EXISTS {quoted('Odd Schema; --')}")
    pipeline.source(f"DROP TABLE IF EXISTS {quoted('Odd Schema; --')}.{quoted(INJECTION)}")
    pipeline.source(f"CREATE TABLE {quoted('Odd Schema; --')}.{quoted(INJECTION)} (id integer, note text)")
    pipeline.source(f"INSERT INTO {quoted('Odd Schema; --')}.{quoted(INJECTION)} VALUES (1, 'it''s here')")
    yaml_table = INJECTION.replace('"', '\\"')
    pipeline.config("ids__hostile", CONFIG + f'source: {{schema: "Odd Schema; --", table: "{yaml_table}"}}\n')
    publish(pipeline, "ids__hostile", "v1")
    assert pipeline.dest("SELECT id, note FROM hostile") == [(1, "it's here")]

    # An injection attempt that names no real table only finds nothing.
    pipeline.config("ids__nothing", CONFIG + f"source: {{schema: public, table: \"victim\\\"; DROP TABLE public.victim; --\"}}\n")
    with pytest.raises(ExtractError, match=r"ids__nothing: source databridge: table public\.victim\"; DROP TABLE public\.victim; -- not found"):
        publish(pipeline, "ids__nothing", "v1")


def test_sqlite_source_names_are_quoted_and_injection_finds_nothing(pipeline, victims, monkeypatch, tmp_path):
    path = tmp_path / "source.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE victim (id INTEGER)")
    db.execute(f"CREATE TABLE {quoted('We ird')} (id INTEGER, {', '.join(f'{quoted(n)} TEXT' for n in NAMES)})")
    db.execute(f"INSERT INTO {quoted('We ird')} VALUES (1, {', '.join('?' * len(NAMES))})", NAMES)
    db.commit()
    monkeypatch.setenv("DATABRIDGE_CONN_SQLITE_SRC", f"sqlite:///{path}")
    pipeline.config("ids__weird", CONFIG + "source: {conn: sqlite_src, schema: main, table: We ird}\n")
    publish(pipeline, "ids__weird", "v1")
    assert pipeline.dest(f'SELECT {", ".join(quoted(n.lower()) for n in NAMES)} FROM weird') == [tuple(NAMES)]

    pipeline.config("ids__inject", CONFIG + "source: {conn: sqlite_src, schema: main, table: 'victim\"; DROP TABLE victim; --'}\n")
    with pytest.raises(ExtractError, match=r"ids__inject: source sqlite_src: table main.victim\"; DROP TABLE victim; -- not found"):
        publish(pipeline, "ids__inject", "v1")
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'victim'").fetchone() == (1,)


@pytest.mark.parametrize("name", ["c" * 64, "é" * 32, "MixedCase_" + "ü" * 27])
def test_column_names_longer_than_63_bytes_are_refused_naming_dataset_and_column(pipeline, monkeypatch, tmp_path, name):
    """PostgreSQL would truncate such a name silently (two long names could even collide)."""
    assert len(name.encode()) > 63
    path = tmp_path / "source.sqlite"
    db = sqlite3.connect(path)
    db.execute(f"CREATE TABLE longnames (id INTEGER, {quoted(name)} TEXT)")
    db.execute("INSERT INTO longnames VALUES (1, 'x')")
    db.commit()
    monkeypatch.setenv("DATABRIDGE_CONN_SQLITE_SRC", f"sqlite:///{path}")
    pipeline.config("ids__longnames", SQLITE_CONFIG)
    with pytest.raises(ExtractError) as caught:
        publish(pipeline, "ids__longnames", "v1")
    assert f"ids__longnames: column {name!r}" in str(caught.value) and "longer than 63 bytes" in str(caught.value)
    assert pipeline.dest("SELECT to_regclass('longnames'), to_regclass('longnames__shadow')") == [(None, None)]


def test_destination_schema_odd_in_a_url_is_quoted_and_refused_in_a_config(pipeline, victims, monkeypatch):
    """A config's destination.schema is refused unless it is a plain name (file and key named); a schema from
    the connection URL (``?schema=``) is quoted: an odd real one lands, an injection attempt finds no schema."""
    pipeline.source("CREATE SCHEMA IF NOT EXISTS gis_ids")
    pipeline.source("DROP TABLE IF EXISTS gis_ids.plain; CREATE TABLE gis_ids.plain (id integer); INSERT INTO gis_ids.plain VALUES (7)")
    for odd in ("Odd Schema", 'public"; DROP TABLE public.victim; --'):
        pipeline.config("ids__plain", CONFIG + f"destination: {{schema: '{odd}'}}\n")
        with pytest.raises(ConfigError, match=r"plain\.yml: destination\.schema: schema .* must be lower-case"):
            publish(pipeline, "ids__plain", "v0")
    pipeline.config("ids__plain", CONFIG)
    pipeline.dest('CREATE SCHEMA "Odd Schema"')
    monkeypatch.setenv("DATABRIDGE_CONN_CARTO_PHL", pipeline.dest_dsn + "?schema=Odd%20Schema")
    run = pipeline.run(Publish(dataset_id="ids__plain", force=True))
    assert run.ok, run.summary
    assert pipeline.dest('SELECT id FROM "Odd Schema".plain') == [(7,)]
    assert pipeline.dest('SELECT dataset_id FROM "Odd Schema".databridge_luigi_publications') == [("ids__plain",)]
    monkeypatch.setenv("DATABRIDGE_CONN_CARTO_PHL", pipeline.dest_dsn + "?schema=public%22%3B%20DROP%20TABLE%20public.victim%3B%20--")
    with pytest.raises(Exception, match='schema "public"; DROP TABLE public.victim; --" does not exist'):
        publish(pipeline, "ids__plain", "v2")


def test_geometry_column_is_compared_never_pasted_and_must_name_a_geometry_column(pipeline, victims):
    pipeline.source("CREATE SCHEMA IF NOT EXISTS gis_ids")
    pipeline.source("DROP TABLE IF EXISTS gis_ids.geo; CREATE TABLE gis_ids.geo (id integer, shape geometry(Point, 2272))")
    pipeline.source("INSERT INTO gis_ids.geo VALUES (1, 'SRID=2272;POINT(1 2)')")
    pipeline.config("ids__geo", CONFIG + "geometry: {column: 'shape\"; DROP TABLE public.victim; --'}\n")
    with pytest.raises(ExtractError, match=r"ids__geo: geometry\.column 'shape\"; drop table public\.victim; --' in .*geo\.yml is not a geometry column"):
        publish(pipeline, "ids__geo", "v1")
    pipeline.config("ids__geo", CONFIG + "geometry: {column: SHAPE}\n")
    publish(pipeline, "ids__geo", "v1")
    assert pipeline.dest("SELECT ST_AsEWKT(shape) FROM geo") == [("SRID=2272;POINT(1 2)",)]


def test_schema_override_type_holding_sql_is_refused(pipeline, victims):
    pipeline.source("CREATE SCHEMA IF NOT EXISTS gis_ids")
    pipeline.source("DROP TABLE IF EXISTS gis_ids.typed; CREATE TABLE gis_ids.typed (id integer, code text); INSERT INTO gis_ids.typed VALUES (1, 'a')")
    path = pipeline.config("ids__typed", CONFIG + "schema_override: typed.schema.json\n")
    path.with_name("typed.schema.json").write_text(
        '{"fields": [{"name": "code", "type": "text); DROP TABLE public.victim; CREATE TABLE public.x (y text"}]}')
    with pytest.raises(ConfigError, match=r"typed\.yml: schema_override: typed\.schema\.json: column 'code': 'text\); DROP TABLE .* is not a type name"):
        publish(pipeline, "ids__typed", "v1")
    path.with_name("typed.schema.json").write_text('{"fields": [{"name": "code", "type": "character varying(10)"}]}')
    publish(pipeline, "ids__typed", "v1")
    assert pipeline.dest("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'typed'::regclass AND attname = 'code'") == [
        ("character varying(10)",)]


# --- config validation: refused with file and key ---------------------------------------------------------------

BODY = "schedule_interval: 0 1 * * *\nupload_to_carto: true\ncarto_users: [publicuser]\n"


@pytest.mark.parametrize(
    ("file_name", "extra", "key", "reason"),
    [
        ("ok", 'destination: {table: "MixedCase"}\n', "destination.table", "'MixedCase' must be lower-case"),
        ("ok", 'destination: {table: "permit#s"}\n', "destination.table", "'permit#s' must be lower-case"),
        ("ok", 'destination: {table: "has space"}\n', "destination.table", "'has space' must be lower-case"),
        ("ok", "destination: {table: 'quote\"d'}\n", "destination.table", "'quote\"d' must be lower-case"),
        ("ok", "destination: {table: 'x\"; DROP TABLE victim; --'}\n", "destination.table", "must be lower-case"),
        ("ok", f"destination: {{table: {'t' * (MAX_TABLE_NAME + 1)}}}\n", "destination.table", f"at most {MAX_TABLE_NAME} characters"),
        ("ok", "destination: {table: ééé}\n", "destination.table", "'ééé' must be lower-case"),
        ("MixedCase", "", "file name", "'MixedCase' must be lower-case"),
        ("ok", "indexes: ['a; DROP TABLE victim']\n", "indexes", "is not a column name"),
        ("ok", "indexes: ['a\"b']\n", "indexes", "is not a column name"),
        ("ok", "indexes: ['has space']\n", "indexes", "is not a column name"),
        ("ok", "carto_users: ['publicuser; DROP TABLE victim']\n", "carto_users", "is not a role name"),
        ("ok", "carto_users: ['x\"']\n", "carto_users", "is not a role name"),
        ("ok", "destination: {conn: 'a;b'}\n", "destination.conn", "connection name 'a;b'"),
        ("ok", "source: {conn: \"a'b\"}\n", "source.conn", "connection name \"a'b\""),
    ],
)
def test_config_values_holding_sql_or_bad_names_are_refused_with_file_and_key(tmp_path, file_name, extra, key, reason):
    body = BODY.replace("carto_users: [publicuser]\n", "") if extra.startswith("carto_users") else BODY
    path = tmp_path / "databridge" / "ids" / f"{file_name}.yml"
    path.parent.mkdir(parents=True)
    path.write_text(body + extra, encoding="utf-8")
    datasets, problems = load_datasets(tmp_path)
    assert datasets == []
    assert [(p.path, p.key) for p in problems] == [(str(path), key)]
    assert reason in problems[0].reason


def test_index_names_from_long_multibyte_column_names_fit_in_63_bytes(pipeline):
    """Index names are <table>_<columns>, shortened with a hash by bytes (not characters) to PostgreSQL's 63."""
    pipeline.source("CREATE SCHEMA IF NOT EXISTS gis_ids")
    pipeline.source(f"DROP TABLE IF EXISTS gis_ids.geo_long; CREATE TABLE gis_ids.geo_long (id integer, {quoted(LONG_MULTIBYTE)} geometry(Point, 2272))")
    pipeline.source("INSERT INTO gis_ids.geo_long VALUES (1, 'SRID=2272;POINT(1 2)')")
    pipeline.config("ids__geo_long", CONFIG)
    publish(pipeline, "ids__geo_long", "v1")
    indexes = pipeline.dest("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'geo_long'")
    assert len(indexes) == 1 and "USING gist" in indexes[0][1]
    name = indexes[0][0]
    assert name.startswith("geo_long_éé") and len(name.encode()) <= 63


def test_dependent_view_grants_to_roles_needing_quotes_survive_the_swap(pipeline):
    """Views on the live table are re-created with their SELECT grants; a grantee whose name needs quoting
    (CARTO's ``cartodb_user_<uuid>`` has dashes) must be granted by its name, not by its quoted spelling."""
    role = "cartodb_user_5219a680-1104-4b8d-bf75-f02f304849e1"
    for name in (role, "Odd Role", "Role, With Comma"):
        ensure_role(name)
    pipeline.source("CREATE SCHEMA IF NOT EXISTS gis_ids")
    pipeline.source("DROP TABLE IF EXISTS gis_ids.viewed; CREATE TABLE gis_ids.viewed (id integer); INSERT INTO gis_ids.viewed VALUES (1)")
    pipeline.config("ids__viewed", CONFIG)
    publish(pipeline, "ids__viewed", "v1")
    pipeline.dest(f'CREATE VIEW "Odd View" AS SELECT id FROM viewed; GRANT SELECT ON "Odd View" TO {quoted(role)}, "Odd Role", "Role, With Comma"')
    publish(pipeline, "ids__viewed", "v2")
    assert [m[0] for m in pipeline.markers("ids__viewed")] == ["v1", "v2"]
    assert pipeline.dest('SELECT id FROM "Odd View"') == [(1,)]
    assert pipeline.dest("SELECT has_table_privilege(%s, 'public.\"Odd View\"', 'SELECT'), has_table_privilege('Odd Role', 'public.\"Odd View\"', 'SELECT'), has_table_privilege('Role, With Comma', 'public.\"Odd View\"', 'SELECT')", (role,)) == [(True, True, True)]
