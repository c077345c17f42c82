"""End-to-end delivery, agent side: when a message may leave the outbox, and when to send
again what the fleet has not stored. Pure: the link passes the clock in.

The broker's PUBACK only means the broker has the message. A broker restarted without
persistence loses what it held, and one with no fleet replica subscribed acknowledges a
message and drops it. So the fleet publishes, on each device's retained ``stored`` topic,
the seqs it has committed to its database (`edgefleet.fleet.ingest.stored`), and the
agent deletes a message only when one of those covers it (`keeps_after_puback`).

Seqs. One counter per device numbers every message of every stream (state, telemetry,
drift, events), so the fleet's acknowledgements are sets of seqs (ranges), not a
per-stream watermark; a restarted agent continues above every seq it sent (see
`edgefleet.agent.outbox`), so an acknowledgement from before a restart never covers a
new message. Acknowledgements from several replicas each name only what is in the
shared database, so the agent simply deletes the union of everything it receives.

Negotiation. ``delivery = "auto"`` (the default) deletes on PUBACK, as agents before
this did, until the first acknowledgement from the fleet arrives; from then on, and
across restarts (the outbox persists it), only the fleet's word deletes. So an old fleet
that never acknowledges keeps working, and a new fleet works with old agents (they do
not subscribe to ``stored``). ``"fleet"`` waits for the fleet from the first message,
``"broker"`` never does.

Sending again. Messages the broker acknowledged but the fleet did not stay in the
outbox and are replayed from the oldest on every connect; within a connection
`Awaiting` decides when to rewind the replay to the oldest unacknowledged message:
- at once when the fleet acknowledges a message sent more than ``grace_s`` after an
  older one it has not acknowledged (the fleet is there and has skipped it: it was lost
  between broker and fleet), so a fleet that comes back gets the backlog within
  seconds;
- after ``timeout_s`` without any acknowledgement of the oldest one, doubling up to
  ``timeout_max_s`` while nothing comes back (a fleet away for hours costs one
  replay per ``timeout_max_s``), and back to ``timeout_s`` on any acknowledgement.
A rewind resends in seq order; what the fleet already has comes back as duplicates,
which it drops by ``(device_id, seq)`` and acknowledges again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from edgefleet.shared.seqranges import SeqRange, count, covers

DeliveryMode = Literal["auto", "fleet", "broker"]


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How the agent confirms delivery (the ``[outbox]`` config's delivery fields)."""

    mode: DeliveryMode = "auto"
    grace_s: float = 5.0
    timeout_s: float = 30.0
    timeout_max_s: float = 300.0


def keeps_after_puback(mode: DeliveryMode, fleet_acks_seen: bool) -> bool:
    """True if a message the broker acknowledged stays in the outbox until the fleet
    acknowledges it, False if the PUBACK deletes it."""
    return mode == "fleet" or (mode == "auto" and fleet_acks_seen)


class Awaiting:
    """The messages of one connection that were sent and not yet acknowledged by the fleet.

    Not thread-safe: the link thread owns it.
    """

    def __init__(self, policy: DeliveryPolicy) -> None:
        self._policy = policy
        self._sent: dict[int, float] = {}  # seq -> last send time, oldest send first
        self._attempt = 0
        self._rewound_at = float("-inf")

    def __len__(self) -> int:
        return len(self._sent)

    def sent(self, seq: int, now: float) -> None:
        """``seq`` was (re)sent at ``now``."""
        self._sent.pop(seq, None)  # re-inserted last: the dict stays in send order
        self._sent[seq] = now

    def forget(self, seq: int) -> None:
        """``seq`` left the outbox otherwise (deleted on its PUBACK, or refused)."""
        self._sent.pop(seq, None)

    def stored(self, ranges: Sequence[SeqRange], now: float) -> bool:
        """The fleet stored ``ranges`` (normalised); True if the replay should rewind now."""
        acked_sent_at: float | None = None
        if count(ranges) <= len(self._sent):
            hits = [seq for lo, hi in ranges for seq in range(lo, hi + 1) if seq in self._sent]
        else:
            hits = [seq for seq in self._sent if covers(ranges, seq)]
        for seq in hits:
            sent_at = self._sent.pop(seq)
            acked_sent_at = sent_at if acked_sent_at is None else max(acked_sent_at, sent_at)
        if acked_sent_at is None:
            return False  # nothing of this connection: a retained or another replica's copy
        self._attempt = 0
        since = self._since()
        if since is not None and since < acked_sent_at - self._policy.grace_s:
            self._rewound_at = now
            return True
        return False

    def timed_out(self, now: float) -> bool:
        """True if the oldest unacknowledged message waited its timeout: rewind now."""
        deadline = self.deadline()
        if deadline is None or now < deadline:
            return False
        self._attempt += 1
        self._rewound_at = now
        return True

    def deadline(self) -> float | None:
        """When `timed_out` will say True, or None while nothing waits."""
        since = self._since()
        if since is None:
            return None
        policy = self._policy
        timeout = min(policy.timeout_s * 2.0 ** min(self._attempt, 32), policy.timeout_max_s)
        return since + timeout

    def _since(self) -> float | None:
        # After a rewind the oldest rows may not be resent yet (the in-flight window):
        # measure from the rewind, or every loop turn would rewind again.
        if not self._sent:
            return None
        return max(next(iter(self._sent.values())), self._rewound_at)
