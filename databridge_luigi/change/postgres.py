"""The PostgreSQL signals and their SQL: ``postgresql-xmin`` (row count and newest xmin in one snapshot, with
the transactions running before it) and ``column`` (count and newest value of an updated_at column); both
with the relation's identity (oid, kind, columns, policies, server, extensions)."""
from __future__ import annotations

from typing import Any

from ..config import Dataset
from .base import SignalUnavailable, _quote

XID_SPACE = 2**32
# Two signals are compared only while the newest xmin of the first is less than this many transaction ids
# behind the second's snapshot: ages (int4) of rows written in between then cannot alias (they stay < 2^31).
MAX_XID_DISTANCE = 2**30


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
