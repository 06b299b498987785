#!/usr/bin/env bash
# A three-node MariaDB Galera cluster on 127.0.0.1, for tests and benchmarks.
#
#   scripts/cluster.sh start          start (or complete) the cluster; print the SQL ports
#   scripts/cluster.sh stop           stop the nodes this script started (SIGTERM, wait)
#   scripts/cluster.sh kill N         SIGKILL node N (1..3)
#   scripts/cluster.sh restart N      start node N again (it rejoins by IST or SST), wait Synced
#   scripts/cluster.sh status         per node: running?, wsrep state, cluster size
#   scripts/cluster.sh ports          print the three SQL ports
#   scripts/cluster.sh wait-synced [N]  wait (bounded) for node N, or all three, to be Synced
#
# Only stdout carries results (the ports line, the status table); progress goes to stderr.
# Every node listens on 127.0.0.1 only; root@127.0.0.1 logs in over TCP without a password and
# database `test` exists, as for the standalone server of scripts/test.sh, e.g.
#   mysql+pymysql://root@127.0.0.1:3311/test
#
# Environment (use the same values for every command on one cluster):
#   DOWNSTREAM_CLUSTER_DIR          state dir: data, configs, logs, pids (/tmp/downstream-galera);
#                                   the mysql user must be able to reach it
#   DOWNSTREAM_CLUSTER_BASE_PORT    SQL port of node 1 (3311); node N listens on BASE + N - 1
#   DOWNSTREAM_CLUSTER_GALERA_PORT  group-communication port of node 1 (4571); node N uses
#                                   GALERA + N - 1, its IST receiver GALERA + 10 + N - 1 and its
#                                   SST (rsync) receiver GALERA + 20 + N - 1
#   DOWNSTREAM_CLUSTER_TIMEOUT      seconds to wait for a node to be Synced (120)
#
# The standalone MariaDB on 127.0.0.1:3306 (/etc/mysql/my.cnf, /var/lib/mysql, /run/mysqld) is
# never read nor touched: each node runs with --defaults-file=<state dir>/nodeN/my.cnf, and
# stop/kill only signal a pid recorded in the state dir whose command line is mariadbd with
# that very file.
#
# Restarting a cluster that was stopped: this script keeps the data and re-bootstraps (it does
# not wipe). The node whose grastate.dat says safe_to_bootstrap: 1 is bootstrapped (stop shuts
# node 1 down last, so after a clean stop that is node 1); when no node says so (every node was
# killed), the node with the highest seqno is chosen, the seqno of a crashed node being
# recovered with `mariadbd --wsrep-recover`, and it is marked safe_to_bootstrap. The other
# nodes then join it (IST when it still has the write-sets, else an rsync SST). To start from
# scratch instead: `scripts/cluster.sh stop && rm -rf "$DOWNSTREAM_CLUSTER_DIR"`.
set -euo pipefail

STATE_DIR="$(realpath -m "${DOWNSTREAM_CLUSTER_DIR:-/tmp/downstream-galera}")"
BASE_PORT="${DOWNSTREAM_CLUSTER_BASE_PORT:-3311}"
GALERA_PORT="${DOWNSTREAM_CLUSTER_GALERA_PORT:-4571}"
TIMEOUT="${DOWNSTREAM_CLUSTER_TIMEOUT:-120}"
NODES=(1 2 3)
CLUSTER_NAME=downstream-galera
MARIADBD=/usr/sbin/mariadbd

