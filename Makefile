# The two commands of the README:
#   make demo   set up and run the whole path on embedded defaults (no server to install)
#   make test   set up and run every test (Redis and PostgreSQL on this machine, real DICOM peers)
.PHONY: setup demo test services bench

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/medrega-gateway demo

services:
	./scripts/services.sh

test: setup services
	.venv/bin/ruff check .
	.venv/bin/mypy
	TCP_NODELAY=1 .venv/bin/python -m pytest -p no:cacheprovider -q -ra --durations=15
