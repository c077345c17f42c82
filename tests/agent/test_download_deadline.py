"""A download's total deadline, its abort from another thread, and a 404 that is final."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgefleet.agent.download import DownloadAbort, download
from edgefleet.shared.signing.errors import TargetNotFound, TransportError, UpdateRejected
from tests.shared.signing.repo_server import RepoServer

SIZE = 4096
DATA = bytes(range(256)) * (SIZE // 256)


class TricklingServer:
    """Announces SIZE bytes, then sends one byte every ``interval_s`` (a slow repository)."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(SIZE))
                self.end_headers()
                for b in DATA:
                    try:
                        self.wfile.write(bytes([b]))
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(interval_s)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/model.efpkg"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def trickling() -> Iterator[TricklingServer]:
    server = TricklingServer()
    yield server
    server.stop()


def fetch(url: str, dest: Path, **kwargs: object):
    return download(
        url,
        dest,
        expected_sha256=hashlib.sha256(DATA).hexdigest(),
        expected_length=SIZE,
        **kwargs,  # type: ignore[arg-type]
    )


def test_trickling_server_is_stopped_at_the_total_deadline(trickling, tmp_path: Path):
    dest = tmp_path / "model.efpkg"
    started = time.monotonic()

    # Each byte arrives well within the read timeout: only the total deadline can end this.
    # 2.5 s, not less: on a loaded machine the first byte can take most of a second.
    with pytest.raises(TransportError, match=r"total deadline of 2\.5 s"):
        fetch(trickling.url, dest, timeout_s=10, deadline_s=2.5)

    assert time.monotonic() - started < 5
    # What arrived is kept, so the next attempt resumes instead of starting over.
    assert 0 < dest.with_name("model.efpkg.part").stat().st_size < SIZE


def test_abort_from_another_thread_stops_a_blocked_read_at_once(trickling, tmp_path: Path):
    abort = DownloadAbort()
    threading.Timer(0.5, abort.abort, args=("superseded",)).start()
    started = time.monotonic()

    with pytest.raises(TransportError, match="superseded"):
        fetch(trickling.url, tmp_path / "model.efpkg", timeout_s=30, deadline_s=60, abort=abort)

    assert time.monotonic() - started < 2.5


def test_abort_before_the_start_downloads_nothing(trickling, tmp_path: Path):
    abort = DownloadAbort()
    abort.abort("superseded")

    with pytest.raises(TransportError, match="superseded"):
        fetch(trickling.url, tmp_path / "model.efpkg", abort=abort)
    assert trickling.requests == 0


def test_missing_artifact_is_rejected_as_not_found(tmp_path: Path):
    (tmp_path / "www").mkdir()
    server = RepoServer(tmp_path / "www")
    try:
        with pytest.raises(TargetNotFound, match="HTTP 404") as caught:
            fetch(server.url + "targets/nope.efpkg", tmp_path / "m", timeout_s=5)
    finally:
        server.stop()
    # A rejection, not a transport failure: the runner does not retry it.
    assert isinstance(caught.value, UpdateRejected)
    assert not isinstance(caught.value, TransportError)