log() { printf 'cluster: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# -- layout ------------------------------------------------------------------------------------

sql_port() { echo $((BASE_PORT + $1 - 1)); }
gcomm_port() { echo $((GALERA_PORT + $1 - 1)); }
ist_port() { echo $((GALERA_PORT + 10 + $1 - 1)); }
sst_port() { echo $((GALERA_PORT + 20 + $1 - 1)); }
node_dir() { echo "$STATE_DIR/node$1"; }
cnf() { echo "$STATE_DIR/node$1/my.cnf"; }
datadir() { echo "$STATE_DIR/node$1/data"; }
sock() { echo "$STATE_DIR/node$1/mysqld.sock"; }
pidfile() { echo "$STATE_DIR/node$1/launcher.pid"; } # written by start-stop-daemon, as root
errlog() { echo "$STATE_DIR/node$1/error.log"; }

all_ports() {
    local n out=()
    for n in "${NODES[@]}"; do out+=("$(sql_port "$n")"); done
    echo "${out[*]}"
}

check_node_arg() {
    case "${1:-}" in
    1 | 2 | 3) ;;
    *) die "node must be 1, 2 or 3, not '${1:-}'" ;;
    esac
}

run_user() {
    if [ "$(id -u)" -eq 0 ]; then echo mysql; else id -un; fi
}

# -- processes ---------------------------------------------------------------------------------

# The pid of node N when it runs: the recorded pid, alive, and a mariadbd started with this
# node's config. Anything else (no file, stale pid, a reused pid) counts as "not running".
node_pid() {
    local file pid cmdline
    file="$(pidfile "$1")"
    [ -r "$file" ] || return 1
    pid="$(cat "$file" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    case "$cmdline" in
    *mariadbd*"--defaults-file=$(cnf "$1") "*) echo "$pid" ;;
    *) return 1 ;;
    esac
}

node_running() { node_pid "$1" >/dev/null; }

# SQL on node N through its Unix socket as the system's root (unix_socket authentication works
# before any grant is made); tab-separated, no headers.
node_sql() {
    local n="$1"
    shift
    mariadb --no-defaults --protocol=socket -S "$(sock "$n")" -uroot --connect-timeout=2 \
        -N -B "$@"
}

# "state size cluster_status" of node N, e.g. "Synced 3 Primary"; fails when it does not answer.
node_wsrep() {
    local out
    out="$(node_sql "$1" -e "SELECT
        (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS
          WHERE VARIABLE_NAME = 'WSREP_LOCAL_STATE_COMMENT'),
        (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS
          WHERE VARIABLE_NAME = 'WSREP_CLUSTER_SIZE'),
        (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS
          WHERE VARIABLE_NAME = 'WSREP_CLUSTER_STATUS')" 2>/dev/null)" || return 1
    [ -n "$out" ] || return 1
    # shellcheck disable=SC2086
    echo $out
}

node_synced() {
    local state size status
    read -r state size status < <(node_wsrep "$1") || return 1
    [ "$state" = Synced ] && [ "$status" = Primary ] &&
        { [ -z "${2:-}" ] || [ "$size" = "$2" ]; }
}

# Some running node that is Synced in the Primary component, or failure.
primary_node() {
    local n
    for n in "${NODES[@]}"; do
        if node_running "$n" && node_synced "$n"; then
            echo "$n"
            return 0
        fi
    done
    return 1
}

cluster_up() {
    local n
    for n in "${NODES[@]}"; do
        node_running "$n" && node_synced "$n" 3 || return 1
    done
}

# Wait until node N is Synced (and, with a second argument, the cluster has that size); fails
# early when its mariadbd exits, showing the end of its error log.
wait_node() {
    local n="$1" size="${2:-}" deadline
    deadline=$((SECONDS + TIMEOUT))
    until node_synced "$n" "$size"; do
        if ! node_running "$n"; then
            log "node $n (port $(sql_port "$n")) is not running; the end of $(errlog "$n"):"
            tail -n 25 "$(errlog "$n")" >&2 2>/dev/null || true
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "node $n is not Synced${size:+ in a cluster of $size} after $TIMEOUT s:" \
                "$(node_wsrep "$n" || echo 'not answering')"
            return 1
        fi
        sleep 0.3
    done
}

