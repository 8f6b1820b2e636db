#!/usr/bin/env bash
# Cron wrapper: one PublishAll run at a time, a log file per run, luigi's exit codes mapped, one Slack summary
# on failure.
#
#   scripts/cron-publish.sh [luigi args…]        e.g. --scheduler-host luigid.internal --workers 4
#
# Env: CRON_PUBLISH_LOCK (default var/run/cron-publish.lock), CRON_PUBLISH_LOG_DIR (default var/log/cron),
#      CRON_PUBLISH_SLACK_SUCCESS=on to post a summary of successful runs too.
# Exit: 0 success, nothing to do, or another run holds the lock / luigi said "already running" (10);
#       otherwise luigi's code (20 missing data, 25 not run, 30 task failed, 35 scheduling error, 40 unhandled),
#       after posting one failure summary to the "slack" connection.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1   # luigi.cfg (retcodes) is read from the working directory

LOCK_FILE="${CRON_PUBLISH_LOCK:-$ROOT/var/run/cron-publish.lock}"
LOG_DIR="${CRON_PUBLISH_LOG_DIR:-$ROOT/var/log/cron}"
if [ -x "$ROOT/.venv/bin/python" ] && [ -x "$ROOT/.venv/bin/luigi" ]; then
    PYTHON="$ROOT/.venv/bin/python"; LUIGI="$ROOT/.venv/bin/luigi"
else
    PYTHON="$(command -v python3 || command -v python)"; LUIGI="luigi"
fi

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
# One summary for the whole run instead of one Slack message per failed task.
DATABRIDGE_SLACK_TASK_ALERTS=off "$LUIGI" --module databridge_luigi PublishAll "$@" >>"$log_file" 2>&1 9>&-
rc=$?
echo "# exit $rc at $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$log_file"

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
    *)
        echo "cron-publish: FAILED with exit $rc (log $log_file)" >&2
        "$PYTHON" -W ignore::RuntimeWarning -m databridge_luigi.notify --summary "$log_file" "$rc" 9>&- >>"$log_file" 2>&1 \
            || echo "cron-publish: the Slack summary helper failed (see $log_file)" >&2
        exit "$rc" ;;
esac
