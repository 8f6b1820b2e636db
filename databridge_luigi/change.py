"""Change detection before the extract: a cheap signal from the source says whether it can have changed.

Before a scheduled version is extracted, the source is asked for its **change signal** (below). The signal is
stored in the version's manifest. At the next version, when the new signal equals the previous version's —
same kind, same source, same config and extract code, same table definition, same counters, and both
*settled* — the version is staged without extracting: its manifest names the previous version's data and
sha256 (``unchanged_from``), and the load then finds the fingerprint of the live table and records the
version without rewriting it. Anything else — no signal, a signal of another kind, an unsettled one, an error while
reading it, no earlier manifest, ``--force`` — means extract.

The signals, and why each cannot say "unchanged" about changed data:

``postgresql-xmin`` (a PostgreSQL table or materialized view, the default)
    In one statement (one MVCC snapshot): the row count, the newest inserting transaction id among the
    visible rows (``xmin``, widened to 64 bits against the snapshot so wraparound cannot alias), and the
    snapshot's oldest running transaction (``txid_snapshot_xmin``). Every INSERT, UPDATE, COPY, MERGE or
    re-load after a TRUNCATE writes row versions whose xmin is its own transaction id; a transaction that
    commits after the snapshot has an id at or above the snapshot's xmin. So when the newest xmin is *below*
    the snapshot's xmin (settled), any later change of a row makes the newest xmin larger, and a DELETE alone
    makes the count smaller. Only transactions of the source's own database can write the table, so a
    transaction open in another database of the server does not count: the ids running in this database
    (``pg_stat_activity.backend_xid``, ``pg_prepared_xacts``) and the next id are read just *before* the
    snapshot, and a newest xmin below all of them is settled too (any transaction that commits later either
    got its id after that read, so above the newest xmin, or was running during it). A signal that is settled
    neither way (a transaction of this database older than the newest row was still open) is recorded
    unsettled and the next version extracts. Statistics
    counters are not used: they lag (PostgreSQL 15 flushes them up to seconds late), can be reset, and do not
    survive a crash. VACUUM, FREEZE and VACUUM FULL keep xmin, so they cause no extract; if they ever changed
    it the result would be an extract, never a skip. Also part of the signal: the table's oid, kind, columns
    (name, type, typmod, fast-default values, enum labels, composite attributes), row-level security and
    its policies, the server's version and start time and the installed extensions' versions — so an
    ``ALTER TABLE … ADD COLUMN … DEFAULT`` (which rewrites no row), a restart or failover, a restore, a
    PostGIS upgrade or a new policy all mean extract. Partitioned and inherited tables, views and foreign
    tables have no xmin signal (use ``column``).

``oracle-scn`` (an Oracle table)
    In one statement: ``COUNT(*)`` and ``MAX(ORA_ROWSCN)``, plus the object's id, data object id and last DDL
    time and the columns from ``ALL_TAB_COLS``. ``ORA_ROWSCN`` is an upper bound of the commit SCN of a row's
    (or its block's) last change, and a commit after our statement has an SCN above the statement's, so any
    later change raises the maximum; TRUNCATE and DDL change the object's ids or DDL time. Always settled.
    Edits kept in Esri versioning's delta tables (A/D tables) are not in the base table: publish such layers
    from a view with a ``column`` signal, or with ``change_signal: false``.

``column`` (``change_signal: {column: updated_at}``; any PostgreSQL or Oracle table or view)
    ``COUNT(*)`` and ``MAX(column)`` of a timestamp or date column that the application sets on every insert
    and update. Settled when the newest value is older than ``settle_seconds`` (3600) by the source's clock,
    so a transaction that stamped a row before the signal was read and committed after it still moves the
    maximum. This one trusts the application: a row inserted with an old timestamp while another is deleted
    is not seen. Prefer the default signal where it exists.

Knack and Airtable have no signal: their APIs give no modification time for a whole object or table that a
client could trust, so they are extracted at every version.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import Dataset
from .connections import redact
from .staging import Manifest, StagedTable

log = logging.getLogger(__name__)

SIGNAL_FORMAT = 2  # 2: the newest xmin from age(); compared only with signals of the same format
XID_SPACE = 2**32
# Two signals are compared only while the newest xmin of the first is less than this many transaction ids
# behind the second's snapshot: ages (int4) of rows written in between then cannot alias (they stay < 2^31).
MAX_XID_DISTANCE = 2**30


# --- signals ----------------------------------------------------------------------------------------------

class SignalUnavailable(Exception):
    """The source gives no trustworthy signal for this dataset (the reason is the message)."""


def config_fingerprint(dataset: Dataset) -> str:
    """What else decides the staged bytes: the config file, the schema override and the extract's code."""
    digest = hashlib.sha256()
    for path in (dataset.path, dataset.schema_override):
        if path:
            try:
                digest.update(Path(path).read_bytes())
            except OSError:
                digest.update(b"<unreadable>")
        digest.update(b"\0")
    digest.update(_code_fingerprint().encode())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """The code that turns source rows into staged bytes (sources/, schema, geometry, the staged-table writer):
    a deploy that changes any of it extracts every dataset once, so no version keeps bytes an older release made."""
    package = Path(__file__).resolve().parent
    files = sorted((package / "sources").rglob("*.py")) + [package / "schema.py", package / "geometry.py",
                                                          package / "staging" / "table.py"]
    digest = hashlib.sha256()
    for path in files:
        try:
            digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
        except (OSError, ValueError):
            digest.update(b"<unreadable>")
    return digest.hexdigest()