# Before a node joins: wait (at most 30 s) until the Primary component has let go of members
# that no longer run (a node killed a moment ago stays a member until it is suspected, a few
# seconds); a new incarnation joining meanwhile was seen to take 10 s longer.
wait_stale_members_gone() {
    local primary="$1" m running=0 state size status deadline logged=""
    for m in "${NODES[@]}"; do node_running "$m" && running=$((running + 1)); done
    deadline=$((SECONDS + 30))
    while read -r state size status < <(node_wsrep "$primary") && [ "$size" -gt "$running" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "the cluster still counts $size members, $running running; going on"
            return 0
        fi
        if [ -z "$logged" ]; then
            log "waiting for the cluster to drop the stopped node(s)"
            logged=1
        fi
        sleep 0.3
    done
}

# -- packages and data -------------------------------------------------------------------------

provider_path() {
    local path
    path="$(dpkg -L galera-4 2>/dev/null | grep -m1 '/libgalera_smm\.so$' || true)"
    for path in "$path" /usr/lib/galera/libgalera_smm.so /usr/lib/libgalera_smm.so; do
        if [ -n "$path" ] && [ -f "$path" ]; then
            echo "$path"
            return 0
        fi
    done
    return 1
}

ensure_packages() {
    local missing=()
    [ -x "$MARIADBD" ] || missing+=(mariadb-server)
    command -v mariadb >/dev/null 2>&1 || missing+=(mariadb-client)
    provider_path >/dev/null || missing+=(galera-4)
    command -v rsync >/dev/null 2>&1 || missing+=(rsync)
    [ "${#missing[@]}" -eq 0 ] && return 0
    log "installing ${missing[*]}"
    as_root apt-get update -q >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
    provider_path >/dev/null || die "galera-4 is installed but libgalera_smm.so was not found"
}

# One config per node; rewritten at each start of the node, so the environment's ports apply.
write_cnf() {
    local n="$1" provider cluster_address="gcomm://" m sep=""
    provider="$(provider_path)"
    for m in "${NODES[@]}"; do
        cluster_address+="${sep}127.0.0.1:$(gcomm_port "$m")"
        sep=,
    done
    cat >"$(cnf "$n")" <<EOF
# Written by scripts/cluster.sh; rewritten whenever the node is started.
[mysqld]
user                       = $(run_user)
datadir                    = $(datadir "$n")
socket                     = $(sock "$n")
pid-file                   = $(node_dir "$n")/mariadbd.pid
log-error                  = $(errlog "$n")
port                       = $(sql_port "$n")
bind-address               = 127.0.0.1
skip-name-resolve
character-set-server       = utf8mb4
collation-server           = utf8mb4_general_ci
max_connections            = 500

binlog_format              = ROW
default_storage_engine     = InnoDB
innodb_autoinc_lock_mode   = 2
innodb_buffer_pool_size    = 256M

wsrep_on                   = ON
wsrep_provider             = $provider
wsrep_cluster_name         = $CLUSTER_NAME
wsrep_cluster_address      = $cluster_address
wsrep_node_name            = node$n
wsrep_node_address         = 127.0.0.1:$(gcomm_port "$n")
wsrep_node_incoming_address = 127.0.0.1:$(sql_port "$n")
wsrep_sst_method           = rsync
wsrep_sst_receive_address  = 127.0.0.1:$(sst_port "$n")
wsrep_slave_threads        = 4
# Loopback only, so shorter failure detection than the defaults (suspect 5 s, inactive 15 s):
# a killed node leaves the component within a few seconds.
wsrep_provider_options     = "gmcast.listen_addr=tcp://127.0.0.1:$(gcomm_port "$n");ist.recv_addr=127.0.0.1:$(ist_port "$n");gcache.size=256M;pc.recovery=TRUE;evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S;evs.install_timeout=PT6S"

[sst]
# rsync SST: nothing else to configure.
EOF
}

# mariadb-install-db into node N's data dir (system tables; root@localhost by unix_socket).
init_node() {
    local n="$1" user
    user="$(run_user)"
    rm -rf "$(datadir "$n")"
    mkdir -p "$(datadir "$n")"
    chown -R "$user:" "$(node_dir "$n")"
    if ! mariadb-install-db --no-defaults --datadir="$(datadir "$n")" --user="$user" \
        --auth-root-authentication-method=socket --skip-test-db --skip-name-resolve \
        >"$(node_dir "$n")/install-db.log" 2>&1; then
        cat "$(node_dir "$n")/install-db.log" >&2
        die "mariadb-install-db failed for node $n"
    fi
}

# "seqno safe_to_bootstrap uuid" from node N's grastate.dat (seqno -1: unknown / crashed).
grastate() {
    local file seqno=-1 safe=0 uuid=""
    file="$(datadir "$1")/grastate.dat"
    if [ -r "$file" ]; then
        seqno="$(awk '$1 == "seqno:" { print $2 }' "$file")"
        safe="$(awk '$1 == "safe_to_bootstrap:" { print $2 }' "$file")"
        uuid="$(awk '$1 == "uuid:" { print $2 }' "$file")"
    fi
    echo "${seqno:--1} ${safe:-0} ${uuid:-none}"
}

# The seqno node N reached, from InnoDB, after a crash left grastate.dat at -1.
recover_seqno() {
    local n="$1" out pos
    out="$(node_dir "$n")/wsrep-recover.log"
    rm -f "$out"
    "$MARIADBD" --defaults-file="$(cnf "$n")" --wsrep-recover --log-error="$out" \
        >/dev/null 2>&1 || true
    pos="$(grep -o 'Recovered position: [^ ]*' "$out" 2>/dev/null | tail -n 1 |
        sed 's/^Recovered position: //')" || true
    case "$pos" in
    *:*) echo "${pos##*:}" ;;
    *) echo -1 ;;
    esac
}

