"""One SQLAlchemy engine per source URL and process: the change signal, the extract and the next dataset from
the same source share it (``luigi --workers 1`` runs every task of a ``PublishAll`` in one process).

Why: a new PostgreSQL backend costs a fork, cold catalog caches and a PostGIS library load (~20 ms of server
CPU), and a new engine its dialect set-up (~5 ms here); a run of many small datasets from one warehouse paid
both two or three times per dataset. PostgreSQL engines keep one idle connection; other drivers keep none
(``NullPool``: their streaming cursors are not safe to share) but still set their dialect up once.

A pooled connection goes back as it came: rolled back (the pool's reset on return) and ``RESET ALL``, so no
dataset's ``statement_timeout``, time zone or COPY settings reach the next user; one that cannot be reset is
closed. It is pinged before reuse, so a source restarted between two datasets costs a reconnect, not a
failure. Keyed by process id: a task process that luigi forks opens its own (psycopg never closes a
connection in a process that did not open it).
"""
from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa

_engines: dict[tuple[int, str], sa.Engine] = {}


def source_engine(url: str) -> sa.Engine:
    """The process's engine for ``url`` (a SQLAlchemy URL, e.g. from ``sqlalchemy_url``)."""
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = _create(url)
    return engine


def discard(url: str) -> None:
    """Close ``url``'s engine after a failure: the next user starts on new connections."""
    engine = _engines.pop((os.getpid(), url), None)
    if engine is not None:
        engine.dispose()


def close_all() -> None:
    """Close every engine this process opened (tests, and a program that is done with its sources)."""
    for key in [k for k in _engines if k[0] == os.getpid()]:
        _engines.pop(key).dispose()


def _create(url: str) -> sa.Engine:
    if sa.engine.make_url(url).get_backend_name() != "postgresql":
        return sa.create_engine(url, poolclass=sa.pool.NullPool)
    engine = sa.create_engine(url, pool_size=1, max_overflow=2, pool_pre_ping=True)
    sa.event.listen(engine, "checkin", _reset_session)
    return engine


def _reset_session(dbapi_connection: Any, record: Any) -> None:
    """``RESET ALL`` on a connection coming back to the pool (already rolled back); closed if that fails."""
    if dbapi_connection is None:  # invalidated
        return
    try:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True  # SET and RESET are transactional: outside one, RESET ALL sticks
        dbapi_connection.execute("RESET ALL")
        dbapi_connection.autocommit = autocommit
    except Exception:
        record.invalidate()
