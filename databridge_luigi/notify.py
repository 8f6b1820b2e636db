"""Slack alerts: a luigi FAILURE handler (one message per failed task) and a per-run failure summary for the cron
wrapper (``python -m databridge_luigi.notify --summary LOGFILE RC``).

The webhook is the ``slack`` connection (env ``DATABRIDGE_CONN_SLACK``, luigi.cfg ``[connections] slack`` or
Secrets Manager), looked up when something fails, never at import. No ``slack`` connection: logged once, no
alerts. Slack trouble (timeouts, 4xx/5xx, an outage) is logged and never raises or blocks a worker for long:
every request has a 5 s timeout; a 429 is retried after its ``Retry-After``, and a 5xx or a refused/reset
connection after ``RETRY_WAIT``, at most twice in all, waiting at most 30 s in all (a read timeout is not retried:
Slack may have posted the message). Everything sent is redacted (``connections.redact``).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from . import connections

log = logging.getLogger(__name__)

USERNAME = "databridge-luigi"
TIMEOUT = 5.0            # seconds, connect and read, per request
MAX_RETRIES = 2          # 429 retries after the first attempt
MAX_TOTAL_WAIT = 30.0    # seconds of Retry-After waiting in all
RETRY_WAIT = 1.0         # seconds before retrying a 5xx or a failed connection
SUMMARY_LINE_LIMIT = 300
# The cron wrapper sets this to "off" for its luigi run and posts one summary instead of one message per task.
TASK_ALERTS_ENV = "DATABRIDGE_SLACK_TASK_ALERTS"

_unconfigured_logged = False


def webhook_url() -> str | None:
    """The ``slack`` connection's URL, or None (logged once per process) when none is configured."""
    global _unconfigured_logged
    try:
        url = connections.resolve("slack")
        # The webhook's path is its credential, wherever it is served (connections only knows hooks.slack.com).
        connections.register_secret(urlsplit(url).path.strip("/"))
        return url
    except connections.UnknownConnectionError as exc:
        if not _unconfigured_logged:
            _unconfigured_logged = True
            log.info("Slack alerts are off: no 'slack' connection (%s)", exc)
        return None
    except Exception as exc:  # e.g. Secrets Manager unreachable: an alert must never break the caller
        log.warning("Slack alert not sent: could not look up the 'slack' connection: %s", connections.redact_exception(exc))
        return None


def post(text: str) -> bool:
    """Post ``text`` to the webhook; True when Slack answered 200. Never raises."""
    try:
        url = webhook_url()
        if url is None:
            return False
        return _post(url, {"text": connections.redact(text), "username": USERNAME})
    except Exception as exc:
        log.warning("Slack alert not sent: %s", connections.redact_exception(exc))
        return False


def _post(url: str, payload: dict[str, Any]) -> bool:
    waited = 0.0
    for attempt in range(MAX_RETRIES + 1):
        try:
            reply = requests.post(url, json=payload, timeout=TIMEOUT)
        except requests.RequestException as exc:
            # Refused or reset before an answer: Slack has not posted it, one more try is safe. A read timeout
            # is not retried (the message may be posted already) and bounds the time spent here.
            if isinstance(exc, requests.ConnectionError) and not isinstance(exc, requests.ReadTimeout) \
                    and attempt < MAX_RETRIES and waited + RETRY_WAIT <= MAX_TOTAL_WAIT:
                log.info("Slack alert failed (%s); retrying in %.0f s", connections.redact_exception(exc), RETRY_WAIT)
                time.sleep(RETRY_WAIT)
                waited += RETRY_WAIT
                continue
            log.warning("Slack alert not sent: %s", connections.redact_exception(exc))
            return False
        if reply.status_code == 200:
            return True
        body = connections.redact(reply.text[:200].strip())
        if reply.status_code >= 500 and attempt < MAX_RETRIES and waited + RETRY_WAIT <= MAX_TOTAL_WAIT:
            log.info("Slack answered HTTP %d %s; retrying in %.0f s", reply.status_code, body, RETRY_WAIT)
            time.sleep(RETRY_WAIT)
            waited += RETRY_WAIT
            continue
        if reply.status_code == 429 and attempt < MAX_RETRIES:
            wait = _retry_after(reply.headers.get("Retry-After"))
            if waited + wait <= MAX_TOTAL_WAIT:
                log.info("Slack rate limit: retrying in %.0f s", wait)
                time.sleep(wait)
                waited += wait
                continue
            log.warning("Slack alert not sent: rate limited, Retry-After %s s is past the %.0f s budget", wait, MAX_TOTAL_WAIT)
            return False
        log.warning("Slack alert not sent: HTTP %d %s", reply.status_code, body)
        return False
    return False


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0


