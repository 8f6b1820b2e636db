"""The load protocol (DESIGN §3), written once for every transport.

lease (one loader per table) → run-unique shadow → COPY from staging → verify (count, empty, row drift,
schema drift) → transport's finishing (CARTO: cartodbfy + VACUUM) → ONE transaction, fenced by the lease and
run under the lock policy, that writes the live table by the dataset's mode (replace.py, merge.py, swap.py)
together with the marker row. Anything that fails before that commit drops this run's shadow and leaves the
live table exactly as it was.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Any

from ..config import Dataset
from ..schema import TableSchema
from ..staging import StagedTable
from . import changed_rows, merge, replace, sql, swap
from .contract import LoadError, LoadResult, LoadSettings, Status, Transport
from .lease import Lease, new_run_id
from .locks import commit_with_retry
from .plan import CommitPlan

__all__ = ["LoadError", "LoadResult", "LoadSettings", "Loader", "Status", "Transport"]

log = logging.getLogger(__name__)

# Below this many live rows a table is "small" and drift is judged leniently (±200%, as the City's later checks did).
SMALL_TABLE_ROWS = 50
SMALL_TABLE_TOLERANCE = 2.0
MODES = ("replace", "merge", "swap")


_COPY_CONTEXT = re.compile(r"COPY [^,\n]+, line (?P<line>\d+)(?:, column (?P<column>[^:\n]+))?")


def _staged_row(message: str, staged: StagedTable) -> str:
    """PostgreSQL names the CSV's physical line (the header is line 1, and a newline inside a quoted value starts
    another); a user wants the data row and column."""
    match = _COPY_CONTEXT.search(message)
    if not match or int(match["line"]) < 2:
        return ""
    column = f", column {match['column']}" if match["column"] else ""
    try:
        row = staged.row_ending_at_line(int(match["line"]))
    except Exception:  # the staged data cannot be read again: say what PostgreSQL said
        row = None
    where = f"row {row}" if row else f"line {match['line']}"
    return f" at staged {where}{column}"


class Loader:
    """Publishes one staged version of one dataset through a transport.

    ``keeper`` is a second connection to the same destination for the lease (taking, renewing on a thread
    while the main connection is busy in a long COPY, releasing); without one the main transport takes and
    releases the lease and it is not renewed (fine for loads shorter than the lease)."""

    def __init__(self, dataset: Dataset, transport: Transport, status: Status = lambda message: None,
                 keeper: Transport | None = None, settings: LoadSettings | None = None):
        self.dataset, self.transport, self.status = dataset, transport, status
        self.keeper = keeper
        self.settings = settings or LoadSettings()
        self.schema = dataset.dest_schema or transport.default_schema
        self.table = dataset.dest_table
        self.run_id = new_run_id()
        self.shadow = sql.shadow_name(self.table, self.run_id)
        self._changed_rows_only = False  # set per load: the staged version holds an incremental extract's rows
        self.key_table: str | None = None  # such a version's key set, copied beside the shadow (changed_rows.py)
        self.fingerprint = ""  # what the marker records: the staged sha256 (with the key set's, for changed rows)

    def where(self) -> str:
        return f"{self.transport.name}:{self.schema}.{self.table}"

    @property
    def mode(self) -> str:
        if self.dataset.load_mode:
            return self.dataset.load_mode
        return "merge" if self.dataset.primary_key else self.settings.default_mode

    # --- completion -------------------------------------------------------------------------------------

    def latest_version(self) -> str | None:
        """The version most recently published to the live table (what it holds now), or None."""
        if not (self._exists(sql.MARKER_TABLE) and self._exists(self.table)):
            return None
        rows = self.transport.query(sql.latest_marker(self.schema, self.dataset.id, self.table))
        return str(rows[0]["version"]) if rows else None

    def _live_rows_recorded(self) -> int:
        rows = self.transport.query(sql.latest_marker(self.schema, self.dataset.id, self.table))
        return int(rows[0]["row_count"]) if rows else 0

    def is_published(self, version: str, pending_push_ok: bool = False) -> bool:
        if not self._exists(sql.MARKER_TABLE):
            return False
        return bool(self.transport.query(sql.marker_lookup(self.schema, self.dataset.id, version, self.table, pending_push_ok)))

    # --- the protocol -----------------------------------------------------------------------------------

    def load(self, staged: StagedTable, force: bool = False, accept_schema_change: bool = False) -> LoadResult:
        started = time.monotonic()
        manifest = staged.manifest()
        self.transport.query(sql.create_marker_table(self.schema))
        lease = Lease(self.keeper or self.transport, self.schema, self.table, self.dataset.id, self.run_id, self.shadow,
                      self.settings.lease_seconds, dedicated=self.keeper is not None)
        self.status(f"{self.dataset.id}: taking the lease on {self.where()}")
        dead_shadow = lease.acquire(self.settings.lease_wait, waiting=lambda holder: self.status(
            f"{self.dataset.id}: waiting for another load of {self.where()} ({holder})"))
        try:
            if self.keeper is not None:
                lease.keep_renewed()
            self._drop_dead_shadows(dead_shadow)
            if not force and self.is_published(manifest.version):  # another run published it while we waited
                log.info("%s: version %s is already published to %s by another run; nothing to do", self.dataset.id, manifest.version, self.where())
                return LoadResult(self.dataset.id, manifest.version, self.where(), manifest.rows, False, time.monotonic() - started,
                                  "already published")
            if manifest.delta:
                self._check_delta_base(manifest.version, manifest.delta)
            keys = changed_rows.staged_keys(staged, manifest)  # one instance: its manifest is read once
            self.fingerprint = changed_rows.fingerprint(manifest, keys)
            if not force and self._unchanged(self.fingerprint):
                self._record(manifest.version, self.fingerprint, self._live_rows_recorded() if manifest.delta else manifest.rows)
                log.info("%s: data unchanged since the last publish (sha256 %s…); recorded version %s without rewriting %s",
                         self.dataset.id, self.fingerprint[:12], manifest.version, self.where())
                return LoadResult(self.dataset.id, manifest.version, self.where(), manifest.rows, False, time.monotonic() - started, "unchanged")
            return self._publish(staged, manifest, keys, lease, started, accept_schema_change or self.dataset.accept_schema_change)
        finally:
            lease.release()

    def _publish(self, staged: StagedTable, manifest: Any, keys: StagedTable | None, lease: Lease, started: float,
                 accept_schema_change: bool) -> LoadResult:
        table_schema = staged.schema()
        self._changed_rows_only = bool(manifest.delta)
        live_exists = self._exists(self.table)
        mode = self.mode if live_exists else "swap"  # a first publish needs a new table
        self._check_grant_roles()
        self._check_key(table_schema, mode)
        # A swap that is asked for is checked before any row is copied; one forced by an accepted column change
        # can only be known (and checked) once the shadow exists — still before anything is visible.
        views = self._swap_preflight() if live_exists and mode == "swap" else []
        self._set_timeout()
        unlogged = mode != "swap" and bool(getattr(self.transport, "unlogged_scratch", False))
        try:
            self._build_shadow(staged, table_schema, manifest.rows, live_exists, unlogged)
            columns_change = live_exists and self._check_schema_change(accept_schema_change)
            if columns_change and self._changed_rows_only:
                raise LoadError(f"{self.dataset.id}: the columns of {self.where()} change, which needs a new table, but version "
                                f"{manifest.version} holds only changed rows; publish the whole table with Publish --force")
            if columns_change and mode != "swap":
                log.warning("%s: the columns change, so %s gets a new table (swap) instead of %s", self.dataset.id, self.where(), mode)
                mode = "swap"
                views = self._swap_preflight(because="the columns change")
                if unlogged:  # it becomes the live table: it must survive a crash and reach replicas
                    self.transport.long_query(f"ALTER TABLE {sql.qualified(self.schema, self.shadow)} SET LOGGED")
            if keys is not None:
                self.status(f"{self.dataset.id}: copying the source's keys beside {self.shadow}")
                key_table = changed_rows.copy_keys(self.transport, self.schema, self.table, keys, unlogged)
                self.key_table = key_table.name
                self._check_drift(key_table.rows)  # the key count is the table's row count after the merge
            plan = self._plan(manifest, started)
            if mode == "swap":
                statements = self._swap_statements(plan, table_schema, live_exists, views)
            elif mode == "merge":
                self._check_unique_key(plan)
                statements = merge.statements(plan)
            else:
                statements = replace.statements(plan)
            self.status(f"{self.dataset.id}: committing ({mode}) into {self.where()}")
            commit_with_retry(self.transport, [lease.fence(), *statements], self.settings.locks, [(self.schema, self.table)],
                              f"{self.dataset.id}: {mode} of {self.where()}", self.status)
            lease.stop_renewing()
        except BaseException as exc:
            self._drop_shadow_quietly()
            self._reset_timeout_quietly()
            if isinstance(exc, Exception) and not isinstance(exc, LoadError):
                # A transport error: say which dataset and where; the cause stays chained for rotation checks.
                raise LoadError(f"{self.dataset.id}: load into {self.where()} failed, live table unchanged: {self._explain(exc)}") from exc
            raise
        marker = self._marker(manifest.version)
        counts = {k: (int(marker[k]) if marker.get(k) is not None else None) for k in ("inserted", "updated", "deleted", "unchanged")}
        self._after_commit(mode, table_schema, analyze=_worth_analyzing(mode, marker))
        elapsed = time.monotonic() - started
        result = LoadResult(self.dataset.id, manifest.version, self.where(), manifest.rows, True, elapsed, mode, counts)
        log.info("%s: published %d rows to %s as version %s (%s) in %.1fs", self.dataset.id, manifest.rows, self.where(),
                 manifest.version, result.summary(), elapsed)
        return result

    def _plan(self, manifest: Any, started: float) -> CommitPlan:
        managed = set(getattr(self.transport, "managed_columns", ()))
        typed = [(r["name"], r["type"]) for r in self.transport.query(sql.column_types(self.schema, self.shadow)) if r["name"] not in managed]
        return CommitPlan(self.dataset.id, manifest.version, self.schema, self.table, self.shadow, tuple(c for c, _ in typed),
                          manifest.rows, self.fingerprint or manifest.sha256, self.run_id, time.monotonic() - started, self.dataset.grants,
                          self.dataset.primary_key, self.dataset.delete_stale and (not manifest.delta or self.key_table is not None),
                          tuple(t for _, t in typed), changed_rows_only=bool(manifest.delta),
                          key_table=sql.qualified(self.schema, self.key_table) if self.key_table else None)

    def _build_shadow(self, staged: StagedTable, table_schema: TableSchema, expected: int, live_exists: bool,
                      unlogged: bool = False) -> None:
        self.status(f"{self.dataset.id}: copying {expected} rows into a new {self.shadow}")
        try:
            copied = self.transport.copy_in(sql.copy_from_stdin(self.schema, self.shadow, table_schema.names), staged,
                                            create=sql.create_table(self.schema, self.shadow, table_schema, unlogged))
        except Exception as exc:
            if _timed_out(exc):
                raise LoadError(f"{self.dataset.id}: COPY into {self.where()} {self._explain(exc)}, live table unchanged") from exc
            raise LoadError(f"{self.dataset.id}: COPY into {self.where()}{_staged_row(str(exc), staged)} failed, live table unchanged: {exc}") from exc
        counted = self._count(self.shadow)
        if not (copied == counted == expected):
            raise LoadError(f"{self.dataset.id}: row count mismatch loading {self.where()}: staged {expected}, copied {copied}, in table {counted}")
        self._check_rows(counted, live_exists)
        self.status(f"{self.dataset.id}: finishing {self.shadow}")
        self.transport.finish_shadow(self.schema, self.shadow, table_schema)

    # --- guards (all before anything is visible) ---------------------------------------------------------

    def _check_delta_base(self, version: str, delta: dict[str, Any]) -> None:
        problem = changed_rows.base_problem(self.dataset.id, version, delta, self.latest_version(), self.where())
        if problem:
            raise LoadError(problem)

    def _check_grant_roles(self) -> None:
        """Fail before any copying when a role in carto_users does not exist (the commit would roll back)."""
        if not self.dataset.grants:
            return
        names = ", ".join(sql.literal(role) for role in self.dataset.grants)
        found = {row["rolname"] for row in self.transport.query(f"SELECT rolname FROM pg_roles WHERE rolname IN ({names})")}
        missing = [role for role in self.dataset.grants if role not in found]
        if missing:
            raise LoadError(f"{self.dataset.id}: carto_users names role(s) {missing} that do not exist on {self.transport.name}; fix carto_users in {self.dataset.path}")

    def _check_key(self, table_schema: TableSchema, mode: str) -> None:
        missing = [k for k in self.dataset.primary_key if k not in table_schema.names]
        if mode == "merge" and missing:
            raise LoadError(f"{self.dataset.id}: primary_key column(s) {missing} are not in the staged data "
                            f"(columns: {', '.join(table_schema.names)}); fix primary_key in {self.dataset.path}")

    def _check_unique_key(self, plan: CommitPlan) -> None:
        rows = self.transport.query(merge.key_problems(plan))
        if rows:
            raise LoadError(f"{self.dataset.id}: primary_key ({', '.join(plan.primary_key)}) has a {rows[0]['problem']} value "
                            f"({rows[0]['key']}) in the staged data, so rows cannot be matched; live table unchanged")

    def _check_rows(self, new_rows: int, live_exists: bool) -> None:
        if self._changed_rows_only:
            return  # an incremental extract's changed rows: none, or far fewer than the table's, is normal
        if new_rows == 0 and not self.dataset.allow_empty:
            raise LoadError(f"{self.dataset.id}: refusing to replace {self.where()} with an empty table (set allow_empty: true)")
        if live_exists:
            self._check_drift(new_rows)

    def _check_drift(self, new_rows: int) -> None:
        """The table's row count after the load (the shadow's, or an incremental version's key count) against now."""
        live = self._count(self.table)
        if live == 0:
            return
        tolerance = SMALL_TABLE_TOLERANCE if live < SMALL_TABLE_ROWS else self.dataset.row_count_tolerance
        change = (new_rows - live) / live
        if abs(change) > tolerance:
            raise LoadError(
                f"{self.dataset.id}: row count would change from {live} to {new_rows} ({change:+.1%}), beyond the "
                f"±{tolerance:.0%} tolerance for {self.where()}; if this is expected, raise row_count_tolerance in {self.dataset.path}"
            )

    def _check_schema_change(self, accepted: bool) -> bool:
        """Apps query these tables by column name: a column added, removed or retyped is refused unless
        accepted. Returns whether the columns change (an accepted change needs a new table: a swap). Only
        asked when the live table exists."""
        live = {r["name"]: r["type"] for r in self.transport.query(sql.column_types(self.schema, self.table))}
        new = {r["name"]: r["type"] for r in self.transport.query(sql.column_types(self.schema, self.shadow))}
        added = [c for c in new if c not in live]
        removed = [c for c in live if c not in new]
        retyped = [f"{c} {live[c]} → {new[c]}" for c in new if c in live and live[c] != new[c]]
        if not (added or removed or retyped):
            return False
        change = "; ".join(f"{what}: {', '.join(items)}" for what, items in
                           (("added", added), ("removed", removed), ("retyped", retyped)) if items)
        if accepted:
            log.warning("%s: schema of %s changes (accepted): %s", self.dataset.id, self.where(), change)
            return True
        raise LoadError(f"{self.dataset.id}: the columns of {self.where()} would change — {change}. If this is "
                        f"intended, publish once with --accept-schema-change (or set accept_schema_change: true in {self.dataset.path})")

    def _swap_preflight(self, because: str = "") -> list[dict[str, Any]]:
        """Read what a swap must carry (dependent views), and refuse what it cannot."""
        own = tuple(getattr(self.transport, "own_triggers", ()))
        blocked = self.transport.query(swap.attachments(self.schema, self.table, own))
        views = self.transport.query(swap.dependent_views(self.schema, self.table))
        problem = swap.refusal(blocked, views)
        if problem and because:
            raise LoadError(f"{self.dataset.id}: {self.where()} needs a new table because {because}, but has {problem}, which "
                            f"a new table would lose; move them off the table, or undo the column change")
        if problem:
            raise LoadError(f"{self.dataset.id}: {self.where()} has {problem}, which a swap (a new table) would lose; "
                            f"publish in place instead (load_mode: replace, or merge with a primary_key), which keeps them")
        return views

    # --- commits by mode ---------------------------------------------------------------------------------

    def _swap_statements(self, plan: CommitPlan, table_schema: TableSchema, live_exists: bool, views: list[dict[str, Any]]) -> list[str]:
        # Indexes are built on the shadow, so the table, its indexes and the marker appear in one commit.
        index_renames = self._indexes(table_schema)
        extras = self.transport.query(swap.table_extras(self.schema, self.table))[0] if live_exists else None
        live_rows = self._count(self.table) if live_exists else None
        if views:
            log.info("%s: re-creating dependent views %s on the new table", self.dataset.id, ", ".join(v["view_name"] for v in views))
        return swap.statements(plan, live_rows, views, extras, index_renames)

    def _indexes(self, table_schema: TableSchema) -> list[tuple[str, str]]:
        """Build the configured indexes (and the spatial one) on the shadow; return (shadow name, final name)
        pairs for the swap to rename."""
        renames: list[tuple[str, str]] = []
        for columns, method in self._wanted_indexes(table_schema):
            self.status(f"{self.dataset.id}: indexing {self.shadow} ({'+'.join(columns)})")
            self.transport.long_query(sql.create_index(self.schema, self.shadow, columns, method))
            renames.append((sql.index_name(self.shadow, columns), sql.index_name(self.table, columns)))
        return renames

    def _wanted_indexes(self, table_schema: TableSchema) -> list[tuple[list[str], str]]:
        wanted = []
        geometry = table_schema.geometry.name if table_schema.geometry else None
        for columns in self.transport.index_columns(self.dataset, table_schema):
            missing = [c for c in columns if c not in table_schema.names and c not in ("the_geom", "the_geom_webmercator", "cartodb_id")]
            if missing:
                log.warning("%s: index %s skipped: no column %s in %s", self.dataset.id, "+".join(columns), missing, self.where())
                continue
            method = "gist" if any(c == geometry or c.startswith("the_geom") for c in columns) else "btree"
            wanted.append((columns, method))
        return wanted

    def _after_commit(self, mode: str, table_schema: TableSchema, analyze: bool = True) -> None:
        """The data is live; what follows only tidies up, so it warns instead of failing the publish."""
        self._reset_timeout_quietly()
        if mode != "swap":
            self._drop_shadow_quietly()
            self._ensure_live_indexes(table_schema)
            if analyze:
                self._quietly(f"ANALYZE {sql.qualified(self.schema, self.table)}", "analyze")
        try:
            self.transport.post_swap(self.schema, self.table, table_schema, self.dataset)
        except Exception as exc:
            log.warning("%s: after publishing %s: %s", self.dataset.id, self.where(), exc)

    def _ensure_live_indexes(self, table_schema: TableSchema) -> None:
        """Configured indexes the live table lacks (a new ``indexes`` entry) are built CONCURRENTLY: neither
        readers nor writers wait. One that cannot be finished is dropped and tried again next run."""
        for columns, method in self._wanted_indexes(table_schema):
            name = sql.index_name(self.table, columns)
            present = self.transport.query(f"SELECT to_regclass({sql.literal(sql.qualified(self.schema, name))}) IS NOT NULL AS present")[0]["present"]
            if present:
                continue
            statement = sql.create_index(self.schema, self.table, columns, method).replace("CREATE INDEX IF NOT EXISTS", "CREATE INDEX CONCURRENTLY IF NOT EXISTS", 1)
            if not self._quietly(statement, f"index {'+'.join(columns)}"):
                self._quietly(f"DROP INDEX CONCURRENTLY IF EXISTS {sql.qualified(self.schema, name)}", "drop an unfinished index")

    # --- timeouts ----------------------------------------------------------------------------------------

    def _set_timeout(self) -> None:
        if self.dataset.timeout:
            self.transport.query(f"SET statement_timeout = '{int(self.dataset.timeout * 1000)}ms'")

    def _reset_timeout_quietly(self) -> None:
        if self.dataset.timeout:
            self._quietly("SET statement_timeout = DEFAULT", "reset statement_timeout")

    def _explain(self, exc: BaseException) -> str:
        if _timed_out(exc) and self.dataset.timeout:
            return (f"timed out: a statement ran longer than the dataset's timeout of {self.dataset.timeout:.0f}s "
                    f"(timeout: in {self.dataset.path})")
        return str(exc)

    # --- helpers ----------------------------------------------------------------------------------------

    def _marker(self, version: str) -> dict[str, Any]:
        """The marker row this load wrote (mode, row_count and its counts), or {} if it cannot be read."""
        try:
            rows = self.transport.query(sql.marker_counts(self.schema, self.dataset.id, version))
        except Exception:
            return {}
        return rows[0] if rows else {}

    def _unchanged(self, fingerprint: str) -> bool:
        if not self._exists(self.table):
            return False
        rows = self.transport.query(sql.latest_marker(self.schema, self.dataset.id, self.table))
        return bool(rows) and rows[0]["fingerprint"] == fingerprint

    def _record(self, version: str, fingerprint: str, rows: int) -> None:
        self.transport.query(sql.insert_marker(self.schema, self.dataset.id, version, self.table, fingerprint, rows, False,
                                               mode="unchanged", run_id=self.run_id))

    def _exists(self, table: str) -> bool:
        return bool(self.transport.query(sql.table_exists(self.schema, table))[0]["present"])

    def _count(self, table: str) -> int:
        return int(self.transport.query(sql.count_rows(self.schema, table))[0]["n"])

    def _drop_dead_shadows(self, dead_shadow: str | None) -> None:
        """Holding the lease, every other shadow of this table belongs to a run whose lease is gone: a dead
        one (or one that can no longer commit). Its drop waits at most the lock timeout for a zombie's COPY."""
        names = {r["name"] for r in self.transport.query(sql.shadows_of(self.schema, self.table))}
        names |= {dead_shadow} if dead_shadow else set()
        for name in sorted(names - {self.shadow}):
            try:
                self.transport.transaction([self.settings.locks.set_local(), f"DROP TABLE IF EXISTS {sql.qualified(self.schema, name)}"])
                log.info("%s: dropped %s, the shadow of a run that is no longer loading %s", self.dataset.id, name, self.where())
            except Exception as exc:
                log.warning("%s: could not drop a dead run's shadow %s yet: %s", self.dataset.id, name, exc)

    def _drop_shadow_quietly(self) -> None:
        for name in (self.shadow, self.key_table):
            if name:
                self._quietly(f"DROP TABLE IF EXISTS {sql.qualified(self.schema, name)}", f"drop {name} (the next run will)")

    def _quietly(self, statement: str, what: str) -> bool:
        try:
            self.transport.query(statement)
            return True
        except Exception as exc:  # tidying up must not mask the outcome that matters
            log.warning("%s: could not %s on %s: %s", self.dataset.id, what, self.where(), exc)
            return False


# PostgreSQL's own autovacuum thresholds (autovacuum_analyze_threshold, _scale_factor): below them the
# statistics are fresh enough, and autovacuum refreshes them as changes add up.
ANALYZE_MIN_ROWS, ANALYZE_SHARE = 50, 0.1


def _worth_analyzing(mode: str, marker: dict[str, Any]) -> bool:
    """Whether an in-place load changed enough of the table to ANALYZE it now. A merge that touched 1% of 1M rows
    would otherwise re-read a sample of the whole table (~0.25 s) for statistics that barely move."""
    if mode != "merge":
        return True
    changed = [marker.get(k) for k in ("inserted", "updated", "deleted")]
    if marker.get("row_count") is None or any(n is None for n in changed):
        return True
    return sum(int(n) for n in changed) >= ANALYZE_MIN_ROWS + ANALYZE_SHARE * int(marker["row_count"])


def _timed_out(exc: BaseException) -> bool:
    return "statement timeout" in str(exc)
