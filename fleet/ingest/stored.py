"""What the fleet tells each device it has stored: end-to-end delivery, fleet side. Pure.

A broker's PUBACK only says the broker has a message; a broker restarted without
persistence, or a moment when no fleet replica is subscribed, loses it after that. So
the ingester acknowledges to each device, on its ``stored`` topic, the seqs that are in
the database (`edgefleet.shared.messages.StoredMessage`), and the agent keeps every message
until one of these covers it (`edgefleet.agent.delivery`).

Invariants:
- a seq is acknowledged only after the transaction that holds it committed: the writer
  hands `StoredAcks.add` the keys of a batch only once `BatchWriter.write` returned;
- what is acknowledged is what the *database* holds, never a replica's high-water
  mark: each key is a message of the committed batch that is now a row (stored, or a
  duplicate of a row another replica or an earlier delivery committed, or a conflict
  with one) or a dead letter. With shared subscriptions two replicas store different
  seqs of one device; each acknowledges exactly its own, so their acknowledgements
  never claim a seq the other has not committed yet, and any union of them is true;
- a dead-lettered message counts as stored: its seq is read from the payload when it
  can be (`stored_key`), so a message the fleet refuses is not sent again for ever;
- batched: `StoredAcks.take` is called at most once per ``ingest_stored_interval_s``
  and gives at most one message per device, each of at most `MAX_STORED_RANGES`
  ranges (more wait for the next take), so a device gets at most one publish per
  interval from each replica whatever its rate.
"""

from __future__ import annotations

import json
import re

from edgefleet.fleet.ingest.decode import Accepted, Rejected
from edgefleet.shared.limits import MAX_INT64
from edgefleet.shared.messages import MAX_STORED_RANGES, StoredMessage
from edgefleet.shared.seqranges import SeqRange, merge, to_ranges
from edgefleet.shared.topics import TopicError, parse_topic

Key = tuple[str, int]

# An agent's payload starts with device_id, seq and ts (the models' field order), so a
# payload cut on arrival (`Oversized`) still shows its seq in the kept prefix.
_SEQ_RE = re.compile(rb'"seq"\s*:\s*(\d{1,19})\b')


def stored_key(item: Accepted | Rejected) -> Key | None:
    """The (device id, seq) ``item`` leaves in the database, if one can be told.

    A rejected message belongs to the device of its topic (the broker lets a device
    write only its own topics); its seq is the payload's ``seq`` field, read leniently
    (whole JSON, else the first ``"seq": <digits>`` in the bytes kept). None for a topic
    outside the scheme or a payload without a readable seq in 0..2**63-1.
    """
    if isinstance(item, Accepted):
        return item.message.device_id, item.message.seq
    try:
        device_id = parse_topic(item.topic).device_id
    except TopicError:
        return None
    seq = _lenient_seq(item.payload)
    return None if seq is None else (device_id, seq)


def _lenient_seq(payload: bytes) -> int | None:
    seq: object = None
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        match = _SEQ_RE.search(payload)
        seq = int(match.group(1)) if match else None
    else:
        seq = document.get("seq") if isinstance(document, dict) else None
    if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= MAX_INT64:
        return seq
    return None


class StoredAcks:
    """Seqs committed since the last `take`, per device. Not thread-safe: the writer
    thread owns it."""

    def __init__(self, max_ranges: int = MAX_STORED_RANGES) -> None:
        if not 1 <= max_ranges <= MAX_STORED_RANGES:
            raise ValueError(f"max_ranges must be 1..{MAX_STORED_RANGES}, found {max_ranges}")
        self._max_ranges = max_ranges
        self._pending: dict[str, list[SeqRange]] = {}

    def __len__(self) -> int:
        """Devices with something to acknowledge."""
        return len(self._pending)

    def add(self, keys: list[Key]) -> None:
        """Record the keys of one committed batch."""
        by_device: dict[str, list[int]] = {}
        for device_id, seq in keys:
            by_device.setdefault(device_id, []).append(seq)
        for device_id, seqs in by_device.items():
            self._pending[device_id] = merge(self._pending.get(device_id, ()), to_ranges(seqs))

    def take(self) -> list[StoredMessage]:
        """One message per device with pending seqs, in device-id order; what does not
        fit one message (the oldest ranges go first) stays for the next take."""
        out: list[StoredMessage] = []
        for device_id in sorted(self._pending):
            ranges = self._pending.pop(device_id)
            now, rest = ranges[: self._max_ranges], ranges[self._max_ranges :]
            if rest:
                self._pending[device_id] = rest
            out.append(StoredMessage(device_id=device_id, seqs=now))
        return out
