#!/usr/bin/env bash
# The whole test suite: lint, types, tests. Works on a fresh machine; `.ci/run` calls it.
# Extra arguments go to pytest (e.g. `tests/run.sh -k outbox -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=dev NEED_MOSQUITTO=1 NEED_DEB=1 source packaging/dev/bootstrap.sh

# One command per line: under `set -e` a failure inside an `a && b` list does not stop
# the script, so a lint error would pass unnoticed.
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy -p edgefleet
echo "== pytest"
# The slowest tests are listed at the end: the suite should stay well under 20 minutes.
# Three workers (pytest-xdist): every test has its own broker, ports, database and
# directories, and most of the time is spent waiting, not computing. PYTEST_WORKERS=0
# runs everything in this process (e.g. to debug with -s or pdb).
pytest -q -p no:cacheprovider --durations=15 -n "${PYTEST_WORKERS:-3}" "$@"
