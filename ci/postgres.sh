#!/usr/bin/env bash
# A throwaway PostgreSQL server for the HPO tests that share one study between workers.
#   eval "$(bash ci/postgres.sh start)"   installs Debian's postgresql if missing, starts a
#                                         server on a free local port with its data in a temp
#                                         dir, and prints `export RIS_TEST_POSTGRES_URL=...` and
#                                         `export RIS_TEST_POSTGRES_DIR=...`
#   bash ci/postgres.sh stop DIR          stops that server and removes DIR
# Only the export lines go to stdout; progress goes to stderr.
set -euo pipefail

say() { echo "postgres.sh: $*" >&2; }

find_bin() {  # the directory holding initdb and pg_ctl, newest major version first
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && { echo "$dir"; return 0; }
    done
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 \
        && { dirname "$(command -v initdb)"; return 0; }
    return 1
}

as_owner() {  # initdb and postgres refuse to run as root: run them as the postgres user then
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start() {
    local bin
    if ! bin="$(find_bin)"; then
        if [ "$(id -u)" -ne 0 ]; then
            say "PostgreSQL is not installed and installing it needs root: apt-get install postgresql"
            exit 1
        fi
        say "installing Debian's postgresql package"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq postgresql >&2
        bin="$(find_bin)" || { say "postgresql installed but initdb/pg_ctl not found"; exit 1; }
    fi
    local dir port
    dir="$(mktemp -d "${TMPDIR:-/tmp}/ris-postgres.XXXXXX")"
    chmod 755 "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$dir"
    fi
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; say "initdb failed"; exit 1; }
    # listen on loopback only; the socket lives in the temp dir, not in /var/run/postgresql
    if ! as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=50 -c fsync=off" start >&2; then
        cat "$dir/server.log" >&2 || true
        say "the server did not start"
        exit 1
    fi
    say "server up on 127.0.0.1:$port (data in $dir/data)"
    echo "export RIS_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:$port/postgres"
    echo "export RIS_TEST_POSTGRES_DIR=$dir"
}

stop() {
    local dir="${1:?usage: ci/postgres.sh stop DIR}" bin
    [ -d "$dir/data" ] || { say "no server data in $dir"; exit 1; }
    bin="$(find_bin)"
    as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >&2 || true
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *) echo "usage: bash ci/postgres.sh start | stop DIR" >&2; exit 2 ;;
esac
