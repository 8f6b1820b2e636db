"""SQL text shared by both transports. CARTO's SQL API takes no bind parameters, so every statement is
built here from quoted identifiers and quoted literals — and only here."""
from __future__ import annotations

from ..schema import TableSchema

MARKER_TABLE = "databridge_luigi_publications"
LEASE_TABLE = "databridge_luigi_leases"
# Columns added to the marker table after its first release; ALTER … ADD COLUMN IF NOT EXISTS brings old ones up.
MARKER_DETAIL_COLUMNS = ("mode text", "inserted bigint", "updated bigint", "deleted bigint", "unchanged bigint",
                         "seconds double precision", "run_id text", "pushed boolean")
SHADOW_MARK = "__shadow"


def ident(name: str) -> str:
    """A double-quoted identifier (embedded quotes doubled): safe for any name."""
    if "\x00" in name:
        raise ValueError("identifier contains a NUL byte")
    if not name or len(name.encode("utf-8")) > 63:  # PostgreSQL would silently truncate (or refuse "")
        raise ValueError(f"identifier {name!r} is empty or longer than 63 bytes (PostgreSQL would truncate it)")
    return '"' + name.replace('"', '""') + '"'


def literal(value: str | int | None) -> str:
    """A SQL literal: NULL, an integer, or a single-quoted string (standard_conforming_strings is on)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if "\x00" in value:
        raise ValueError("literal contains a NUL byte")
    return "'" + value.replace("'", "''") + "'"


def qualified(schema: str, table: str) -> str:
    return f"{ident(schema)}.{ident(table)}"


def shadow_name(table: str, run_id: str) -> str:
    """``<table>__shadow_<run>``: unique per run, so two loaders never share (or drop) one shadow. The table
    part is cut (by bytes) to keep the name within 63 bytes; the lease row records the exact name."""
    suffix = f"{SHADOW_MARK}_{run_id[:6]}"
    head = table.encode()[: 63 - len(suffix)].decode("utf-8", "ignore")
    return head + suffix


def create_table(schema: str, table: str, columns: TableSchema, unlogged: bool = False) -> str:
    body = ", ".join(f"{ident(c.name)} {c.pg_type()}" for c in columns.columns)
    return f"CREATE {'UNLOGGED ' if unlogged else ''}TABLE {qualified(schema, table)} ({body})"


def copy_from_stdin(schema: str, table: str, names: list[str]) -> str:
    cols = ", ".join(ident(n) for n in names)
    return f"COPY {qualified(schema, table)} ({cols}) FROM STDIN WITH (FORMAT csv, HEADER true)"


def create_marker_table(schema: str) -> str:
    """The marker table, and the detail columns on one made by an earlier release. The ALTER runs only when a
    column is missing: it takes an exclusive lock, which an analyst's open session would otherwise hold up."""
    marker = qualified(schema, MARKER_TABLE)
    details = ", ".join(f"ADD COLUMN IF NOT EXISTS {column}" for column in MARKER_DETAIL_COLUMNS)
    last = MARKER_DETAIL_COLUMNS[-1].split()[0]
    return (
        f"CREATE TABLE IF NOT EXISTS {marker} ("
        "dataset_id text NOT NULL, version text NOT NULL, table_name text NOT NULL, fingerprint text NOT NULL, "
        "row_count bigint NOT NULL, rewritten boolean NOT NULL, published_at timestamptz NOT NULL DEFAULT now(), "
        "PRIMARY KEY (dataset_id, version)); "
        f"DO $upgrade$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {literal(marker)}::regclass "
        f"AND attname = {literal(last)} AND NOT attisdropped) THEN ALTER TABLE {marker} {details}; END IF; END $upgrade$"
    )


def create_lease_table(schema: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(schema, LEASE_TABLE)} ("
        "table_name text PRIMARY KEY, dataset_id text NOT NULL, run_id text NOT NULL, host text NOT NULL, "
        "pid integer NOT NULL, identity text NOT NULL, shadow text NOT NULL, acquired_at timestamptz NOT NULL, expires_at timestamptz NOT NULL)"
    )


def insert_marker(schema: str, dataset_id: str, version: str, table: str, fingerprint: str, rows: int, rewritten: bool,
                  mode: str | None = None, run_id: str | None = None, seconds: float | None = None,
                  counts: str = "NULL, NULL, NULL, NULL", row_count_sql: str | None = None) -> str:
    """One marker row. ``counts`` is SQL for (inserted, updated, deleted, unchanged): literals, or scalar
    sub-queries over a merge's data-modifying CTEs (see publish/merge.py); ``row_count_sql``, when given, is SQL
    for the table's row count in place of ``rows`` (a merge of changed rows only)."""
    values = ", ".join([literal(dataset_id), literal(version), literal(table), literal(fingerprint), row_count_sql or literal(rows),
                        literal(rewritten), literal(mode), literal(run_id),
                        "NULL" if seconds is None else f"{seconds:.3f}", counts])
    return (
        f"INSERT INTO {qualified(schema, MARKER_TABLE)} (dataset_id, version, table_name, fingerprint, row_count, rewritten, "
        f"mode, run_id, seconds, inserted, updated, deleted, unchanged) "
        f"SELECT {values} ON CONFLICT (dataset_id, version) DO NOTHING"
    )


def mark_pushed(schema: str, dataset_id: str, version: str, pushed: bool) -> str:
    """``pushed``: NULL no catalog push wanted, false pending (retried at the next load), true sent."""
    return (f"UPDATE {qualified(schema, MARKER_TABLE)} SET pushed = {literal(pushed)} "
            f"WHERE dataset_id = {literal(dataset_id)} AND version = {literal(version)}")