def one_line(text: str, limit: int = SUMMARY_LINE_LIMIT) -> str:
    """The first non-empty line of ``text``, redacted and cut to ``limit`` characters."""
    line = next((part.strip() for part in connections.redact(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


class _Blank(dict):  # str.format_map that leaves unknown fields empty
    def __missing__(self, key: str) -> str:
        return ""


def log_link(fields: dict[str, str]) -> str | None:
    """Where to read the log: env ``DATABRIDGE_LOG_URL`` (a template with ``{dataset_id}``, ``{version}``,
    ``{step}``, ``{task_id}``, ``{host}``, ``{log_file}``, ``{batch_job_id}``) or, inside AWS Batch, the job's
    page in the Batch console (it links the job's CloudWatch log stream)."""
    job_id = os.environ.get("AWS_BATCH_JOB_ID", "")
    values = _Blank(fields, host=socket.gethostname(), batch_job_id=job_id)
    template = os.environ.get("DATABRIDGE_LOG_URL")
    if template:
        try:
            return template.format_map(values)
        except (ValueError, IndexError, AttributeError):
            return template
    if job_id:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        return f"https://{region}.console.aws.amazon.com/batch/home?region={region}#jobs/detail/{job_id}"
    return None


# --- the FAILURE handler -----------------------------------------------------------------------------------

def failure_text(task: Any, exception: BaseException) -> str:
    dataset_id = str(getattr(task, "dataset_id", "?"))
    version = str(getattr(task, "version", "?"))
    step = task.get_task_family()
    lines = [
        f":x: *{dataset_id}* failed at step *{step}* (version `{version}`)",
        f"> {one_line(connections.redact_exception(exception))}",
    ]
    link = log_link({"dataset_id": dataset_id, "version": version, "step": step, "task_id": str(task.task_id)})
    if link:
        lines.append(f"Log: {link}")
    return "\n".join(lines)


def on_failure(task: Any, exception: BaseException) -> None:
    """luigi ``Event.FAILURE`` handler (registered on DatasetTask in tasks.py)."""
    if os.environ.get(TASK_ALERTS_ENV, "").lower() in ("0", "off", "false", "no"):
        return
    try:
        post(failure_text(task, exception))
    except Exception as exc:
        log.warning("Slack alert not sent: %s", connections.redact_exception(exc))


# --- the cron wrapper's run summary ------------------------------------------------------------------------

RETCODE_MEANING = {
    20: "missing data", 25: "not run", 30: "a task failed", 35: "scheduling error", 40: "unhandled exception",
}
_WORKER_FAILED = re.compile(r"Worker Worker\(.*?\) failed\s+(?P<task>\w+\(.*\))\s*$")
_SUMMARY_TASK = re.compile(r"(?P<family>\w+)\((?P<params>[^()]*)\)")
_HEADING = re.compile(r"^\s*\* \d+ (?P<what>.*?):?\s*$")
_PARAM = re.compile(r"(\w+)=([^,]*)")


def _label(family: str, params: str) -> str:
    values = dict(_PARAM.findall(params))
    return " ".join(filter(None, [family, values.get("dataset_id"), values.get("version")]))


def failed_tasks(log_text: str) -> list[str]:
    """The failed tasks of a luigi run, as ``Family dataset_id version``: from the worker's "failed" lines, else
    from the "failed" / "missing external dependencies" blocks of the execution summary."""
    found: list[str] = []
    for line in log_text.splitlines():
        match = _WORKER_FAILED.search(line)
        if match:
            task = _SUMMARY_TASK.match(match["task"])
            if task and _label(task["family"], task["params"]) not in found:
                found.append(_label(task["family"], task["params"]))
    if found:
        return found
    in_failed = False
    for line in log_text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            what = heading["what"]
            in_failed = ("failed" in what and "dependencies" not in what) or "missing external" in what
        elif in_failed and line.strip().startswith("- "):
            for task in _SUMMARY_TASK.finditer(line):
                if _label(task["family"], task["params"]) not in found:
                    found.append(_label(task["family"], task["params"]))
        elif line.strip():
            in_failed = False
    return found


def last_error(log_text: str) -> str:
    for line in reversed(log_text.splitlines()):
        if re.search(r"\b(ERROR|CRITICAL)\b|Error:|Exception:", line):
            return one_line(line)
    return ""


def summary_text(log_file: Path, rc: int) -> str:
    try:
        text = log_file.read_text(errors="replace")
    except OSError as exc:
        text = f"(log unreadable: {exc})"
    meaning = RETCODE_MEANING.get(rc, "failure")
    lines = [f":rotating_light: databridge-luigi cron run failed on {socket.gethostname()}: exit {rc} ({meaning})"]
    tasks = failed_tasks(text)
    if tasks:
        lines.append(f"Failed ({len(tasks)}):")
        lines += [f"• {one_line(t, 150)}" for t in tasks[:20]]
        if len(tasks) > 20:
            lines.append(f"… and {len(tasks) - 20} more")
    error = last_error(text)
    if error:
        lines.append(f"> {error}")
    link = log_link({"log_file": str(log_file), "step": "cron"})
    lines.append(f"Log: {link or f'{socket.gethostname()}:{log_file}'}")
    return "\n".join(lines)


_PUBLISHED = re.compile(r"(?P<dataset>\w+): (?P<verb>published|recorded \(unchanged data\)) (?P<rows>\d+) rows to (?P<where>\S+)"
                        r"(?: as version \S+ \((?P<counts>[^)]+)\))?")


def success_text(log_file: Path) -> str:
    """The optional summary of a successful run: what was published (or found unchanged), or nothing to do."""
    try:
        text = log_file.read_text(errors="replace")
    except OSError as exc:
        text = f"(log unreadable: {exc})"
    done = [m for m in _PUBLISHED.finditer(text)]
    head = f":white_check_mark: databridge-luigi cron run ok on {socket.gethostname()}"
    if not done:
        return f"{head}: nothing to do"
    lines = [f"{head}: {len(done)} dataset(s)"]
    lines += [f"• {m['dataset']}: {m['verb']} {int(m['rows']):,} rows to {m['where']}" + (f" ({m['counts']})" if m["counts"] else "")
              for m in done[:30]]
    if len(done) > 30:
        lines.append(f"… and {len(done) - 30} more")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m databridge_luigi.notify", description="Slack alerts")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--summary", nargs=2, metavar=("LOGFILE", "RC"), help="post one failure summary of a luigi run's log file")
    which.add_argument("--success", metavar="LOGFILE", help="post one summary of a successful run's log file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.success:
        kind, text = "success", success_text(Path(args.success))
    else:
        kind, text = "failure", summary_text(Path(args.summary[0]), int(args.summary[1]))
    sent = post(text)
    print(("posted" if sent else "not posted") + f" Slack {kind} summary", file=sys.stderr)
    return 0  # an alert that could not be sent must not change the wrapper's outcome


if __name__ == "__main__":
    connections.install_log_redaction()
    sys.exit(main())
