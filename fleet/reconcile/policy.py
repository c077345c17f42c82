"""Reconciliation rules: when the fleet publishes a device's stored desired state again.

Pure: no database, no broker, no clock (``now`` is an argument), so every rule is a row
of a table test. The shell (`edgefleet.fleet.reconcile.service`) gathers a `DeviceView`
per device with a stored desired state, calls `decide`, keeps the returned `Memory` and
republishes the devices it is told to, through the director (the same signed envelope
and seq: never a new decision).

A device needs its desired state again for one of two reasons (`Reason`):

- ``retained_lost``: the broker's retained message on the device's ``desired`` topic is
  not the stored envelope: cleared (an empty retained publish) or overwritten with
  something that is not an envelope, at once; absent (a broker that restarted without
  persistence) or an older seq, once the desired state is older than ``in_flight_s``
  (until then the director's own publish of it may still be on its way). Republished
  online or not: a device that is offline now reads it when it reconnects.
- ``stuck``: the device is online, reports an active model (by sha256) other than the
  target, and has reported no event about this desired state for ``after_s`` since it was
  issued or since the device came online, whichever is later.

Invariants:
- a device that reported anything about the desired state (downloading, failed,
  rejected, rolled_back, ...) has it: ``stuck`` never applies to it, so the fleet never
  fights a device that refused or rolled back a model (the agent would ignore the same
  seq again anyway);
- a retained message with a *newer* seq than the stored one is not ours to replace
  (another director wrote it), and a device's retained state is only judged missing once
  the watcher has had ``settle`` time after subscribing to receive it;
- an expired envelope is never republished: the device would refuse it, and renewing it
  is a decision for an operator or a rollout, not for the reconciler;
- per desired seq at most ``max_attempts`` republishes, spaced by an exponential backoff
  (``backoff_s`` doubling up to ``backoff_max_s``), then the reconciler gives up once
  (reported) and holds; a new seq, or the reason going away (the retained message is
  current again and the device converged, acted, or went offline), starts afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from edgefleet.shared.signing.director import DesiredBody

MAX_DELAY_S = 366 * 24 * 3600.0  # bounds every duration, so no timedelta can overflow


class Reason(StrEnum):
    """Why a device needs its desired state published again."""

    RETAINED_LOST = "retained_lost"
    STUCK = "stuck"


class Retained(StrEnum):
    """What the broker holds on a device's ``desired`` topic, compared with the store."""

    UNKNOWN = "unknown"  # not seen yet, and the watcher has not settled: no judgement
    CURRENT = "current"  # the stored seq
    CLEARED = "cleared"  # the last payload seen was empty, or not an envelope
    MISSING = "missing"  # absent once the watcher settled
    STALE = "stale"  # an older seq
    NEWER = "newer"  # a newer seq than the stored one: another director's; left alone


EMPTY = -1  # observed: an empty retained payload (the retained message was cleared)
INVALID = -2  # observed: a payload that is not a desired-state envelope


