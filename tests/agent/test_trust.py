"""The device's TUF fetcher keeps its kept-alive connections usable after an HTTP error."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from tuf.api import exceptions as tuf_errors

from edgefleet.agent.trust import HeaderFetcher


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the fleet's server does
    requests: list[str] = []

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        if self.path.startswith("/missing"):
            body = b'{"error": {"code": "not_found", "message": "no such metadata"}}' * 20
            self.send_response(404)
        else:
            body = b"the metadata"
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_404_with_a_body_does_not_poison_the_next_request(server: str) -> None:
    fetcher = HeaderFetcher()
    with pytest.raises(tuf_errors.DownloadHTTPError):
        fetcher.fetch(f"{server}/missing/2.root.json")
    assert b"".join(fetcher.fetch(f"{server}/timestamp.json")) == b"the metadata"
    # No hidden retry: one request per fetch, so the second response was parsed cleanly.
    assert _Handler.requests == ["/missing/2.root.json", "/timestamp.json"]
