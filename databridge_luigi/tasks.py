"""Luigi tasks: thin wiring of config → source → staging → publish (their event handlers: task_events.py).

    PublishAll ──► Publish(dataset) ──► Load(dataset, version) ──► Extract(dataset, version)

Task parameters are only dataset ids, versions and flags — never connection details — so nothing secret
reaches luigid. Each Load holds one slot of the resource ``destination_<conn>`` (luigi.cfg ``[resources]``;
one load at a time per destination unless raised), like the old system's one-slot ``carto`` pool.
"""
from __future__ import annotations

import logging
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import luigi

from .config import ConfigError, ConfigProblem, Dataset, dataset_id_for
from .connections import redact, redact_exception, redacted_traceback, resolve, retry_if_rotated
from . import notify, runs
from .ahead import extracts
from .luigi_defaults import check_scheduler
from . import stopping
from .publish import keepers, transports
from .publish.announce import announce
from .publish.catalog import webhook_url
from .publish.protocol import Loader, LoadResult
from .run_settings import (databridge, forget_settings, forget_staged_tables, load_settings, registry,  # noqa: F401
                           settings, staged_table)  # re-exported: callers and tests use tasks.<name>
from .schedule import due_version, forced_version, parse_version
from .status_line import StatusLine
from .targets import PublishedTableTarget, StagedTableTarget

if TYPE_CHECKING:
    from .change import Outcome
    from .sources import Progress
    from .sources.sql.base import ChangedSince

log = logging.getLogger("databridge_luigi")


class DatasetTask(luigi.Task):
    """A task about one version of one dataset."""

    dataset_id = luigi.Parameter(description="e.g. lni__violations")
    version = luigi.Parameter(description="e.g. 20261124T110400Z")

    # Above the wrapper tasks (0: Publish, when several are asked for at once), which do nothing but are a task
    # process each with --workers N: a worker freed by a load takes the next load or extract first, instead of
    # a wrapper sitting between two loads of one destination. luigi raises a task's dependencies to its priority.
    priority = 10

    _last_status = 0.0
    _status_line: StatusLine | None = None

    @property
    def dataset(self) -> Dataset:
        return registry().get(str(self.dataset_id))

    def status(self, message: str, percent: float | None = None, force: bool = True) -> None:
        """Show progress in luigid, prefixed with the dataset id (luigid lists tasks, not datasets); throttled,
        and quiet in the task's first second (status_line.py), because every update is an RPC."""
        now = time.monotonic()
        if not force and now - self._last_status < 2.0:
            return
        self._last_status = now
        self._keep_reporter()
        if self._status_line is None:
            self._status_line = StatusLine()
        prefix = f"{self.dataset_id}: "
        self._status_line.show(redact(message if message.startswith(prefix) else prefix + message),
                               None if percent is None else min(100, round(percent)),
                               self.set_status_message, self.set_progress_percentage)

    def _keep_reporter(self) -> None:
        # luigi forwards set_status_message only while run() runs; on_failure needs it afterwards.
        if getattr(self, "set_status_message", None) is not None:
            self._status_reporter = self.set_status_message

    def extract_next_ahead(self, doing: str) -> None:
        """While this task waits on its destination, the next due extract of this process runs on a thread (ahead.py;
        with ``extract_ahead = false`` none is due)."""
        extracts.start_next(f"{doing} {self.dataset_id}")

    def show_log_link(self) -> None:
        """luigid's tracking URL while the task runs: the Batch job's page (it links the CloudWatch log
        stream) or the DATABRIDGE_LOG_URL template. luigi only forwards set_tracking_url inside run()."""
        link = notify.log_link({"dataset_id": str(self.dataset_id), "version": str(self.version),
                                "step": self.get_task_family(), "task_id": str(self.task_id)})
        self._keep_reporter()
        if link and self.set_tracking_url is not None:
            self.set_tracking_url(redact(link))

    def on_failure(self, exception: BaseException) -> str:
        # What luigid shows and stores, redacted like every log line: the one-line error first (also the
        # task's status message, in place of its last progress message), then the traceback.
        error, prefix = runs.error_line(exception), f"{self.dataset_id}: "
        line = f"{prefix}{self.get_task_family()} failed: {error.removeprefix(prefix)}"
        reporter = getattr(self, "_status_reporter", None)
        if self._status_line is not None:
            self._status_line.drop_waiting()
        if reporter is not None:
            try:
                reporter(line)
            except Exception:  # luigid unreachable: the failure itself still reaches it with the worker's report
                pass
        return f"{line}\n\n{redacted_traceback(exception)}"


