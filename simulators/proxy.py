"""A TCP proxy in front of the MQTT broker that drops connections at random: a flaky network.

One thread relays every connection with `selectors`, so a few hundred flaky devices
cost one thread. Each accepted connection gets a lifetime drawn from an exponential
distribution with mean ``mean_lifetime_s``; when it is up, both sockets are closed
without an MQTT DISCONNECT, as a dropped cellular link would, so the broker publishes
the device's will and the agent reconnects with its own backoff.

Only loopback: the proxy listens on 127.0.0.1 and forwards to the broker's host:port.
"""

from __future__ import annotations

import contextlib
import logging
import random
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

_CHUNK = 65536


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket
    dies_at: float
    pending: dict[socket.socket, bytearray] = field(default_factory=dict)


class FlakyProxy:
    """Relay 127.0.0.1:``port`` to ``upstream`` and drop each connection after a while."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        mean_lifetime_s: float,
        seed: int = 0,
    ) -> None:
        if mean_lifetime_s <= 0:
            raise ValueError(f"mean_lifetime_s must be positive, got {mean_lifetime_s}")
        self._upstream = (upstream_host, upstream_port)
        self._mean_lifetime_s = mean_lifetime_s
        self._rng = random.Random(seed)
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._pairs: dict[socket.socket, _Pair] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-flaky-proxy", daemon=True)
        self.drops_total = 0
        self.connections_total = 0

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for pair in list(self._pairs.values()):
            self._close(pair)
        self._selector.close()
        self._listener.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self._listener:
                    self._accept()
                elif sock in self._pairs:
                    self._relay(sock)
            now = time.monotonic()
            for pair in {id(p): p for p in self._pairs.values()}.values():
                if pair.dies_at <= now:
                    self.drops_total += 1
                    self._close(pair)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self._upstream, timeout=2)
        except OSError as e:
            log.debug("flaky proxy: broker %s unreachable: %s", self._upstream, e)
            client.close()
            return
        # Read only when the selector says so; a send may wait briefly for a full buffer.
        client.settimeout(2.0)
        upstream.settimeout(2.0)
        lifetime = self._rng.expovariate(1.0 / self._mean_lifetime_s)
        pair = _Pair(client, upstream, time.monotonic() + lifetime)
        for sock in (client, upstream):
            self._pairs[sock] = pair
            self._selector.register(sock, selectors.EVENT_READ)
        self.connections_total += 1

    def _relay(self, sock: socket.socket) -> None:
        pair = self._pairs[sock]
        other = pair.upstream if sock is pair.client else pair.client
        try:
            data = sock.recv(_CHUNK)
            if not data:
                raise ConnectionResetError("peer closed")
            other.sendall(data)
        except OSError:
            self._close(pair)

    def _close(self, pair: _Pair) -> None:
        for sock in (pair.client, pair.upstream):
            if self._pairs.pop(sock, None) is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
            sock.close()
