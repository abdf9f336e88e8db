#!/usr/bin/env bash
# Starts a PostgreSQL cluster for the tests of the PostgreSQL store, and prints on stdout the URL
# they take from BERTH_TEST_POSTGRES (postgres://postgres@127.0.0.1:PORT/postgres; trust
# authentication, so no password). Each test makes a database of its own on it and drops it.
# Messages go to stderr. Run as root; safe to run again: it installs Debian's postgresql only
# when missing, makes the cluster only once, and starts it only when it is not running.
#   ci/postgres-setup.sh DIR PORT
#
# There is no init system on the CI machines, so the cluster is started by hand, as the postgres
# user (PostgreSQL refuses root): its data in DIR/data, its log in DIR/postgres.log, its Unix
# socket in DIR, TCP on 127.0.0.1:PORT only. Stop it with
#   runuser -u postgres -- /usr/lib/postgresql/VERSION/bin/pg_ctl -D DIR/data stop
set -euo pipefail

log() { printf 'postgres-setup: %s\n' "$*" >&2; }

if [ "$#" -ne 2 ]; then
    log "usage: ci/postgres-setup.sh DIR PORT"
    exit 2
fi
case "$2" in
    '' | *[!0-9]*)
        log "PORT must be a number, not '$2'"
        exit 2
        ;;
esac
PORT=$2
# Absolute: the server is told where its socket goes, and the postgres user runs elsewhere.
DIR=$(realpath -m "$1")
DATA=$DIR/data
URL="postgres://postgres@127.0.0.1:$PORT/postgres"

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (it installs packages and runs PostgreSQL as the postgres user)"
    exit 1
fi

"$(dirname "$0")/install-missing.sh" postgresql

# Debian puts each version's programs off PATH, in /usr/lib/postgresql/VERSION/bin: the newest.
BIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d | sort -V | tail -n 1)
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
    log "no initdb in /usr/lib/postgresql/*/bin after installing postgresql"
    exit 1
fi
if ! id postgres >/dev/null 2>&1; then
    log "no postgres user (Debian's postgresql package makes it)"
    exit 1
fi

# As postgres, in a directory that user may enter (ours may be under root's home).
as_postgres() { (cd "$DIR" && runuser -u postgres -- "$@"); }

mkdir -p "$DIR"
chown postgres:postgres "$DIR"
chmod 0755 "$DIR"

if [ ! -f "$DATA/PG_VERSION" ]; then
    log "initdb $DATA"
    # The C locale suits UTF8 whatever the machine's locale is.
    as_postgres "$BIN/initdb" -D "$DATA" -A trust -U postgres -E UTF8 --locale=C >&2
fi

if as_postgres "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    log "already running in $DATA"
else
    log "starting on 127.0.0.1:$PORT, socket in $DIR, log in $DIR/postgres.log"
    # max_connections: each daemon under test holds a pool, and tests run side by side.
    as_postgres "$BIN/pg_ctl" -D "$DATA" -l "$DIR/postgres.log" -w -t 60 \
        -o "-p $PORT -k '$DIR' -c listen_addresses=127.0.0.1 -c max_connections=300" \
        start >&2
fi

# A cluster left running by an earlier call on another port does not answer here: say so.
for _ in $(seq 1 60); do
    if "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U postgres; then
        printf '%s\n' "$URL"
        exit 0
    fi
    sleep 1
done
log "PostgreSQL does not answer at 127.0.0.1:$PORT within 60 s (is the cluster in $DATA running on another port?)"
"$BIN/pg_isready" -h 127.0.0.1 -p "$PORT" -U postgres >&2 || true
exit 1
