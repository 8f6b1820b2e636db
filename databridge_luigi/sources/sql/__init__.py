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

from collections.abc import Callable
from typing import Any

from ...config import Dataset
from ...connections import redact
from ...staging import StagedTableWriter
from .base import (BATCH_ROWS, MAX_IDENTIFIER_BYTES, Adapter, ChangedSince, ExtractError, Extraction, ExtractTimeout,
                   Progress, SourceColumn, quote, quote_literal, run, sqlalchemy_url)
from .generic import GenericAdapter
from .oracle import OracleAdapter
from .engines import discard, source_engine
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

    engine_url = sqlalchemy_url(url)
    engine = source_engine(engine_url)
    adapter: Adapter | None = None
    settings = None
    try:
        adapter = adapter_for(engine)(dataset, engine)
        # The dataset's session settings (its statement timeout) on every connection this extract checks out.
        settings = _session_settings(adapter)
        sa.event.listen(engine, "checkout", settings)
        return run(dataset, adapter, writer, progress, since, only)
    except BaseException as exc:
        discard(engine_url)  # a connection that failed mid-extract is never reused
        error = _one_line_error(dataset, adapter, exc, getattr(engine.dialect, "loaded_dbapi", None))
        if error is None:
            raise
        raise error from None
    finally:
        if settings is not None and sa.event.contains(engine, "checkout", settings):
            sa.event.remove(engine, "checkout", settings)


def _session_settings(adapter: Adapter) -> Callable[[Any, Any, Any], None]:
    def apply(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        adapter.on_connect(dbapi_connection)

    return apply


def _one_line_error(dataset: Dataset, adapter: Adapter | None, exc: BaseException, dbapi: Any) -> ExtractError | None:
    """The one-line error, naming the dataset and the source connection, for a SQLAlchemy error or a driver
    (``dbapi``) error — the COPY and the row path's raw cursors raise outside SQLAlchemy, e.g. a view failing
    on a row mid-stream; a timeout says so. None: raise ``exc`` as it is."""
    import sqlalchemy as sa

    def timed_out(error: BaseException) -> bool:  # a statement cancelled without a timeout set was cancelled by someone
        return adapter is not None and adapter.timeout is not None and adapter.is_timeout(error)

    if isinstance(exc, sa.exc.NoSuchTableError):
        return ExtractError(f"{dataset.id}: source {dataset.source_conn}: table {redact(str(exc))} not found")
    if isinstance(exc, sa.exc.SQLAlchemyError):  # not every SQLAlchemyError wraps a driver error (.orig)
        driver = getattr(exc, "orig", None)
        if adapter is not None and driver is not None and timed_out(driver):
            return _timeout(dataset, adapter)
        return ExtractError(f"{dataset.id}: source {dataset.source_conn}: {_first_line(driver or exc)}")
    if not isinstance(exc, Exception) or isinstance(exc, ExtractError) or adapter is None:
        return None
    if timed_out(exc):
        return _timeout(dataset, adapter)
    if dbapi is not None and isinstance(exc, dbapi.Error):
        return ExtractError(f"{dataset.id}: source {dataset.source_conn}: {_first_line(exc)}")
    return None


def _first_line(error: BaseException) -> str:
    lines = redact(str(error)).splitlines()
    return lines[0] if lines else type(error).__name__


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