class Extract(DatasetTask):
    """Source → staged table (data, schema, manifest), unless the source's change signal proves it unchanged
    since the previous version (then the manifest names that version's data; ``databridge_luigi.change``)."""

    force = luigi.BoolParameter(default=False, significant=False, description="extract even if the source is unchanged")
    seconds_ahead: float | None = None  # how long the extract took, when it ran ahead (ahead.py)

    def output(self) -> StagedTableTarget:
        return StagedTableTarget(staged_table(str(self.dataset_id), str(self.version)))

    def complete(self) -> bool:
        done = super().complete()
        if not done:
            self._prepare_to_run()
        return done

    def _prepare_to_run(self) -> None:
        """About to run, in the scheduling process: import the source's drivers here, so that the task processes
        luigi forks with --workers N inherit them, and let a load of this process start the extract ahead
        (ahead.py) — not an incremental one: it reads the version its destination holds, on the connection the
        load would be using. A dataset that cannot be found is run()'s error to report."""
        from . import change  # noqa: F401  (run() reads the change signal with it)
        from .change.delta import incremental_column
        from .sources import preload

        try:
            dataset = self.dataset
        except (KeyError, ConfigError):
            return
        preload(dataset.kind)
        if settings().extract_ahead and incremental_column(dataset) is None:
            extracts.due(str(self.task_id), dataset.id, self._stage_ahead)

    def _stage_ahead(self) -> "Outcome":
        """The extract as run ahead, on a thread: no progress to luigid (its reporter is only set while luigi runs
        the task), and its own duration kept for the run record (luigi's covers only the wait for it)."""
        started = time.monotonic()
        try:
            return self._stage(lambda *args, **kwargs: None)
        finally:
            self.seconds_ahead = time.monotonic() - started

    def run(self) -> None:
        self.show_log_link()
        self.status(f"extracting from {self.dataset.source_conn}")
        with stopping.cancel_on_sigterm():  # the outcome of a run ahead, if a load started one; else extracts now
            outcome = extracts.result(str(self.task_id), lambda: self._stage(self._progress))
        self.status(outcome.message, 100)  # staged N rows | unchanged since <version> | already staged by run …

    def _stage(self, progress: "Progress") -> "Outcome":
        from .change import extract_unless_unchanged
        from .sources import extract  # sources import their drivers lazily

        dataset = self.dataset
        staged = self.output().staged

        def stage() -> "Outcome":
            url = resolve(dataset.source_conn)
            since = self._changed_since(dataset)
            return extract_unless_unchanged(dataset, url, staged, lambda: extract(dataset, url, staged, progress=progress, since=since),
                                            force=bool(self.force))

        return retry_if_rotated(dataset.source_conn, stage)

    def _changed_since(self, dataset: Dataset) -> "ChangedSince | None":
        """An incremental dataset reads the rows changed since the version its destination holds; ``--force``, or
        any doubt about that version, reads every row (databridge_luigi.change.delta)."""
        from .change.delta import changed_since_published, incremental_column

        if incremental_column(dataset) is None or self.force:
            return None
        return changed_since_published(dataset, lambda: Loader(dataset, transports.get(dataset.dest_conn)).latest_version(),
                                       lambda version: staged_table(dataset.id, version))

    def _progress(self, rows: int, total: int | None = None) -> None:
        percent = 100.0 * rows / total if total else None
        self.status(f"extracted {rows}{f' of {total}' if total else ''} rows", percent, force=False)


class Geocode(DatasetTask):
    """Extracted table → the same rows with geocoded fields, staged as ``<dataset_id>__geocoded/<version>``
    (only for datasets with a ``geocode:`` block; see ``databridge_luigi.geocode``)."""

    force = luigi.BoolParameter(default=False, significant=False, description="extract even if the source is unchanged")

    def requires(self) -> Extract:
        return Extract(dataset_id=self.dataset_id, version=self.version, force=self.force)

    def output(self) -> StagedTableTarget:
        return StagedTableTarget(staged_table(f"{self.dataset_id}__geocoded", str(self.version)))

    def run(self) -> None:
        from .geocode import geocode_table

        self.show_log_link()
        dataset = self.dataset
        staged = self.output().staged
        self.status(f"geocoding with {dataset.geocode.provider if dataset.geocode else '-'}")
        manifest = geocode_table(dataset, self.input().staged, staged, progress=self._progress)
        facts = manifest.source.get("geocode", {})
        self.status(f"geocoded {manifest.rows} rows: {facts.get('hits')} hits, {facts.get('misses')} misses, "
                    f"{facts.get('cache_hits')} cached queries, {facts.get('api_calls')} API calls", 100)

    def _progress(self, rows: int, total: int | None = None, hits: int = 0, misses: int = 0,
                  phase: str | None = None, force: bool = True) -> None:
        percent = 100.0 * rows / total if total else None
        message = phase or f"geocoded {rows}{f' of {total}' if total else ''} rows: {hits} hits, {misses} misses"
        self.status(message, percent, force=force)


