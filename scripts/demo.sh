#!/usr/bin/env bash
# The demo: publish configs/examples from a bundled sample "Databridge" (SQLite) through local staging into
# a local PostGIS database, twice — the second run finds nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
ROOT="$(pwd)"

PG_ADMIN=${DATABRIDGE_TEST_PG_DSN:-postgresql://postgres@127.0.0.1:5432/postgres}
DEMO_DB=databridge_demo
DEMO_DSN=${PG_ADMIN%/*}/$DEMO_DB
psql "$PG_ADMIN" -qtAc "SELECT 1 FROM pg_database WHERE datname = '$DEMO_DB'" | grep -q 1 || psql "$PG_ADMIN" -qc "CREATE DATABASE $DEMO_DB"
psql "$DEMO_DSN" -qc "CREATE EXTENSION IF NOT EXISTS postgis"
# The example configs grant SELECT to CARTO's anonymous role; create it so the local database behaves alike.
psql "$DEMO_DSN" -qtAc "SELECT 1 FROM pg_roles WHERE rolname = 'publicuser'" | grep -q 1 || psql "$DEMO_DSN" -qc "CREATE ROLE publicuser NOLOGIN"

.venv/bin/python scripts/sample_databridge.py var/demo/databridge.sqlite >/dev/null

# Same configs as production, different URLs: that is how dev and demo run without Oracle or CARTO.
# Absolute paths, so the exports printed at the end work from any directory.
export DATABRIDGE_CONFIG_DIR="$ROOT/configs/examples"
export DATABRIDGE_STAGING="$ROOT/var/demo/staging"
export DATABRIDGE_CONN_DATABRIDGE="sqlite:///$ROOT/var/demo/databridge.sqlite"
export DATABRIDGE_CONN_CARTO_PHL=$DEMO_DSN

echo "== databridge-luigi list"
.venv/bin/databridge-luigi list
echo
echo "== luigi --module databridge_luigi PublishAll --local-scheduler   (first run publishes)"
.venv/bin/luigi --module databridge_luigi PublishAll --local-scheduler 2>&1 | grep -E "^INFO: (demo__|PublishAll)|^ERROR|Scheduled|ran successfully|failed|complete ones|Did not run|This progress" || true
echo
echo "== the same command again   (nothing to do)"
.venv/bin/luigi --module databridge_luigi PublishAll --local-scheduler 2>&1 | grep -E "^INFO: (demo__|PublishAll)|^ERROR|Did not run|This progress" || true
echo
echo "== databridge-luigi plan"
.venv/bin/databridge-luigi plan
echo
echo "== databridge-luigi status   (the morning view; also: databridge-luigi serve, history demo__violations)"
.venv/bin/databridge-luigi status || true
echo
echo "Look at the result:"
echo "  psql $DEMO_DSN -c 'SELECT dataset_id, version, row_count, published_at FROM databridge_luigi_publications ORDER BY published_at'"
echo "  psql $DEMO_DSN -c 'SELECT objectid, address, inspected_at, ST_AsText(shape) FROM violations LIMIT 5'"
echo "  ls -R var/demo/staging | head    # data.csv.gz, schema.json, manifest.json per version"
echo "Republish one dataset now, from any directory: paste these exports (the demo's own settings), then the command"
for name in DATABRIDGE_CONFIG_DIR DATABRIDGE_STAGING DATABRIDGE_CONN_DATABRIDGE DATABRIDGE_CONN_CARTO_PHL; do
  value="${!name}"
  case "$value" in *://*:*@*) value="${value%%://*}://…(your DATABRIDGE_TEST_PG_DSN's user:password)@${value#*@}" ;; esac  # never print a password
  printf '  export %s=%q\n' "$name" "$value"
done
echo "  $ROOT/.venv/bin/luigi --module databridge_luigi Publish --dataset-id demo__violations --force --local-scheduler"
echo "  $ROOT/.venv/bin/databridge-luigi status demo__violations"
