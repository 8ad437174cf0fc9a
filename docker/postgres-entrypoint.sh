#!/bin/sh
# The stand-in postgres image's entrypoint (docker/postgres.Dockerfile): on an empty PGDATA,
# a new cluster whose superuser POSTGRES_USER has POSTGRES_PASSWORD, and a database
# POSTGRES_DB; then the server, listening on every address with password authentication.
# The setup resumes where it stopped if the container died half-way (a marker file is
# written last).
set -eu
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
user="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-$user}"
marker="$PGDATA/.stand-in-initialized"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    password_file="$(mktemp)"
    printf '%s' "$POSTGRES_PASSWORD" > "$password_file"
    initdb -D "$PGDATA" --username="$user" --pwfile="$password_file" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
fi
if [ ! -e "$marker" ]; then
    # Local socket only while the database is made: nobody else can connect yet.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    # psql quotes the name (:'name' as a literal, :"name" as an identifier) from stdin.
    exists="$(echo "SELECT 1 FROM pg_database WHERE datname = :'name'" \
        | psql -tA --username="$user" --dbname=postgres -v name="$database")"
    if [ "$exists" != "1" ]; then
        echo 'CREATE DATABASE :"name"' \
            | psql -v ON_ERROR_STOP=1 --username="$user" --dbname=postgres -v name="$database"
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop
    touch "$marker"
fi

if [ "${1:-}" = "postgres" ]; then
    shift
    exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec "$@"
