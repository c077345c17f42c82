"""Thousands of emulated devices' MQTT connections in one asyncio loop (paho-mqtt v2).

Each device has its own paho client, socket, client id, will and seqs, as a real agent
does; what they share is one thread and one event loop. paho does no I/O of its own
here: its socket callbacks register the socket with the loop (``add_reader`` calls
``loop_read``, ``add_writer`` ``loop_write`` while paho has bytes to send), and one task
calls every client's ``loop_misc`` (keepalive pings) every few seconds. A second task
ticks every device once a second (`EmulatedDevice.tick`: telemetry when due, update
deadlines). Downloads run on a small thread pool with urllib3 (the agent's HTTP client),
hashing the stream as it arrives.

Like the agent's link, each connection is a new client with a clean session and the
will set before it connects; a lost connection reconnects after a jittered backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import urllib3
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from edgefleet.agent.update.types import UpdateTarget
from edgefleet.shared.topics import Channel
from edgefleet.simulators.emulator.device import Action, EmulatedDevice, Fetch, Publish

log = logging.getLogger(__name__)

MISC_INTERVAL_S = 5.0  # paho's keepalive bookkeeping; a ping is due every keepalive_s
TICK_INTERVAL_S = 1.0
CONNECT_BATCH = 50  # connects started per batch, so the broker's listen backlog holds
CONNECT_BATCH_PAUSE_S = 0.05
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class LinkSettings:
    """Where the emulated devices connect and fetch."""

    broker_url: str
    repository_url: str | None = None  # ``.../v1/repository``; None: no downloads
    device_token: str | None = None
    keepalive_s: int = 60
    download_workers: int = 4


class _Conn:
    """One device's current connection (a new paho client per connection)."""

    __slots__ = ("client", "connected", "device", "sock", "stopping")

    def __init__(self, device: EmulatedDevice) -> None:
        self.device = device
        self.client: mqtt.Client | None = None
        self.sock: socket.socket | None = None
        self.connected = False
        self.stopping = False


