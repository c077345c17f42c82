"""A real HTTP server for a TUF repository directory, with Range, ETag and injected faults.

Faults are injected into a real connection (cut it after N bytes, stream forever, send a
wrong body), never by mocking the client.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

_RANGE = re.compile(r"^bytes=(\d+)-$")


@dataclass
class Faults:
    cut_after: dict[str, int] = field(default_factory=dict)  # path -> bytes, then drop (once)
    endless: set[str] = field(default_factory=set)  # path -> 200 with no end
    replace_body: dict[str, bytes] = field(default_factory=dict)  # path -> other bytes
    lie_length: dict[str, int] = field(default_factory=dict)  # path -> Content-Length sent


class RepoServer:
    """Serves ``root`` on 127.0.0.1 on a free port until `stop`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.faults = Faults()
        self.bytes_sent: Counter[str] = Counter()
        self.requests: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; with Nagle's algorithm the body
            # waits for the client's delayed ACK, ~40 ms on every keep-alive request.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = unquote(h.path.split("?", 1)[0])
        self.requests.append((path, dict(h.headers.items())))
        if path in self.faults.endless:
            self._endless(h, path)
            return
        file = (self.root / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.root.resolve()) or not file.is_file():
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        body = self.faults.replace_body.get(path, file.read_bytes())
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        start = 0
        match = _RANGE.match(h.headers.get("Range", ""))
        if_range = h.headers.get("If-Range")
        if match and (if_range is None or if_range == etag):
            start = int(match.group(1))
            if start >= len(body):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(body)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                return
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            h.send_response(200)
        payload = body[start:]
        h.send_header("Content-Length", str(self.faults.lie_length.get(path, len(payload))))
        h.send_header("ETag", etag)
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        cut = self.faults.cut_after.pop(path, None)
        if cut is not None:
            payload = payload[:cut]
        try:
            h.wfile.write(payload)
            h.wfile.flush()
        except OSError:
            return
        self.bytes_sent[path] += len(payload)
        if cut is not None:
            h.close_connection = True
            h.connection.shutdown(2)

    def _endless(self, h: BaseHTTPRequestHandler, path: str) -> None:
        h.send_response(200)
        h.send_header("Connection", "close")
        h.end_headers()
        chunk = b"\0" * 65536
        # Bounded so a broken client cannot keep this thread busy forever.
        for _ in range(16 * 1024):
            try:
                h.wfile.write(chunk)
            except OSError:
                break
            self.bytes_sent[path] += len(chunk)
        h.close_connection = True
