#!/usr/bin/env bash
# Sourced by tests/run.sh and simulators/demo.sh: make sure this checkout has what it
# needs on a fresh machine (Debian's mosquitto for the tests, a .venv with edgefleet
# installed with the given extras), and put the venv first on PATH.
# Usage: EXTRAS=dev source packaging/dev/bootstrap.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
extras="${EXTRAS:-dev}"

if [[ "${NEED_MOSQUITTO:-0}" == 1 ]] && ! command -v mosquitto >/dev/null && [[ ! -x /usr/sbin/mosquitto ]]; then
    echo "bootstrap: installing Debian package mosquitto" >&2
    apt_prefix=()
    [[ $(id -u) -ne 0 ]] && apt_prefix=(sudo)
    "${apt_prefix[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${apt_prefix[@]}" apt-get install -y -qq mosquitto >/dev/null
fi

venv="$root/.venv"
stamp="$venv/.edgefleet-$extras"
if [[ ! -x "$venv/bin/python" ]]; then
    echo "bootstrap: creating $venv" >&2
    python3 -m venv "$venv"
fi
if [[ ! -f "$stamp" || "$root/pyproject.toml" -nt "$stamp" ]]; then
    echo "bootstrap: installing edgefleet[$extras] into $venv" >&2
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    "$venv/bin/python" -m pip install -q -e "$root[$extras]" >&2
    touch "$stamp"
fi
export PATH="$venv/bin:$PATH"
