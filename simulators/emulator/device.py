"""One emulated device: the protocol of a real agent, without its model, files or threads.

Pure: no sockets, no files, no clock (every method takes the time), so it is tested
without a broker. The connection layer (`edgefleet.simulators.emulator.connection`) feeds
it what arrives and carries out the `Action` values it returns, in order.

What is the agent's own code here, not a copy of it:

- desired states are opened by `edgefleet.shared.signing.director.open_desired` against
  the pinned director keys (signature, shape, this device's id) and turned into the
  runner's events exactly as `edgefleet.agent.update.wiring.UpdateService.on_desired`
  does (`update_target`, `claimed_seq`, the payload's sha256);
- whether one is taken (seq, expiry, redelivery, downgrade) and every deployment step
  after that is the agent's pure update machine, `edgefleet.agent.update.machine.step`;
- its reports become events through the agent's `OutboxEventSink`, as
  `edgefleet.shared.messages.EventMessage` on the topics of `edgefleet.shared.topics`;
- seqs follow the agent's rules: they start at the wall clock in microseconds
  (`edgefleet.agent.outbox.clock_floor_seq`), grow by one a message, and each connection
  allocates the birth's seq and then the will's (birth < will < next birth).

What it skips (and says so in the README's "Scale" paragraph): the TUF metadata walk
(the agent's `edgefleet.agent.trust.TrustedRepository` checks that the release key signed
the same name, hash and length the director did; the emulator checks the downloaded
artifact against the director's signed hash and length only), the outbox's durability
(events and telemetry wait in memory, not in SQLite, until the fleet's ``stored``
acknowledgement covers their seq, and are sent again by the agent's own rules,
`edgefleet.agent.delivery.Awaiting`: on every connect, and when the fleet skipped or
never acknowledged them; nothing survives a restart of the emulator), unpacking,
loading and running the
model (activation and the golden samples always succeed; probation sees no inference,
so it commits on its golden samples once the budget's ``duration_s`` passed) and drift.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from edgefleet.agent.delivery import Awaiting, DeliveryPolicy
from edgefleet.agent.outbox import clock_floor_seq
from edgefleet.agent.update.adapters import OutboxEventSink
from edgefleet.agent.update.machine import AT_REST, UpdateState, step
from edgefleet.agent.update.policy import UpdatePolicy
from edgefleet.agent.update.types import (
    Activate,
    Activated,
    Budget,
    Commit,
    DesiredReceived,
    DesiredRejected,
    DownloadDone,
    DownloadFailed,
    Effect,
    Event,
    GoldenResult,
    InstalledModel,
    Report,
    RollBack,
    RunGolden,
    Stage,
    Staged,
    StartDownload,
    Tick,
    UpdateTarget,
    Verified,
    Verify,
    VerifyFailed,
)
from edgefleet.agent.update.wiring import update_target
from edgefleet.shared import __version__
from edgefleet.shared.manifest import name_of_target
from edgefleet.shared.messages import (
    DeviceMessageBase,
    EventKind,
    EventMessage,
    MessageError,
    ModelRef,
    PlatformInfo,
    StateMessage,
    TelemetryMessage,
    decode_stored,
    encode,
)
from edgefleet.shared.seqranges import covers, merge
from edgefleet.shared.signing.director import claimed_seq, open_desired
from edgefleet.shared.signing.errors import UpdateRejected
from edgefleet.shared.signing.tufapi import SSlibKey
from edgefleet.shared.topics import Channel, device_topic

# The figures an emulated device reports about itself: plausible for a small board, and
# constant, since there is no process of its own to measure.
EMULATED_RSS_BYTES = 48 * 2**20
EMULATED_DISK_FREE_BYTES = 8 * 2**30
EMULATED_CPU_PERCENT = 1.5
GOLDEN_DETAIL = "emulated: no model run"
_PLATFORM = PlatformInfo(machine="emulated", system="Linux", python="", cpu_count=4)


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``payload`` on ``topic`` at QoS 1."""

    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Fetch:
    """Download ``target`` from the repository, then call `EmulatedDevice.fetched`."""

    target: UpdateTarget


