#!/usr/bin/env bash
# The demo in one command on a fresh machine: installs edgefleet[demo] into .venv if
# needed, then runs `edgefleet demo` (embedded broker + fleet service + simulated
# devices). Arguments go to `edgefleet demo`, e.g. `simulators/demo.sh --devices 50`.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=demo source packaging/dev/bootstrap.sh
exec edgefleet demo "$@"
