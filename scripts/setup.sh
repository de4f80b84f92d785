#!/usr/bin/env bash
# Install everything medrega-gateway needs on a fresh Debian machine: the DICOM peers used by the
# tests (DCMTK, dicom3tools, Orthanc and its DICOMweb plugin), a CJK font, Chromium for the browser
# tests, Node.js with the viewers' npm packages pinned by their lock files (tests/viewers/*/: OHIF's
# SR code, OHIF's published build), Docker (docker.io, Debian's docker-compose, debootstrap for base
# images without a registry, Debian's pip for the image's wheelhouse: tests/deploy/), and a Python
# virtual environment with the pinned packages. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# wordnet-base, wordnet-sense-index: WordNet 3.0 for METEOR in `evaluate`, offline (evaluation/wordnet.py).
APT_PACKAGES=(dcmtk dicom3tools orthanc orthanc-dicomweb fonts-wqy-zenhei chromium docker-compose docker.io debootstrap python3-pip wordnet-base wordnet-sense-index)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# Node.js and npm run OHIF's own code in tests/viewers (any node >= 18 on PATH will do).
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! cmp -s requirements.txt .venv/.requirements.installed 2>/dev/null; then
  echo "setup: installing Python packages (pinned in requirements.txt)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  cp requirements.txt .venv/.requirements.installed
fi
.venv/bin/pip install -q --no-deps -e . >/dev/null 2>&1 || .venv/bin/pip install --no-deps -e .
# The viewers the tests run, exactly as their committed lock files say (tests/viewers/ohif: OHIF's
# SR code; tests/viewers/ohif-app: OHIF's published build, ~200 MB); never committed themselves
# (node_modules/ is ignored).
for lock in tests/viewers/*/package-lock.json; do
  dir=$(dirname "$lock")
  if ! cmp -s "$lock" "$dir/node_modules/.package-lock.installed" 2>/dev/null; then
    echo "setup: installing $dir (npm ci, pinned in $lock)"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$lock" "$dir/node_modules/.package-lock.installed"
  fi
done
echo "setup: done (.venv ready)"