Action = Publish | Fetch


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """Who one emulated device is: what its birth message says about it."""

    device_id: str
    hardware: str = "rpi4"
    tags: tuple[str, ...] = ()
    runtimes: tuple[str, ...] = ("onnx",)
    factory: ModelRef | None = None


@dataclass
class _Outgoing:
    """What the update sink published, collected for the caller (the agent's outbox role)."""

    messages: list[Publish] = field(default_factory=list)


def artifact_problem(target: UpdateTarget, length: int, sha256: str) -> str | None:
    """Why a downloaded artifact is not the one the director signed (None if it is).

    The length and the sha256 must both equal the signed desired state's.
    """
    if length != target.length:
        return f"artifact is {length} bytes, the desired state signed {target.length}"
    if sha256 != target.sha256:
        return f"artifact sha256 {sha256[:12]} is not the signed {target.sha256[:12]}"
    return None


class EmulatedDevice:
    """One device's protocol state. Not thread-safe: one event loop drives it."""

    def __init__(
        self,
        spec: DeviceSpec,
        *,
        director_keys: dict[str, SSlibKey],
        now_s: float,
        telemetry_interval_s: float = 10.0,
        telemetry_phase_s: float = 0.0,
        budget: Budget | None = None,
        policy: UpdatePolicy | None = None,
    ) -> None:
        """``now_s`` is the wall clock (seconds since the epoch) when the device starts;
        seqs start at it in microseconds, as the agent's outbox's do. The first telemetry
        is due ``telemetry_phase_s`` after it (spreading a fleet's reports over the
        interval). ``budget`` is the probation budget the emulator applies to every
        target (it unpacks no manifest); by default no inference is awaited and one
        second of probation suffices."""
        self.spec = spec
        self.device_id = spec.device_id
        self._keys = director_keys
        self._next_seq = clock_floor_seq(now_s)
        self._started_s = now_s
        self._interval_s = telemetry_interval_s
        self._telemetry_due_s = now_s + telemetry_phase_s
        self._last_telemetry_s = now_s
        self._budget = budget or Budget(min_inferences=0, duration_s=1.0)
        self._policy = policy or UpdatePolicy()
        self.update = UpdateState()
        self.active: ModelRef | None = spec.factory
        self._fetched: str | None = None  # sha256 of the artifact that matched last
        self._out = _Outgoing()
        self._sink = OutboxEventSink(self)
        self._state_stale = False
        self._topics = {c: device_topic(spec.device_id, c) for c in Channel}
        self.events_sent: dict[EventKind, int] = {}
        # The outbox: events and telemetry by seq (oldest first) until the fleet says it
        # stored them; `Awaiting` says when to send them again (the agent's rules).
        self._delivery = DeliveryPolicy(mode="fleet")
        self._outbox: dict[int, Publish] = {}
        self._awaiting = Awaiting(self._delivery)
        self._now_s = now_s

    # --- seqs and messages --------------------------------------------------------------

    def allocate_seq(self) -> int:
        """The next seq of this device (every message takes one)."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def topic(self, channel: Channel) -> str:
        return self._topics[channel]

    def _state(self, seq: int, online: bool, reason: str | None) -> StateMessage:
        return StateMessage(
            device_id=self.device_id,
            seq=seq,
            online=online,
            agent_version=__version__,
            hardware=self.spec.hardware,
            platform=_PLATFORM,
            tags=list(self.spec.tags),
            runtimes=list(self.spec.runtimes),
            active_model=self.active,
            reason=reason,
        )

    def session(self) -> tuple[Publish, Publish]:
        """The (will, birth) of a new connection: the birth's seq is allocated first, as
        the agent's link does, so a fleet keeping the highest state seq sees birth < will
        < the next connection's birth. Both are retained."""
        birth_seq = self.allocate_seq()
        will_seq = self.allocate_seq()
        self._awaiting = Awaiting(self._delivery)  # per connection, as the agent's link
        topic = self.topic(Channel.STATE)
        will = Publish(topic, encode(self._state(will_seq, False, "will")), retain=True)
        birth = Publish(topic, encode(self._state(birth_seq, True, None)), retain=True)
        return will, birth

    def offline(self) -> Publish:
        """The retained offline state of a clean shutdown."""
        seq = self.allocate_seq()
        return Publish(self.topic(Channel.STATE), encode(self._state(seq, False, "shutdown")), True)

    def telemetry(self, now_s: float) -> Publish:
        """One telemetry report for the interval since the previous one."""
        self._now_s = now_s
        interval_s = max(0.0, now_s - self._last_telemetry_s)
        self._last_telemetry_s = now_s
        message = TelemetryMessage(
            device_id=self.device_id,
            seq=self.allocate_seq(),
            interval_s=interval_s,
            inferences=0,
            errors=0,
            inferences_total=0,
            errors_total=0,
            latency=None,
            cpu_percent=EMULATED_CPU_PERCENT,
            rss_bytes=EMULATED_RSS_BYTES,
            disk_free_bytes=EMULATED_DISK_FREE_BYTES,
            outbox_depth=0,
            uptime_s=max(0.0, now_s - self._started_s),
            active_model=self.active,
        )
        return self._publish(Channel.TELEMETRY, message)

    def _publish(self, channel: Channel, message: DeviceMessageBase) -> Publish:
        """``message`` as a publish, kept in the outbox until the fleet stored it."""
        publish = Publish(self.topic(channel), encode(message))
        self._outbox[message.seq] = publish
        self._awaiting.sent(message.seq, self._now_s)
        return publish

    @property
    def outbox_depth(self) -> int:
        """Messages sent and not yet acknowledged by the fleet."""
        return len(self._outbox)

    def replay(self, now_s: float) -> list[Action]:
        """Every message of the outbox again, oldest first: on a new connection (after
        its birth), and when `Awaiting` says the fleet missed some."""
        for seq in self._outbox:
            self._awaiting.sent(seq, now_s)
        return list(self._outbox.values())

    def on_stored(self, payload: bytes, now_s: float) -> list[Action]:
        """The fleet's acknowledgement of stored seqs: forget those; maybe send again
        what it skipped (`Awaiting.stored`). A malformed one is ignored."""
        try:
            message = decode_stored(self.device_id, payload)
        except MessageError:
            return []
        ranges = merge(message.seqs)
        for seq in [seq for seq in self._outbox if covers(ranges, seq)]:
            del self._outbox[seq]
        if self._awaiting.stored(ranges, now_s):
            return self.replay(now_s)
        return []

    # The EventPublisher port of the agent's update path (`OutboxEventSink` calls it).
    def publish_event(
        self,
        kind: EventKind,
        *,
        model: ModelRef | None = None,
        desired_seq: int | None = None,
        rollout_id: str | None = None,
        reason: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> int | None:
        """Queue one deployment event (as `edgefleet.agent.daemon.Agent.publish_event`)."""
        seq = self.allocate_seq()
        message = EventMessage(
            device_id=self.device_id,
            seq=seq,
            kind=kind,
            model=model,
            desired_seq=desired_seq,
            rollout_id=rollout_id,
            reason=reason,
            detail=detail or {},
        )
        self._out.messages.append(self._publish(Channel.EVENTS, message))
        self.events_sent[kind] = self.events_sent.get(kind, 0) + 1
        if kind in (EventKind.COMMITTED, EventKind.ROLLED_BACK):
            self._state_stale = True
        return seq

    # --- what arrives -------------------------------------------------------------------

    def on_desired(self, payload: bytes, now: datetime) -> list[Action]:
        """A payload of this device's ``desired`` topic: open it as the agent does and let
        the agent's machine judge it. Never raises."""
        envelope_sha256 = hashlib.sha256(payload).hexdigest()
        event: Event
        try:
            body = open_desired(payload, trusted_director_keys=self._keys, device_id=self.device_id)
        except UpdateRejected as e:
            event = DesiredRejected(
                reason=str(e), desired_seq=claimed_seq(payload), envelope_sha256=envelope_sha256
            )
        else:
            event = DesiredReceived(
                target=update_target(body),
                expires_at=body.expires_at,
                envelope_sha256=envelope_sha256,
            )
        return self._run(event, now)

    def fetched(
        self, target: UpdateTarget, length: int, sha256: str, now: datetime
    ) -> list[Action]:
        """The download of ``target`` ended with ``length`` bytes hashing to ``sha256``."""
        problem = artifact_problem(target, length, sha256)
        if problem is not None:
            self._fetched = None
            return self._run(
                DownloadFailed(sha256=target.sha256, transient=False, reason=problem, jitter=0.0),
                now,
            )
        self._fetched = target.sha256
        return self._run(DownloadDone(sha256=target.sha256), now)

    def fetch_failed(
        self, target: UpdateTarget, reason: str, now: datetime, *, jitter: float
    ) -> list[Action]:
        """The download of ``target`` failed on the network (retried by the machine)."""
        failed = DownloadFailed(sha256=target.sha256, transient=True, reason=reason, jitter=jitter)
        return self._run(failed, now)

    def tick(self, now_s: float) -> list[Action]:
        """Time passes: telemetry when due, and the machine's deadlines while it works."""
        actions: list[Action] = []
        self._now_s = now_s
        if self._awaiting.timed_out(now_s):
            actions.extend(self.replay(now_s))
        if now_s >= self._telemetry_due_s:
            actions.append(self.telemetry(now_s))
            # Due times advance by the interval, not from now, so the phase holds.
            while self._telemetry_due_s <= now_s:
                self._telemetry_due_s += self._interval_s
        if self.update.phase not in AT_REST:
            now = datetime.fromtimestamp(now_s, UTC)
            actions.extend(self._run(Tick(now=now), now))
        return actions

    @property
    def busy(self) -> bool:
        """True while an update is in progress (the loop ticks it more often)."""
        return self.update.phase not in AT_REST

    # --- the agent's machine, with emulated effects -------------------------------------

    def _run(self, first: Event, now: datetime) -> list[Action]:
        """Step the agent's machine until the effects ask for nothing more at once."""
        actions: list[Action] = []
        self._now_s = max(self._now_s, now.timestamp())
        queue: deque[Event] = deque([first])
        while queue:
            self.update, effects = step(self.update, queue.popleft(), now, policy=self._policy)
            for effect in effects:
                self._emulate(effect, queue, actions)
        messages, self._out.messages = self._out.messages, []
        actions[:0] = messages  # events first: they were queued before any download
        if self._state_stale:
            # After committed or rolled_back the agent republishes its birth, so the
            # registry shows the active model without a reconnect.
            self._state_stale = False
            seq = self.allocate_seq()
            actions.append(
                Publish(self.topic(Channel.STATE), encode(self._state(seq, True, None)), True)
            )
        return actions

    def _emulate(self, effect: Effect, queue: deque[Event], actions: list[Action]) -> None:
        """Carry out one effect of the machine: as an action for the caller, as the
        event the agent's adapter would answer with, or on the device's own state."""
        match effect:
            case Report():
                self._sink.report(effect)
            case StartDownload(target=target):
                actions.append(Fetch(target))
            case Verify(target=target):
                # The artifact was checked against the signed hash and length when it
                # arrived (`fetched`); TUF's own check is skipped.
                if self._fetched == target.sha256:
                    queue.append(Verified(sha256=target.sha256))
                else:
                    reason = "artifact not downloaded"
                    queue.append(VerifyFailed(sha256=target.sha256, reason=reason))
            case Stage(target=target):
                queue.append(Staged(sha256=target.sha256, budget=self._budget))
            case Activate(target=target):
                queue.append(Activated(sha256=target.sha256))
            case RunGolden(target=target):
                queue.append(GoldenResult(sha256=target.sha256, passed=True, detail=GOLDEN_DETAIL))
            case Commit(model=model):
                self.active = _ref(model)
            case RollBack(restore=restore):
                self.active = _ref(restore) if restore is not None else self.spec.factory
            case _:
                pass  # Cleanup, CollectGarbage, EnsureActive: no files to touch


def _ref(model: InstalledModel) -> ModelRef:
    """The active model as the agent's model host reports it (manifest name, target)."""
    return ModelRef(
        name=name_of_target(model.name, model.version) or model.name,
        version=model.version,
        sha256=model.sha256,
        target=model.name,
    )