# Choose the node to bootstrap from when no node runs, and mark it safe_to_bootstrap.
choose_bootstrap_node() {
    local n seqno safe uuid best="" best_seqno=-2
    for n in "${NODES[@]}"; do
        read -r seqno safe uuid < <(grastate "$n")
        if [ "$safe" = 1 ]; then
            echo "$n"
            return 0
        fi
    done
    for n in "${NODES[@]}"; do
        read -r seqno safe uuid < <(grastate "$n")
        if [ "$seqno" = -1 ] && [ "$uuid" != none ]; then
            log "node $n did not stop cleanly; recovering its position (mariadbd --wsrep-recover)"
            seqno="$(recover_seqno "$n")"
            log "node $n reached seqno $seqno"
        fi
        if [ "$seqno" -gt "$best_seqno" ]; then
            best="$n"
            best_seqno="$seqno"
        fi
    done
    [ -n "$best" ] || return 1
    if [ -f "$(datadir "$best")/grastate.dat" ]; then
        sed -i 's/^safe_to_bootstrap:.*/safe_to_bootstrap: 1/' "$(datadir "$best")/grastate.dat"
    fi
    echo "$best"
}

# -- starting and stopping nodes ---------------------------------------------------------------

port_taken() {
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

launch_node() {
    local n="$1" bootstrap="${2:-}" port args
    port="$(sql_port "$n")"
    if port_taken "$port"; then
        die "port $port (node $n) is taken by another process; see ss -ltnp 'sport = :$port'"
    fi
    write_cnf "$n"
    rm -f "$(pidfile "$n")"
    args=(--defaults-file="$(cnf "$n")")
    if [ -n "$bootstrap" ]; then args+=(--wsrep-new-cluster); fi
    log "starting node $n on port $port${bootstrap:+ (bootstrapping the cluster)}"
    start-stop-daemon --start --background --make-pidfile --pidfile "$(pidfile "$n")" \
        --output "$(node_dir "$n")/stdout.log" --exec "$MARIADBD" -- "${args[@]}"
    # start-stop-daemon has forked; its child execs mariadbd with the same pid shortly.
    local waited=0
    until node_running "$n"; do
        if [ "$waited" -ge 50 ]; then
            die "node $n did not start; see $(errlog "$n") and $(node_dir "$n")/stdout.log"
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}

# SIGTERM and wait; a node that has not exited after TIMEOUT s is killed.
stop_node() {
    local n="$1" pid deadline
    pid="$(node_pid "$n")" || return 0
    log "stopping node $n (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "node $n did not stop within $TIMEOUT s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 0.2
    done
    rm -f "$(pidfile "$n")"
}

kill_node() {
    local n="$1" pid
    pid="$(node_pid "$n")" || {
        log "node $n is not running"
        return 0
    }
    log "SIGKILL node $n (pid $pid)"
    kill -KILL "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    rm -f "$(pidfile "$n")"
}

# root@127.0.0.1 without a password and database `test`, made on node N (CREATE USER, GRANT and
# CREATE DATABASE replicate through Galera).
ensure_access() {
    node_sql "$1" <<'SQL'
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS `test` CHARACTER SET utf8mb4;
SQL
}

# ... and usable over TCP on every node.
check_access() {
    local m deadline
    for m in "${NODES[@]}"; do
        deadline=$((SECONDS + 30))
        until mariadb --no-defaults --protocol=tcp -h127.0.0.1 -P"$(sql_port "$m")" -uroot \
            --connect-timeout=2 -N -B test -e 'SELECT 1' >/dev/null 2>&1; do
            [ "$SECONDS" -lt "$deadline" ] ||
                die "root@127.0.0.1 cannot log in to database test on port $(sql_port "$m")"
            sleep 0.3
        done
    done
}

lock_state() {
    exec 9>"$STATE_DIR/.lock"
    flock -w "$((TIMEOUT * 3))" 9 || die "another cluster.sh holds $STATE_DIR/.lock"
}

# -- commands ----------------------------------------------------------------------------------

cmd_start() {
    local n started=$SECONDS boot="" to_start=() fresh=""
    if cluster_up 2>/dev/null; then
        all_ports
        return 0
    fi
    ensure_packages
    mkdir -p "$STATE_DIR"
    chmod 755 "$STATE_DIR"
    lock_state
    if cluster_up; then # another start finished while we waited for the lock
        all_ports
        return 0
    fi
    for n in "${NODES[@]}"; do
        mkdir -p "$(node_dir "$n")"
        chown "$(run_user):" "$(node_dir "$n")"
    done
    if [ "$(id -u)" -eq 0 ] && ! runuser -u mysql -- test -w "$(node_dir 1)"; then
        die "user mysql cannot write $(node_dir 1); choose a DOWNSTREAM_CLUSTER_DIR it can reach"
    fi

    if boot="$(primary_node)"; then
        log "node $boot is up in the Primary component; starting the missing nodes"
        wait_stale_members_gone "$boot"
    else
        for n in "${NODES[@]}"; do
            if node_running "$n"; then
                die "node $n runs but no node is Synced in a Primary component;" \
                    "run '$0 stop' then '$0 start'"
            fi
        done
        if [ ! -d "$(datadir 1)/mysql" ] && [ ! -d "$(datadir 2)/mysql" ] &&
            [ ! -d "$(datadir 3)/mysql" ]; then
            fresh=1
            log "initialising three data dirs under $STATE_DIR"
            # One after the other (under a second each): concurrent runs of mariadb-install-db
            # here failed with "Unknown table 'mysql.tmp_user_sys'".
            for n in "${NODES[@]}"; do init_node "$n"; done
            boot=1
        else
            # A node without data (never initialised) gets it; joining replaces it by SST.
            for n in "${NODES[@]}"; do
                [ -d "$(datadir "$n")/mysql" ] || init_node "$n"
                write_cnf "$n"
            done
            boot="$(choose_bootstrap_node)" || die "found no node to bootstrap from"
            log "re-bootstrapping from node $boot (grastate: $(grastate "$boot"))"
            # Explicit bootstrap: saved primary-component views are not needed.
            for n in "${NODES[@]}"; do rm -f "$(datadir "$n")/gvwstate.dat"; done
        fi
        launch_node "$boot" bootstrap
        wait_node "$boot"
        ensure_access "$boot"
    fi

    for n in "${NODES[@]}"; do
        node_running "$n" || to_start+=("$n")
    done
    # Joiners one at a time: started together, they were seen to spend several seconds
    # re-forming the group membership (evs timeouts) before either could join.
    for n in "${to_start[@]}"; do
        launch_node "$n"
        wait_node "$n"
    done
    for n in "${NODES[@]}"; do wait_node "$n" 3; done
    ensure_access "$boot"
    check_access
    log "cluster Synced, 3 nodes, in $((SECONDS - started)) s${fresh:+ (fresh data dirs)}"
    all_ports
}

cmd_stop() {
    local n i running=()
    [ -d "$STATE_DIR" ] || return 0
    lock_state
    for n in "${NODES[@]}"; do node_running "$n" && running+=("$n"); done
    [ "${#running[@]}" -gt 0 ] || {
        log "no node is running"
        return 0
    }
    # One at a time, the last running node last: nodes leaving together were seen to leave the
    # remaining one in a non-primary component, so that no grastate.dat said
    # safe_to_bootstrap: 1. Stopped one by one, the lowest-numbered running node is the last
    # member of the component, and its grastate.dat says safe_to_bootstrap: 1 for the next start.
    for ((i = ${#running[@]} - 1; i >= 0; i--)); do
        stop_node "${running[i]}"
    done
    log "stopped"
}

cmd_kill() {
    check_node_arg "${1:-}"
    [ -d "$STATE_DIR" ] || die "no cluster in $STATE_DIR"
    lock_state
    kill_node "$1"
}

cmd_restart() {
    local n="${1:-}" donor
    check_node_arg "$n"
    [ -d "$(datadir "$n")" ] || die "no cluster in $STATE_DIR; run '$0 start'"
    lock_state
    if ! node_running "$n"; then
        donor="$(primary_node)" || die "no other node is up in a Primary component; run '$0 start'"
        log "node $n rejoins (node $donor is Synced)"
        wait_stale_members_gone "$donor"
        launch_node "$n"
    fi
    wait_node "$n"
    log "node $n Synced: $(node_wsrep "$n")"
}

cmd_status() {
    local n pid state size status rc=0
    printf '%-6s %-6s %-8s %-8s %-10s %-5s %s\n' node port pid running state size component
    for n in "${NODES[@]}"; do
        if pid="$(node_pid "$n")"; then
            if read -r state size status < <(node_wsrep "$n"); then :; else
                state="(not answering)" size=- status=-
            fi
            printf '%-6s %-6s %-8s %-8s %-10s %-5s %s\n' "node$n" "$(sql_port "$n")" "$pid" \
                yes "$state" "$size" "$status"
            [ "$state" = Synced ] && [ "$size" = 3 ] || rc=3
        else
            printf '%-6s %-6s %-8s %-8s %-10s %-5s %s\n' "node$n" "$(sql_port "$n")" - no - - -
            rc=3
        fi
    done
    return "$rc"
}

cmd_wait_synced() {
    local n
    if [ -n "${1:-}" ]; then
        check_node_arg "$1"
        wait_node "$1"
    else
        for n in "${NODES[@]}"; do wait_node "$n" 3; done
    fi
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
kill) cmd_kill "${2:-}" ;;
restart) cmd_restart "${2:-}" ;;
status) cmd_status ;;
ports) all_ports ;;
wait-synced) cmd_wait_synced "${2:-}" ;;
*) usage ;;
esac
