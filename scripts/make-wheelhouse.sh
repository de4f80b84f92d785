#!/usr/bin/env bash
# Fill deploy/wheelhouse/ with the wheels of the gateway's runtime dependencies at the versions of
# requirements.txt, found the way this machine's pip finds them (its indexes, find-links and cache:
# on the development machines torch==2.13.0 is the CPU build that lies on disk). deploy/Dockerfile
# then installs them without asking any index, so the image builds without PyPI and with the same
# torch build as the host. Wheels are never committed (.gitignore); the folder is rebuilt only
# when the runtime requirements (deploy/runtime_requirements.py) changed since it was made.
set -euo pipefail
cd "$(dirname "$0")/.."
# The image runs Debian's Python (3.11.2): environment markers are evaluated for it, not for the
# venv's (redis, for one, needs async-timeout below 3.11.3).
PY=${PYTHON:-/usr/bin/python3}
OUT=deploy/wheelhouse
STAMP=$OUT/.made-from
"$PY" deploy/runtime_requirements.py pyproject.toml requirements.txt build/requirements
want=$(cat build/requirements/runtime.txt build/requirements/constraints.txt | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && ls "$OUT"/*.whl >/dev/null 2>&1; then
  echo "make-wheelhouse: $OUT is current"
  exit 0
fi
start=$(date +%s)
rm -f "$OUT"/*.whl "$STAMP"
"$PY" -m pip wheel --wheel-dir "$OUT" \
  -r build/requirements/runtime.txt -c build/requirements/constraints.txt > build/make-wheelhouse.log 2>&1 \
  || { tail -20 build/make-wheelhouse.log >&2; exit 1; }
echo "$want" > "$STAMP"
echo "make-wheelhouse: $(ls "$OUT"/*.whl | wc -l) wheels, $(du -sh "$OUT" | cut -f1), in $(( $(date +%s) - start )) s"
