"""``databridge-luigi`` console script: list, validate and plan datasets (publishing itself is
``luigi --module databridge_luigi PublishAll|Publish``)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import DEFAULT_CARTO_CONN, Dataset, load_datasets
from .connections import redact_exception
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


def _load(directory: Path) -> list[Dataset]:
    datasets, problems = load_datasets(directory, _default_carto_conn())
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        raise SystemExit(f"{len(problems)} config problem(s) in {directory}; run 'databridge-luigi validate' for details")
    return datasets


def _default_carto_conn() -> str:
    try:
        from .tasks import databridge

        return str(databridge().default_carto_conn)
    except Exception:
        return DEFAULT_CARTO_CONN


def cmd_validate(args: argparse.Namespace) -> int:
    directory = _config_dir(args.dir or args.config_dir)
    datasets, problems = load_datasets(directory, _default_carto_conn())
    for problem in problems:
        print(problem)
    summary = f"{len(datasets)} dataset(s) valid, {len(problems)} problem(s) in {directory}"
    print(summary, file=sys.stderr if problems else sys.stdout)
    return 1 if problems else 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = [("DATASET", "KIND", "SCHEDULE (UTC)", "SOURCE", "DESTINATION")]
    for d in _load(_config_dir(args.config_dir)):
        schedule = d.schedule or "manual"
        destination = f"{d.dest_conn}:{d.dest_table}" if d.publish else "(staging only)"
        if not d.enabled:
            destination += " [disabled]"
        rows.append((d.id, d.kind, schedule, f"{d.source_conn}:{d.source_schema + '.' if d.source_schema else ''}{d.source_table}", destination))
    _print_table(rows)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .targets import PublishedTableTarget

    rows = [("DATASET", "DUE VERSION", "PUBLISHED", "NEXT RUN (UTC)")]
    unknown = 0
    for d in _load(_config_dir(args.config_dir)):
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
                unknown += 1
                state = f"unknown ({redact_exception(exc).splitlines()[0][:200]})"
        rows.append((d.id, version, state, following))
    _print_table(rows)
    return 1 if unknown else 0


def cmd_submit(args: argparse.Namespace) -> int:
    from . import batch

    if args.dataset_ids and (args.all or args.due):
        raise SystemExit("databridge-luigi submit: give dataset ids or --all/--due, not both")
    if not args.dataset_ids and not (args.all or args.due):
        raise SystemExit("databridge-luigi submit: give dataset ids, --all or --due")
    mode = "due" if args.due else "all" if args.all else None
    datasets = _load(_config_dir(args.config_dir))
    selected = batch.select_datasets(datasets, args.dataset_ids, mode)
    manual = [d.id for d, version in selected if version is None and not args.force]
    if manual:
        raise SystemExit(f"databridge-luigi submit: manual dataset(s) need --force: {', '.join(manual)}")
    if args.force:  # --force publishes "now" in the job; a pinned version would win over it
        selected = [(d, None) for d, _ in selected]
    settings = batch.BatchSettings.from_config(job_queue=args.queue, job_definition=args.job_definition,
                                               scheduler_host=args.scheduler_host)
    return batch.run(selected, settings, wait=not args.no_wait, deadline_seconds=args.deadline, force=args.force,
                     poll_initial=args.poll_interval)


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="databridge-luigi", description="List, validate and plan databridge-luigi datasets.")
    parser.add_argument("--config-dir", help="config tree (default: luigi.cfg [databridge] config_dir, env DATABRIDGE_CONFIG_DIR, ./configs)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="one line per dataset").set_defaults(func=cmd_list)
    validate = sub.add_parser("validate", help="check every config; names file, key and reason for each problem")
    validate.add_argument("dir", nargs="?")
    validate.set_defaults(func=cmd_validate)
    sub.add_parser("plan", help="each dataset's due version and whether it is published").set_defaults(func=cmd_plan)
    submit = sub.add_parser("submit", help="run datasets as AWS Batch jobs and wait for them ([databridge_batch] in luigi.cfg)")
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
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `databridge-luigi list | head`: the reader left; not an error
        sys.stderr.close()
        return 0
    except SystemExit:
        raise
    except Exception as exc:  # a CLI shows one readable line, never a traceback
        print(f"databridge-luigi {args.command}: {redact_exception(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
