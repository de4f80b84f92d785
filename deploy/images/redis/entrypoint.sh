#!/bin/sh
# Run Debian's redis-server as the redis user, its files in /data (a volume), reachable from the
# other containers: without a configuration file Redis's protected mode would refuse them. The
# container network is the access boundary; no port of this service is published.
set -eu
if [ "${1:-}" = redis-server ]; then
  shift
  chown redis:redis /data
  exec setpriv --reuid=redis --regid=redis --init-groups \
    redis-server --dir /data --bind 0.0.0.0 --protected-mode no "$@"
fi
exec "$@"
