#!/bin/sh
# Install the gateway's runtime dependencies into the image's virtual environment
# (/opt/medrega-gateway); run by deploy/Dockerfile before the gateway itself, so that this layer
# is reused while they do not change.
#   - deploy/wheelhouse/ holds wheels (scripts/make-wheelhouse.sh): all of them, with no index;
#   - else pyproject.toml's runtime dependencies at requirements.txt's versions, from PyPI
#     (/tmp/requirements: written by deploy/runtime_requirements.py).
set -eu
PIP="/opt/medrega-gateway/bin/pip --disable-pip-version-check --no-cache-dir"
# A CA bundle given with --build-arg CA_BUNDLE (TLS-intercepting proxies); empty: pip's own list.
if [ -s /tmp/ca-bundle.pem ]; then
  export PIP_CERT=/tmp/ca-bundle.pem
fi
if ls /tmp/wheelhouse/*.whl >/dev/null 2>&1; then
  $PIP install --no-index --find-links /tmp/wheelhouse /tmp/wheelhouse/*.whl
else
  $PIP install -r /tmp/requirements/runtime.txt -c /tmp/requirements/constraints.txt
fi
rm -rf /tmp/wheelhouse /tmp/requirements
