"""AWS Batch submitter: ``databridge-luigi submit`` runs the worker (``luigi --module databridge_luigi Publish …``)
as one Batch job per dataset, waits for the jobs and reports how they ended.

Settings come from luigi.cfg ``[databridge_batch]`` (every one can be overridden on the command line)::

    [databridge_batch]
    job_queue = databridge-luigi
    job_definition = databridge-luigi-worker      # name, name:revision or ARN
    vcpus = 1
    memory_mib = 2048
    timeout_seconds = 14400                       # per attempt
    attempts = 2                                  # retryStrategy
    scheduler_host = luigid                       # "local" = --local-scheduler in the job
    scheduler_port = 8082
    log_group = /aws/batch/job                    # for the CloudWatch link on failure
    config_dir =                                  # DATABRIDGE_CONFIG_DIR inside the job (image default: /app/configs)
    forward_env =                                 # extra env names to copy into the job (never DATABRIDGE_CONN_*)
    command_prefix =                              # words before the task name; empty for the repo's image

The repo's image (Dockerfile) has ``ENTRYPOINT ["luigi", "--module", "databridge_luigi"]`` and a Batch job's
``command`` replaces only CMD, so by default the command is the task and its flags (``Publish --dataset-id …
--scheduler-host …``), which the entrypoint turns into ``luigi --module databridge_luigi Publish …``. For an
image without that entrypoint set ``command_prefix = luigi --module databridge_luigi``.

Secrets never travel in a Batch request: the job gets the *name* of the Secrets Manager secret
(``DATABRIDGE_SECRETS_ID``) or the per-connection prefix (``DATABRIDGE_SECRETS_PREFIX``) and resolves
connections itself. Before anything is sent, every connection URL
this process can see is registered with the redactor, and a request in which ``connections.redact`` would
change anything is refused (``SecretInRequestError``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import quote

import luigi.configuration

from . import schedule
from .config import Dataset
from .connections import redact, redact_exception, register_url

log = logging.getLogger(__name__)

SECTION = "databridge_batch"
TERMINAL = ("SUCCEEDED", "FAILED")
DESCRIBE_BATCH = 100  # DescribeJobs takes at most 100 ids
FORWARDED_ENV = ("DATABRIDGE_STAGING", "DATABRIDGE_SECRETS_ID", "DATABRIDGE_SECRETS_PREFIX")
EXIT_FAILED, EXIT_DEADLINE = 1, 3


class SecretInRequestError(RuntimeError):
    """A Batch request would carry a secret value; nothing was submitted."""


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class BatchSettings:
    job_queue: str = "databridge-luigi"
    job_definition: str = "databridge-luigi-worker"
    vcpus: str = "1"
    memory_mib: int = 2048
    timeout_seconds: int = 14400
    attempts: int = 2
    scheduler_host: str = "luigid"
    scheduler_port: int = 8082
    log_group: str = "/aws/batch/job"
    config_dir: str = ""
    forward_env: tuple[str, ...] = ()
    command_prefix: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, **overrides: Any) -> BatchSettings:
        config = luigi.configuration.get_config()
        values: dict[str, Any] = {}
        for name, default in cls().__dict__.items():
            raw = config.get(SECTION, name, None)
            if raw is None or str(raw).strip() == "":
                continue
            if isinstance(default, int):
                values[name] = int(raw)
            elif isinstance(default, tuple):
                values[name] = tuple(str(raw).replace(",", " ").split())
            else:
                values[name] = str(raw).strip()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class Submitted:
    dataset_id: str
    job_id: str
    job_name: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return str(self.detail.get("status", "SUBMITTED"))


def _staging_setting() -> str:
    value = os.environ.get("DATABRIDGE_STAGING") or luigi.configuration.get_config().get("databridge", "staging", "")
    return str(value or "")


def job_environment(settings: BatchSettings) -> list[dict[str, str]]:
    """Non-secret settings for the job: staging location, the secret's *name*, the config dir."""
    env: dict[str, str] = {}
    staging = _staging_setting()
    if staging:
        env["DATABRIDGE_STAGING"] = staging
    for variable, key in (("DATABRIDGE_SECRETS_ID", "secrets_id"), ("DATABRIDGE_SECRETS_PREFIX", "secrets_prefix")):
        secrets = os.environ.get(variable) or luigi.configuration.get_config().get("databridge", key, "")
        if secrets:
            env[variable] = str(secrets)
    if settings.config_dir:
        env["DATABRIDGE_CONFIG_DIR"] = settings.config_dir
    for name in settings.forward_env:
        if name.startswith("DATABRIDGE_CONN_") or name.startswith("AWS_"):
            raise SecretInRequestError(f"[{SECTION}] forward_env: {name} may hold a secret and is never sent to Batch")
        if os.environ.get(name):
            env[name] = os.environ[name]
    return [{"name": k, "value": v} for k, v in sorted(env.items())]


def job_name(dataset_id: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "-", f"databridge-{dataset_id}")
    return name[:128]