def staged_input(dataset: Dataset, version: str, force: bool = False) -> DatasetTask:
    """The task whose staged table a load reads: Geocode when the dataset geocodes, else Extract (``force``:
    extract even if the source's change signal says it is unchanged)."""
    if dataset.geocode is not None:
        return Geocode(dataset_id=dataset.id, version=version, force=force)
    return Extract(dataset_id=dataset.id, version=version, force=force)


class Load(DatasetTask):
    """Staged table → live destination table, by the load protocol."""

    force = luigi.BoolParameter(default=False, description="rewrite the table even if the data is unchanged")
    accept_schema_change = luigi.BoolParameter(default=False, significant=False,
                                               description="publish even if columns are added, removed or retyped")

    def requires(self) -> DatasetTask:
        return staged_input(self.dataset, str(self.version), bool(self.force))

    @property
    def resources(self) -> dict[str, int]:  # type: ignore[override]
        return {f"destination_{self.dataset.dest_conn}": 1}

    def output(self) -> PublishedTableTarget:
        return PublishedTableTarget(self.dataset, str(self.version))

    def run(self) -> None:
        self.show_log_link()
        self.extract_next_ahead("loads")
        dataset, conn = self.dataset, self.dataset.dest_conn

        def load() -> LoadResult:
            # keeper: the lease's own connection, so renewals go on while the loader's COPYs
            loader = Loader(dataset, transports.get(conn), status=self.status, keeper=keepers.get(conn), settings=load_settings(conn))
            return loader.load(self.input().staged, force=bool(self.force), accept_schema_change=bool(self.accept_schema_change))

        def discard() -> None:
            transports.discard(conn)
            keepers.discard(conn)

        # A connection that failed mid-protocol is never reused; rotated credentials get one more try.
        with stopping.cancel_on_sigterm():
            result = retry_if_rotated(conn, load, on_failure=discard)
        self.output().record_published()
        self._announce(result)
        verb = "published" if result.rewritten else "found already published" if result.mode == "already published" else "recorded (unchanged data)"
        self.status(f"{dataset.id}: {verb} {result.rows} rows to {result.where} ({result.summary()}) in {result.seconds:.1f}s", 100)


    def _announce(self, result: LoadResult) -> None:
        """The on_published webhook after a publish that changed data; never fails the load (announce.py)."""
        dataset = self.dataset
        try:
            transport = transports.get(dataset.dest_conn)
            announce(transport, dataset.dest_schema or transport.default_schema, dataset.id, result.where,
                     webhook_url(dataset), result.version if result.rewritten else None)
        except Exception as exc:
            log.warning("%s: on_published webhook: %s", dataset.id, redact_exception(exc))


class LoadAgo(DatasetTask):
    """Staged table → ArcGIS Online hosted feature layer (``upload_to_ago: true`` and an ``ago:`` block). Its own
    marker (in the AGO item's properties) and its own resource slot ``destination_<ago conn>``, so a failing
    CARTO/PostGIS load of the same dataset does not hold it back (see publish/ago/)."""

    force = luigi.BoolParameter(default=False, description="rewrite the layer even if the data is unchanged")

    def requires(self) -> DatasetTask:
        # The same staged-input task as the dataset's SQL Load, so both read one staged version.
        return Load(dataset_id=self.dataset_id, version=self.version, force=self.force).requires()

    @property
    def resources(self) -> dict[str, int]:  # type: ignore[override]
        return {f"destination_{self.dataset.ago.conn}": 1}

    def output(self) -> luigi.Target:
        from .publish.ago import AgoPublishedTarget

        return AgoPublishedTarget(self.dataset, str(self.version))  # type: ignore[return-value]

    def run(self) -> None:
        from .publish.ago import publish_to_ago

        self.show_log_link()
        self.extract_next_ahead("publishes to ArcGIS Online")
        result = publish_to_ago(self.dataset, self.input().staged, str(self.version), force=bool(self.force), status=self.status)
        verb = "published" if result.rewritten else "recorded (unchanged data)"
        self.status(f"{verb} {result.rows} rows to {result.where} in {result.seconds:.1f}s", 100)


