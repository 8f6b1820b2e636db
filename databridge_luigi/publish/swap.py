"""The swap: a new table takes the live one's place. Needed only when a new table is (first publish, an
accepted schema change, or ``load_mode: swap``); the in-place modes keep the table's identity instead.

What hangs off the old table either comes along or is refused *before any row is copied*:
carried over — dependent views and materialized views in chains of any depth (dropped deepest first,
re-created shallowest first, with their options such as ``security_barrier``/``check_option``, every
privilege granted on them, comments, and a materialized view's indexes), the table's own grants and comment;
refused — row-level security and policies, triggers (other than the transport's own, e.g. cartodbfy's),
views owned by another role, foreign keys that reference the table: the message says to publish in place.
The ACCESS EXCLUSIVE lock the DROP needs is taken under the lock policy (publish/locks.py).
"""
from __future__ import annotations

import json
from typing import Any

from . import sql
from .plan import CommitPlan

MODE = "swap"


def attachments(schema: str, table: str, own_triggers: tuple[str, ...] = ()) -> str:
    """What a swap cannot carry over: one row per thing, with its kind and name."""
    regclass = f"to_regclass({sql.literal(sql.qualified(schema, table))})"
    skip = ", ".join(sql.literal(t) for t in own_triggers) or "''"
    return (
        f"SELECT 'row-level security' AS kind, relname::text AS name FROM pg_class WHERE oid = {regclass} AND (relrowsecurity OR relforcerowsecurity) "
        f"UNION ALL SELECT 'policy', polname::text FROM pg_policy WHERE polrelid = {regclass} "
        f"UNION ALL SELECT 'trigger', tgname::text FROM pg_trigger WHERE tgrelid = {regclass} AND NOT tgisinternal AND tgname NOT IN ({skip}) "
        f"UNION ALL SELECT 'foreign key from', conrelid::regclass::text FROM pg_constraint WHERE confrelid = {regclass} AND contype = 'f'"
    )


def dependent_views(schema: str, table: str) -> str:
    """Every view and materialized view that reads the table, directly or through other views, with what
    re-creating it needs; ``depth`` orders the chain."""
    regclass = f"to_regclass({sql.literal(sql.qualified(schema, table))})"
    on_view = ("JOIN pg_rewrite r ON r.oid = d.objid WHERE d.classid = 'pg_rewrite'::regclass "
               "AND d.refclassid = 'pg_class'::regclass AND r.ev_class <> d.refobjid")
    return (
        "WITH RECURSIVE chain(oid, depth) AS ("
        f"SELECT r.ev_class, 1 FROM pg_depend d {on_view} AND d.refobjid = {regclass} "
        f"UNION SELECT r.ev_class, chain.depth + 1 FROM chain JOIN pg_depend d ON d.refobjid = chain.oid {on_view}) "
        "SELECT n.nspname AS view_schema, v.relname AS view_name, v.relkind::text AS kind, max(c.depth) AS depth, "
        "pg_get_viewdef(v.oid) AS definition, array_to_string(v.reloptions, ', ') AS options, "
        "pg_get_userbyid(v.relowner) AS owner, pg_get_userbyid(v.relowner) = current_user AS owned, "
        "obj_description(v.oid, 'pg_class') AS comment, "
        # Grantees as JSON text: a role name may hold a comma, and both transports return text alike.
        "(SELECT json_agg(json_build_object('grantee', CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(g.grantee) END, "
        " 'privilege', g.privilege_type)) FROM aclexplode(v.relacl) g WHERE g.grantee <> v.relowner)::text AS grants, "
        "(SELECT json_agg(pg_get_indexdef(i.indexrelid)) FROM pg_index i WHERE i.indrelid = v.oid)::text AS indexes "
        "FROM chain c JOIN pg_class v ON v.oid = c.oid JOIN pg_namespace n ON n.oid = v.relnamespace "
        "GROUP BY v.oid, n.nspname, v.relname, v.relkind, v.reloptions, v.relowner ORDER BY max(c.depth), n.nspname, v.relname"
    )


def table_extras(schema: str, table: str) -> str:
    """The live table's grants (beyond the owner's) and comment, to carry onto the new table."""
    regclass = f"to_regclass({sql.literal(sql.qualified(schema, table))})"
    return (
        "SELECT (SELECT json_agg(json_build_object('grantee', CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(g.grantee) END, "
        "'privilege', g.privilege_type)) FROM pg_class c, aclexplode(c.relacl) g "
        f"WHERE c.oid = {regclass} AND g.grantee <> c.relowner)::text AS grants, obj_description({regclass}, 'pg_class') AS comment"
    )


def refusal(rows: list[dict[str, Any]], views: list[dict[str, Any]]) -> str:
    """What a swap cannot carry, as one phrase (empty when it can carry everything)."""
    things = [f"{r['kind']} {r['name']}" for r in rows]
    things += [f"view {v['view_schema']}.{v['view_name']} owned by {v['owner']}" for v in views if not v["owned"]]
    return ", ".join(things)


def statements(plan: CommitPlan, live_rows: int | None, views: list[dict[str, Any]], extras: dict[str, Any] | None,
               index_renames: list[tuple[str, str]]) -> list[str]:
    """``live_rows`` is the old table's row count (None: there is no live table yet)."""
    live_exists = live_rows is not None
    out = [f"DROP {_kind(v)} {_name(v)}" for v in reversed(views)]  # deepest first
    if live_exists:
        out.append(f"DROP TABLE {plan.live}")
    out.append(f"ALTER TABLE {plan.staged} RENAME TO {sql.ident(plan.table)}")
    out += [f"ALTER INDEX {sql.qualified(plan.schema, old)} RENAME TO {sql.ident(new)}" for old, new in index_renames]
    for view in views:  # shallowest first; if one no longer fits the new columns, the whole swap rolls back
        out += _recreate(view)
    if extras:
        out += _grants(plan.live, extras.get("grants"))
        if extras.get("comment") is not None:
            out.append(f"COMMENT ON TABLE {plan.live} IS {sql.literal(extras['comment'])}")
    out += plan.grant_statements()
    out.append(plan.marker(MODE, f"{plan.rows}, 0, {live_rows or 0}, 0"))
    return out


def _kind(view: dict[str, Any]) -> str:
    return "MATERIALIZED VIEW" if view["kind"] == "m" else "VIEW"


def _name(view: dict[str, Any]) -> str:
    return sql.qualified(view["view_schema"], view["view_name"])


def _recreate(view: dict[str, Any]) -> list[str]:
    name = _name(view)
    options = f" WITH ({view['options']})" if view.get("options") else ""
    out = [f"CREATE {_kind(view)} {name}{options} AS {view['definition'].rstrip().rstrip(';')}"]
    out += [definition for definition in json.loads(view.get("indexes") or "[]")]
    out += _grants(name, view.get("grants"))
    if view.get("comment") is not None:
        out.append(f"COMMENT ON {_kind(view)} {name} IS {sql.literal(view['comment'])}")
    return out


def _grants(target: str, grants_json: str | None) -> list[str]:
    out = []
    for grant in json.loads(grants_json or "[]"):
        grantee = "PUBLIC" if grant["grantee"] == "PUBLIC" else sql.ident(grant["grantee"])
        out.append(f"GRANT {grant['privilege']} ON {target} TO {grantee}")
    return out
