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

The package is split by concept, each module importing only those before it:

* ``base``        — ``SignalUnavailable`` and identifier quoting, shared by the readers;
* ``fingerprint`` — the ``config`` (config file, schema override, extract code) and ``source`` fingerprints;
* ``postgres``    — the ``postgresql-xmin`` and ``column`` signals of PostgreSQL and their SQL;
* ``oracle``      — the ``oracle-scn`` and ``column`` signals of Oracle and their SQL;
* ``decide``      — ``read_signal``, ``why_changed``, ``Outcome`` and ``extract_unless_unchanged``.

Every public name is importable from ``databridge_luigi.change``; no module of the package imports the package.
"""
from __future__ import annotations

from .base import SignalUnavailable
from .fingerprint import config_fingerprint
from .postgres import MAX_XID_DISTANCE, POSTGRES_IDENTITY_SQL, XID_SPACE, postgres_running_sql, postgres_xmin_sql
from .oracle import ORACLE_COLUMNS_SQL, ORACLE_OBJECT_SQL, oracle_scn_sql
from .decide import SIGNAL_FORMAT, Extractor, Outcome, extract_unless_unchanged, read_signal, why_changed

__all__ = [
    "MAX_XID_DISTANCE", "ORACLE_COLUMNS_SQL", "ORACLE_OBJECT_SQL", "POSTGRES_IDENTITY_SQL", "SIGNAL_FORMAT", "XID_SPACE",
    "Extractor", "Outcome", "SignalUnavailable", "config_fingerprint", "extract_unless_unchanged", "oracle_scn_sql",
    "postgres_running_sql", "postgres_xmin_sql", "read_signal", "why_changed",
]