def new_run_name() -> str:
    """A name for this process's run: its start (UTC) and a random suffix, e.g. ``20261206T141502Z-3f2a9c``."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


class RunWrapper(luigi.WrapperTask):
    """A wrapper that is a task of its own in luigid for each run (process). Under one id for every run, luigid
    ignored a run's claim that the wrapper is pending for 10 s after another run had finished it ([scheduler]
    stable_done_cooldown_secs): that run published, then exited 25 "not granted run permission". (Workers
    sharing one run still exit 25 when others ran some of their tasks: luigi's own count, which the cron wrapper
    answers with ``databridge-luigi plan --check``.)"""

    run_name = luigi.Parameter(default=new_run_name(), positional=False,
                               description="names this run in luigid (default: its start and a random suffix)")


class Publish(RunWrapper):
    """Publish one dataset at its due version (scheduled), a given ``--version``, or now (``--force``)."""

    dataset_id = luigi.Parameter()
    force = luigi.BoolParameter(default=False, description="publish a new version now, even if the data is unchanged")
    version = luigi.OptionalParameter(default=None, description="publish this version (manual datasets)")
    accept_schema_change = luigi.BoolParameter(default=False, significant=False,
                                               description="publish even if columns are added, removed or retyped")

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        check_scheduler()  # from the command line: no luigid reachable fails in seconds, with a hint

    @property
    def resolved_version(self) -> str:
        if not hasattr(self, "_resolved_version"):
            self._resolved_version = self._pick_version()
        return self._resolved_version

    def _pick_version(self) -> str:
        dataset = registry().get(str(self.dataset_id))
        if self.version:
            parse_version(str(self.version))
            return str(self.version)
        if self.force:
            return forced_version()
        version = due_version(dataset.schedule)
        if version is None:
            raise ValueError(f"{dataset.id} is a manual dataset (schedule_interval: false); publish it with --force or --version")
        return version

    def requires(self) -> luigi.Task | list[luigi.Task]:
        tasks = self.tasks()
        return tasks[0] if len(tasks) == 1 else tasks

    def tasks(self) -> list[luigi.Task]:
        """The tasks that publish the dataset: its Load (or, stage-only, its staging task), and its LoadAgo."""
        dataset = registry().get(str(self.dataset_id))
        main = self._main_requirement(dataset)
        if dataset.ago is None:
            return [main]
        # ArcGIS Online is a destination of its own: a separate task, marker and resource slot.
        return [main, LoadAgo(dataset_id=dataset.id, version=self.resolved_version, force=bool(self.force))]

    def _main_requirement(self, dataset: Dataset) -> luigi.Task:
        if not dataset.publish:  # upload_to_carto: false — stage only, as the old S3-only DAGs did
            return staged_input(dataset, self.resolved_version, bool(self.force))
        return Load(dataset_id=dataset.id, version=self.resolved_version, force=bool(self.force),
                    accept_schema_change=bool(self.accept_schema_change))


class PublishAll(RunWrapper):
    """Publish every enabled, scheduled dataset whose due version is not yet published."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        check_scheduler()

    def datasets(self) -> list[Dataset]:
        return [d for d in registry() if d.enabled and d.schedule is not None]

    def requires(self) -> list[luigi.Task]:
        # A broken config file is a failed item of its own; every valid dataset is still published.
        broken = [BrokenConfig(path=path, dataset_id=dataset_id_for(registry().root, path) or Path(path).name)
                  for path in registry().broken_files()]
        # Each dataset's own tasks, not a Publish wrapper per dataset: a wrapper is a task of its own, which with
        # --workers N means a forked process and a destination connection only to ask what its Load knows.
        return [task for d in self.datasets() for task in Publish(dataset_id=d.id).tasks()] + broken

    def complete(self) -> bool:
        started = time.monotonic()
        pending = [task for task in self.requires() if not _complete_or_unknown(task)]
        first_check = not getattr(self, "_checked", False)
        self._checked = True
        if not pending and first_check:  # later checks (after running) are not "nothing to do"
            skipped = [d.id for d in registry() if d.enabled and d.schedule is None]
            log.info("PublishAll: nothing to do — all %d scheduled datasets are published at their due versions "
                     "(%d manual datasets not scheduled; checked in %.2fs at %s)",
                     len(self.datasets()), len(skipped), time.monotonic() - started,
                     datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
        return not pending


class BrokenConfig(luigi.Task):
    """A config file that does not validate: the failed item that stands for its dataset in ``PublishAll``
    (file, key and reason in luigid, the log and one Slack alert), so the other datasets are published."""

    path = luigi.Parameter(description="the config file (or the config directory, when it is missing)")
    dataset_id = luigi.Parameter(description="the dataset the file stands for, or its file name")
    version = "-"

    def complete(self) -> bool:
        return False

    def run(self) -> None:
        problems = registry().broken_files().get(str(self.path)) or [ConfigProblem(str(self.path), "-", "config problem")]
        raise ConfigError(problems)

    def on_failure(self, exception: BaseException) -> str:
        return f"broken config: {redact(str(exception))}"


def _complete_or_unknown(task: luigi.Task) -> bool:
    """A dataset whose completion cannot be checked (its destination is down) counts as pending, so luigi
    schedules it and reports its own error, instead of one broken destination stopping every dataset."""
    try:
        return bool(task.complete())
    except Exception as exc:
        log.warning("PublishAll: cannot check %s, scheduling it anyway: %s", task.dataset_id, redact_exception(exc))
        return False
