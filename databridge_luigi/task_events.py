"""What happens around the tasks (tasks.py) as luigi runs them: a Slack alert and a run record for every failure,
and a run record for every finished publish (what `databridge-luigi status` reads without luigid, runs.py).
Imported by the package, so luigi registers the handlers wherever the tasks run. (The published-versions
snapshot is not forgotten after a load: a load adds its version to it, and a version it lacks is asked for
directly — re-reading every marker after each load cost one query per dataset that grew with the history.)"""
from __future__ import annotations

import logging

import luigi

from . import notify, runs
from .connections import redact_exception
from .staging import open_store
from .tasks import BrokenConfig, DatasetTask, Load, registry, settings

log = logging.getLogger("databridge_luigi")


@BrokenConfig.event_handler(luigi.Event.FAILURE)
@DatasetTask.event_handler(luigi.Event.FAILURE)
def _alert_slack(task: DatasetTask, exception: BaseException) -> None:
    notify.on_failure(task, exception)  # the webhook is looked up only now, never at import


# --- run records: what `databridge-luigi status` reads without luigid (runs.py) ---------------------------

def _run_store():  # type: ignore[no-untyped-def]
    return open_store(str(settings().staging) or None)


@DatasetTask.event_handler(luigi.Event.PROCESSING_TIME)
def _remember_seconds(task: DatasetTask, seconds: float) -> None:
    # An extract run ahead (ahead.py) took its time before luigi ran the task, which then only waited for it.
    task._seconds = float(getattr(task, "seconds_ahead", None) or seconds)


@DatasetTask.event_handler(luigi.Event.SUCCESS)
def _record_done(task: DatasetTask) -> None:
    try:
        final = isinstance(task, Load) or not registry().get(str(task.dataset_id)).publish
    except Exception:
        final = False
    if final:  # the step that finishes a publish (or a stage-only dataset)
        runs.record(_run_store(), runs.new(str(task.dataset_id), task.get_task_family(), str(task.version), "done",
                                           seconds=getattr(task, "_seconds", None), task_id=str(task.task_id)))


@DatasetTask.event_handler(luigi.Event.FAILURE)
def _record_failure(task: DatasetTask, exception: BaseException) -> None:
    try:
        link = notify.log_link({"dataset_id": str(task.dataset_id), "version": str(task.version),
                                "step": task.get_task_family(), "task_id": str(task.task_id)})
        runs.record(_run_store(), runs.new(str(task.dataset_id), task.get_task_family(), str(task.version), "failed",
                                           error=runs.error_line(exception), task_id=str(task.task_id), log_url=link))
    except Exception as exc:  # e.g. the staging store itself is what failed
        log.warning("%s: run record not written: %s", task.dataset_id, redact_exception(exc))
