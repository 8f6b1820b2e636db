"""Shared fixtures: a real PostgreSQL/PostGIS database per test session.

The server comes from DATABRIDGE_TEST_PG_DSN (default: the machine's server on 127.0.0.1:5432, trust auth).
Each session creates its own database and drops it afterwards, so parallel runs never share tables.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

ADMIN_DSN = os.environ.get("DATABRIDGE_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _dsn_for(database: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo(**info)


def create_postgis_database(prefix: str = "dbl_test") -> str:
    """Create a fresh database with PostGIS and return its DSN."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = _dsn_for(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS postgis")
    return dsn


def drop_database(dsn: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def postgis_dsn() -> Iterator[str]:
    """DSN of a throwaway PostGIS database shared by the whole test session."""
    dsn = create_postgis_database()
    yield dsn
    drop_database(dsn)


@pytest.fixture()
def fresh_postgis_dsn() -> Iterator[str]:
    """DSN of a throwaway PostGIS database for one test."""
    dsn = create_postgis_database()
    yield dsn
    drop_database(dsn)
