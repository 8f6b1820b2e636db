"""What the package needs from luigi wherever the command runs, not only in the checkout.

luigi reads its configuration from ``/etc/luigi/luigi.cfg``, then ``luigi.cfg`` in the *working directory*,
then the file named by ``LUIGI_CONFIG_PATH`` (later files win). Without a ``[retcode]`` section luigi exits 0
on every failure, so a cron line without ``cd``, a systemd unit with another WorkingDirectory or a
pip-installed worker would report success on failure. ``apply_retcodes()`` (called when the package is
imported, which ``luigi --module databridge_luigi`` does before it reads the exit codes) fills in every
``[retcode]`` value that the configuration in effect does not set; values that are set are kept.

``check_scheduler()``: a command-line run that is to use a central scheduler (no ``--local-scheduler``) asks
it once, in a few seconds, before anything is scheduled; unreachable, it stops with exit ``scheduling_error``
and a hint, instead of luigi's three 30-second RPC retries and a long traceback.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request

import luigi
import luigi.configuration

# The same values as the repository's luigi.cfg (README "Exit codes").
RETCODES = {
    "already_running": 10,
    "missing_data": 20,
    "not_run": 25,
    "task_failed": 30,
    "scheduling_error": 35,
    "unhandled_exception": 40,
}
PROBE_TIMEOUT = 3.0
PROBE_ATTEMPTS = 3
PROBE_WAIT = 1.5
_checked = False


def apply_retcodes() -> dict[str, int]:
    """Set each ``[retcode]`` option the luigi configuration in effect lacks; return what was set."""
    config = luigi.configuration.get_config()
    applied: dict[str, int] = {}
    try:
        if not config.has_section("retcode"):
            config.add_section("retcode")
        for key, value in RETCODES.items():
            if not (config.has_option("retcode", key) or config.has_option("retcode", key.replace("_", "-"))):
                config.set("retcode", key, str(value))
                applied[key] = value
    except Exception:  # a parser without sections (TOML): luigi's own rules apply
        return {}
    return applied


def scheduler_url() -> str | None:
    """The central scheduler a command-line luigi run will use, or None (local scheduler, or not from the CLI)."""
    from luigi.cmdline_parser import CmdlineParser

    if CmdlineParser.get_instance() is None:  # luigi.build() in a program or a test: its own business
        return None
    core = luigi.interface.core()
    if core.local_scheduler:
        return None
    if core.scheduler_url:
        return str(core.scheduler_url).rstrip("/")
    return f"http://{core.scheduler_host}:{core.scheduler_port}"


def check_scheduler() -> None:
    """Once per process: stop with a hint (exit ``scheduling_error``) when the central scheduler is not there."""
    global _checked
    if _checked:
        return
    _checked = True
    url = scheduler_url()
    if url is None:
        return
    for attempt in range(PROBE_ATTEMPTS):  # a luigid that is just starting (or restarting) gets a few seconds
        error = probe(url)
        if error is None:
            return
        if attempt + 1 < PROBE_ATTEMPTS:
            time.sleep(PROBE_WAIT)
    code = int(luigi.configuration.get_config().get("retcode", "scheduling_error", fallback=str(RETCODES["scheduling_error"])))
    from .connections import redact

    print(f"databridge-luigi: no luigi scheduler at {redact(url)} ({error}).\n"
          "  Start one with scripts/luigid.sh (or point --scheduler-host/--scheduler-port at yours), "
          "or add --local-scheduler to run without one.", file=sys.stderr)
    raise SystemExit(code)


def probe(url: str) -> str | None:
    """None when something answers HTTP at ``url`` (any status), else the reason, e.g. 'connection refused'."""
    try:
        with urllib.request.urlopen(f"{url}/api/task_list?data=%7B%7D", timeout=PROBE_TIMEOUT):
            return None
    except urllib.error.HTTPError:
        return None  # a server answered
    except urllib.error.URLError as exc:
        reason = exc.reason
        return str(getattr(reason, "strerror", None) or reason).lower()
    except OSError as exc:
        return str(exc.strerror or exc).lower()


# --- one-line errors ---------------------------------------------------------------------------------------
# luigi logs a failed task, or a task whose complete()/requires() raised, with a full traceback. For a
# user's error (an unknown dataset id, a manual dataset without --force, a missing table, a read-only
# staging directory) the last line says it all: the log keeps the line luigi wrote and the error under it.
# Programming errors keep their traceback, and DATABRIDGE_DEBUG=1 keeps every traceback.

BUG_TYPES = ("TypeError", "AttributeError", "NameError", "UnboundLocalError", "AssertionError", "IndexError",
             "ImportError", "ModuleNotFoundError", "SyntaxError", "RecursionError", "NotImplementedError")
_SCHEDULING = re.compile(r"^(?P<head>Will not run .*? due to error in \w+\(\) method):\n(?P<tb>Traceback .*)$", re.S)


HINTS = (  # what a message from a driver or the OS means for someone running the loop
    (re.compile(r'type "geometry" does not exist'), "the destination database has no PostGIS: CREATE EXTENSION postgis there"),
    (re.compile(r"\[Errno 28\]|No space left on device|could not extend file"), "a disk is full (staging or temporary files): free space, then rerun"),
    (re.compile(r"\[Errno (13|30)\]|Read-only file system"), "the path is not writable by this user (staging: DATABRIDGE_STAGING)"),
    (re.compile(r"UndefinedColumn|column \"[^\"]+\" does not exist"), "a column was renamed or dropped while the dataset ran: check the source, then rerun"),
)


def with_hint(text: str) -> str:
    """``text`` with what to do, when it is a message whose meaning is known."""
    for pattern, hint in HINTS:
        if pattern.search(text) and hint not in text:
            return f"{text} (hint: {hint})"
    return text


def _exception_line(text: str) -> str | None:
    """The ``Type: message`` that ends a formatted traceback (a message of several lines joined into one),
    or None for a programming error."""
    lines = text.rstrip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    start = frames[-1] + 1 if frames else 0
    while start < len(lines) and lines[start].startswith("    "):  # the frame's code line and ^^^ markers
        start += 1
    message = " ".join(line.strip() for line in lines[start:] if line.strip())
    kind = message.split(":", 1)[0].rsplit(".", 1)[-1]
    if not message or kind in BUG_TYPES:
        return None
    if kind == "KeyError" and message.endswith('"') and ': "' in message:  # KeyError's str() quotes its message
        message = message.replace(': "', ": ", 1)[:-1]
    return with_hint(message)


def exception_text(exc: BaseException) -> str | None:
    """``Type: message`` for a user's error, None for a programming error."""
    if type(exc).__name__ in BUG_TYPES:
        return None
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return with_hint(f"{type(exc).__name__}: {' '.join(part.strip() for part in message.splitlines() if part.strip())}")


class OneLineErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if os.environ.get("DATABRIDGE_DEBUG", "").lower() in ("1", "on", "true", "yes"):
            return True
        try:
            if record.exc_info and record.exc_info[1] is not None:
                text = exception_text(record.exc_info[1])
                if text is not None:
                    from .connections import redact

                    record.msg, record.args = f"{record.getMessage()}\n{redact(text)}", ()
                    record.exc_info, record.exc_text = None, None
            elif isinstance(record.msg, str) and "Traceback" in record.msg:
                match = _SCHEDULING.match(record.getMessage())
                line = _exception_line(match["tb"]) if match else None
                if match and line is not None:
                    record.msg, record.args = f"{match['head']}:\n{line}", ()
        except Exception:  # a log filter must never lose the record
            pass
        return True


def install_one_line_errors() -> None:
    """Attach the filter to luigi's logger (idempotent)."""
    logger = logging.getLogger("luigi-interface")
    if not any(isinstance(f, OneLineErrors) for f in logger.filters):
        logger.addFilter(OneLineErrors())
