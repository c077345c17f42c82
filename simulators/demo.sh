#!/usr/bin/env bash
# The demo in one command on a fresh machine: installs edgefleet[demo] into .venv if
# needed, then runs `edgefleet demo` (embedded broker + fleet service + simulated
# devices). Arguments go to `edgefleet demo`, e.g. `simulators/demo.sh --devices 50`.
# With --identities the demo runs a real Mosquitto, so the Debian package comes too.
set -euo pipefail
cd "$(dirname "$0")/.."
NEED_MOSQUITTO=0
for arg in "$@"; do
    if [ "$arg" = "--identities" ]; then NEED_MOSQUITTO=1; fi
done
NEED_MOSQUITTO=$NEED_MOSQUITTO EXTRAS=demo source packaging/dev/bootstrap.sh
exec edgefleet demo "$@"
