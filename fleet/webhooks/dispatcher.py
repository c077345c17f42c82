"""Webhook delivery off the caller's thread: one lane (queue and thread) per webhook.

`WebhookDispatcher.submit` writes a ``pending`` delivery row per webhook and queues it
on that webhook's lane, without waiting on the network: the drift monitor raises alerts
at its own pace whatever the receivers do.

Invariants:
- one webhook's deliveries run on its own lane, in order; a receiver that hangs or
  fails delays only its own lane (each attempt ends after ``timeout_s``), never another
  webhook nor the caller;
- a lane holds at most ``queue_size`` deliveries; one more is not queued but marked
  ``failed`` with the reason in its log, so nothing is dropped silently and memory stays
  bounded (lanes exist only for webhooks with work, and end when idle);
- every attempt is written to its row as it happens (`RetryPolicy` says how often and
  how long to wait); a refused destination or a 4xx other than 408/429 ends it at once;
- `stop` cuts short any backoff wait; a delivery not finished by then stays ``pending``
  and `recover` (run by `start`) queues such rows again from their alert, so a restart
  or a crash loses nothing. Delivery is therefore at least once: receivers drop repeats
  by ``X-Edgefleet-Delivery``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from edgefleet.fleet.store.drift_tables import Webhook, WebhookDelivery, WebhookSecret
from edgefleet.fleet.webhooks.policy import DestinationPolicy, DestinationRefusedError
from edgefleet.fleet.webhooks.resolver import ResolveError, Resolver, SystemResolver
from edgefleet.fleet.webhooks.signing import DELIVERY_HEADER, SIGNATURE_HEADER, signature_header
from edgefleet.fleet.webhooks.transport import post_checked, webhook_client
from edgefleet.shared.messages import utcnow

logger = logging.getLogger(__name__)

RETRYABLE_4XX = frozenset({408, 429})
# Pending rows older than this are not sent again after a restart: an alert that old
# is history, not news (it stays in /v1/alerts).
RECOVER_WITHIN = timedelta(hours=24)
MAX_RECOVER = 10_000


@dataclass(frozen=True)
class RetryPolicy:
    """Webhook retries: ``backoff_s * 2**k`` between tries, capped at ``max_backoff_s``."""

    max_attempts: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 5.0

    def delay_s(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1-based)."""
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))


@dataclass(frozen=True)
class Job:
    """One delivery to carry out: the row to log in and what to send."""

    delivery_id: int
    webhook_id: str
    url: str
    secret: str | None
    alert_id: str
    body: bytes


class _Lane:
    """The queue of one webhook and the thread that works it."""

    def __init__(self, webhook_id: str, lock: threading.Lock) -> None:
        self.webhook_id = webhook_id
        self.jobs: deque[Job] = deque()
        self.ready = threading.Condition(lock)
        self.thread: threading.Thread | None = None


