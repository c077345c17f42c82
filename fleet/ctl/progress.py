"""A rollout's progress as text: a pure function of its REST representation.

`render` gives the live view for a terminal: a header line and one bar per wave;
`redraw` the escape codes that replace the previous frame in place. `summary` gives the
one line printed per change when output is not a terminal (a CI log): the watch prints
it only when it differs from the last one, so a log shows each step once. `outcome`
says whether a status is final and which exit code it ends the watch with.

Devices are counted in four groups, drawn ``#`` (healthy), ``x`` (failed, rolled back,
timed out), ``>`` (assigned, downloading, installed) and ``.`` (pending, offline, not yet
assigned); the groups of an unknown state a newer fleet reports fall to ``.``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgefleet.fleet.ctl.errors import ExitCode
from edgefleet.fleet.ctl.views import Rollout, Wave

HEALTHY = ("healthy",)
BAD = ("failed", "rolled_back", "timed_out")
MOVING = ("assigned", "downloading", "installed")
# The order a state's count is listed in (then any other state, by name).
ORDER = ("healthy", *MOVING, *BAD, "offline", "pending")

OUTCOMES: Mapping[str, ExitCode] = {
    "completed": ExitCode.OK,
    "rolled_back": ExitCode.ROLLED_BACK,
    "aborted": ExitCode.ABORTED,
    "failed": ExitCode.FAILED,
    "approval_denied": ExitCode.DENIED,
}

GREEN, RED, YELLOW, DIM, RESET = "\x1b[32m", "\x1b[31m", "\x1b[33m", "\x1b[2m", "\x1b[0m"
STATUS_COLOR: Mapping[str, str] = {
    "completed": GREEN,
    "rolled_back": RED,
    "rolling_back": RED,
    "failed": RED,
    "aborted": RED,
    "approval_denied": RED,
    "paused": YELLOW,
    "waiting_for_approval": YELLOW,
}


def outcome(status: str) -> ExitCode | None:
    """The exit code a watch ends with at ``status``, or None while it is not final."""
    return OUTCOMES.get(status)


@dataclass(frozen=True)
class Tally:
    """A wave's (or the rollout's) devices in the four drawn groups."""

    healthy: int
    bad: int
    moving: int
    total: int

    @property
    def waiting(self) -> int:
        return max(0, self.total - self.healthy - self.bad - self.moving)


def tally(counts: Mapping[str, int], total: int) -> Tally:
    """The groups of ``counts`` (devices per state) out of ``total`` devices."""

    def of(states: Sequence[str]) -> int:
        return sum(max(0, counts.get(s, 0)) for s in states)

    return Tally(healthy=of(HEALTHY), bad=of(BAD), moving=of(MOVING), total=max(0, total))


def bar(t: Tally, width: int, *, color: bool = False) -> str:
    """``[###x>>....]``: each group's share of ``width`` cells, by cumulative rounding
    (so the cells always add up to ``width`` and a full wave is a full bar)."""
    if width <= 0:
        return "[]"
    groups = [(t.healthy, "#", GREEN), (t.bad, "x", RED), (t.moving, ">", YELLOW)]
    total = max(t.total, t.healthy + t.bad + t.moving, 1)
    cells, done, used = [], 0, 0
    for count, char, tint in groups:
        done += count
        end = round(done * width / total)
        if end > used:
            run = char * (end - used)
            cells.append(f"{tint}{run}{RESET}" if color else run)
            used = end
    rest = "." * (width - used)
    cells.append(f"{DIM}{rest}{RESET}" if color and rest else rest)
    return "[" + "".join(cells) + "]"


def state_counts(counts: Mapping[str, int]) -> str:
    """The non-zero states in a fixed order: ``healthy 3, downloading 1, failed 1``."""
    known = [s for s in ORDER if counts.get(s, 0) > 0]
    other = sorted(s for s, n in counts.items() if n > 0 and s not in ORDER)
    return ", ".join(f"{s} {counts[s]}" for s in known + other) or "no devices"


def wave_phase(rollout: Rollout, wave: Wave) -> str:
    """Where a wave stands: its gate decision if it has one, else whether it runs."""
    decision = wave.gate_decision
    if decision is not None:
        if decision.passed:
            return "gate passed"
        return "gate failed" + (": " + "; ".join(decision.reasons) if decision.reasons else "")
    if not wave.started:
        return "not started"
    if wave.index == rollout.current_wave:
        return rollout.status
    return "started"


def header(rollout: Rollout, *, color: bool = False) -> str:
    """``rollout ro-1: wine 1.1.0 running, wave 2/4, 3/40 healthy``."""
    status = rollout.status
    if color and status in STATUS_COLOR:
        status = f"{STATUS_COLOR[status]}{status}{RESET}"
    waves = len(rollout.waves) or len(rollout.wave_sizes)
    healthy = tally(rollout.counts, rollout.targets).healthy
    where = (
        f"wave {rollout.current_wave + 1}/{waves}" if rollout.current_wave >= 0 else "not started"
    )
    if waves == 0:
        where = "no plan"
    return (
        f"rollout {rollout.id}: {rollout.model} {rollout.version} {status}, {where},"
        f" {healthy}/{rollout.targets} healthy"
    )


def notes(rollout: Rollout) -> list[str]:
    """Why it stands where it does: its status reason and why it is held."""
    out = []
    if rollout.status_reason:
        out.append(f"reason: {rollout.status_reason}")
    if rollout.held:
        out.append(f"held: {rollout.held}")
    return out


def render(rollout: Rollout, *, width: int = 30, color: bool = False) -> list[str]:
    """The terminal view: header, one bar line per wave, then the notes."""
    lines = [header(rollout, color=color)]
    digits = len(str(max((w.size for w in rollout.waves), default=0)))
    for wave in rollout.waves:
        t = tally(wave.counts, wave.size)
        lines.append(
            f"  wave {wave.index + 1} {bar(t, width, color=color)}"
            f" {t.healthy:>{digits}}/{wave.size:<{digits}}  {wave_phase(rollout, wave)}"
            + (f"  ({state_counts(wave.counts)})" if wave.started else "")
        )
    lines += [f"  {note}" for note in notes(rollout)]
    return lines


def redraw(previous_lines: int, lines: Sequence[str]) -> str:
    """What to write to replace a frame of ``previous_lines`` lines with ``lines``: move
    the cursor to the start of the old frame, clear to the end of the screen, write."""
    up = f"\x1b[{previous_lines}F" if previous_lines else ""
    return up + "\x1b[J" + "".join(f"{line}\n" for line in lines)


def summary(rollout: Rollout) -> str:
    """The one-line state for logs: status, wave, counts, the latest gate decision and
    the notes. Equal lines mean nothing a reader cares about changed."""
    parts = [header(rollout)]
    parts.append(state_counts(rollout.counts) if rollout.targets else "no devices")
    decided = [w for w in rollout.waves if w.gate_decision is not None]
    if decided:
        latest = decided[-1]
        parts.append(f"wave {latest.index + 1} {wave_phase(rollout, latest)}")
    parts += notes(rollout)
    return " | ".join(parts)
