#!/usr/bin/env bash
# The project's test command:  bash scripts/test.sh [pytest arguments...]
#
# On a fresh machine it
#   1. creates .venv (python3.11, else python3) when missing and installs the package with
#      its test extras;
#   2. makes sure MariaDB is installed (apt-get), running and answering on 127.0.0.1:3306,
#      that root may log in there without a password, and that database `test` exists;
#   3. builds (once, then cached) the real farmer client downstream-farmer 0.1.8 from PyPI
#      with scripts/real_farmer.sh, for tests/system/test_real_farmer.py (installs the
#      `patch` and `unzip` tools it needs when missing);
#   4. starts the three-node MariaDB Galera cluster of scripts/cluster.sh (installing galera-4
#      and rsync when missing) unless it runs already, and stops it at the end if it started it;
#   5. runs ruff, then pytest with DOWNSTREAM_TEST_MYSQL_URL set, so that every database test
#      runs on SQLite and on MariaDB (an unreachable server fails the run, never skips), and
#      DOWNSTREAM_TEST_GALERA_PORTS set, so that tests/system/test_galera.py runs on the
#      cluster (unset or unreachable fails those tests, never skips).
#
# DOWNSTREAM_TEST_MYSQL_URL given explicitly and pointing at another server skips step 2:
# that server is used as it is. DOWNSTREAM_TEST_GALERA_PORTS given explicitly (e.g.
# 3311,3312,3313) skips step 3: that cluster is used as it is.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEFAULT_MYSQL_URL="mysql+pymysql://root@127.0.0.1/test"
export DOWNSTREAM_TEST_MYSQL_URL="${DOWNSTREAM_TEST_MYSQL_URL:-$DEFAULT_MYSQL_URL}"
PY=.venv/bin/python

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# -- 1. the virtual environment ---------------------------------------------------------------

ensure_venv() {
    if [ ! -x "$PY" ]; then
        log "creating .venv"
        local python=python3
        if command -v python3.11 >/dev/null 2>&1 && python3.11 -V >/dev/null 2>&1; then
            python=python3.11
        fi
        if ! "$python" -m venv .venv; then
            log "venv failed; installing python3-venv"
            rm -rf .venv
            as_root apt-get update -q
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
            "$python" -m venv .venv
        fi
    fi
    log "installing downstream-node with its test extras"
    "$PY" -m pip install -q -e '.[test]'
}

# -- 2. MariaDB --------------------------------------------------------------------------------

# Log in with DOWNSTREAM_TEST_MYSQL_URL and make sure its database exists; quiet on success.
database_ready() {
    "$PY" - "$@" <<'PYTHON'
import os, sys
import pymysql
import sqlalchemy as sa

url = sa.make_url(os.environ["DOWNSTREAM_TEST_MYSQL_URL"])
try:
    conn = pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        connect_timeout=3,
    )
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS `{url.database}` CHARACTER SET utf8mb4")
    conn.close()
except Exception as exc:
    if "--quiet" not in sys.argv:
        print(f"cannot use {url.render_as_string(hide_password=True)}: {exc}", file=sys.stderr)
    sys.exit(1)
PYTHON
}

find_server() {
    local candidate
    for candidate in "$(command -v mariadbd || true)" "$(command -v mysqld || true)" \
        /usr/sbin/mariadbd /usr/sbin/mysqld; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# Answers at all (mysqladmin ping succeeds even when the login is refused). Over the socket
# first: a fresh server may refuse 127.0.0.1 with an error that ping counts as "down".
server_alive() {
    mysqladmin -uroot --connect-timeout=2 ping >/dev/null 2>&1 ||
        mysqladmin --protocol=tcp -h127.0.0.1 -P3306 -uroot --connect-timeout=2 ping \
            >/dev/null 2>&1
}

ensure_mariadb() {
    if database_ready --quiet; then
        return 0
    fi
    local server
    if ! server="$(find_server)" || ! command -v mysqladmin >/dev/null 2>&1; then
        log "installing MariaDB"
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q mariadb-server
        server="$(find_server)"
    fi
    if ! server_alive; then
        log "starting MariaDB ($server)"
        if [ ! -d /var/lib/mysql/mysql ]; then
            as_root "$(command -v mariadb-install-db || command -v mysql_install_db)" \
                --user=mysql --datadir=/var/lib/mysql >/dev/null
        fi
        as_root mkdir -p /run/mysqld
        as_root chown mysql:mysql /run/mysqld
        as_root start-stop-daemon --start --oknodo --background --exec "$server" -- --user=mysql
        local waited=0
        until server_alive; do
            if [ "$waited" -ge 60 ]; then
                log "MariaDB did not answer on 127.0.0.1:3306 within 60 s"
                return 1
            fi
            sleep 1
            waited=$((waited + 1))
        done
    fi
    if database_ready --quiet; then
        return 0
    fi
    # A fresh Debian install lets root in only through the Unix socket, as the system's root.
    log "letting MariaDB's root log in on 127.0.0.1 without a password (a test server)"
    as_root mysql -uroot <<'SQL'
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
ALTER USER 'root'@'127.0.0.1' IDENTIFIED BY '';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
SQL
    if ! database_ready --quiet; then
        # Without skip-name-resolve, 127.0.0.1 may be matched as root@localhost instead.
        as_root mysql -uroot -e "ALTER USER 'root'@'localhost' IDENTIFIED VIA unix_socket \
            OR mysql_native_password USING PASSWORD('')"
    fi
    database_ready
}

# -- 3. the real farmer client ------------------------------------------------------------------

ensure_real_farmer() {
    if ! command -v patch >/dev/null 2>&1 || ! command -v unzip >/dev/null 2>&1; then
        log "installing patch and unzip (to build the real farmer client)"
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q patch unzip
    fi
    log "the real farmer client, downstream-farmer 0.1.8 (built once, then cached)"
    # Python 3.11, on which its patches were made, where there is one.
    local python
    python="$(command -v python3.11 || command -v python3)"
    PYTHON="${PYTHON:-$python}" bash scripts/real_farmer.sh >/dev/null
}

# -- 4. lint and test --------------------------------------------------------------------------

ensure_venv
if [ "$DOWNSTREAM_TEST_MYSQL_URL" = "$DEFAULT_MYSQL_URL" ]; then
    ensure_mariadb
    log "MariaDB ready at $DEFAULT_MYSQL_URL"
else
    log "using the server in DOWNSTREAM_TEST_MYSQL_URL as it is"
fi

ensure_real_farmer
if [ -z "${DOWNSTREAM_TEST_GALERA_PORTS:-}" ]; then
    if ! bash scripts/cluster.sh status >/dev/null 2>&1; then
        log "starting the Galera cluster (scripts/cluster.sh start)"
        trap 'log "stopping the Galera cluster"; bash scripts/cluster.sh stop || true' EXIT
    fi
    ports="$(bash scripts/cluster.sh start)"
    export DOWNSTREAM_TEST_GALERA_PORTS="${ports// /,}"
    log "Galera cluster ready on ports $DOWNSTREAM_TEST_GALERA_PORTS"
else
    log "using the cluster in DOWNSTREAM_TEST_GALERA_PORTS as it is"
fi

log "ruff check"
.venv/bin/ruff check downstream_node tests scripts

log "pytest on SQLite, MariaDB and the Galera cluster"
.venv/bin/pytest -q "$@"
