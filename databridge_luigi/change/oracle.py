"""The Oracle signals and their SQL: ``oracle-scn`` (``COUNT(*)`` and ``MAX(ORA_ROWSCN)``) and ``column``
(count and newest value of an updated_at column); both with the object's ids, last DDL time and columns."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from ..config import Dataset
from .base import SignalUnavailable, _quote

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
