"""Whether the agent takes a desired state: every acceptance rule, in one pure place.

The MQTT thread only opens the envelope of a payload of the ``desired`` topic
(`edgefleet.shared.signing.director.open_desired`: a pinned director key's signature, the
body's shape, this device's id) and queues the result. Everything else depends on what
the device already took, so the update machine decides it on the runner's thread, where
that state is current, by calling the two functions below. Both are pure (no I/O, no
clock: ``now`` is an argument) and never raise.

`judge`, for each payload; the first rule that applies wins:

1. an envelope that did not open is rejected with the reason it did not;
2. **redelivery**: the seq of the desired state taken last, for the target taken under
   it (or for a target the device no longer holds: a desired state naming the active
   model leaves none), is ignored, even once expired: the broker keeps the retained copy
   and sends it on every reconnect, and QoS 1 may deliver twice;
3. **replay**: a seq not newer than the last one taken is rejected (`ReplayedOrOlder`);
   that includes the last seq again with another target;
4. **freeze**: an expired desired state is rejected (`Expired`);
5. anything else is accepted.

A rejection of the very payload rejected last time (the same retained message after a
reconnect) is ignored instead: the fleet was told once. It is still judged first, so a
payload that has become acceptable (the device's clock was wrong) is taken.

`judge_install`, when the machine is about to download a target it accepted (at once, or
later when an update in progress finishes, so against the model active *then*):

6. **downgrade**: a version older than the active model's is rejected (`Downgrade`)
   unless the director signed the desired state as a rollback; a version that is not
   semver is `Malformed`.

The comparisons of rules 3, 4 and 6 are the protocol's (`check_fresh`, `check_downgrade`
in `edgefleet.shared.signing`), so a device and the fleet's tests cannot disagree on them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from edgefleet.agent.update.types import (
    DesiredReceived,
    DesiredRejected,
    InstalledModel,
    UpdateTarget,
)
from edgefleet.shared.signing.director import check_fresh
from edgefleet.shared.signing.errors import UpdateRejected
from edgefleet.shared.signing.versions import check_downgrade


@dataclass(frozen=True)
class Accepted:
    """Take the desired state: the machine starts, queues or records ``target``."""

    target: UpdateTarget


@dataclass(frozen=True)
class Ignored:
    """Nothing to do and nothing to report: a redelivery."""

    why: str


@dataclass(frozen=True)
class Rejected:
    """Refuse it and report ``reason``.

    ``cause`` is the `UpdateRejected` subclass of the rule that refused it (the class
    itself for an envelope that did not open); ``desired_seq`` the seq it claims.
    """

    cause: type[UpdateRejected]
    reason: str
    desired_seq: int | None


Verdict = Accepted | Ignored | Rejected


def judge(
    offer: DesiredReceived | DesiredRejected,
    *,
    last_seq: int,
    held: Iterable[UpdateTarget | None],
    last_rejected: str | None,
    now: datetime,
) -> Verdict:
    """The verdict on one payload of the ``desired`` topic (rules 1 to 5 above).

    ``last_seq`` is the seq of the last desired state taken (-1: none yet), ``held`` the
    targets the device still works on or remembers (the machine's ``target`` and
    ``pending``), ``last_rejected`` the ``envelope_sha256`` of the payload rejected last.
    """
    verdict = _judge(offer, last_seq=last_seq, held=held, now=now)
    if isinstance(verdict, Rejected) and offer.envelope_sha256 == last_rejected:
        return Ignored(f"rejected before, reported then: {verdict.reason}")
    return verdict


def judge_install(target: UpdateTarget, *, active: InstalledModel | None) -> Rejected | None:
    """Why ``target`` must not replace ``active`` (rule 6 above), or None if it may."""
    try:
        check_downgrade(active.version if active else None, target.version, target.rollback)
    except UpdateRejected as e:
        return Rejected(type(e), str(e), target.desired_seq)
    return None


def _judge(
    offer: DesiredReceived | DesiredRejected,
    *,
    last_seq: int,
    held: Iterable[UpdateTarget | None],
    now: datetime,
) -> Verdict:
    if isinstance(offer, DesiredRejected):
        return Rejected(UpdateRejected, offer.reason, offer.desired_seq)
    target = offer.target
    seq = target.desired_seq
    if seq == last_seq and _is_redelivery(target, held):
        return Ignored(f"desired seq {seq} again: taken already")
    try:
        check_fresh(seq, offer.expires_at, last_seq=last_seq if last_seq >= 0 else None, now=now)
    except UpdateRejected as e:
        return Rejected(type(e), str(e), seq)
    return Accepted(target)


def _is_redelivery(target: UpdateTarget, held: Iterable[UpdateTarget | None]) -> bool:
    same_seq = [t for t in held if t is not None and t.desired_seq == target.desired_seq]
    return not same_seq or any(t.sha256 == target.sha256 for t in same_seq)
