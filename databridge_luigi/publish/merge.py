"""Merge by key: insert new rows, update changed ones, delete rows gone from the source (``delete_stale``),
leave unchanged rows untouched (on CARTO they keep their ``cartodb_id``, which apps link to). The shadow may
hold only an incremental extract's changed rows (``plan.changed_rows_only``): then stale rows are those whose key
is missing from the source's key set (``plan.key_table``), and without one nothing is deleted.

Like replace, it keeps the live table's identity and takes only ROW EXCLUSIVE. One statement does it all:
data-modifying CTEs over one snapshot touch disjoint rows (stale keys, changed keys, new keys), and the
marker row in the same statement records inserted, updated, deleted and unchanged counts. A row counts as
changed when any value differs: compared with ``IS DISTINCT FROM`` where the type's equality means the same
value written the same way (integers, boolean, text, dates, timestamps, uuid, bytea), and by text form for
every other type — numeric ``1.0`` vs ``1.00``, float ``-0``, intervals, json — and geometry by its EWKB
bytes, so an update is never skipped for a value that would read back differently.
"""
from __future__ import annotations

from . import sql
from .plan import CommitPlan

MODE = "merge"

# format_type names whose "=" holds only for the same value written the same way (2.5x cheaper than text).
_EXACT_EQUALITY = {"boolean", "smallint", "integer", "bigint", "text", "date", "timestamp without time zone",
                   "timestamp with time zone", "uuid", "bytea"}


def _differs(column: str, type_name: str) -> str:
    name = sql.ident(column)
    if type_name in _EXACT_EQUALITY or type_name.startswith("character varying"):
        return f"l.{name} IS DISTINCT FROM s.{name}"
    if type_name.startswith("geometry"):  # EWKB bytes: exact (SRID, dimensions, every coordinate), half the hex text
        return f"l.{name}::bytea IS DISTINCT FROM s.{name}::bytea"
    return f"l.{name}::text IS DISTINCT FROM s.{name}::text"


def key_problems(plan: CommitPlan) -> str:
    """A query that finds the first duplicate or NULL key in the shadow (no row: the key is usable). The
    grouping is over the key alone; only the one offending key is turned into text."""
    keys = ", ".join(sql.ident(k) for k in plan.primary_key)
    null = " OR ".join(f"{sql.ident(k)} IS NULL" for k in plan.primary_key)
    return (f"(SELECT 'NULL' AS problem, {_key_text(plan, '')} AS key FROM {plan.staged} WHERE {null} LIMIT 1) UNION ALL "
            f"(SELECT 'duplicate' AS problem, {_key_text(plan, '')} AS key FROM "
            f"(SELECT {keys} FROM {plan.staged} GROUP BY {keys} HAVING count(*) > 1 LIMIT 1) d)")


def _key_text(plan: CommitPlan, alias: str) -> str:
    prefix = f"{alias}." if alias else ""
    return "concat_ws(', ', " + ", ".join(f"{prefix}{sql.ident(k)}::text" for k in plan.primary_key) + ")"


def statements(plan: CommitPlan) -> list[str]:
    match = " AND ".join(f"l.{sql.ident(k)} = s.{sql.ident(k)}" for k in plan.primary_key)
    others = [c for c in plan.columns if c not in plan.primary_key]
    parts: list[str] = []
    if plan.delete_stale:  # keys gone from the shadow — or, for changed rows only, from the source's key set
        present = plan.key_table or plan.staged
        parts.append(f"deleted AS (DELETE FROM {plan.live} l WHERE NOT EXISTS (SELECT 1 FROM {present} s WHERE {match}) RETURNING 1)")
    if others:
        assignments = ", ".join(f"{sql.ident(c)} = s.{sql.ident(c)}" for c in others)
        types = dict(zip(plan.columns, plan.types))
        changed = " OR ".join(_differs(c, types.get(c, "")) for c in others)
        parts.append(f"updated AS (UPDATE {plan.live} l SET {assignments} FROM {plan.staged} s "
                     f"WHERE {match} AND ({changed}) RETURNING 1)")
    parts.append(f"inserted AS (INSERT INTO {plan.live} ({plan.column_list()}) SELECT {plan.column_list('s')} FROM {plan.staged} s "
                 f"WHERE NOT EXISTS (SELECT 1 FROM {plan.live} l WHERE {match}) RETURNING 1)")
    inserted = "(SELECT count(*) FROM inserted)"
    updated = "(SELECT count(*) FROM updated)" if others else "0"
    deleted = "(SELECT count(*) FROM deleted)" if plan.delete_stale else "0"
    counts = f"{inserted}, {updated}, {deleted}, {plan.rows} - {inserted} - {updated}"
    # Changed rows only: the marker records the table's rows after the merge, not the shadow's. The count reads
    # the statement's snapshot (before its own writes), so the rows it inserts and deletes are added in.
    row_count = f"(SELECT count(*) FROM {plan.live}) + {inserted} - {deleted}" if plan.changed_rows_only else None
    return ["WITH " + ", ".join(parts) + " " + plan.marker(MODE, counts, row_count), *plan.grant_statements()]