class WebhookDispatcher:
    """Delivers alert payloads to webhooks on per-webhook lanes; see the module doc."""

    def __init__(
        self,
        engine: Engine,
        *,
        policy: RetryPolicy | None = None,
        destinations: DestinationPolicy | None = None,
        resolver: Resolver | None = None,
        queue_size: int = 100,
        idle_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``destinations`` defaults to refusing every internal address."""
        if queue_size < 1 or idle_s <= 0:
            raise ValueError(f"queue_size must be >= 1 and idle_s > 0, got {queue_size}, {idle_s}")
        self._engine = engine
        self._policy = policy or RetryPolicy()
        self._destinations = destinations or DestinationPolicy()
        self._resolver = resolver or SystemResolver()
        self._queue_size = queue_size
        self._idle_s = idle_s
        self._clock = clock
        self._lock = threading.Lock()
        self._lanes: dict[str, _Lane] = {}
        self._busy = 0  # jobs queued or in progress, for wait_idle
        self._idle = threading.Condition(self._lock)
        self._stop = threading.Event()

    def start(self, body_of: Callable[[str], bytes | None] | None = None) -> None:
        """Accept deliveries; with ``body_of`` (alert id -> payload) queue again the
        pending deliveries a previous run left (`recover`)."""
        self._stop.clear()
        if body_of is not None:
            self.recover(body_of)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop every lane after its current attempt (backoff waits end at once).

        Deliveries not finished stay ``pending`` in the database for `recover`.
        """
        self._stop.set()
        with self._lock:
            lanes = list(self._lanes.values())
            for lane in lanes:
                lane.ready.notify_all()
        deadline = time.monotonic() + timeout_s
        for lane in lanes:
            if lane.thread is not None:
                lane.thread.join(max(0.0, deadline - time.monotonic()))

    def submit(
        self,
        alert_id: str,
        body: bytes,
        targets: Sequence[tuple[Webhook, str | None]],
    ) -> list[WebhookDelivery]:
        """Write a pending delivery per (webhook, secret) and queue it; never blocks on
        the network. A delivery whose lane is full is written as ``failed`` instead."""
        if not targets:
            return []
        now = utcnow()
        with Session(self._engine, expire_on_commit=False) as session:
            rows = [
                WebhookDelivery(webhook_id=w.id, alert_id=alert_id, created_at=now)
                for w, _ in targets
            ]
            session.add_all(rows)
            session.commit()  # the ids are fetched by the INSERTs
        refused: list[WebhookDelivery] = []
        for (webhook, secret), row in zip(targets, rows, strict=True):
            assert row.id is not None
            job = Job(row.id, webhook.id, webhook.url, secret, alert_id, body)
            if not self._enqueue(job):
                refused.append(row)
        if refused:
            self._mark_overflow(refused)
        return rows

    def recover(self, body_of: Callable[[str], bytes | None]) -> int:
        """Queue again the pending deliveries of the last ``RECOVER_WITHIN`` whose
        webhook still exists; ``body_of`` rebuilds an alert's payload (None: the alert is
        gone, the delivery is failed). Returns how many were queued."""
        since = utcnow() - RECOVER_WITHIN
        with Session(self._engine) as session:
            pending = session.exec(
                select(WebhookDelivery)
                .where(col(WebhookDelivery.status) == "pending")
                .where(col(WebhookDelivery.created_at) >= since)
                .order_by(col(WebhookDelivery.id))
                .limit(MAX_RECOVER)
            ).all()
            hooks = {w.id: w for w in session.exec(select(Webhook))}
            secrets = {s.webhook_id: s.secret for s in session.exec(select(WebhookSecret))}
        queued = 0
        gone: list[WebhookDelivery] = []
        for row in pending:
            webhook = hooks.get(row.webhook_id)
            body = body_of(row.alert_id) if webhook is not None else None
            if webhook is None or body is None or row.id is None:
                gone.append(row)
                continue
            job = Job(row.id, webhook.id, webhook.url, secrets.get(webhook.id), row.alert_id, body)
            if self._enqueue(job):
                queued += 1
            else:
                gone.append(row)
        if gone:
            self._finish(
                gone, "not sent again after a restart: webhook or alert gone, or lane full"
            )
        if queued:
            logger.info("queued %s webhook deliveries left pending by a previous run", queued)
        return queued

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no delivery is queued or in progress; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    # --- lanes ---------------------------------------------------------------------------

    def _enqueue(self, job: Job) -> bool:
        with self._lock:
            lane = self._lanes.get(job.webhook_id)
            if lane is None:
                lane = self._lanes[job.webhook_id] = _Lane(job.webhook_id, self._lock)
            if len(lane.jobs) >= self._queue_size:
                return False
            lane.jobs.append(job)
            self._busy += 1
            if lane.thread is None:
                lane.thread = threading.Thread(
                    target=self._run_lane,
                    args=(lane,),
                    name=f"webhook-{job.webhook_id[:8]}",
                    daemon=True,
                )
                lane.thread.start()
            lane.ready.notify()
        return True

    def _run_lane(self, lane: _Lane) -> None:
        with webhook_client() as client:
            while True:
                with self._lock:
                    if not lane.jobs and not self._stop.is_set():
                        lane.ready.wait(self._idle_s)
                    if self._stop.is_set() or not lane.jobs:
                        # Idle (or stopping): the lane ends; a later submit makes a new one.
                        self._busy -= len(lane.jobs)
                        lane.jobs.clear()
                        self._idle.notify_all()
                        lane.thread = None
                        del self._lanes[lane.webhook_id]
                        return
                    job = lane.jobs[0]
                try:
                    self._deliver(client, job)
                except Exception:
                    # A database failure while logging: the row stays pending for recover.
                    logger.exception("webhook delivery %s failed unexpectedly", job.delivery_id)
                with self._lock:
                    lane.jobs.popleft()
                    self._busy -= 1
                    self._idle.notify_all()

    def _deliver(self, client: httpx.Client, job: Job) -> None:
        policy = self._policy
        # Short sessions only: a lane waiting on a hanging receiver holds no connection.
        with Session(self._engine, expire_on_commit=False) as session:
            delivery = session.get(WebhookDelivery, job.delivery_id)
        if delivery is None or delivery.status != "pending":
            return
        if delivery.attempts >= policy.max_attempts:
            # Recovered after its last attempt was logged (or max_attempts was lowered).
            self._finish([delivery], f"no attempts left ({delivery.attempts} made)")
            return
        for attempt in range(delivery.attempts + 1, policy.max_attempts + 1):
            entry, ok, retry = self._attempt(client, job, attempt)
            delivery.attempts = attempt
            delivery.log = [*delivery.log, entry]
            if ok or not retry or attempt >= policy.max_attempts:
                delivery.status = "delivered" if ok else "failed"
                delivery.finished_at = utcnow()
            with Session(self._engine, expire_on_commit=False) as session:
                delivery = session.merge(delivery)
                session.commit()
            if delivery.finished_at is not None or self._stop.wait(policy.delay_s(attempt)):
                break
        if delivery.status == "failed":
            logger.warning(
                "webhook %s gave up on alert %s after %s attempts: %s",
                job.url,
                job.alert_id,
                delivery.attempts,
                delivery.log[-1] if delivery.log else None,
            )

    def _attempt(
        self, client: httpx.Client, job: Job, attempt: int
    ) -> tuple[dict[str, Any], bool, bool]:
        """One POST; returns (log entry, delivered, worth retrying)."""
        entry: dict[str, Any] = {"attempt": attempt, "at": utcnow().isoformat()}
        headers = {
            "Content-Type": "application/json",
            "X-Edgefleet-Alert": job.alert_id,
            DELIVERY_HEADER: str(job.delivery_id),
        }
        if job.secret is not None:
            headers[SIGNATURE_HEADER] = signature_header(job.secret, job.body, int(self._clock()))
        try:
            status = post_checked(
                client,
                job.url,
                job.body,
                headers,
                destinations=self._destinations,
                resolver=self._resolver,
                timeout_s=self._policy.timeout_s,
            )
        except DestinationRefusedError as e:
            # The operator's policy, not a transient failure: retrying cannot help.
            entry["error"] = f"refused: {e.reason}"
            return entry, False, False
        except (httpx.HTTPError, ResolveError) as e:
            entry["error"] = f"{type(e).__name__}: {e}"
            return entry, False, True
        entry["status_code"] = status
        if 200 <= status < 300:
            return entry, True, False
        return entry, False, status >= 500 or status in RETRYABLE_4XX

    def _mark_overflow(self, rows: Sequence[WebhookDelivery]) -> None:
        logger.warning(
            "webhook %s has %s deliveries queued already; %s more not sent",
            rows[0].webhook_id,
            self._queue_size,
            len(rows),
        )
        self._finish(rows, f"not sent: the webhook's queue was full ({self._queue_size} waiting)")

    def _finish(self, rows: Sequence[WebhookDelivery], reason: str) -> None:
        with Session(self._engine) as session:
            for row in rows:
                stored = session.get(WebhookDelivery, row.id)
                if stored is None:
                    continue
                stored.status = "failed"
                stored.finished_at = utcnow()
                stored.log = [*stored.log, {"at": utcnow().isoformat(), "error": reason}]
                session.add(stored)
            session.commit()
