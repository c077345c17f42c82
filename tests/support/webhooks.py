"""A real webhook endpoint for the tests: a stdlib HTTP server on a free loopback port."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class WebhookReceiver:
    """Records the JSON bodies POSTed to ``url``; answers 503 to the first ``fail_first``
    (counted in ``failed``, not recorded) and 204 to the rest.

    With ``hang_s`` set, each request is held that long (or until the fixture ends)
    before it is answered, like a receiver that accepts connections and never replies.
    ``requests`` keeps every recorded request's headers and raw body, for signatures.
    """

    url: str = ""
    fail_first: int = 0
    failed: int = 0
    arrived: int = 0  # requests received, answered or not
    hang_s: float = 0.0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closing: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return int(self.url.split(":")[2].split("/")[0])

    def received(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.bodies)

    def received_requests(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return list(self.requests)


@contextmanager
def serve_webhook(receiver: WebhookReceiver) -> Iterator[WebhookReceiver]:
    """Serve ``receiver`` on a free loopback port until the block ends."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.arrived += 1
            if receiver.hang_s:
                receiver.closing.wait(receiver.hang_s)
            with receiver.lock:
                fail = receiver.failed < receiver.fail_first
                if fail:
                    receiver.failed += 1
                else:
                    receiver.bodies.append(json.loads(body))
                    receiver.requests.append((dict(self.headers.items()), body))
            self.send_response(503 if fail else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/drift"
    try:
        yield receiver
    finally:
        receiver.closing.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A webhook endpoint on a free loopback port, stopped after the test."""
    with serve_webhook(WebhookReceiver()) as receiver:
        yield receiver


@pytest.fixture
def webhook_receivers() -> Iterator[Callable[[], WebhookReceiver]]:
    """Makes webhook endpoints on free loopback ports; all stopped after the test."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(serve_webhook(WebhookReceiver()))
