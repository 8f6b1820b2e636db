#!/usr/bin/env bash
# The test command: installs what is missing (scripts/bootstrap.sh), then runs the whole suite against a
# real PostgreSQL/PostGIS, moto's server, real luigi and the HTTP emulators in tests/.
# Extra arguments go to pytest, e.g. scripts/test.sh -k staging.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
exec .venv/bin/pytest "$@"
