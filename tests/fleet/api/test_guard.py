"""`RequestGuard` on a running fleet: bodies are refused on their headers, not read.

The requests go over a raw socket so the test controls how much of a body is sent: a
refusal that arrives while most of the body is still unsent proves the server answered
without waiting for (or buffering) it.
"""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import psutil
import pytest

from edgefleet.fleet.service import FleetService
from tests.support.fleet_fixtures import ADMIN_TOKEN, MakeFleet

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

MIB = 1024 * 1024
BIG = 31 * MIB


def _connect(fleet: FleetService) -> socket.socket:
    url = urlsplit(fleet.base_url)
    return socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10)


def _request_head(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: fleet", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response; got {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def _send_until_answered(sock: socket.socket, total: int) -> int:
    """Send up to ``total`` zero bytes, stopping once the server has answered."""
    sock.setblocking(False)
    sent = 0
    chunk = b"0" * 65536
    deadline = time.monotonic() + 20
    try:
        while sent < total and time.monotonic() < deadline:
            try:
                if sock.recv(1, socket.MSG_PEEK):
                    break  # the answer is here
            except BlockingIOError:
                pass
            try:
                sent += sock.send(chunk[: total - sent])
            except BlockingIOError:
                time.sleep(0.01)  # the server is not reading: wait for its answer
            except (BrokenPipeError, ConnectionResetError):
                break
    finally:
        sock.setblocking(True)
    return sent


def test_unauthenticated_31_mib_body_is_refused_without_being_read(
    make_fleet: MakeFleet,
) -> None:
    fleet = make_fleet()
    rss_before = psutil.Process().memory_info().rss
    with _connect(fleet) as sock:
        sock.sendall(
            _request_head(
                "/v1/rollouts",
                {"Content-Type": "application/json", "Content-Length": str(BIG)},
            )
        )
        sent = _send_until_answered(sock, BIG)
        status, headers, body = _read_response(sock)
    assert status == 401
    assert headers["www-authenticate"] == "Bearer"
    assert headers["connection"] == "close"
    assert b'"error"' in body
    assert b"unauthenticated" in body
    # The server stops reading: what the kernel buffers is far below the body.
    assert sent < 8 * MIB, f"the client got {sent} bytes of {BIG} out before the answer"
    # The fleet runs in this process: it buffered none of it.
    assert psutil.Process().memory_info().rss - rss_before < 16 * MIB


def test_declared_body_above_the_limit_is_refused_at_once(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(max_request_body_bytes=64 * 1024)
    with _connect(fleet) as sock:
        sock.sendall(
            _request_head(
                "/v1/rollouts",
                {
                    "Authorization": f"Bearer {ADMIN_TOKEN}",
                    "Content-Type": "application/json",
                    "Content-Length": str(BIG),
                },
            )
        )
        status, headers, body = _read_response(sock)  # no byte of the body sent
    assert status == 413
    assert headers["connection"] == "close"
    assert b"payload_too_large" in body
    assert str(64 * 1024).encode() in body


def test_chunked_body_is_cut_off_at_the_limit(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(max_request_body_bytes=64 * 1024)
    with _connect(fleet) as sock:
        sock.sendall(
            _request_head(
                "/v1/rollouts",
                {
                    "Authorization": f"Bearer {ADMIN_TOKEN}",
                    "Content-Type": "application/json",
                    "Transfer-Encoding": "chunked",
                },
            )
        )
        piece = b"[" + b"1," * 8000  # 16 KB of an endless JSON array, per chunk
        sent = 0
        for _ in range(8):  # 128 KB: past the limit, and no last chunk ever
            sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            sent += len(piece)
        status, _headers, body = _read_response(sock)
    assert status == 413
    assert b"payload_too_large" in body
    assert b"exceeds 65536 bytes" in body


def test_body_within_the_limit_reaches_the_route(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    body = b'{"model": "wine", "version": "9.9.9"}'
    with _connect(fleet) as sock:
        sock.sendall(
            _request_head(
                "/v1/rollouts",
                {
                    "Authorization": f"Bearer {ADMIN_TOKEN}",
                    "Content-Type": "application/json",
                    "Content-Length": str(len(body)),
                },
            )
            + body
        )
        status, _, answer = _read_response(sock)
    assert status == 404, answer  # the route ran: no such model version
    assert b"not_found" in answer


def test_request_without_a_body_needs_no_token_at_the_guard(make_fleet: MakeFleet) -> None:
    # The route's own check answers; the guard only looks at requests with a body.
    fleet = make_fleet()
    with _connect(fleet) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: fleet\r\n\r\n")
        status, _, _ = _read_response(sock)
    assert status == 200
