#!/usr/bin/env bash
# Sourced by tests/run.sh and simulators/demo.sh: make sure this checkout has what it
# needs on a fresh machine (Debian's mosquitto and lintian for the tests, a .venv with
# edgefleet installed with the given extras), and put the venv first on PATH.
# Usage: EXTRAS=dev source packaging/dev/bootstrap.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
extras="${EXTRAS:-dev}"

# Debian packages the caller asked for and this machine lacks: mosquitto for the broker
# tests (NEED_MOSQUITTO=1); lintian and systemd-analyze for the Debian package's tests
# (NEED_DEB=1; dpkg and dpkg-deb come with every Debian system).
apt_packages=()
if [[ "${NEED_MOSQUITTO:-0}" == 1 ]] && ! command -v mosquitto >/dev/null && [[ ! -x /usr/sbin/mosquitto ]]; then
    apt_packages+=(mosquitto)
fi
if [[ "${NEED_DEB:-0}" == 1 ]] && ! command -v lintian >/dev/null; then
    apt_packages+=(lintian)
fi
if [[ "${NEED_DEB:-0}" == 1 ]] && ! command -v systemd-analyze >/dev/null; then
    apt_packages+=(systemd)
fi
if [[ ${#apt_packages[@]} -gt 0 ]]; then
    echo "bootstrap: installing Debian packages ${apt_packages[*]}" >&2
    apt_prefix=()
    [[ $(id -u) -ne 0 ]] && apt_prefix=(sudo)
    "${apt_prefix[@]}" apt-get update -qq -o DPkg::Lock::Timeout=300
    DEBIAN_FRONTEND=noninteractive "${apt_prefix[@]}" apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${apt_packages[@]}" >/dev/null
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
