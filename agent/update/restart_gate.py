"""May a package upgrade restart the agent now? The persisted update phase decides.

A package upgrade replaces the agent's code under a running agent. Restarting it is how
the new code takes over, but a restart in the middle of a model update costs that update
work: a download starts its connection again, and a restart during probation restarts the
probation window and counts towards ``max_probation_restarts`` (which rolls a model back).
So the Debian package restarts the agent only while its update state is at rest
(`edgefleet.agent.update.machine.AT_REST`: idle, committed, rolled back, failed) and
otherwise defers the restart until the state file reaches rest (packaging/deb/).

The verdict reads only the ``phase`` field of ``update-state.json``, not the whole
`UpdateState`: the file was written by the agent that is running, which may be an older
version than the code judging it. Rules:

- no state file: nothing was ever updated, restart;
- a phase at rest: restart;
- a phase mid-update: defer;
- a phase this code does not know (a newer agent wrote it): defer, since a restart could
  interrupt something we cannot judge; the next write of the state is judged again;
- a file that is not JSON or has no ``phase``: restart, because the agent itself starts
  fresh from such a file (`UpdateRunner` logs it and resets), so there is no update in
  progress that a restart could lose.

Pure: `restart_verdict` takes the file's bytes (or None); `read_verdict` is the I/O shell.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgefleet.agent.update.machine import AT_REST
from edgefleet.agent.update.policy import Phase
from edgefleet.agent.update.wiring import STATE_FILE

# A phase name longer than this is no phase of ours; it is shortened in the reason.
_MAX_PHASE_CHARS = 40


@dataclass(frozen=True)
class RestartVerdict:
    """Whether to restart now (``restart``) or defer, and why, in one line."""

    restart: bool
    reason: str

    def line(self) -> str:
        """``restart: <reason>`` or ``defer: <reason>``, what the maintainer scripts read."""
        return f"{'restart' if self.restart else 'defer'}: {self.reason}"


def restart_verdict(state: bytes | None) -> RestartVerdict:
    """The verdict for the persisted update state ``state`` (None: there is no file)."""
    if state is None:
        return RestartVerdict(True, "no update state yet")
    try:
        document = json.loads(state)
    except ValueError:
        return RestartVerdict(True, "the update state is unreadable; the agent resets it")
    phase = document.get("phase") if isinstance(document, dict) else None
    if not isinstance(phase, str):
        return RestartVerdict(True, "the update state has no phase; the agent resets it")
    try:
        known = Phase(phase)
    except ValueError:
        shown = phase[:_MAX_PHASE_CHARS]
        return RestartVerdict(False, f"update phase {shown!r} is unknown to this version")
    target = document.get("target")
    what = ""
    if isinstance(target, dict) and {"name", "version"} <= target.keys():
        what = f" ({str(target['name'])[:64]} {str(target['version'])[:32]})"
    if known in AT_REST:
        return RestartVerdict(True, f"update phase {known.value}{what}")
    return RestartVerdict(False, f"update phase {known.value}{what} is mid-update")


def read_verdict(data_dir: Path) -> RestartVerdict:
    """The verdict for the agent whose ``data_dir`` is given.

    Raises:
        OSError: the state file exists but cannot be read (permissions, I/O).
    """
    try:
        state = (data_dir / STATE_FILE).read_bytes()
    except FileNotFoundError:
        state = None
    return restart_verdict(state)
