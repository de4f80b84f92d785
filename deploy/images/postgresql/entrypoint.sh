#!/bin/sh
# Debian's PostgreSQL 15 in a container, with the environment contract of the official image:
# on the first start (empty $PGDATA) the cluster is initialised in UTF-8 (locale C.UTF-8) with
# superuser $POSTGRES_USER / $POSTGRES_PASSWORD and database $POSTGRES_DB; clients on the
# container network authenticate with scram-sha-256. Then the server runs as the postgres user.
# While the cluster is being made the server listens on its Unix socket only, so a health check
# over TCP (docker-compose.yml) succeeds only once it is ready for clients.
set -eu
BIN=/usr/lib/postgresql/15/bin
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
if [ "${1:-}" != postgres ]; then
  exec "$@"
fi
shift
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres "$PGDATA" /var/run/postgresql
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres-entrypoint: POSTGRES_PASSWORD is not set" >&2
    exit 1
  fi
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  chown postgres "$pwfile"
  as_postgres "$BIN/initdb" --pgdata="$PGDATA" --username="$POSTGRES_USER" --pwfile="$pwfile" \
    --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    as_postgres "$BIN/pg_ctl" --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait start
    # psql quotes the name (:"db") in its input, not in --command.
    echo 'CREATE DATABASE :"db";' | as_postgres psql --username="$POSTGRES_USER" --dbname=postgres \
      --set=ON_ERROR_STOP=1 --set=db="$POSTGRES_DB" --quiet
    as_postgres "$BIN/pg_ctl" --pgdata="$PGDATA" --mode=fast --wait stop
  fi
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups \
  "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*' "$@"
