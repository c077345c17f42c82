"""How the client turns transport failures and answers that are not the edgefleet API
into one error each, naming the request and the fleet. (Answers of a real fleet, 401,
403, 404 and 409 among them, are in test_commands.py.)"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgefleet.fleet.ctl.client import FleetClient
from edgefleet.fleet.ctl.config import CtlConfig
from edgefleet.fleet.ctl.errors import ApiError, AuthError, ExitCode, TransportError
from tests.fleet.ctl.conftest import Ctl


class NotAFleet(BaseHTTPRequestHandler):
    """Answers every request with ``status`` and ``body`` and remembers the paths."""

    status = 200
    body = b"<html>welcome to nginx</html>"
    content_type = "text/html"
    paths: list[str] = []

    def do_GET(self) -> None:
        NotAFleet.paths.append(self.path)
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def not_a_fleet() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotAFleet)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    NotAFleet.paths = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _client(url: str, **kw: float) -> FleetClient:
    return FleetClient(CtlConfig(url=url, token="t", **kw))


def test_a_closed_port_is_a_transport_error_naming_the_fleet() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with _client(url) as client, pytest.raises(TransportError) as raised:
        client.devices()
    assert str(raised.value).startswith(f"GET /v1/devices: cannot reach the fleet at {url}: ")
    assert raised.value.exit_code == ExitCode.UNREACHABLE


def test_a_fleet_that_does_not_answer_in_time_is_a_transport_error() -> None:
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with _client(url, timeout_s=0.2) as client, pytest.raises(TransportError) as raised:
            client.rollout("ro-1")
    assert f"GET /v1/rollouts/ro-1: no answer from {url} in time" in str(raised.value)


def test_a_server_that_is_not_the_api_is_named_as_such(not_a_fleet: str) -> None:
    with _client(not_a_fleet) as client, pytest.raises(ApiError) as raised:
        client.devices()
    assert raised.value.code == "bad_response"
    assert "not what the edgefleet API sends (not JSON); is 127.0.0.1 an edgefleet fleet?" in str(
        raised.value
    )
    assert raised.value.exit_code == ExitCode.API


def test_json_of_another_shape_is_a_bad_response(
    not_a_fleet: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(NotAFleet, "body", b'{"items": "no"}')
    monkeypatch.setattr(NotAFleet, "content_type", "application/json")
    with _client(not_a_fleet) as client, pytest.raises(ApiError, match="items: Input should be"):
        client.devices()


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (
            502,
            b"<html>bad gateway</html>",
            ApiError,
            "HTTP 502 http_502: Bad Gateway: <html>bad gateway</html>",
        ),
        (
            401,
            b"",
            AuthError,
            "HTTP 401 http_401: Unauthorized (check EDGEFLEET_TOKEN or the profile's token)",
        ),
        (
            403,
            b'{"error": {"code": "forbidden", "message": "needs device:read"}}',
            AuthError,
            "HTTP 403 forbidden: needs device:read",
        ),
    ],
)
def test_error_statuses_carry_what_the_server_said(
    not_a_fleet: str,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    body: bytes,
    error: type[ApiError],
    message: str,
) -> None:
    monkeypatch.setattr(NotAFleet, "status", status)
    monkeypatch.setattr(NotAFleet, "body", body)
    with _client(not_a_fleet) as client, pytest.raises(error) as raised:
        client.device("pi-01")
    assert type(raised.value) is error
    assert str(raised.value) == f"GET /v1/devices/pi-01: {message}"
    assert raised.value.status == status


def test_ids_are_one_path_segment(not_a_fleet: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(NotAFleet, "status", 404)
    with _client(not_a_fleet) as client, pytest.raises(ApiError):
        client.device("../models?x=1")
    assert NotAFleet.paths == ["/v1/devices/..%2Fmodels%3Fx%3D1"]


def test_unreachable_fleet_through_the_command_line(ctl: Ctl) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    result = ctl("rollouts", "watch", "ro-1", url=url)
    assert result.code == ExitCode.UNREACHABLE
    assert result.err.startswith(
        f"edgefleet ctl: error: GET /v1/rollouts/ro-1: cannot reach the fleet at {url}: "
    )
    assert result.err.count("\n") == 1  # one line, no traceback