def worker_command(dataset_id: str, settings: BatchSettings, version: str | None = None, force: bool = False) -> list[str]:
    command = [*settings.command_prefix, "Publish", "--dataset-id", dataset_id]
    if version:
        command += ["--version", version]
    if force:
        command.append("--force")
    if settings.scheduler_host in ("", "local"):
        command.append("--local-scheduler")
    else:
        command += ["--scheduler-host", settings.scheduler_host, "--scheduler-port", str(settings.scheduler_port)]
    return command


def build_request(dataset_id: str, settings: BatchSettings, version: str | None = None, force: bool = False) -> dict[str, Any]:
    return {
        "jobName": job_name(dataset_id),
        "jobQueue": settings.job_queue,
        "jobDefinition": settings.job_definition,
        "containerOverrides": {
            "command": worker_command(dataset_id, settings, version, force),
            "environment": job_environment(settings),
            "resourceRequirements": [
                {"type": "VCPU", "value": str(settings.vcpus)},
                {"type": "MEMORY", "value": str(settings.memory_mib)},
            ],
        },
        "retryStrategy": {"attempts": int(settings.attempts)},
        "timeout": {"attemptDurationSeconds": int(settings.timeout_seconds)},
        "tags": {"databridge:dataset": dataset_id, **({"databridge:version": version} if version else {})},
    }


def register_known_secrets() -> None:
    """Register every connection URL visible to this process, so the request scan knows their secrets."""
    for name, value in os.environ.items():
        if name.startswith("DATABRIDGE_CONN_") and value:
            register_url(value)
    config = luigi.configuration.get_config()
    if config.has_section("connections"):
        for _, value in config.items("connections"):
            if value:
                register_url(str(value))


def check_request(request: dict[str, Any]) -> None:
    """Refuse a request in which the redactor would mask anything (a registered secret, a URL password, a
    key-like parameter). Names only are reported, never the value."""
    env = request.get("containerOverrides", {}).get("environment", [])
    for item in env:
        if redact(item["value"]) != item["value"]:
            raise SecretInRequestError(f"refusing to submit {request['jobName']}: environment {item['name']} holds a secret value")
    text = json.dumps(request)
    if redact(text) != text:
        raise SecretInRequestError(f"refusing to submit {request['jobName']}: the request holds a secret value")


def select_datasets(datasets: Sequence[Dataset], ids: Sequence[str], mode: str | None,
                    out: TextIO = sys.stdout) -> list[tuple[Dataset, str | None]]:
    """(dataset, version to pin) for each job. ``mode`` is None (explicit ids), "all" or "due"."""
    by_id = {d.id: d for d in datasets}
    if mode is None:
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise SystemExit(f"unknown dataset id(s): {', '.join(unknown)}")
        return [(by_id[i], schedule.due_version(by_id[i].schedule)) for i in ids]
    chosen: list[tuple[Dataset, str | None]] = []
    for dataset in datasets:
        if not dataset.enabled or dataset.schedule is None:
            continue
        version = schedule.due_version(dataset.schedule)
        if mode == "due" and _is_done(dataset, version, out):
            print(f"{dataset.id}: {version} already published, skipped", file=out)
            continue
        chosen.append((dataset, version))
    return chosen


def _is_done(dataset: Dataset, version: str | None, out: TextIO) -> bool:
    assert version is not None
    try:
        if not dataset.publish:
            from .tasks import staged_table

            return staged_table(dataset.id, version).exists()
        from .targets import PublishedTableTarget

        return PublishedTableTarget(dataset, version).exists()
    except Exception as exc:  # an unreachable destination: submit anyway, the job will say what is wrong
        print(f"warning: {dataset.id}: cannot tell whether {version} is published, submitting it "
              f"({redact_exception(exc).splitlines()[0][:200]})", file=out)
        return False


def console_log_link(region: str, group: str, stream: str) -> str:
    def enc(value: str) -> str:
        return quote(quote(value, safe=""), safe="").replace("%", "$")

    return (f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}"
            f"#logsV2:log-groups/log-group/{enc(group)}/log-events/{enc(stream)}")


