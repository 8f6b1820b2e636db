"""Extract a table from any SQLAlchemy database into a staged table.

One result (a staged CSV with EWKT geometry, and a table schema from the catalog), one module per dialect:

* ``postgres``: PostgreSQL/PostGIS, ``COPY (SELECT …) TO STDOUT`` streamed as CSV bytes — no per-row Python.
* ``geodatabase``: an Esri enterprise geodatabase on PostgreSQL (``sde.gdb_items`` present) — the PostgreSQL
  path plus Esri's bookkeeping, ``st_geometry``, Z/M declarations and Esri-only SRIDs.
* ``oracle``: python-oracledb thin mode; SDE ``ST_Geometry`` and Oracle Spatial.
* ``mysql``: MySQL/MariaDB through PyMySQL, unbuffered.
* ``generic``: anything else (SQLite, …) through SQLAlchemy reflection; SQLite's rows as Arrow batches from
  the ADBC driver (``sqlite_adbc``), sqlite3 from the first batch they do not fit.

``base`` holds what they share (the extract driver, names, errors, timeouts) and ``rows``/``arrow`` the row
path's conversion (DBAPI batches → CSV, vectorised with pyarrow). The source row count is read before and
after the extract; a change, or zero rows without ``allow_empty``, fails the extract before anything is staged.
"""
from __future__ import annotations

from ...config import Dataset
from ...connections import redact
from ...staging import StagedTableWriter
from .base import (BATCH_ROWS, MAX_IDENTIFIER_BYTES, Adapter, ChangedSince, ExtractError, Extraction, ExtractTimeout,
                   Progress, SourceColumn, quote, quote_literal, run, sqlalchemy_url)
from .generic import GenericAdapter
from .oracle import OracleAdapter
from .postgres import PostgresAdapter

_run = run  # the name tests and older callers use

__all__ = [
    "BATCH_ROWS", "MAX_IDENTIFIER_BYTES", "Adapter", "ChangedSince", "ExtractError", "ExtractTimeout", "Extraction", "GenericAdapter",
    "OracleAdapter", "PostgresAdapter", "SourceColumn", "extract_table", "quote", "quote_literal", "sqlalchemy_url",
]


def extract_table(dataset: Dataset, url: str, writer: StagedTableWriter, progress: Progress = lambda rows: None,
                  since: ChangedSince | None = None, only: tuple[str, ...] = ()) -> Extraction:
    """Stream ``dataset``'s source table (only rows changed ``since``, only the columns named in ``only``, when
    given) into ``writer``; returns the schema and facts for the manifest."""
    import sqlalchemy as sa

    engine = _engine(sqlalchemy_url(url))
    adapter: Adapter | None = None
    try:
        adapter = adapter_for(engine)(dataset, engine)
        sa.event.listen(engine, "connect", lambda dbapi_connection, record: adapter.on_connect(dbapi_connection))
        _configure_pooled(engine, adapter)
        return run(dataset, adapter, writer, progress, since, only)
    except sa.exc.NoSuchTableError as exc:
        raise ExtractError(f"{dataset.id}: source {dataset.source_conn}: table {redact(str(exc))} not found") from None
    except sa.exc.SQLAlchemyError as exc:  # not every SQLAlchemyError wraps a driver error (.orig)
        driver = getattr(exc, "orig", None)
        if adapter is not None and driver is not None and adapter.is_timeout(driver):
            raise _timeout(dataset, adapter) from None
        raise ExtractError(f"{dataset.id}: source {dataset.source_conn}: {redact(str(driver or exc)).splitlines()[0]}") from None
    except ExtractError:
        raise
    except Exception as exc:  # a driver error raised outside SQLAlchemy (COPY, the raw cursor of the row path)
        if adapter is not None and adapter.is_timeout(exc):
            raise _timeout(dataset, adapter) from None
        raise
    finally:
        engine.dispose()


def _engine(url: str) -> "sa.Engine":  # noqa: F821
    """PostgreSQL: one connection for the whole extract (catalog, counts, COPY) instead of one per step — each
    new backend costs a fork and a PostGIS library load (~15 ms). Other drivers get a connection per step:
    their streaming cursors (PyMySQL unbuffered, oracledb) are not safe to share."""
    import sqlalchemy as sa

    if sa.engine.make_url(url).get_backend_name() == "postgresql":
        return sa.create_engine(url, pool_size=1, max_overflow=2)
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def _configure_pooled(engine: "sa.Engine", adapter: Adapter) -> None:  # noqa: F821
    """The pooled connection that chose the adapter gets the adapter's session settings (the dataset's timeout)
    now, so the extract goes on with it rather than with a new backend (NullPool engines kept none)."""
    import sqlalchemy as sa

    if isinstance(engine.pool, sa.pool.NullPool):
        return
    with engine.connect() as conn:
        adapter.on_connect(conn.connection.dbapi_connection)


def _timeout(dataset: Dataset, adapter: Adapter) -> ExtractTimeout:
    return ExtractTimeout(
        f"{dataset.id}: source {dataset.source_conn}: a statement on {adapter.table_label} ran longer than the dataset's "
        f"timeout ({adapter.timeout:g} s) and was cancelled by the source; nothing was staged (raise timeout in {dataset.path} "
        "if the table is simply big)"
    )


def adapter_for(engine: "sa.Engine") -> type[Adapter]:  # noqa: F821
    name = engine.dialect.name
    if name == "postgresql":
        from .geodatabase import GeodatabaseAdapter, is_geodatabase

        return GeodatabaseAdapter if is_geodatabase(engine) else PostgresAdapter
    if name == "oracle":
        return OracleAdapter
    if name in ("mysql", "mariadb"):
        from .mysql import MySQLAdapter

        return MySQLAdapter
    return GenericAdapter