def _source_fingerprint(dataset: Dataset, url: str) -> str:
    """Which source: the connection URL without its password, and the table."""
    try:
        from sqlalchemy.engine import make_url

        where = make_url(url).set(password=None).render_as_string(hide_password=False)
    except Exception:
        where = redact(url)
    text = json.dumps([where, dataset.source_schema, dataset.source_table])
    return hashlib.sha256(text.encode()).hexdigest()


def _engine_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def read_signal(dataset: Dataset, url: str, engine: Any = None) -> dict[str, Any]:
    """The dataset's change signal now, or SignalUnavailable saying why there is none."""
    options = getattr(dataset, "change_signal", True)
    if options is False:
        raise SignalUnavailable("change_signal: false")
    if dataset.kind != "databridge":
        raise SignalUnavailable(f"{dataset.kind} sources have no change signal")
    import sqlalchemy as sa

    own = engine is None
    if own:
        engine = sa.create_engine(_engine_url(url), poolclass=sa.pool.NullPool)
    try:
        column = getattr(options, "column", None)
        dialect = engine.dialect.name
        if dialect == "postgresql":
            signal = _postgres_column(dataset, engine, options) if column else _postgres_xmin(dataset, engine)
        elif dialect == "oracle":
            signal = _oracle_column(dataset, engine, options) if column else _oracle_scn(dataset, engine)
        else:
            raise SignalUnavailable(f"{dialect} sources have no change signal")
    except SignalUnavailable:
        raise
    except sa.exc.SQLAlchemyError as exc:
        raise SignalUnavailable(f"reading it failed: {redact(str(getattr(exc, 'orig', None) or exc)).splitlines()[0]}") from None
    finally:
        if own:
            engine.dispose()
    signal.update(format=SIGNAL_FORMAT, config=config_fingerprint(dataset), source=_source_fingerprint(dataset, url),
                  read_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return signal


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _pg_relation(dataset: Dataset) -> str:
    table = _quote(dataset.source_table)
    return f"{_quote(dataset.source_schema)}.{table}" if dataset.source_schema else table


# One row describing the relation and everything besides its rows that decides what an extract writes.
POSTGRES_IDENTITY_SQL = """
SELECT c.oid::bigint AS oid, c.relkind::text AS relkind,
       EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = c.oid) AS has_children,
       current_database() AS database, pg_postmaster_start_time()::text AS started,
       current_setting('server_version_num') AS server_version,
       (SELECT string_agg(e.extname || ' ' || e.extversion, ',' ORDER BY e.extname) FROM pg_extension e) AS extensions,
       (SELECT md5(string_agg(concat_ws(':', a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                                        a.atthasmissing, a.attmissingval::text, a.attgenerated, t.typtype,
                                        (SELECT string_agg(l.enumlabel, ',' ORDER BY l.enumsortorder) FROM pg_enum l
                                          WHERE l.enumtypid IN (a.atttypid, t.typelem, t.typbasetype)),
                                        (SELECT string_agg(ca.attname || ' ' || format_type(ca.atttypid, ca.atttypmod), ',' ORDER BY ca.attnum)
                                           FROM pg_attribute ca WHERE ca.attrelid = t.typrelid AND t.typrelid <> 0
                                            AND ca.attnum > 0 AND NOT ca.attisdropped)),
                             '|' ORDER BY a.attnum))
          FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
       c.relrowsecurity AS row_security, c.relforcerowsecurity AS force_row_security,
       (SELECT md5(string_agg(concat_ws(':', p.polname, p.polcmd, p.polpermissive, p.polroles::text,
                                        pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)),
                              '|' ORDER BY p.polname))
          FROM pg_policy p WHERE p.polrelid = c.oid) AS policies
  FROM pg_class c WHERE c.oid = to_regclass(:relation)
"""


def postgres_xmin_sql(relation: str) -> str:
    """Row count and newest xmin with the snapshot's bounds, all in one statement and so one snapshot.

    The newest xmin is a 64-bit id. Per row only ``age(xmin)`` is computed (int4 arithmetic: a third of the cost
    of casting each xid to a number): the distance from this transaction's fixed reference id ``base`` (the
    next xid when first asked), which is recovered exactly as ``hi32 + age(hi32)``. Then newest32 = base -
    min(age) and the 64-bit id is the one below the snapshot's xmax with those low 32 bits. Ages of 2^31 and
    more come out negative and are ignored: such a row is older than any two signals we compare (and frozen,
    or the server would have stopped)."""
    space = XID_SPACE
    return (
        "WITH s AS MATERIALIZED (SELECT txid_snapshot_xmin(txid_current_snapshot()) AS lo, "
        "txid_snapshot_xmax(txid_current_snapshot()) AS hi), "
        f"b AS MATERIALIZED (SELECT s.lo, s.hi, (s.hi % {space} + age((s.hi % {space})::text::xid)) % {space} AS base FROM s) "
        "SELECT b.lo, b.hi, d.n, "
        f"b.hi - ((b.hi % {space} - (b.base - d.min_age) + 2 * {space}) % {space}) AS newest FROM b, LATERAL ("
        f"SELECT count(*) AS n, min(age(r.xmin)) FILTER (WHERE age(r.xmin) > 0) AS min_age FROM {relation} r) d"
    )


def postgres_running_sql() -> str:
    """Read *before* the signal's snapshot, in a transaction of its own: the next transaction id, and the
    oldest transaction id still running in this database (sessions and prepared transactions), both 64-bit.
    Only a transaction of this database can write the table."""
    widen = f"s.hi - ((s.hi - r.x::text::bigint) % {XID_SPACE} + {XID_SPACE}) % {XID_SPACE}"
    return (
        "WITH s AS MATERIALIZED (SELECT txid_snapshot_xmax(txid_current_snapshot()) AS hi) "
        f"SELECT s.hi, (SELECT min({widen}) FROM ("
        "SELECT backend_xid AS x FROM pg_stat_activity WHERE datname = current_database() AND backend_xid IS NOT NULL "
        "UNION ALL SELECT transaction FROM pg_prepared_xacts WHERE database = current_database()) r) AS oldest FROM s"
    )


def _postgres_identity(engine: Any, conn: Any, dataset: Dataset) -> dict[str, Any]:
    import sqlalchemy as sa

    row = conn.execute(sa.text(POSTGRES_IDENTITY_SQL), {"relation": _pg_relation(dataset)}).mappings().first()
    if row is None:
        raise SignalUnavailable(f"table {dataset.source_schema}.{dataset.source_table} not found")
    return dict(row)


def _postgres_xmin(dataset: Dataset, engine: Any) -> dict[str, Any]:
    import sqlalchemy as sa

    with engine.connect() as conn:  # two transactions on one connection: first the running ids, then the snapshot
        before = conn.execute(sa.text(postgres_running_sql())).mappings().one()
        conn.rollback()
        conn.execution_options(isolation_level="REPEATABLE READ")
        identity = _postgres_identity(engine, conn, dataset)
        if identity["relkind"] not in ("r", "m"):
            kind = {"v": "a view", "p": "a partitioned table", "f": "a foreign table"}.get(identity["relkind"], "not a table")
            raise SignalUnavailable(f"{dataset.source_schema}.{dataset.source_table} is {kind} (no xmin); name an updated_at column in change_signal")
        if identity["has_children"]:
            raise SignalUnavailable(f"{dataset.source_schema}.{dataset.source_table} has inheritance children")
        data = conn.execute(sa.text(postgres_xmin_sql(_pg_relation(dataset)))).mappings().one()
        conn.rollback()
    newest = None if data["newest"] is None else int(data["newest"])
    next_xid, oldest = int(before["hi"]), None if before["oldest"] is None else int(before["oldest"])
    # Settled: no transaction that could still commit rows with an xmin at or below the newest one. Either the
    # snapshot's oldest running transaction (any database) is above it, or — read before the snapshot — the
    # table's newest xmin was already assigned then and is below every transaction running in this database.
    settled = (newest is None or newest < int(data["lo"])
               or (newest < next_xid and (oldest is None or newest < oldest)))
    return {
        "kind": "postgresql-xmin",
        "identity": identity,
        "rows": int(data["n"]),
        "newest": newest,
        "snapshot_xmin": int(data["lo"]),
        "snapshot_xmax": int(data["hi"]),
        "running_before": {"next_xid": next_xid, "oldest_in_database": oldest},
        "settled": settled,
    }


def _postgres_column(dataset: Dataset, engine: Any, options: Any) -> dict[str, Any]:
    import sqlalchemy as sa

    column, settle = options.column, int(options.settle_seconds)
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        identity = _postgres_identity(engine, conn, dataset)
        kind = conn.execute(sa.text(
            "SELECT t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = to_regclass(:relation) AND a.attname = :column AND NOT a.attisdropped"),
            {"relation": _pg_relation(dataset), "column": column}).scalar()
        if kind not in ("timestamptz", "timestamp", "date"):
            raise SignalUnavailable(f"change_signal column {column!r} is {'missing' if kind is None else kind}, not a timestamp or date")
        # The source's clock decides "settled"; a naive timestamp is read in the dataset's zone.
        conn.execute(sa.text("SELECT set_config('TimeZone', :zone, true)"), {"zone": dataset.timezone})
        now = {"timestamptz": "now()", "timestamp": "localtimestamp", "date": "current_date"}[kind]
        col = _quote(column)
        row = conn.execute(sa.text(
            f"SELECT count(*) AS n, max({col})::text AS newest, "
            f"coalesce(max({col}) <= {now} - make_interval(secs => :settle), true) AS settled FROM {_pg_relation(dataset)}"),
            {"settle": settle}).mappings().one()
        conn.rollback()
    return {"kind": f"column {column}", "identity": identity, "rows": int(row["n"]), "newest": row["newest"],
            "settled": bool(row["settled"]), "settle_seconds": settle}


ORACLE_OBJECT_SQL = (
    "SELECT object_type, object_id, data_object_id, TO_CHAR(last_ddl_time, 'YYYY-MM-DD\"T\"HH24:MI:SS') AS last_ddl "
    "FROM all_objects WHERE owner = :owner AND object_name = :table_name AND object_type IN ('TABLE', 'VIEW')"
)
ORACLE_COLUMNS_SQL = (
    "SELECT column_name, data_type, data_type_owner, data_length, data_precision, data_scale, nullable, column_id "
    "FROM all_tab_cols WHERE owner = :owner AND table_name = :table_name AND hidden_column = 'NO' ORDER BY column_id"
)


def oracle_scn_sql(relation: str) -> str:
    return f"SELECT COUNT(*) AS n, MAX(ORA_ROWSCN) AS newest FROM {relation}"


def _oracle_identity(conn: Any, dataset: Dataset) -> tuple[dict[str, Any], str]:
    import sqlalchemy as sa

    params = {"owner": (dataset.source_schema or "").upper(), "table_name": dataset.source_table.upper()}
    objects = conn.execute(sa.text(ORACLE_OBJECT_SQL), params).all()
    if not objects:
        raise SignalUnavailable(f"{params['owner']}.{params['table_name']} not found in ALL_OBJECTS")
    columns = conn.execute(sa.text(ORACLE_COLUMNS_SQL), params).all()
    identity = {
        "objects": [[str(v) for v in row] for row in objects],
        "columns": hashlib.md5(json.dumps([[str(v) for v in row] for row in columns]).encode()).hexdigest(),
    }
    relation = f"{_quote(params['owner'])}.{_quote(params['table_name'])}"
    return identity, relation


def _oracle_scn(dataset: Dataset, engine: Any) -> dict[str, Any]:
    import sqlalchemy as sa

    with engine.connect() as conn:
        identity, relation = _oracle_identity(conn, dataset)
        if not any(row[0] == "TABLE" for row in identity["objects"]):
            raise SignalUnavailable(f"{relation} is a view (no ORA_ROWSCN); name an updated_at column in change_signal")
        n, newest = conn.execute(sa.text(oracle_scn_sql(relation))).one()
    return {"kind": "oracle-scn", "identity": identity, "rows": int(n), "newest": None if newest is None else int(newest),
            "settled": True}


def _oracle_column(dataset: Dataset, engine: Any, options: Any) -> dict[str, Any]:
    import sqlalchemy as sa

    column, settle = options.column, int(options.settle_seconds)
    col = _quote(column.upper())
    with engine.connect() as conn:
        identity, relation = _oracle_identity(conn, dataset)
        n, newest, settled = conn.execute(sa.text(
            f"SELECT COUNT(*), TO_CHAR(CAST(MAX({col}) AS TIMESTAMP), 'YYYY-MM-DD\"T\"HH24:MI:SS.FF6'), "
            f"CASE WHEN MAX({col}) IS NULL OR CAST(MAX({col}) AS TIMESTAMP) <= "
            f"CAST(SYSTIMESTAMP AS TIMESTAMP) - NUMTODSINTERVAL(:settle, 'SECOND') THEN 1 ELSE 0 END FROM {relation}"),
            {"settle": settle}).one()
    return {"kind": f"column {column}", "identity": identity, "rows": int(n), "newest": newest, "settled": bool(settled),
            "settle_seconds": settle}


# --- comparing --------------------------------------------------------------------------------------------

def why_changed(previous: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    """None when ``current`` proves the source unchanged since ``previous`` was read; else the reason to extract."""
    if not previous:
        return "the previous version has no change signal"
    for key, reason in (("format", "the signal format changed"), ("kind", "the signal kind changed"),
                        ("source", "the source connection or table changed"), ("config", "the dataset's config changed")):
        if previous.get(key) != current.get(key):
            return reason
    if not previous.get("settled"):
        return "the previous signal was not settled (a write may have been in flight)"
    if not current.get("settled"):
        return "the signal is not settled (a write may be in flight)"
    if previous.get("identity") != current.get("identity"):
        changed = sorted(k for k in set(previous.get("identity") or {}) | set(current.get("identity") or {})
                         if (previous.get("identity") or {}).get(k) != (current.get("identity") or {}).get(k))
        return f"the table or server changed ({', '.join(changed)})"
    if current["kind"] == "postgresql-xmin":
        distance = int(current["snapshot_xmax"]) - int(previous["snapshot_xmax"])
        behind = int(current["snapshot_xmax"]) - int(previous["newest"] if previous.get("newest") is not None else previous["snapshot_xmin"])
        if not 0 <= distance or not behind < MAX_XID_DISTANCE:
            return f"the transaction counter moved by {distance} (wraparound window)"
    if previous.get("rows") != current.get("rows"):
        return f"the row count changed ({previous.get('rows')} → {current.get('rows')})"
    if previous.get("newest") != current.get("newest"):
        return "rows were written"
    return None


# --- the decision before an extract ---------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    manifest: Manifest
    extracted: bool  # False: already staged by another run, or unchanged
    message: str


Extractor = Callable[[], Manifest]


def extract_unless_unchanged(dataset: Dataset, url: str, staged: StagedTable, extract: Extractor, *, force: bool = False) -> Outcome:
    """Stage ``staged``'s version: nothing if it is staged already, the previous version's data if the change
    signal proves the source unchanged (never with ``force``), else ``extract()`` with the signal recorded."""
    if staged.exists():
        manifest = staged.manifest()
        return Outcome(manifest, False, f"already staged by run {manifest.run_id or '?'} ({manifest.staged_by or 'an earlier release'})")
    try:
        signal: dict[str, Any] | None = read_signal(dataset, url)
    except SignalUnavailable as exc:
        configured = getattr(getattr(dataset, "change_signal", None), "column", None)
        # A configured column that cannot be used is a config problem worth a warning; the rest is how it is.
        log.log(logging.WARNING if configured else logging.INFO, "%s: no change signal (%s); extracting", dataset.id, exc)
        signal = None
    except Exception as exc:  # any doubt means extract
        log.warning("%s: reading the change signal failed (%s); extracting", dataset.id, redact(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__)
        signal = None
    if signal is not None and not force:
        reason, previous = _compare_with_previous(staged, signal)
        if reason is None and previous is not None:
            return _record_unchanged(dataset, staged, previous, signal)
        log.info("%s: extracting version %s: %s", dataset.id, staged.version, reason)
    elif force:
        log.info("%s: --force: extracting version %s whatever the change signal says", dataset.id, staged.version)
    staged.change_signal = signal
    manifest = extract()
    if manifest.run_id and manifest.run_id != staged.run_id:
        return Outcome(manifest, False, f"already staged by run {manifest.run_id} ({manifest.staged_by})")
    return Outcome(manifest, True, f"staged {manifest.rows} rows at {staged.describe()}")


def _compare_with_previous(staged: StagedTable, signal: dict[str, Any]) -> tuple[str | None, StagedTable | None]:
    try:
        previous = staged.previous()
        if previous is None:
            return "no earlier staged version", None
        reason = why_changed(previous.manifest().change_signal, signal)
        if reason is None and not staged.store.exists(previous.data_key()):
            return f"the data of version {previous.version} is gone from staging", None
        return reason, previous
    except Exception as exc:  # an unreadable previous manifest is a doubt, not a failure
        return f"the previous version cannot be read ({redact(str(exc))[:200]})", None


def _record_unchanged(dataset: Dataset, staged: StagedTable, previous: StagedTable, signal: dict[str, Any]) -> Outcome:
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest = staged.record_unchanged(previous, signal, created)
    if manifest.run_id != staged.run_id:
        return Outcome(manifest, False, f"already staged by run {manifest.run_id} ({manifest.staged_by})")
    message = (f"unchanged since {manifest.unchanged_from} (change signal: {signal['rows']} rows, nothing written since); "
               f"version {staged.version} staged without extracting")
    log.info("%s: %s", dataset.id, message)
    return Outcome(manifest, False, message)
