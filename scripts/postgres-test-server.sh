#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for tests and benchmarks (Debian's `postgresql` package).
#
#   scripts/postgres-test-server.sh install        install the package with apt-get when initdb is missing
#   scripts/postgres-test-server.sh start DIR [PORT]
#       initdb a fresh cluster in DIR (must not exist or be empty), start it on 127.0.0.1:PORT (default: a free
#       port), create database `autocompress`, print its URL: postgresql://autocompress@127.0.0.1:PORT/autocompress
#   scripts/postgres-test-server.sh stop DIR       stop the server and delete DIR
#
# PostgreSQL refuses to run as root: when run as root the cluster belongs to the `postgres` user (created by the
# package) or, failing that, `nobody`. Authentication is `trust` on loopback only; fsync is off. Never use this for
# real data.
set -euo pipefail

find_bin() {  # directory holding initdb/pg_ctl/postgres, or nothing
    if command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v initdb)")"
        return
    fi
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then
        echo "$d"
    fi
}

install() {
    if [ -n "$(find_bin)" ]; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            echo "postgres-test-server: PostgreSQL is not installed and installing it needs root" \
                 "(apt-get install postgresql); the PostgreSQL tests will be skipped" >&2
            return 0
        fi
    fi
    echo "postgres-test-server: installing PostgreSQL (apt-get install postgresql)" >&2
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    # Debian starts a system cluster on install; tests use their own, so leave it alone.
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

as_owner() {  # run a command as the cluster's owner
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u "$OWNER" -- "$@"
    else
        "$@"
    fi
}

start() {
    local dir=${1:?usage: start DIR [PORT]} port=${2:-}
    local bin
    bin=$(find_bin)
    if [ -z "$bin" ]; then
        echo "postgres-test-server: initdb not found (run: $0 install)" >&2
        exit 3
    fi
    [ -n "$port" ] || port=$(free_port)
    mkdir -p "$dir"
    OWNER=$(id -un)
    if [ "$(id -u)" -eq 0 ]; then
        if id postgres >/dev/null 2>&1; then OWNER=postgres; else OWNER=nobody; fi
        chown "$OWNER" "$dir"
        chmod 700 "$dir"
    fi
    as_owner "$bin/initdb" -D "$dir/data" -U autocompress --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2; exit 1; }
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
        start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U autocompress autocompress || {
        as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1; exit 1; }
    echo "postgresql://autocompress@127.0.0.1:$port/autocompress"
}

stop() {
    local dir=${1:?usage: stop DIR}
    local bin
    bin=$(find_bin)
    OWNER=$(stat -c %U "$dir" 2>/dev/null || id -un)
    if [ -n "$bin" ] && [ -f "$dir/data/postmaster.pid" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

case "${1:-}" in
    install) install ;;
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    *) echo "usage: $0 install | start DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