class Submitter:
    def __init__(self, settings: BatchSettings, client: Any = None, out: TextIO = sys.stdout,
                 poll_initial: float = 2.0, poll_max: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep):
        if client is None:
            import boto3

            client = boto3.client("batch")
        self.settings, self.client, self.out = settings, client, out
        self.poll_initial, self.poll_max, self.sleep = poll_initial, poll_max, sleep
        self.jobs: list[Submitted] = []

    def say(self, text: str) -> None:
        print(redact(text), file=self.out, flush=True)

    # --- submit ---------------------------------------------------------------------------------------------

    def submit(self, selected: Iterable[tuple[Dataset, str | None]], force: bool = False) -> list[Submitted]:
        register_known_secrets()
        requests = [build_request(d.id, self.settings, version, force) for d, version in selected]
        for request in requests:  # every request is checked before the first one goes out
            check_request(request)
        for request in requests:
            reply = self.client.submit_job(**request)
            dataset_id = request["tags"]["databridge:dataset"]
            self.jobs.append(Submitted(dataset_id, reply["jobId"], reply["jobName"]))
            self.say(f"{dataset_id}: submitted {reply['jobName']} as job {reply['jobId']} to {self.settings.job_queue}")
        return self.jobs

    # --- wait -----------------------------------------------------------------------------------------------

    def describe(self, jobs: Sequence[Submitted]) -> None:
        by_id = {j.job_id: j for j in jobs}
        ids = list(by_id)
        for start in range(0, len(ids), DESCRIBE_BATCH):
            reply = self.client.describe_jobs(jobs=ids[start:start + DESCRIBE_BATCH])
            for detail in reply.get("jobs", []):
                if detail.get("jobId") in by_id:
                    by_id[detail["jobId"]].detail = detail

    def wait(self, deadline_seconds: float) -> int:
        """Poll until every job is SUCCEEDED or FAILED, or the deadline passes; print each outcome."""
        deadline = time.monotonic() + deadline_seconds
        delay = self.poll_initial
        pending = [j for j in self.jobs if j.status not in TERMINAL]
        reported: set[str] = set()
        while True:
            self.describe(pending)
            for job in pending:
                if job.status in TERMINAL and job.job_id not in reported:
                    reported.add(job.job_id)
                    self.report(job)
            pending = [j for j in pending if j.status not in TERMINAL]
            if not pending:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for job in pending:
                    self.say(f"{job.dataset_id}: job {job.job_id} still {job.status} at the deadline "
                             f"({deadline_seconds:.0f}s); left running")
                return EXIT_DEADLINE
            self.sleep(min(delay, max(remaining, 0.01)))
            delay = min(delay * 1.6, self.poll_max)
        failed = [j for j in self.jobs if j.status == "FAILED"]
        self.say(f"{len(self.jobs) - len(failed)} succeeded, {len(failed)} failed")
        return EXIT_FAILED if failed else 0

    def report(self, job: Submitted) -> None:
        if job.status == "SUCCEEDED":
            self.say(f"{job.dataset_id}: job {job.job_id} SUCCEEDED")
            return
        detail = job.detail
        container = dict(detail.get("container") or {})
        attempts = detail.get("attempts") or []
        if attempts:  # the last attempt holds the container's own reason/exit code
            for key, value in (attempts[-1].get("container") or {}).items():
                container.setdefault(key, value)
        parts = [f"{job.dataset_id}: job {job.job_id} FAILED: {detail.get('statusReason') or 'no status reason'}"]
        if container.get("reason"):
            parts.append(f"container reason: {container['reason']}")
        if container.get("exitCode") is not None:
            parts.append(f"exit code {container['exitCode']}")
        stream = container.get("logStreamName")
        if stream:
            options = (container.get("logConfiguration") or {}).get("options") or {}
            group = options.get("awslogs-group") or self.settings.log_group
            region = self.client.meta.region_name or "us-east-1"
            parts.append(f"log stream {stream}: {console_log_link(region, group, stream)}")
        self.say("; ".join(parts))

    # --- interrupt ------------------------------------------------------------------------------------------

    def terminate_unfinished(self, reason: str) -> None:
        for job in self.jobs:
            if job.status in TERMINAL:
                continue
            try:
                self.client.terminate_job(jobId=job.job_id, reason=reason)
                self.say(f"{job.dataset_id}: terminated job {job.job_id} ({reason})")
            except Exception as exc:  # keep going: every other job still has to be stopped
                self.say(f"{job.dataset_id}: could not terminate job {job.job_id}: {redact_exception(exc)}")


def run(selected: Sequence[tuple[Dataset, str | None]], settings: BatchSettings, *, wait: bool = True,
        deadline_seconds: float | None = None, force: bool = False, client: Any = None,
        out: TextIO = sys.stdout, poll_initial: float = 2.0) -> int:
    """Submit, then (unless ``wait`` is false) wait; SIGTERM/SIGINT terminate the unfinished jobs (143/130)."""
    if not selected:
        print("nothing to submit", file=out)
        return 0
    submitter = Submitter(settings, client=client, out=out, poll_initial=poll_initial)

    def interrupt(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[signum] = signal.signal(signum, interrupt)
        except ValueError:  # not the main thread: no signal handling
            pass
    try:
        submitter.submit(selected, force=force)
        if not wait:
            return 0
        if deadline_seconds is None:
            deadline_seconds = settings.timeout_seconds * max(settings.attempts, 1) + 3600
        return submitter.wait(deadline_seconds)
    except Interrupted as exc:
        for signum in previous:  # a second signal must not interrupt the clean-up
            signal.signal(signum, signal.SIG_IGN)
        submitter.terminate_unfinished(f"databridge-luigi submit interrupted by {exc}")
        return 128 + exc.signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
