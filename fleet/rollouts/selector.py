"""Pure target selection: which devices a rollout touches, and in which wave.

Invariants:
- the order of devices is a hash of (seed, device id), never the order of the candidate
  list, so the same seed gives the same targets and the same waves after a restart, and
  waves are random-but-stable samples of the fleet rather than alphabetical runs;
- a larger ``fraction`` with the same seed selects a superset of a smaller one;
- each wave adds at least one device; waves that would add none (a fleet smaller than the
  number of waves) are dropped, and the last wave covers the whole selected set;
- a device belongs to at most one active rollout (`check_overlap`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from fractions import Fraction

from edgefleet.fleet.rollouts.model import (
    Candidate,
    Gate,
    PlannedWave,
    RolloutOverlapError,
    SelectionError,
    Selector,
    Wave,
)


def device_rank(seed: str, device_id: str) -> tuple[int, str]:
    """The sort key of a device in a rollout seeded ``seed``: a hash, then the id."""
    digest = hashlib.sha256(f"{seed}\x00{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big"), device_id


def share(fraction: float, total: int) -> int:
    """``ceil(fraction * total)``, computed on the decimal the operator wrote (0.1 of 10
    is 1, not 2), and at least 1 when ``total`` is positive."""
    exact = Fraction(fraction).limit_denominator(10**9) * total
    return min(total, max(1 if total else 0, math.ceil(exact)))


def select_targets(candidates: Iterable[Candidate], selector: Selector, *, seed: str) -> list[str]:
    """The selected device ids in wave order.

    Raises `SelectionError` if a candidate id appears twice, if ``selector.device_ids``
    names a device that is not among the candidates, or if nothing matches.
    """
    by_id: dict[str, Candidate] = {}
    for candidate in candidates:
        if candidate.device_id in by_id:
            raise SelectionError(f"candidate device {candidate.device_id!r} is listed twice")
        by_id[candidate.device_id] = candidate
    unknown = sorted(set(selector.device_ids) - by_id.keys())
    if unknown:
        raise SelectionError(
            f"selector names {len(unknown)} device(s) the fleet does not know: "
            + ", ".join(unknown[:10])
        )
    matching = sorted(
        (d.device_id for d in by_id.values() if selector.matches(d)),
        key=lambda device_id: device_rank(seed, device_id),
    )
    if not matching:
        raise SelectionError(
            f"selector {selector.model_dump(exclude_defaults=True)} matches none of "
            f"{len(by_id)} device(s)"
        )
    return matching[: share(selector.fraction, len(matching))]


def plan_waves(waves: Sequence[Wave], total: int, default_gate: Gate) -> tuple[PlannedWave, ...]:
    """Resolve cumulative wave sizes against ``total`` selected devices.

    A wave's end is its share of ``total`` (or its count, capped at ``total``), raised to
    one more than the previous wave's end; waves left with no device are dropped.
    Raises `SelectionError` if ``total`` is not positive.
    """
    if total <= 0:
        raise SelectionError(f"a rollout needs at least one selected device, found {total}")
    planned: list[PlannedWave] = []
    end = 0
    for wave in waves:
        if end == total:
            break
        size = share(wave.fraction, total) if wave.fraction is not None else wave.count or 0
        end = min(total, max(size, end + 1))
        planned.append(PlannedWave(end=end, gate=wave.gate or default_gate))
    if end < total:
        # The spec's last wave is fraction 1.0, so this only guards a hand-built list.
        planned.append(PlannedWave(end=total, gate=default_gate))
    return tuple(planned)


def split_waves(targets: Sequence[str], planned: Sequence[PlannedWave]) -> list[list[str]]:
    """The devices each wave adds, in order."""
    starts = [0, *(w.end for w in planned[:-1])]
    return [list(targets[s : w.end]) for s, w in zip(starts, planned, strict=True)]


def check_overlap(targets: Iterable[str], active: Mapping[str, Collection[str]]) -> None:
    """Refuse targets already held by another active rollout.

    ``active`` maps each active rollout's id to the devices it holds.
    Raises `RolloutOverlapError` naming the devices and the rollout that holds each.
    """
    wanted = set(targets)
    held = {
        rollout_id: sorted(wanted.intersection(devices))
        for rollout_id, devices in sorted(active.items())
    }
    held = {rollout_id: devices for rollout_id, devices in held.items() if devices}
    if held:
        raise RolloutOverlapError(held)
