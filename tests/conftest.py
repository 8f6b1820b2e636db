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
    """A postgresql:// URL for ``database`` on the admin server (connection URLs are what users write)."""
    from urllib.parse import quote, urlsplit, urlunsplit

    if "://" in ADMIN_DSN:
        parts = urlsplit(ADMIN_DSN)
        return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, ""))
    info = psycopg.conninfo.conninfo_to_dict(ADMIN_DSN)
    auth = quote(info.get("user", "postgres")) + (":" + quote(info["password"]) if info.get("password") else "")
    return f"postgresql://{auth}@{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}/{database}"


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
    name = dsn.rsplit("/", 1)[1].split("?")[0]
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


def ensure_role(name: str) -> None:
    """Roles are cluster-wide; CARTO's publicuser/tileuser exist on every CARTO database."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
            try:
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
            except psycopg.errors.DuplicateObject:  # created concurrently by another test process
                pass


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's server on a loopback port (S3, Secrets Manager, Batch), reached over real HTTP."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 at the moto server through the standard environment variables."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return moto_server


@pytest.fixture()
def pipeline(tmp_path, monkeypatch, postgis_dsn):
    """The real pipeline in-process (tests/pipeline.py): the session database as source, a fresh PostGIS
    database as destination, CARTO's publicuser/tileuser roles present."""
    from tests.pipeline import Pipeline

    ensure_role("publicuser")
    ensure_role("tileuser")
    dest = create_postgis_database("dbl_dest")
    yield Pipeline(tmp_path, postgis_dsn, dest, monkeypatch)
    drop_database(dest)
