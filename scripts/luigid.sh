#!/usr/bin/env bash
# Run the central luigi scheduler (luigid) in the foreground, for one machine or a private network.
#
#   scripts/luigid.sh                 # http://127.0.0.1:8082, state and history under var/luigid/
#
# Env: LUIGID_ADDRESS (127.0.0.1), LUIGID_PORT (8082), LUIGID_VAR_DIR (var/luigid: state.pickle, history.db,
# luigid.cfg, luigi-server.log; luigid.log for start-up errors). luigid has NO authentication: anyone who reaches the port can mark tasks done or
# re-enable them. Keep it on 127.0.0.1 or a private address, behind an authenticating proxy if shared.
# SIGTERM/SIGINT stop it cleanly (the state is written to state.pickle at shutdown).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"   # luigi.cfg ([resources], [scheduler] retry_delay) is read from the working directory

ADDRESS="${LUIGID_ADDRESS:-127.0.0.1}"
PORT="${LUIGID_PORT:-8082}"
VAR_DIR="${LUIGID_VAR_DIR:-$ROOT/var/luigid}"
mkdir -p "$VAR_DIR"
VAR_DIR="$(cd "$VAR_DIR" && pwd)"
if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="$(command -v python3 || command -v python)"; fi

# luigid reads luigi.cfg from the working directory, then LUIGI_CONFIG_PATH (which wins).
cat >"$VAR_DIR/luigid.cfg" <<CFG
# Written by scripts/luigid.sh; edits are overwritten at the next start.
[scheduler]
state_path = $VAR_DIR/state.pickle
record_task_history = true

[task_history]
db_connection = sqlite:///$VAR_DIR/history.db
CFG
export LUIGI_CONFIG_PATH="$VAR_DIR/luigid.cfg"

# With --logdir luigid writes its log to luigi-server.log; luigid.log only catches what fails before that.
echo "luigid: http://$ADDRESS:$PORT (no authentication), state $VAR_DIR/state.pickle, history $VAR_DIR/history.db, log $VAR_DIR/luigi-server.log (start-up errors: $VAR_DIR/luigid.log)"
# luigi 3.8's task-history schema "upgrade" passes raw SQL strings, which SQLAlchemy 2 rejects, so luigid
# would die at start. A history database that luigid itself creates needs no upgrade (on SQLite the step only
# warns anyway): skip it for SQLite, and run it wrapped in text() for other databases.
SHIM='
import sys
import sqlalchemy
import luigi.db_task_history as history
_upgrade = history._upgrade_schema
def _upgrade_schema(engine):
    if engine.dialect.name == "sqlite":
        return
    _upgrade(engine)
history._upgrade_schema = _upgrade_schema
from luigi.cmdline import luigid
luigid(sys.argv[1:])
'
exec "$PYTHON" -c "$SHIM" --address "$ADDRESS" --port "$PORT" --state-path "$VAR_DIR/state.pickle" --logdir "$VAR_DIR" \
    >>"$VAR_DIR/luigid.log" 2>&1