class EmulatorLoop:
    """Run ``devices`` on one asyncio loop until `stop`. Construct inside the loop."""

    def __init__(self, devices: Sequence[EmulatedDevice], settings: LinkSettings) -> None:
        url = urlsplit(settings.broker_url)
        if url.scheme not in ("mqtt", "tcp") or url.hostname is None:
            raise ValueError(
                f"plain mqtt://host:port broker URL expected, got {settings.broker_url}"
            )
        self._host = url.hostname
        self._port = url.port or 1883
        self._settings = settings
        self._loop = asyncio.get_running_loop()
        self._conns = [_Conn(d) for d in devices]
        self._by_id = {c.device.device_id: c for c in self._conns}
        self._rng = random.Random()
        self._tasks: list[asyncio.Task[None]] = []
        self._pool = ThreadPoolExecutor(settings.download_workers, "emulator-fetch")
        headers = {"User-Agent": "edgefleet-emulator"}
        if settings.device_token:
            headers["Authorization"] = f"Bearer {settings.device_token}"
        self._headers = headers
        self._http = urllib3.PoolManager(maxsize=settings.download_workers)
        self.downloads_total = 0
        self.download_failures_total = 0
        self.connects_total = 0

    # --- status -------------------------------------------------------------------------

    @property
    def devices(self) -> list[EmulatedDevice]:
        return [c.device for c in self._conns]

    def connected(self) -> int:
        return sum(1 for c in self._conns if c.connected)

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Connect every device (in batches), then keep ticking them in the background."""
        self._tasks.append(self._loop.create_task(self._misc_loop()))
        self._tasks.append(self._loop.create_task(self._tick_loop()))
        for start in range(0, len(self._conns), CONNECT_BATCH):
            for conn in self._conns[start : start + CONNECT_BATCH]:
                self._connect(conn)
            await asyncio.sleep(CONNECT_BATCH_PAUSE_S)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Publish every device's offline state, disconnect cleanly, end the tasks."""
        for task in self._tasks:
            task.cancel()
        for conn in self._conns:
            conn.stopping = True
            if conn.client is not None and conn.connected:
                self._send(conn, conn.device.offline())
        deadline = time.monotonic() + timeout_s
        await asyncio.sleep(0.2)
        for conn in self._conns:
            if conn.client is not None:
                with contextlib.suppress(Exception):
                    conn.client.disconnect()
        while time.monotonic() < deadline and any(c.sock is not None for c in self._conns):
            await asyncio.sleep(0.1)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- connections --------------------------------------------------------------------

    def _connect(self, conn: _Conn) -> None:
        if conn.stopping:
            return
        device = conn.device
        will, birth = device.session()
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=device.device_id,
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=True,
        )
        client.max_queued_messages_set(0)
        client.will_set(will.topic, will.payload, qos=1, retain=True)
        client.on_socket_open = lambda c, u, s: self._on_socket_open(conn, s)
        client.on_socket_close = lambda c, u, s: self._on_socket_close(conn, s)
        client.on_socket_register_write = lambda c, u, s: self._loop.add_writer(s, c.loop_write)
        client.on_socket_unregister_write = lambda c, u, s: self._remove_writer(s)
        client.on_connect = lambda c, u, f, rc, p: self._on_connect(conn, rc, birth)
        client.on_disconnect = lambda c, u, f, rc, p: self._on_disconnect(conn)
        client.on_message = lambda c, u, m: self._on_message(conn, m)
        conn.client = client
        try:
            client.connect(self._host, self._port, self._settings.keepalive_s)
        except OSError as e:
            log.debug("%s: cannot connect: %s", device.device_id, e)
            self._reconnect_later(conn)

    def _on_socket_open(self, conn: _Conn, sock: Any) -> None:
        conn.sock = sock
        assert conn.client is not None
        self._loop.add_reader(sock, conn.client.loop_read)

    def _on_socket_close(self, conn: _Conn, sock: Any) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_reader(sock)
        self._remove_writer(sock)
        conn.sock = None

    def _remove_writer(self, sock: Any) -> None:
        with contextlib.suppress(Exception):
            self._loop.remove_writer(sock)

    def _on_connect(self, conn: _Conn, reason_code: ReasonCode, birth: Publish) -> None:
        if reason_code.is_failure:
            log.warning(
                "%s: the broker refused the connection: %s", conn.device.device_id, reason_code
            )
            return
        conn.connected = True
        self.connects_total += 1
        self._send(conn, birth)
        device = conn.device
        assert conn.client is not None
        conn.client.subscribe(
            [(device.topic(Channel.DESIRED), 1), (device.topic(Channel.STORED), 1)]
        )
        # As the agent's link: after the birth, the outbox from its oldest message.
        self._carry_out(conn, device.replay(time.time()))

    def _on_disconnect(self, conn: _Conn) -> None:
        conn.connected = False
        if not conn.stopping:
            self._reconnect_later(conn)

    def _reconnect_later(self, conn: _Conn) -> None:
        delay = RECONNECT_MIN_S + self._rng.uniform(0, RECONNECT_MAX_S - RECONNECT_MIN_S) / 4
        self._loop.call_later(delay, self._connect, conn)

    def _on_message(self, conn: _Conn, message: mqtt.MQTTMessage) -> None:
        device = conn.device
        if message.topic == device.topic(Channel.DESIRED):
            self._carry_out(conn, device.on_desired(bytes(message.payload), _now()))
        elif message.topic == device.topic(Channel.STORED):
            self._carry_out(conn, device.on_stored(bytes(message.payload), time.time()))

    # --- effects ------------------------------------------------------------------------

    def _carry_out(self, conn: _Conn, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Publish):
                self._send(conn, action)
            elif isinstance(action, Fetch):
                self._fetch(conn, action.target)

    def _send(self, conn: _Conn, message: Publish) -> None:
        client = conn.client
        if client is None or not conn.connected:
            return  # lost: the emulator has no outbox (see the device module)
        info = client.publish(message.topic, message.payload, qos=1, retain=message.retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.debug("%s: publish failed: %s", conn.device.device_id, info.rc)

    def _fetch(self, conn: _Conn, target: UpdateTarget) -> None:
        base = self._settings.repository_url
        if base is None:
            self._done(
                conn, lambda d, now: d.fetch_failed(target, "no repository", now, jitter=0.5)
            )
            return
        url = f"{base.rstrip('/')}/targets/{target.sha256}.{target.name}"
        future = self._loop.run_in_executor(self._pool, self._download, url, target.length)

        def finished(f: asyncio.Future[tuple[int, str]]) -> None:
            jitter = self._rng.random()
            try:
                length, sha256 = f.result()
            except Exception as e:  # the network or the repository failed: transient
                self.download_failures_total += 1
                reason = str(e)
                self._done(conn, lambda d, now: d.fetch_failed(target, reason, now, jitter=jitter))
                return
            self.downloads_total += 1
            self._done(conn, lambda d, now: d.fetched(target, length, sha256, now))

        future.add_done_callback(finished)

    def _done(self, conn: _Conn, call: Callable[[EmulatedDevice, datetime], list[Action]]) -> None:
        self._carry_out(conn, call(conn.device, _now()))

    def _download(self, url: str, limit: int) -> tuple[int, str]:
        """GET ``url``: its length and sha256 (at most ``limit`` + 1 bytes read).

        Raises urllib3's errors, or RuntimeError for an HTTP error status.
        """
        response = self._http.request(
            "GET", url, headers=self._headers, preload_content=False, timeout=30.0
        )
        try:
            if response.status >= 400:
                response.drain_conn()
                raise RuntimeError(f"{url} answered HTTP {response.status}")
            digest = hashlib.sha256()
            length = 0
            for chunk in response.stream(CHUNK_BYTES):
                digest.update(chunk)
                length += len(chunk)
                if length > limit:
                    break  # longer than signed: `artifact_problem` says so
            return length, digest.hexdigest()
        finally:
            response.release_conn()

    # --- background tasks ---------------------------------------------------------------

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(MISC_INTERVAL_S)
            for conn in self._conns:
                if conn.client is not None and conn.sock is not None:
                    conn.client.loop_misc()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            now_s = time.time()
            for conn in self._conns:
                if not conn.connected:
                    continue
                actions = conn.device.tick(now_s)
                if actions:
                    self._carry_out(conn, actions)


def _now() -> datetime:
    return datetime.now(UTC)
