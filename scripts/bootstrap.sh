#!/usr/bin/env bash
# Install what databridge-luigi needs on a fresh Debian/Ubuntu machine, idempotently:
#   - PostGIS for the local PostgreSQL server (apt, when running as root), and a running server;
#   - Chromium (headless, for the status page tests);
#   - a virtualenv in .venv with the package and its test dependencies.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    [ -n "${_APT_UPDATED:-}" ] || { apt-get update -qq >/dev/null; _APT_UPDATED=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "bootstrap: please install: $*" >&2
    return 1
  fi
}

if ! command -v pg_config >/dev/null && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt_install postgresql postgresql-contrib
fi
pg_major=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! ls /usr/share/postgresql/"$pg_major"/extension/postgis.control >/dev/null 2>&1; then
  apt_install "postgresql-$pg_major-postgis-3"
fi
# Tests and the demo use the machine's server on 127.0.0.1:5432 unless DATABRIDGE_TEST_PG_DSN says otherwise.
if [ -z "${DATABRIDGE_TEST_PG_DSN:-}" ] && ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$pg_major" main start 2>/dev/null || pg_ctlcluster "$pg_major" main start
  fi
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi

# The status page is tested as a person sees it, in headless Chromium (Debian's package).
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  apt_install chromium || echo "bootstrap: without chromium the status page tests are skipped (CI fails them)" >&2
fi

# MariaDB for the MySQL-source tests: 127.0.0.1:3306, root without a password, unless DATABRIDGE_TEST_MYSQL_URL
# points elsewhere. Installed (apt, when root) and started if it is not running; a fresh Debian install
# authenticates root by unix socket only, so TCP root login without a password is allowed as well (tests only).
mysql_up() { mariadb-admin -h 127.0.0.1 -P 3306 -u root status >/dev/null 2>&1; }
if [ -z "${DATABRIDGE_TEST_MYSQL_URL:-}" ] && ! mysql_up; then
  if [ ! -x /usr/sbin/mariadbd ]; then
    apt_install mariadb-server mariadb-client
  fi
  if [ "$(id -u)" = 0 ]; then
    install -d -o mysql -g mysql /run/mysqld
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql --bind-address=127.0.0.1 --port=3306
    for _ in $(seq 1 30); do mariadb-admin -u root status >/dev/null 2>&1 && break; sleep 1; done
    mysql_up || mariadb -u root -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION" >/dev/null 2>&1 || true
  fi
  mysql_up || echo "bootstrap: MariaDB is not reachable on 127.0.0.1:3306; the MySQL-source tests will fail" >&2
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import databridge_luigi, pytest, moto, werkzeug" >/dev/null 2>&1 || [ setup.py -nt .venv/.installed ] \
    || [ deploy/constraints-test.txt -nt .venv/.installed ]; then
  # Pinned: the versions main was last tested with (deploy/constraints-test.txt), within setup.py's ranges.
  .venv/bin/pip install -q --disable-pip-version-check -c deploy/constraints-test.txt -e '.[test]'
  touch .venv/.installed
fi