def pending_pushes(schema: str, dataset_id: str) -> str:
    return (f"SELECT version, row_count, inserted, updated, deleted, unchanged FROM {qualified(schema, MARKER_TABLE)} "
            f"WHERE dataset_id = {literal(dataset_id)} AND pushed = false ORDER BY published_at, version")


def marker_counts(schema: str, dataset_id: str, version: str) -> str:
    return (f"SELECT mode, row_count, inserted, updated, deleted, unchanged FROM {qualified(schema, MARKER_TABLE)} "
            f"WHERE dataset_id = {literal(dataset_id)} AND version = {literal(version)}")


def marker_lookup(schema: str, dataset_id: str, version: str, table: str, pending_push_ok: bool = False) -> str:
    """One row if the version is published and its table is still there (and, unless ``pending_push_ok``, no
    catalog push of it is pending: that brings the next run back to push)."""
    return (
        f"SELECT 1 FROM {qualified(schema, MARKER_TABLE)} WHERE dataset_id = {literal(dataset_id)} "
        f"AND version = {literal(version)} AND {'true' if pending_push_ok else 'pushed IS DISTINCT FROM false'} "
        f"AND to_regclass({literal(qualified(schema, table))}) IS NOT NULL"
    )


def latest_marker(schema: str, dataset_id: str, table: str) -> str:
    return (
        f"SELECT version, fingerprint, row_count FROM {qualified(schema, MARKER_TABLE)} "
        f"WHERE dataset_id = {literal(dataset_id)} AND table_name = {literal(table)} "
        "ORDER BY published_at DESC, version DESC LIMIT 1"
    )


def all_markers(schema: str) -> str:
    """Every published (dataset, version) whose table still exists: one query answers every target."""
    return (
        f"SELECT dataset_id, version FROM {qualified(schema, MARKER_TABLE)} m "
        f"WHERE m.pushed IS DISTINCT FROM false AND to_regclass(quote_ident({literal(schema)}) || '.' || quote_ident(m.table_name)) IS NOT NULL"
    )


def table_exists(schema: str, table: str) -> str:
    return f"SELECT to_regclass({literal(qualified(schema, table))}) IS NOT NULL AS present"


def count_rows(schema: str, table: str) -> str:
    return f"SELECT count(*) AS n FROM {qualified(schema, table)}"


def lock_holders(schema: str, table: str) -> str:
    """Other sessions holding a lock on the table, with who and since when: the blockers a user can act on."""
    return (
        "SELECT DISTINCT a.pid, a.usename AS user, a.application_name AS application, a.state, "
        "to_char(COALESCE(a.xact_start, a.backend_start) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') AS since, "
        "l.mode FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        f"WHERE l.locktype = 'relation' AND l.relation = to_regclass({literal(qualified(schema, table))}) "
        "AND l.granted AND l.pid <> pg_backend_pid() ORDER BY a.pid"
    )


def terminate_backend(pid: int) -> str:
    return f"SELECT pg_terminate_backend({int(pid)}) AS terminated"


def shadows_of(schema: str, table: str) -> str:
    """This table's shadows: any run's ``<table>__shadow_<run>`` and an earlier release's ``<table>__shadow``.
    A table name too long to appear whole in its shadows' names has only its lease row's shadow found."""
    legacy = f"{table}{SHADOW_MARK}"
    names = f"c.relname = {literal(legacy)}" if len(legacy.encode()) <= 63 else "false"
    if len(shadow_name(table, "000000").encode()) == len(table.encode()) + len(SHADOW_MARK) + 7:
        pattern = table.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "\\_\\_shadow\\_______"
        names += f" OR c.relname LIKE {literal(pattern)}"
    return (f"SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            f"WHERE n.nspname = {literal(schema)} AND c.relkind = 'r' AND ({names})")


def dependent_views(schema: str, table: str) -> str:
    """Views (and materialized views) that read the table directly, with their definitions and SELECT grantees."""
    return (
        "SELECT DISTINCT n.nspname AS view_schema, v.relname AS view_name, v.relkind::text AS kind, "
        "pg_get_viewdef(v.oid) AS definition, "
        # Role names as they are (the caller quotes them), as JSON text: a role name may hold a comma, and
        # both transports return text alike.
        "(SELECT json_agg(DISTINCT r.rolname)::text FROM aclexplode(v.relacl) g JOIN pg_roles r ON r.oid = g.grantee "
        " WHERE g.privilege_type = 'SELECT' AND g.grantee <> v.relowner AND g.grantee <> 0) AS grantees "
        "FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class "
        "JOIN pg_namespace n ON n.oid = v.relnamespace "
        f"WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = to_regclass({literal(qualified(schema, table))}) "
        "AND v.oid <> d.refobjid"
    )


def index_name(table: str, columns: list[str]) -> str:
    name = f"{table}_{'_'.join(columns)}"
    if len(name.encode()) <= 63:
        return name
    import hashlib

    prefix = name.encode()[:50].decode("utf-8", "ignore")  # bytes, not characters: a multibyte name stays within 63
    return f"{prefix}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def create_index(schema: str, table: str, columns: list[str], method: str = "btree") -> str:
    cols = ", ".join(ident(c) for c in columns)
    return f"CREATE INDEX IF NOT EXISTS {ident(index_name(table, columns))} ON {qualified(schema, table)} USING {method} ({cols})"


def column_types(schema: str, table: str) -> str:
    """Columns of a table with their full SQL types (typmods included: geometry(Point,2272), varchar(20))."""
    return (f"SELECT attname AS name, format_type(atttypid, atttypmod) AS type FROM pg_attribute "
            f"WHERE attrelid = {literal(qualified(schema, table))}::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum")
