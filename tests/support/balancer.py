"""A TCP load balancer in front of fleet replicas, for tests that kill replicas.

Production puts N replicas behind a load balancer; devices and operators know only its
address. This one does what a plain L4 balancer with health by connect does: each new
connection goes to the next backend in turn, and a backend that refuses the connection
(a killed replica) is skipped for that connection. Bytes are relayed both ways until
either side closes; a connection that was open to a replica when it died just breaks,
as it would behind a real balancer.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections.abc import Sequence

CONNECT_TIMEOUT_S = 1.0
CHUNK_BYTES = 64 * 1024


class Balancer:
    """Listens on 127.0.0.1 (a free port) and spreads connections over ``backends``."""

    def __init__(self, backends: Sequence[tuple[str, int]]) -> None:
        if not backends:
            raise ValueError("a balancer needs at least one backend")
        self.backends = list(backends)
        self._turn = itertools.count()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="balancer", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self._thread.join(5)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _connect(self) -> socket.socket | None:
        first = next(self._turn)
        for i in range(len(self.backends)):
            host, port = self.backends[(first + i) % len(self.backends)]
            try:
                return socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
            except OSError:
                continue  # that replica is down: the next one
        return None

    def _serve(self, client: socket.socket) -> None:
        backend = self._connect()
        if backend is None:
            client.close()
            return
        backend.settimeout(None)
        threading.Thread(target=_pipe, args=(backend, client), daemon=True).start()
        _pipe(client, backend)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(CHUNK_BYTES):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        # Either side gone: close both, so the other pipe's recv ends too.
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
