"""Verifying the audit chain, pure: entries in seq order and signed checkpoints in, the
first bad entry and why out.

Invariants of a sound log, checked in this order for each entry, so the first one
broken names the first affected seq:
- seqs run 1, 2, 3, ... without a gap (a gap is a deleted row: the missing seq is named);
- each entry's ``prev_hash`` is the hash of the entry before it (the genesis hash for
  entry 1): an inserted, reordered or swapped row breaks this link;
- each entry's ``hash`` recomputes from its content (a changed field breaks this);
- each signed checkpoint (count N, head H) finds entry N with hash H: a truncated tail
  has no entry N, a chain rewritten and rehashed consistently has another hash at N
  (checkpoints are signed outside the database, so whoever can write the database
  cannot make new ones);
- the ``audit_head`` row (seq, hash) names the last entry.

Nothing here reads a database or a file, or checks a signature: the caller passes
checkpoints whose signatures it has verified (`edgefleet.fleet.audit.checkpoint`) and
entries as read (`edgefleet.fleet.audit.read`), in seq order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from edgefleet.fleet.audit.chain import recomputed_hash
from edgefleet.fleet.audit.entry import AuditEntry
from edgefleet.fleet.store.engine import AUDIT_GENESIS_HASH as GENESIS_HASH


class Problem(StrEnum):
    """Why an entry is bad."""

    UNREADABLE = "unreadable"  # a stored row that is not a valid entry at all
    SEQ_GAP = "seq_gap"  # the named seq is missing: a deleted row
    SEQ_ORDER = "seq_order"  # a seq repeated or going back
    PREV_HASH = "prev_hash"  # the link to the previous entry is broken
    HASH = "hash"  # the entry's content does not hash to its stored hash
    CHECKPOINT = "checkpoint"  # a signed checkpoint names another hash for this entry
    TAIL_MISSING = "tail_missing"  # a signed checkpoint counts entries the log lacks
    HEAD = "head"  # the audit_head row disagrees with the log


@dataclass(frozen=True)
class Unreadable:
    """A stored row that could not be read as an `AuditEntry` (a bound broken, ...)."""

    seq: int
    reason: str


@dataclass(frozen=True)
class CheckpointClaim:
    """What one signed checkpoint says: the log had ``count`` entries, the last ``head_hash``."""

    count: int
    head_hash: str
    signed_at: datetime


@dataclass(frozen=True)
class ChainHead:
    """The ``audit_head`` row as read."""

    seq: int
    hash: str


@dataclass(frozen=True)
class VerifyResult:
    """The outcome: ``problem`` None means the whole log is sound.

    ``count`` and ``head_hash`` describe the log up to the last good entry; ``seq`` is
    the first bad (or first missing) entry; ``detail`` says why in words.
    """

    count: int
    head_hash: str
    checkpoints: int
    problem: Problem | None = None
    seq: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None

    def describe(self) -> str:
        """One line for a person: OK with count and head, or the first bad entry."""
        if self.ok:
            return (
                f"OK: {self.count} entries, head {self.head_hash},"
                f" {self.checkpoints} signed checkpoint(s) match"
            )
        return f"BAD: entry {self.seq}: {self.problem}: {self.detail}"


Found = tuple[Problem, int, str]  # a problem, the seq it names, why


def verify_chain(
    entries: Iterable[AuditEntry | Unreadable],
    checkpoints: Sequence[CheckpointClaim] = (),
    head: ChainHead | None = None,
    *,
    after: ChainHead | None = None,
) -> VerifyResult:
    """Check ``entries`` (in the order read, which must be seq order) against the chain's
    rules, ``checkpoints`` and ``head``; stop at the first problem.

    ``after`` (default: the empty log) is the entry ``entries`` follow, for a caller
    verifying only what was appended since a checkpoint; checkpoints counting fewer
    entries than it are then not checked. ``head`` None skips the head check.
    """
    by_count: dict[int, list[CheckpointClaim]] = {}
    for claim in checkpoints:
        by_count.setdefault(claim.count, []).append(claim)
    count, prev = (0, GENESIS_HASH) if after is None else (after.seq, after.hash)
    found = _checkpoint_problem(by_count.get(count, []), count, prev)
    if found is None:
        for item in entries:
            found = _entry_problem(item, count, prev)
            if found is not None or not isinstance(item, AuditEntry):
                break  # (an Unreadable is always a problem)
            found = _checkpoint_problem(by_count.get(item.seq, []), item.seq, item.hash)
            if found is not None:
                break
            count, prev = item.seq, item.hash
    if found is None:
        found = _tail_problem(by_count, count)
    if found is None and head is not None:
        found = _head_problem(head, count, prev)
    if found is None:
        return VerifyResult(count, prev, len(checkpoints))
    problem, seq, detail = found
    return VerifyResult(count, prev, len(checkpoints), problem, seq, detail)


def _entry_problem(item: AuditEntry | Unreadable, count: int, prev: str) -> Found | None:
    """What is wrong with ``item`` read after entry ``count`` of hash ``prev``, if anything."""
    expected = count + 1
    if item.seq > expected:
        missing = (
            f"entry {expected}"
            if item.seq == expected + 1
            else f"entries {expected}..{item.seq - 1}"
        )
        return Problem.SEQ_GAP, expected, f"{missing} missing (deleted): next is {item.seq}"
    if item.seq < expected:
        return (
            Problem.SEQ_ORDER,
            item.seq,
            f"seq {item.seq} read after {count}: repeated or out of order",
        )
    if isinstance(item, Unreadable):
        return Problem.UNREADABLE, item.seq, f"the stored row is not an entry: {item.reason}"
    if item.prev_hash != prev:
        return (
            Problem.PREV_HASH,
            item.seq,
            f"prev_hash {item.prev_hash[:16]}... is not the hash of entry {count}"
            f" ({prev[:16]}...): a row inserted, reordered or swapped here, or entry"
            f" {count} changed and rehashed",
        )
    if recomputed_hash(item) != item.hash:
        return (
            Problem.HASH,
            item.seq,
            "the content does not hash to the stored hash: a field was changed",
        )
    return None


def _checkpoint_problem(claims: list[CheckpointClaim], seq: int, hash_: str) -> Found | None:
    for claim in claims:
        if claim.head_hash != hash_:
            return (
                Problem.CHECKPOINT,
                max(seq, 1),
                f"{_claim(claim)}, the log has {hash_[:16]}...: the log up to here was rewritten",
            )
    return None


def _tail_problem(by_count: dict[int, list[CheckpointClaim]], count: int) -> Found | None:
    longest = max(by_count, default=0)
    if longest <= count:
        return None
    claim = by_count[longest][0]
    return (
        Problem.TAIL_MISSING,
        count + 1,
        f"the checkpoint signed at {claim.signed_at.isoformat()} counts {longest} entries,"
        f" the log ends at {count}: the tail was cut",
    )


def _head_problem(head: ChainHead, count: int, prev: str) -> Found | None:
    if (head.seq, head.hash) == (count, prev):
        return None
    if head.seq > count:
        first = count + 1  # the head counts entries the log lacks
    elif head.seq < count:
        first = head.seq + 1  # entries past the head
    else:
        first = max(count, 1)  # the same count, another hash
    return (
        Problem.HEAD,
        first,
        f"audit_head says {head.seq} entries with head {head.hash[:16]}..., the log has"
        f" {count} with head {prev[:16]}...",
    )


def rows_beyond_head(head: ChainHead, max_seq: int | None) -> VerifyResult | None:
    """A problem if the log holds rows past the head (read after it: appends move the head
    in the same transaction, so a sound log never has any). None otherwise."""
    if max_seq is None or max_seq <= head.seq:
        return None
    return VerifyResult(
        head.seq,
        head.hash,
        0,
        Problem.HEAD,
        head.seq + 1,
        f"the log holds entries up to {max_seq} past audit_head's {head.seq}: rows added"
        " outside an append, or the head moved back",
    )


def _claim(claim: CheckpointClaim) -> str:
    return (
        f"the checkpoint signed at {claim.signed_at.isoformat()} says entry {claim.count}"
        f" has hash {claim.head_hash[:16]}..."
    )
