#!/bin/sh
# Run Debian's Orthanc as the orthanc user on the configuration folder it is given.
set -eu
if [ "${1:-}" = Orthanc ]; then
  chown -R orthanc:orthanc /var/lib/orthanc
  exec setpriv --reuid=orthanc --regid=orthanc --init-groups "$@"
fi
exec "$@"