def classify_retained(observed: int | None, stored_seq: int, *, settled: bool) -> Retained:
    """What the retained message is, from what the watcher saw on the device's topic.

    ``observed`` is the seq of the last envelope seen, `EMPTY`, `INVALID`, or None when
    nothing was seen since subscribing; ``settled`` is whether the broker has had time
    to send every retained message since then.
    """
    if observed is None:
        return Retained.MISSING if settled else Retained.UNKNOWN
    if observed in (EMPTY, INVALID):
        return Retained.CLEARED
    if observed < stored_seq:
        return Retained.STALE
    return Retained.CURRENT if observed == stored_seq else Retained.NEWER


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What the fleet knows of one device with a stored desired state.

    ``online`` is the fleet's view (last state online and heard from recently);
    ``online_since`` the time of its last state message; ``active_sha256`` the model it
    reported active; ``acted`` whether it reported any event naming ``desired.seq``.
    """

    desired: DesiredBody
    retained: Retained
    online: bool
    active_sha256: str | None
    online_since: datetime | None
    acted: bool


@dataclass(frozen=True, slots=True)
class Memory:
    """What the reconciler remembers of one device between ticks (per desired seq)."""

    desired_seq: int
    attempts: int = 0
    last_attempt_at: datetime | None = None
    held: bool = False  # gave up (attempts spent, or expired) and said so once


@dataclass(frozen=True, slots=True)
class ReconcileRules:
    """The settings the rules use (see `edgefleet.fleet.settings.FleetSettings`)."""

    after_s: float
    in_flight_s: float
    backoff_s: float
    backoff_max_s: float
    max_attempts: int


@dataclass(frozen=True, slots=True)
class InSync:
    """Nothing to do: the retained message is current and the device is not stuck."""


@dataclass(frozen=True, slots=True)
class Republish:
    """Publish the stored envelope again; ``attempt`` counts from 1 for this seq."""

    reason: Reason
    attempt: int


@dataclass(frozen=True, slots=True)
class Wait:
    """Needs republishing, but not before ``until`` (backoff after the last attempt)."""

    reason: Reason
    until: datetime


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Stop republishing this seq (``why``: ``attempts`` spent, or ``expired``); said once."""

    reason: Reason
    why: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Hold:
    """Gave up on this seq before: nothing to do and nothing to say."""

    reason: Reason


Decision = InSync | Republish | Wait | GiveUp | Hold


def reason_for(view: DeviceView, now: datetime, rules: ReconcileRules) -> Reason | None:
    """Why ``view``'s device needs its desired state again, or None if it does not."""
    if view.retained is Retained.CLEARED:
        return Reason.RETAINED_LOST
    settled_in = now - view.desired.issued_at >= _delay(rules.in_flight_s)
    if view.retained in (Retained.MISSING, Retained.STALE) and settled_in:
        return Reason.RETAINED_LOST
    target = view.desired.target.sha256
    if not view.online or view.acted or view.active_sha256 == target:
        return None
    since = view.desired.issued_at
    if view.online_since is not None and view.online_since > since:
        since = view.online_since
    if now - since >= _delay(rules.after_s):
        return Reason.STUCK
    return None


def backoff(attempts: int, rules: ReconcileRules) -> timedelta:
    """How long after attempt number ``attempts`` (1, 2, ...) the next may be made."""
    exponent = min(max(attempts - 1, 0), 60)  # 2**60 * any backoff is past the cap
    return _delay(min(rules.backoff_s * 2**exponent, rules.backoff_max_s))


def decide(
    view: DeviceView, memory: Memory | None, now: datetime, rules: ReconcileRules
) -> tuple[Decision, Memory | None]:
    """The decision for one device and what to remember of it (None: forget it).

    ``memory`` of another desired seq counts as none: a new desired state starts afresh.
    """
    seq = view.desired.seq
    if memory is None or memory.desired_seq != seq:
        memory = Memory(desired_seq=seq)
    reason = reason_for(view, now, rules)
    if reason is None:
        return InSync(), None
    if memory.held:
        return Hold(reason), memory
    if view.desired.expires_at <= now:
        return GiveUp(reason, "expired", memory.attempts), _held(memory)
    if memory.attempts >= rules.max_attempts:
        return GiveUp(reason, "attempts", memory.attempts), _held(memory)
    if memory.last_attempt_at is not None:
        until = memory.last_attempt_at + backoff(memory.attempts, rules)
        if now < until:
            return Wait(reason, until), memory
    attempt = memory.attempts + 1
    return Republish(reason, attempt), Memory(seq, attempt, now)


def publish_failed(memory: Memory) -> Memory:
    """The memory after the broker did not take a `Republish`: the attempt is not spent
    (the device never had a chance to act on it), but its backoff still applies."""
    return Memory(memory.desired_seq, max(memory.attempts - 1, 0), memory.last_attempt_at)


def _held(memory: Memory) -> Memory:
    return Memory(memory.desired_seq, memory.attempts, memory.last_attempt_at, held=True)


def _delay(seconds: float) -> timedelta:
    return timedelta(seconds=min(max(seconds, 0.0), MAX_DELAY_S))
