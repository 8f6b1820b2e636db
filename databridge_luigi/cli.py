"""``databridge-luigi`` console script: list, validate, plan, status, history, serve and submit (publishing
itself is ``luigi --module databridge_luigi PublishAll|Publish``).

A broken config file breaks only its own dataset: every command but ``validate`` works with the valid
datasets and names each broken file (file, key, reason) under its output, exiting 1. Errors are one or two
lines; ``--debug`` (or ``-v``) adds the traceback. Options go before or after the command
(``databridge-luigi plan --config-dir X`` = ``databridge-luigi --config-dir X plan``).
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from .config import DEFAULT_CARTO_CONN, ConfigError, ConfigProblem, Dataset, Registry, load_datasets
from .connections import redact, redact_exception
from .schedule import due_version, next_fire_time


def _config_dir(value: str | None) -> Path:
    if value:
        return Path(value)
    try:
        from .tasks import databridge

        configured = str(databridge().config_dir)
    except Exception:  # no luigi.cfg: fall back to the environment default
        configured = ""
    from .config import default_config_dir

    return Path(configured) if configured else default_config_dir()


def _default_carto_conn() -> str:
    try:
        from .tasks import databridge

        return str(databridge().default_carto_conn)
    except Exception:
        return DEFAULT_CARTO_CONN


def _registry(args: argparse.Namespace) -> Registry:
    return Registry(_config_dir(args.config_dir), _default_carto_conn())


def _store():  # type: ignore[no-untyped-def]
    from .staging import open_store
    from .tasks import databridge

    return open_store(str(databridge().staging) or None)


def _report_broken(problems: Sequence[ConfigProblem], directory: Path, out=None) -> None:  # type: ignore[no-untyped-def]
    """Under a command's output: each broken file's problems (the valid datasets were shown above)."""
    if not problems:
        return
    out = out or sys.stderr
    files = sorted({p.path for p in problems})
    print(f"{len(files)} broken config file(s) in {directory} (their datasets are left out; "
          "'databridge-luigi validate' lists every problem):", file=out)
    for problem in problems:
        print(f"  {problem}", file=out)


def cmd_validate(args: argparse.Namespace) -> int:
    directory = _config_dir(args.dir or args.config_dir)
    datasets, problems = load_datasets(directory, _default_carto_conn())
    for problem in problems:
        print(problem)
    summary = f"{len(datasets)} dataset(s) valid, {len(problems)} problem(s) in {directory}"
    print(summary, file=sys.stderr if problems else sys.stdout)
    return 1 if problems else 0


def cmd_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    rows = [("DATASET", "KIND", "SCHEDULE (UTC)", "SOURCE", "DESTINATION")]
    for d in registry:
        schedule = d.schedule or "manual"
        destination = f"{d.dest_conn}:{d.dest_table}" if d.publish else ("" if d.ago else "(staging only)")
        if d.ago is not None:  # ArcGIS Online: a destination of its own
            destination += (" + " if destination else "") + f"{d.ago.conn}:item {d.ago.item} [{d.ago.mode}]"
        if not d.enabled:
            destination += " [disabled]"
        rows.append((d.id, d.kind, schedule, f"{d.source_conn}:{d.source_schema + '.' if d.source_schema else ''}{d.source_table}", destination))
    _print_table(rows)
    _report_broken(registry.problems, registry.root)
    return 1 if registry.problems else 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .targets import PublishedTableTarget

    registry = _registry(args)
    rows = [("DATASET", "DUE VERSION", "PUBLISHED", "NEXT RUN (UTC)")]
    notes: dict[str, int] = {}  # one footer note per distinct error, e.g. one per unreachable destination
    for d in registry:
        if not d.enabled:
            rows.append((d.id, "-", "disabled", "-"))
            continue
        version = due_version(d.schedule)
        following = next_fire_time(d.schedule).strftime("%Y-%m-%d %H:%M") if d.schedule else "manual"
        if version is None:
            rows.append((d.id, "-", "manual", following))
            continue
        if not d.publish:
            from .tasks import staged_table

            state = "staged" if staged_table(d.id, version).exists() else "due (staging only)"
        else:
            try:
                state = "yes" if PublishedTableTarget(d, version).exists() else "DUE"
            except Exception as exc:  # one unreachable destination must not hide the rest of the plan
                note = f"{d.dest_conn}: {redact_exception(exc).splitlines()[0][:300]}"
                number = notes.setdefault(note, len(notes) + 1)
                state = f"unknown [{number}]"
        if d.ago is not None:
            state = _ago_state(d, version, state, notes)
        rows.append((d.id, version, state, following))
    _print_table(rows)
    if notes:
        print(f"\n{sum(1 for r in rows if 'unknown' in r[2])} dataset(s) could not be checked:")
        for note, number in notes.items():
            print(f"[{number}] {note}")
    _report_broken(registry.problems, registry.root)
    unpublished = [row[0] for row in rows[1:] if "DUE" in row[2] or "due" in row[2]] if args.check else []
    if unpublished:
        print(f"\n{len(unpublished)} dataset(s) due and not published yet: {', '.join(unpublished)}")
    return 1 if notes or registry.problems or unpublished else 0


def _ago_state(d: Dataset, version: str, state: str, notes: dict[str, int]) -> str:
    """The plan's PUBLISHED column with the dataset's ArcGIS Online destination added."""
    from .publish.ago import AgoPublishedTarget

    try:
        ago = "yes" if AgoPublishedTarget(d, version).exists() else "DUE"
    except Exception as exc:
        note = f"{d.ago.conn if d.ago else '-'}: {redact_exception(exc).splitlines()[0][:300]}"
        ago = f"unknown [{notes.setdefault(note, len(notes) + 1)}]"
    return f"{state}, ago {ago}" if d.publish else f"ago {ago}"


def cmd_status(args: argparse.Namespace) -> int:
    from . import status

    registry = _registry(args)
    rows = status.collect(registry, _store(), args.dataset_ids, luigid=_luigid_url(args),
                          history=getattr(args, "luigid_history", None) or status.history_url())
    if args.html:
        status.write_page(args.html, rows)
    if args.json:
        print(status.as_json(rows))
    elif not args.html or args.dataset_ids or sys.stdout.isatty():
        print(status.text_table(sorted(rows, key=status.sort_key)))
    if args.html:
        print(f"status page written to {os.path.abspath(args.html)}", file=sys.stderr)
    return 1 if any(r.state in status.ALARMING for r in rows) else 0


def _luigid_url(args: argparse.Namespace) -> str | None:
    return getattr(args, "luigid", None) or os.environ.get("DATABRIDGE_LUIGID_URL") or None


def cmd_history(args: argparse.Namespace) -> int:
    from . import status

    registry = _registry(args)
    entries = status.history(registry, _store(), args.dataset_id, limit=args.limit)
    if args.json:
        import json

        print(json.dumps({"dataset_id": args.dataset_id, "runs": entries}, indent=2))
    else:
        print(status.history_table(args.dataset_id, entries))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from . import web

    return web.serve(lambda: _registry(args), _store, host=args.host, port=args.port, luigid=_luigid_url(args))


def cmd_submit(args: argparse.Namespace) -> int:
    from . import batch

    if args.dataset_ids and (args.all or args.due):
        raise SystemExit("databridge-luigi submit: give dataset ids or --all/--due, not both")
    if not args.dataset_ids and not (args.all or args.due):
        raise SystemExit("databridge-luigi submit: give dataset ids, --all or --due")
    mode = "due" if args.due else "all" if args.all else None
    registry = _registry(args)
    _report_broken(registry.problems, registry.root)
    for dataset_id in args.dataset_ids:  # a named dataset whose file is broken: say which problem
        if dataset_id in registry.broken_ids():
            raise ConfigError(registry.broken_ids()[dataset_id])
    datasets: list[Dataset] = list(registry)
    selected = batch.select_datasets(datasets, args.dataset_ids, mode)
    manual = [d.id for d, version in selected if version is None and not args.force]
    if manual:
        raise SystemExit(f"databridge-luigi submit: manual dataset(s) need --force: {', '.join(manual)}")
    if args.force:  # --force publishes "now" in the job; a pinned version would win over it
        selected = [(d, None) for d, _ in selected]
    settings = batch.BatchSettings.from_config(job_queue=args.queue, job_definition=args.job_definition,
                                               scheduler_host=args.scheduler_host)
    code = batch.run(selected, settings, wait=not args.no_wait, deadline_seconds=args.deadline, force=args.force,
                     poll_initial=args.poll_interval)
    return code or (1 if registry.problems else 0)


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def _common() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name (SUPPRESS: a later default never overwrites)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config-dir", default=argparse.SUPPRESS,
                        help="config tree (default: luigi.cfg [databridge] config_dir, env DATABRIDGE_CONFIG_DIR, ./configs)")
    common.add_argument("--debug", "-v", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(prog="databridge-luigi", parents=[common],
                                     description="List, validate, plan and watch databridge-luigi datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", parents=[common], help="one line per dataset").set_defaults(func=cmd_list)
    validate = sub.add_parser("validate", parents=[common], help="check every config; names file, key and reason for each problem")
    validate.add_argument("dir", nargs="?")
    validate.set_defaults(func=cmd_validate)
    plan = sub.add_parser("plan", parents=[common], help="each dataset's due version and whether it is published")
    plan.add_argument("--check", action="store_true", help="exit 1 also when a dataset's due version is not published yet "
                      "(the cron wrapper's test after luigi's exit 25: did other workers publish the rest?)")
    plan.set_defaults(func=cmd_plan)

    state = sub.add_parser("status", parents=[common], help="the morning view: each dataset's state, last publish, last failure, next run")
    state.add_argument("dataset_ids", nargs="*", metavar="DATASET_ID")
    state.add_argument("--json", action="store_true", help="machine-readable output")
    state.add_argument("--html", metavar="FILE", help="also write the status page to FILE (atomically)")
    state.add_argument("--luigid", metavar="URL", help="luigid to ask for running and failed tasks (env DATABRIDGE_LUIGID_URL)")
    state.add_argument("--luigid-history", metavar="DB_URL", help="luigid's task-history database (env DATABRIDGE_LUIGID_HISTORY, "
                       "else luigi.cfg [task_history] db_connection), e.g. sqlite:///var/luigid/history.db")
    state.set_defaults(func=cmd_status)
    past = sub.add_parser("history", parents=[common], help="one dataset's versions: rows, seconds, outcomes, failures")
    past.add_argument("dataset_id", metavar="DATASET_ID")
    past.add_argument("--limit", type=int, default=30)
    past.add_argument("--json", action="store_true")
    past.set_defaults(func=cmd_history)
    serve = sub.add_parser("serve", parents=[common], help="serve the status page (loopback by default)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1; the page has no authentication)")
    serve.add_argument("--port", type=int, default=8090, help="port (8090; 0 = any free port)")
    serve.add_argument("--luigid", metavar="URL", help="luigid to link rows to (env DATABRIDGE_LUIGID_URL)")
    serve.set_defaults(func=cmd_serve)

    submit = sub.add_parser("submit", parents=[common], help="run datasets as AWS Batch jobs and wait for them ([databridge_batch] in luigi.cfg)")
    submit.add_argument("dataset_ids", nargs="*", metavar="DATASET_ID")
    which = submit.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="one job per enabled, scheduled dataset")
    which.add_argument("--due", action="store_true", help="like --all, but only datasets whose due version is not published")
    submit.add_argument("--queue", help="job queue (default [databridge_batch] job_queue)")
    submit.add_argument("--job-definition", help="job definition name, name:revision or ARN")
    submit.add_argument("--scheduler-host", help="luigid host the jobs report to ('local' = --local-scheduler)")
    submit.add_argument("--force", action="store_true", help="the jobs publish a new version now (Publish --force)")
    submit.add_argument("--no-wait", action="store_true", help="submit and exit without waiting")
    submit.add_argument("--deadline", type=float, help="seconds to wait for all jobs (default: timeout x attempts + 1h)")
    submit.add_argument("--poll-interval", type=float, default=2.0, help=argparse.SUPPRESS)
    submit.set_defaults(func=cmd_submit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.config_dir = getattr(args, "config_dir", None)
    args.debug = getattr(args, "debug", False)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `databridge-luigi list | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except SystemExit:
        raise
    except Exception as exc:  # a CLI shows one readable line (two at most), never a traceback unless --debug
        if args.debug:
            print(redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__))), file=sys.stderr, end="")
        print(f"databridge-luigi {args.command}: {_user_message(exc)}", file=sys.stderr)
        return 2


def _user_message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:  # KeyError's str() adds quotes around the message
        return redact(str(exc.args[0]))
    if isinstance(exc, ConfigError):
        return redact(str(exc))
    return redact_exception(exc)


if __name__ == "__main__":
    sys.exit(main())
