"""Verifying the stored audit log: the I/O shell around `edgefleet.fleet.audit.verify`.

Safe while replicas append: the head is read first and the scan stops at its seq, so
entries appended during the scan are neither required nor missed; afterwards the
largest stored seq is compared with the head read again (an append moves both in one
transaction, so a stored row past the head is one no append wrote). Checkpoints must be
read before this is called: each then counts no more entries than the head read here.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine

from edgefleet.fleet.audit.read import iter_for_verify, max_seq, read_head
from edgefleet.fleet.audit.verify import (
    CheckpointClaim,
    Problem,
    VerifyResult,
    rows_beyond_head,
    verify_chain,
)


def verify_database(
    engine: Engine, checkpoints: Sequence[CheckpointClaim] = (), *, chunk_rows: int = 1000
) -> VerifyResult:
    """Verify ``engine``'s whole audit log against ``checkpoints`` (signatures verified).

    Raises what reading the database raises (SQLAlchemy errors).
    """
    head = read_head(engine)
    if head is None:
        return VerifyResult(0, "", len(checkpoints), Problem.HEAD, 1, "the audit_head row is gone")
    result = verify_chain(
        iter_for_verify(engine, up_to_seq=head.seq, chunk_rows=chunk_rows), checkpoints, head
    )
    if not result.ok:
        return result
    top = max_seq(engine)  # before the head: a sound log's head then counts at least it
    beyond = rows_beyond_head(read_head(engine) or head, top)
    return result if beyond is None else beyond
