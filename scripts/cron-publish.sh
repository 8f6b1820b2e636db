#!/usr/bin/env bash
# Cron wrapper: one PublishAll run at a time, a log file per run, luigi's exit codes mapped, one Slack summary
# on failure.
#
#   scripts/cron-publish.sh [luigi args…]        e.g. --scheduler-host luigid.internal --workers 4
#
# Env: CRON_PUBLISH_ENV_FILE  a file of KEY=value lines loaded first (cron gives a job almost no environment:
#                             put DATABRIDGE_* settings there, e.g. /etc/databridge-luigi.env, mode 600);
#      CRON_PUBLISH_LOCK (default var/run/cron-publish.lock), CRON_PUBLISH_LOG_DIR (default var/log/cron),
#      CRON_PUBLISH_STATUS_PAGE (default var/status/index.html; "off" = none): the status page, rewritten after
#      every run; CRON_PUBLISH_SLACK_SUCCESS=on to post a summary of successful runs too.
# Exit: 0 success, nothing to do, or another run holds the lock / luigi said "already running" (10), or luigi's
#       25 ("not granted run permission": other workers sharing the luigid ran some of this run's tasks) when
#       `databridge-luigi plan --check` then finds every due dataset published;
#       otherwise luigi's code (20 missing data, 25 not run, 30 task failed, 35 scheduling error, 40 unhandled),
#       after posting one failure summary to the "slack" connection.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1   # the checkout's luigi.cfg ([resources], [databridge]) is read from the working directory

if [ -n "${CRON_PUBLISH_ENV_FILE:-}" ]; then
    if [ ! -r "$CRON_PUBLISH_ENV_FILE" ]; then
        echo "cron-publish: CRON_PUBLISH_ENV_FILE=$CRON_PUBLISH_ENV_FILE is not a readable file" >&2
        exit 2
    fi
    set -a   # every KEY=value in the file is exported to luigi
    # shellcheck disable=SC1090
    . "$CRON_PUBLISH_ENV_FILE"
    set +a
fi

LOCK_FILE="${CRON_PUBLISH_LOCK:-$ROOT/var/run/cron-publish.lock}"
LOG_DIR="${CRON_PUBLISH_LOG_DIR:-$ROOT/var/log/cron}"
if [ -x "$ROOT/.venv/bin/python" ] && [ -x "$ROOT/.venv/bin/luigi" ]; then
    PYTHON="$ROOT/.venv/bin/python"; LUIGI="$ROOT/.venv/bin/luigi"; DBL="$ROOT/.venv/bin/databridge-luigi"
else
    PYTHON="$(command -v python3 || command -v python)"; LUIGI="luigi"; DBL="databridge-luigi"
fi
STATUS_PAGE="${CRON_PUBLISH_STATUS_PAGE:-$ROOT/var/status/index.html}"

mkdir -p "$(dirname "$LOCK_FILE")" "$LOG_DIR"
exec 9>>"$LOCK_FILE"
if ! flock -n 9; then
    echo "cron-publish: already running (lock $LOCK_FILE is held); nothing done"
    exit 0
fi

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
log_file="$LOG_DIR/$stamp.log"
n=1
while [ -e "$log_file" ]; do log_file="$LOG_DIR/$stamp-$n.log"; n=$((n + 1)); done

{
    echo "# cron-publish $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname): $LUIGI --module databridge_luigi PublishAll $*"
} >>"$log_file"
# One summary for the whole run instead of one Slack message per failed task; failures' run records name this log.
DATABRIDGE_SLACK_TASK_ALERTS=off DATABRIDGE_RUN_LOG="$log_file" "$LUIGI" --module databridge_luigi PublishAll "$@" >>"$log_file" 2>&1 9>&-
rc=$?
echo "# exit $rc at $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$log_file"
# The morning view as a static page (serve it with any web server); its own trouble never changes the outcome.
if [ "$STATUS_PAGE" != "off" ]; then
    "$DBL" status --html "$STATUS_PAGE" 9>&- >/dev/null 2>>"$log_file"
    case $? in 0|1) ;; *) echo "cron-publish: the status page was not written (see $log_file)" >&2 ;; esac
fi

failed() {  # one Slack summary of the run, then luigi's exit code
    echo "cron-publish: FAILED with exit $rc${1:+: $1} (log $log_file)" >&2
    "$PYTHON" -W ignore::RuntimeWarning -m databridge_luigi.notify --summary "$log_file" "$rc" 9>&- >>"$log_file" 2>&1 \
        || echo "cron-publish: the Slack summary helper failed (see $log_file)" >&2
    exit "$rc"
}

case "$rc" in
    0)
        echo "cron-publish: ok (log $log_file)"
        case "${CRON_PUBLISH_SLACK_SUCCESS:-off}" in
            1|on|true|yes)
                "$PYTHON" -W ignore::RuntimeWarning -m databridge_luigi.notify --success "$log_file" 9>&- >>"$log_file" 2>&1 \
                    || echo "cron-publish: the Slack summary helper failed (see $log_file)" >&2 ;;
        esac
        exit 0 ;;
    10)
        echo "cron-publish: luigi says already running (benign; log $log_file)"
        exit 0 ;;
    25)
        # luigi counts a task another worker ran as "not run"; what matters is whether everything due got published.
        echo "# luigi exit 25: is every due dataset published? (databridge-luigi plan --check)" >>"$log_file"
        if "$DBL" plan --check 9>&- >>"$log_file" 2>&1; then
            echo "cron-publish: ok; other workers ran some of this run's tasks, and every due dataset is published (log $log_file)"
            exit 0
        fi
        failed "tasks not run, and datasets still due" ;;
    *)
        failed "" ;;
esac
