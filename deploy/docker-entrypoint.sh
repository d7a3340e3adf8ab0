#!/bin/sh
# Container entry point of cxr-triage-node.
#
# Applies the database migrations (`triage-node db upgrade`) before the long-running
# subcommands `scp`, `worker` and `api`, then replaces itself with
# `triage-node "$@"`, so that triage-node is PID 1 and receives SIGTERM directly.
#
# - `serve` migrates itself; `db` and `config` need no migration first.
# - Alembic's upgrade is idempotent: at head it does nothing. Containers that start
#   together may race on the first migration of an empty PostgreSQL database; the
#   loser fails and is retried here (MIGRATE_ATTEMPTS times, growing pauses), by
#   which time the winner has finished. The compose file also runs a one-shot
#   `migrate` service first.
# - Anything that is not a triage-node subcommand or option (for example `sh`) is
#   run as given, without migrating.
#
# Environment (deliberately not TRIAGE_*: the node refuses unknown TRIAGE_ variables):
#   MIGRATE_ON_START   1 (default) to migrate before scp/worker/api, 0 to skip
#   MIGRATE_ATTEMPTS   attempts before giving up (default 10)
set -eu

case "${1:-}" in
    "" | serve | scp | worker | api | db | config | --config | --config=* | --verbose | -h | --help) ;;
    *) exec "$@" ;;
esac

# The subcommand and the --config value, skipping the global options before it.
subcommand=""
config_file=""
expect_config=0
for arg in "$@"; do
    if [ "$expect_config" = 1 ]; then
        config_file=$arg
        expect_config=0
        continue
    fi
    case "$arg" in
        --config) expect_config=1 ;;
        --config=*) config_file=${arg#--config=} ;;
        -*) ;;
        *)
            subcommand=$arg
            break
            ;;
    esac
done

migrate() {
    if [ -n "$config_file" ]; then
        triage-node --config "$config_file" db upgrade
    else
        triage-node db upgrade
    fi
}

case "$subcommand" in
    scp | worker | api)
        if [ "${MIGRATE_ON_START:-1}" != 0 ]; then
            attempts=${MIGRATE_ATTEMPTS:-10}
            attempt=1
            until migrate; do
                if [ "$attempt" -ge "$attempts" ]; then
                    echo "triage-entrypoint: database migration failed $attempt times, giving up" >&2
                    exit 1
                fi
                pause=$((attempt * 2))
                if [ "$pause" -gt 15 ]; then
                    pause=15
                fi
                echo "triage-entrypoint: migration attempt $attempt failed, retrying in ${pause}s" >&2
                sleep "$pause"
                attempt=$((attempt + 1))
            done
        fi
        ;;
    *) ;;
esac

exec triage-node "$@"
