"""The agent's MQTT link (paho-mqtt v2): birth, will, outbox replay, desired state.

One thread, named ``edgefleet-link-<device>``, owns the paho client and everything
about a connection: it connects, runs paho's network loop, sends outbox rows, reads
acknowledgements and reconnects with jittered exponential backoff. Other threads only
store rows in the outbox and call `Link.wake`; nothing about a connection is shared.

Ordering and duplicates. Each connection gets a *new* paho client with a clean
session, so paho never retries a message on its own after a reconnect: the outbox is
the only retry mechanism. On every connect the link publishes the retained birth, then
replays the outbox from its oldest row in id (= seq) order, keeping at most
``max_inflight`` messages unacknowledged by the broker. A row is deleted when the fleet
says it stored it (the device's ``stored`` topic), or on its PUBACK while the fleet has
never said so (`edgefleet.agent.delivery`: negotiation, and when to send again what the
broker took but the fleet never stored). So a subscriber sees every message at least
once and in seq order, except that messages sent but not acknowledged before a
connection dropped, or rewound because the fleet did not store them, are sent again;
the fleet drops those duplicates by ``(device_id, seq)``. Had we kept one paho client,
its own in-flight resend on reconnect would interleave with the replay and break the
order.

State topic seqs. The will is configured before the connection exists, so the link
allocates the birth's seq and then the will's: on the state topic, seqs order
birth < will < next birth, and a fleet may keep the state with the highest seq.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgefleet.agent.config import BrokerConfig
from edgefleet.agent.delivery import Awaiting, DeliveryPolicy, keeps_after_puback
from edgefleet.agent.outbox import Outbox
from edgefleet.shared.messages import MessageError, StateMessage, decode_stored, encode
from edgefleet.shared.seqranges import merge
from edgefleet.shared.topics import Channel, device_topic

log = logging.getLogger(__name__)

# state(seq, online, reason) -> the StateMessage to publish on the state topic.
StateBuilder = Callable[[int, bool, str | None], StateMessage]
DesiredHandler = Callable[[bytes], None]

# How long the link thread sleeps when nothing happens, as a share of the keepalive: it
# wakes at once for network traffic and for `wake`/`stop`, so this only paces paho's
# keepalive checks. A PINGREQ goes out at most keepalive/4 late, well inside the 1.5 x
# keepalive a broker waits before it drops the client. (A short fixed poll, as paho's own
# ``loop`` does, costs a thousand simulated agents most of a core, and a real device its
# sleep.)
_IDLE_WAIT_SHARE = 0.25
_IDLE_WAIT_MIN_S = 1.0
_DISCONNECT_WAIT_S = 0.1


def backoff_s(attempt: int, *, min_s: float, max_s: float, rng: random.Random) -> float:
    """The wait before reconnect ``attempt`` (0-based): exponential, capped, half jittered.

    Half of the delay is fixed and half random ("equal jitter"), so a fleet that lost
    its broker at once does not come back at once, yet no device retries in a hot loop.
    """
    ceiling: float = min(max_s, min_s * float(2 ** min(attempt, 32)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


class Link:
    """The device's connection to the broker. `start` once, `stop` once."""

    def __init__(
        self,
        *,
        config: BrokerConfig,
        device_id: str,
        outbox: Outbox,
        state: StateBuilder,
        on_desired: DesiredHandler | None = None,
        rng: random.Random | None = None,
        delivery: DeliveryPolicy | None = None,
    ) -> None:
        self._config = config
        self._delivery = delivery or DeliveryPolicy()
        self._device_id = device_id
        self._outbox = outbox
        self._state = state
        self.on_desired = on_desired
        self._rng = rng or random.Random()
        self._state_topic = device_topic(device_id, Channel.STATE)
        self._desired_topic = device_topic(device_id, Channel.DESIRED)
        self._stored_topic = device_topic(device_id, Channel.STORED)
        self._thread = threading.Thread(
            target=self._run, name=f"edgefleet-link-{device_id}", daemon=True
        )
        self._stop = threading.Event()
        self._stop_deadline = 0.0
        self._dirty = threading.Event()
        # Other threads write a byte here to end the link thread's wait early.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._state_stale = threading.Event()
        self._reconnect = threading.Event()
        self._flushed = False
        # Per connection; touched only by the link thread (paho calls back on it).
        self._connected = False
        self._refused = False
        self._inflight: dict[int, tuple[int, int]] = {}  # mid -> (outbox id, seq)
        self._awaiting = Awaiting(self._delivery)
        self._acks: deque[tuple[int, ReasonCode]] = deque()
        self._last_sent_id = 0
        self._birth_seq = 0
        self._shutdown_mid: int | None = None
        self._shutdown_acked = False
        self._idle_wait_s = max(_IDLE_WAIT_MIN_S, config.keepalive_s * _IDLE_WAIT_SHARE)
        self.connects_total = 0

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the loss of that connection."""
        return self._connected

    @property
    def alive(self) -> bool:
        """True while the link thread runs (it ends only after `stop`)."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start connecting in the background; returns at once."""
        self._thread.start()

    def wake(self) -> None:
        """Tell the link that the outbox has new rows (safe from any thread)."""
        self._dirty.set()
        self._interrupt()

    def _interrupt(self) -> None:
        # BlockingIOError: a wake-up is already pending; OSError: the link has ended.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def refresh_state(self) -> None:
        """Publish a fresh retained birth state soon (safe from any thread).

        For a change the birth describes (the active model): the link thread sends it
        after the outbox rows queued before this call. While disconnected nothing is
        sent now; the next connection's birth carries the change anyway.
        """
        self._state_stale.set()
        self.wake()

    def reconnect(self) -> None:
        """Close the connection cleanly and open a new one at once (safe from any thread).

        For a renewed client certificate: the new connection reads ``cert_file`` and
        ``key_file`` again. The clean DISCONNECT makes the broker drop the will, so the
        retained state does not flap to offline; outbox rows not yet acknowledged stay
        in the outbox and are sent again on the new connection (the fleet drops the
        duplicates by seq), so nothing is lost. While disconnected it does nothing: the
        next connection reads the files anyway.
        """
        self._reconnect.set()
        self._interrupt()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Publish the retained offline state, flush the outbox, disconnect.

        Waits at most ``timeout_s``. Returns True if the offline state and every stored
        message were acknowledged before the disconnect (by the fleet, once it
        acknowledges what it stores); False if the broker was not reachable or time ran
        out (what is left stays in the outbox for the next start).
        """
        self._stop_deadline = time.monotonic() + timeout_s
        self._stop.set()
        self.wake()
        if self._thread.is_alive():
            self._thread.join(timeout_s + 1.0)
        return self._flushed

    def _run(self) -> None:
        try:
            attempt = 0
            while not self._stop.is_set():
                self._reconnect.clear()  # this session reads the certificate files anew
                if self._session():
                    attempt = 0
                if self._stop.is_set():
                    break
                if self._reconnect.is_set():
                    continue  # asked for: no backoff
                delay = backoff_s(
                    attempt,
                    min_s=self._config.reconnect_min_s,
                    max_s=self._config.reconnect_max_s,
                    rng=self._rng,
                )
                attempt += 1
                log.debug("%s: reconnecting in %.2fs", self._device_id, delay)
                self._stop.wait(delay)
        finally:
            self._wake_r.close()
            self._wake_w.close()

    def _loop(self, client: mqtt.Client, timeout_s: float) -> MQTTErrorCode:
        """One turn of paho's network loop, also ended early by `wake`.

        paho's own ``loop`` does the same with ``select`` (no file descriptor above
        1023, so at most ~150 agents in one simulator process) and cannot be woken by
        another thread of ours; this uses ``poll`` and paho's public loop pieces.
        """
        sock = client.socket()
        if sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
        poller = select.poll()
        poller.register(sock, select.POLLIN | (select.POLLOUT if client.want_write() else 0))
        poller.register(self._wake_r, select.POLLIN)
        try:
            events = dict(poller.poll(0 if pending else int(timeout_s * 1000)))
        except (OSError, ValueError):
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if self._wake_r.fileno() in events:
            with contextlib.suppress(BlockingIOError):
                self._wake_r.recv(4096)
        ready = events.get(sock.fileno(), 0)
        if pending or ready & (select.POLLIN | select.POLLERR | select.POLLHUP):
            rc = client.loop_read()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc
        if client.want_write():
            rc = client.loop_write()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return rc
        return client.loop_misc()

    def _session(self) -> bool:
        """One connection from connect to loss; True if the broker accepted it."""
        birth_seq = self._outbox.allocate_seq()
        will_seq = self._outbox.allocate_seq()
        client = self._new_client(will_seq)
        self._connected = False
        self._refused = False
        self._inflight.clear()
        self._awaiting = Awaiting(self._delivery)
        self._acks.clear()
        self._last_sent_id = 0
        self._birth_seq = birth_seq
        self._shutdown_mid = None
        self._shutdown_acked = False
        try:
            if self._config.protocol == "5":
                client.connect(
                    self._config.host,
                    self._config.port,
                    self._config.keepalive_s,
                    clean_start=True,
                )
            else:
                client.connect(self._config.host, self._config.port, self._config.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as e:
            log.debug("%s: cannot connect to %s: %s", self._device_id, self._config.url, e)
            return False
        connect_deadline = time.monotonic() + self._config.connect_timeout_s
        accepted = False
        while True:
            rc = self._loop(client, self._wait_s(connect_deadline))
            self._handle_acks()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._refused:
                break
            if self._connected:
                accepted = True
                if self._connected_turn(client):
                    break
            elif time.monotonic() > connect_deadline:
                log.warning("%s: no CONNACK from %s in time", self._device_id, self._config.url)
                self._disconnect(client)
                break
            if self._stop.is_set() and self._shutdown_step(client):
                break
        if self._connected:
            log.info("%s: lost the connection to %s", self._device_id, self._config.url)
        self._connected = False
        return accepted

    def _connected_turn(self, client: mqtt.Client) -> bool:
        """Send what is due on a live connection; True once it was closed as asked."""
        if self._awaiting.timed_out(time.monotonic()):
            self._rewind("the fleet has not acknowledged them in time")
        if self._reconnect.is_set() and not self._stop.is_set():
            log.info("%s: reconnecting to %s as asked", self._device_id, self._config.url)
            self._disconnect(client)
            return True
        if self._dirty.is_set():
            self._dirty.clear()
            self._pump(client)
            if self._state_stale.is_set() and not self._stop.is_set():
                self._state_stale.clear()
                self._publish_state(client, online=True, reason=None)
        return False

    def _wait_s(self, connect_deadline: float) -> float:
        """How long the next loop turn may sleep: until the nearest deadline."""
        wait = self._idle_wait_s
        if not self._connected:
            wait = min(wait, connect_deadline - time.monotonic())
        elif (resend_at := self._awaiting.deadline()) is not None:
            wait = min(wait, resend_at - time.monotonic())
        if self._stop.is_set():
            wait = min(wait, self._stop_deadline - time.monotonic())
        return max(0.0, wait)

    def _shutdown_step(self, client: mqtt.Client) -> bool:
        """Advance a graceful stop by one loop turn; True once the connection is closed."""
        if not self._connected:
            self._disconnect(client)
            return True
        if self._shutdown_mid is None:
            self._shutdown_mid = self._publish_state(client, online=False, reason="shutdown")
        drained = self._outbox.depth == 0 and not self._inflight
        if (self._shutdown_acked and drained) or time.monotonic() > self._stop_deadline:
            self._flushed = self._shutdown_acked and drained
            self._disconnect(client)
            return True
        return False

    def _new_client(self, will_seq: int) -> mqtt.Client:
        config = self._config
        v5 = config.protocol == "5"
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=config.client_id or self._device_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
        )
        client.connect_timeout = config.connect_timeout_s
        client.max_inflight_messages_set(config.max_inflight + 4)
        client.max_queued_messages_set(0)
        if config.tls:
            client.tls_set(
                ca_certs=str(config.ca_file) if config.ca_file else None,
                certfile=str(config.cert_file) if config.cert_file else None,
                keyfile=str(config.key_file) if config.key_file else None,
            )
        if config.username is not None:
            password = config.password.get_secret_value() if config.password else None
            client.username_pw_set(config.username, password)
        will = self._state(will_seq, False, "will")
        client.will_set(self._state_topic, encode(will), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.warning(
                "%s: broker %s refused the connection: %s",
                self._device_id,
                self._config.url,
                reason_code,
            )
            self._refused = True
            return
        self.connects_total += 1
        self._connected = True
        log.info("%s: connected to %s", self._device_id, self._config.url)
        self._state_stale.clear()  # this birth carries every change so far
        self._publish_state(client, online=True, reason=None, seq=self._birth_seq)
        topics = [(self._desired_topic, 1)]
        if self._delivery.mode != "broker":
            topics.append((self._stored_topic, 1))
        client.subscribe(topics)
        self._dirty.set()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._connected = False

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._acks.append((mid, reason_code))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self._stored_topic:
            self._on_stored(bytes(message.payload))
            return
        if message.topic != self._desired_topic or self.on_desired is None:
            return
        try:
            self.on_desired(bytes(message.payload))
        except Exception:
            # A failing consumer must not take the link down with it.
            log.exception("%s: the desired-state handler failed", self._device_id)

    def _on_stored(self, payload: bytes) -> None:
        """The fleet stored some of our seqs: forget them; maybe resend older ones."""
        if self._delivery.mode == "broker":
            return
        try:
            message = decode_stored(self._device_id, payload)
        except MessageError as e:
            log.warning("%s: ignoring a malformed stored acknowledgement: %s", self._device_id, e)
            return
        ranges = merge(message.seqs)
        self._outbox.mark_fleet_acks()
        deleted = self._outbox.ack_seqs(ranges)
        log.debug("%s: the fleet stored %d outbox messages", self._device_id, deleted)
        if self._awaiting.stored(ranges, time.monotonic()):
            self._rewind("the fleet stored newer messages and not these")

    def _rewind(self, why: str) -> None:
        """Replay the outbox from its oldest row again (on this connection)."""
        log.info("%s: sending %d messages again: %s", self._device_id, self._outbox.depth, why)
        self._last_sent_id = 0
        self._dirty.set()

    def _handle_acks(self) -> None:
        keep = keeps_after_puback(self._delivery.mode, self._outbox.fleet_acks)
        while self._acks:
            mid, reason_code = self._acks.popleft()
            if mid == self._shutdown_mid:
                self._shutdown_acked = True
            sent = self._inflight.pop(mid, None)
            if sent is None:
                continue
            message_id, seq = sent
            if keep and not reason_code.is_failure:
                # The broker has it; the fleet's stored acknowledgement deletes it.
                if self._outbox.depth > len(self._inflight):
                    self._dirty.set()
                continue
            self._awaiting.forget(seq)
            if reason_code.is_failure:
                # Retrying cannot help (not authorised, quota); keeping it would block
                # everything behind it, so it is dropped like a broker that discards it.
                log.warning(
                    "%s: broker rejected outbox message %d: %s",
                    self._device_id,
                    message_id,
                    reason_code,
                )
            self._outbox.ack(message_id)
            if self._outbox.depth > len(self._inflight):
                # Rows wait behind the in-flight window; an ack made room for them.
                self._dirty.set()

    def _pump(self, client: mqtt.Client) -> None:
        room = self._config.max_inflight - len(self._inflight)
        if room <= 0:
            return
        # After a rewind the replay passes rows still waiting for their PUBACK: skip them.
        flying = {message_id for message_id, _ in self._inflight.values()}
        now = time.monotonic()
        for message in self._outbox.peek(self._last_sent_id, room + len(flying)):
            if room <= 0:
                return
            if message.id in flying:
                self._last_sent_id = message.id
                continue
            info = client.publish(message.topic, message.payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return  # the connection is gone; the replay starts over on the next one
            self._inflight[info.mid] = (message.id, message.seq)
            self._awaiting.sent(message.seq, now)
            self._last_sent_id = message.id
            room -= 1

    def _publish_state(
        self, client: mqtt.Client, *, online: bool, reason: str | None, seq: int | None = None
    ) -> int:
        message = self._state(self._outbox.allocate_seq() if seq is None else seq, online, reason)
        return client.publish(self._state_topic, encode(message), qos=1, retain=True).mid

    def _disconnect(self, client: mqtt.Client) -> None:
        # A clean DISCONNECT: the broker discards the will, our retained state stands.
        client.disconnect()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if self._loop(client, _DISCONNECT_WAIT_S) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        log.info("%s: disconnected from %s", self._device_id, self._config.url)
