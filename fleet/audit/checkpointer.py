"""The thread that signs audit checkpoints at an interval and at stop.

Each round reads the chain's head; if it moved since the last checkpoint, it verifies
the entries appended since (from the last checkpoint's head, so a history rewritten
under a signed checkpoint is never signed again), signs a checkpoint of the new head,
appends it to the checkpoint file and, if configured, POSTs it to a webhook. A log that
fails verification, or shrank, gets no checkpoint: the round logs an error naming the
first bad entry and the next round tries again. A webhook failure is logged and changes
nothing else.

Several replicas may each run one (each signs what it sees; a verifier checks them all).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
from sqlalchemy import Engine

from edgefleet.fleet.audit.checkpoint import (
    SignedCheckpoint,
    append_checkpoint,
    last_checkpoint,
    sign_checkpoint,
)
from edgefleet.fleet.audit.read import iter_for_verify, read_head
from edgefleet.fleet.audit.verify import ChainHead, VerifyResult, verify_chain
from edgefleet.fleet.webhooks.transport import webhook_client
from edgefleet.shared.messages import utcnow
from edgefleet.shared.signing.tufapi import CryptoSigner

logger = logging.getLogger(__name__)


class AuditCheckpointer:
    """Signs checkpoints of ``engine``'s audit log into ``path``; `start` / `stop`."""

    def __init__(
        self,
        engine: Engine,
        signer: CryptoSigner,
        *,
        path: Path,
        fleet_id: str,
        interval_s: float,
        webhook_url: str | None = None,
        webhook_timeout_s: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._signer = signer
        self._path = path
        self._fleet_id = fleet_id
        self._interval_s = interval_s
        self._webhook_url = webhook_url
        self._webhook_timeout_s = webhook_timeout_s
        self._clock = clock
        self._lock = threading.Lock()  # one round at a time (the thread's, stop's)
        self._last: SignedCheckpoint | None = None
        self._loaded = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_problem: VerifyResult | None = None

    @property
    def last(self) -> SignedCheckpoint | None:
        """The newest checkpoint this checkpointer wrote or found in its file."""
        return self._last

    def start(self) -> None:
        """Run rounds every ``interval_s`` in a daemon thread (the first one at once)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="audit-checkpoint", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread, then sign a last checkpoint of what changed; safe twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            self._thread = None
            self._round_logged()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._round_logged()
            self._stop.wait(self._interval_s)

    def _round_logged(self) -> None:
        try:
            self.checkpoint_now()
        except Exception:  # a database or disk hiccup: the next round tries again
            logger.exception("audit checkpoint round failed")

    def checkpoint_now(self) -> SignedCheckpoint | None:
        """One round; returns the checkpoint written, or None (nothing changed, or the
        log failed verification: see `last_problem`).

        Raises what reading the database or writing the file raises (`OSError`, SQLAlchemy
        errors).
        """
        with self._lock:
            if not self._loaded:
                self._last = last_checkpoint(self._path, self._signer.public_key)
                self._loaded = True
            head = read_head(self._engine)
            if head is None:
                logger.error("the audit_head row is missing: no audit checkpoint signed")
                return None
            last = self._last
            if last is not None and (last.count, last.head_hash) == (head.seq, head.hash):
                return None
            after = None if last is None else ChainHead(last.count, last.head_hash)
            result = verify_chain(
                iter_for_verify(
                    self._engine, up_to_seq=head.seq, after_seq=0 if after is None else after.seq
                ),
                head=head,
                after=after,
            )
            if not result.ok:
                self.last_problem = result
                logger.error(
                    "audit log fails verification, no checkpoint signed: %s", result.describe()
                )
                return None
            self.last_problem = None
            checkpoint = sign_checkpoint(
                self._signer,
                fleet_id=self._fleet_id,
                count=head.seq,
                head_hash=head.hash,
                signed_at=self._clock(),
            )
            append_checkpoint(self._path, checkpoint)
            self._last = checkpoint
            logger.info("signed audit checkpoint: %d entries, head %s", head.seq, head.hash[:16])
        self._post(checkpoint)
        return checkpoint

    def _post(self, checkpoint: SignedCheckpoint) -> None:
        if not self._webhook_url:
            return
        try:
            with webhook_client() as client:
                response = client.post(
                    self._webhook_url,
                    content=checkpoint.line(),
                    headers={"Content-Type": "application/json"},
                    timeout=self._webhook_timeout_s,
                )
            if response.status_code >= 300:
                logger.warning(
                    "audit checkpoint webhook %s answered %d",
                    self._webhook_url,
                    response.status_code,
                )
        except httpx.HTTPError as e:
            logger.warning("audit checkpoint webhook %s failed: %s", self._webhook_url, e)
