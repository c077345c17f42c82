"""The API's fast head answers exactly as the standard parser does; the Unix socket serves.

The fast head (`parse_fast_head`) only takes plain requests whose head is whole in the
read buffer; a head sent in two pieces (a pause after the request line) goes to the
standard library's parser. Comparing the two answers for the same bytes checks that
nothing changed but the speed.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.daemon import Agent
from edgefleet.agent.inference_api import InferenceApi, parse_fast_head
from edgefleet.agent.metrics import InferenceMetrics
from edgefleet.agent.model_host import ActiveModel, ModelHost
from edgefleet.shared.messages import ModelRef
from edgefleet.shared.runtime import load_runtime
from edgefleet.simulators.models import TrainedModel
from tests.support.agent import agent_config
from tests.support.mosquitto import MosquittoBroker

MAX_BODY = 4096
PATHS = frozenset({b"/v1/predict", b"/v1/feedback"})
ROW = [13.0, 2.0, 2.4, 19.0, 100.0, 2.5, 2.5, 0.3, 1.6, 5.0, 1.0, 3.0, 1000.0]


class UnixConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (what a local app would use)."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=5)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self._path)


def serve(host: ModelHost, unix_socket: Path | None = None) -> InferenceApi:
    api = InferenceApi(
        host,
        bind_host="127.0.0.1",
        port=0,
        max_body_bytes=MAX_BODY,
        health=lambda: {"status": "ok", "model_loaded": host.active is not None},
        unix_socket=unix_socket,
    )
    api.start()
    return api


@pytest.fixture
def host(wine_model: TrainedModel) -> ModelHost:
    active = ActiveModel(load_runtime(wine_model.path), ModelRef(name="wine", version="1.2.0"))
    return ModelHost(InferenceMetrics(), active)


@pytest.fixture
def api(host: ModelHost, tmp_path: Path) -> Iterator[InferenceApi]:
    api = serve(host, tmp_path / "run" / "agent.sock")
    yield api
    api.stop()


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (head("POST /v1/predict HTTP/1.1", "Host: x", "Content-Length: 12"), (12, False)),
        (head("POST /v1/feedback HTTP/1.1", "content-length:7", "Connection: Close"), (7, True)),
        (
            head("POST /v1/predict HTTP/1.1", "Connection: keep-alive", "Content-Length: 0"),
            (0, False),
        ),
    ],
)
def test_plain_heads_are_taken(data: bytes, expected: tuple[int, bool]) -> None:
    parsed = parse_fast_head(data + b'{"body": 1}', PATHS)
    assert parsed is not None
    assert (parsed.content_length, parsed.close) == expected
    assert parsed.size == len(data)


def test_the_fast_head_reads_content_type_and_request_id_as_the_standard_parser() -> None:
    data = head(
        "POST /v1/predict HTTP/1.1",
        "content-type:  Application/X-NPY ",
        "Content-Length: 3",
        "X-Request-ID: r\xe9-1\t",
    )
    parsed = parse_fast_head(data, PATHS)
    assert parsed is not None
    assert (parsed.content_type, parsed.request_id) == ("Application/X-NPY", "r\xe9-1")
    plain = parse_fast_head(head("POST /v1/predict HTTP/1.1", "Content-Length: 3"), PATHS)
    assert plain is not None
    assert (plain.content_type, plain.request_id) == (None, None)


@pytest.mark.parametrize(
    "data",
    [
        head("POST /v1/predict HTTP/1.1", "Content-Length: 5")[:-2],  # not whole yet
        head(
            "POST /v1/predict HTTP/1.1", "Content-Length: 5", "Content-Type: a", "Content-Type: b"
        ),
        head(
            "POST /v1/predict HTTP/1.1", "Content-Length: 5", "X-Request-Id: a", "x-request-id: b"
        ),
        head("GET /v1/predict HTTP/1.1", "Content-Length: 5"),
        head("POST /v1/predict?x=1 HTTP/1.1", "Content-Length: 5"),
        head("POST /v1/other HTTP/1.1", "Content-Length: 5"),
        head("POST /v1/predict HTTP/1.0", "Content-Length: 5"),
        head("POST  /v1/predict HTTP/1.1", "Content-Length: 5"),
        head("POST /v1/predict HTTP/1.1"),
        head("POST /v1/predict HTTP/1.1", "Content-Length: 5", "Content-Length: 5"),
        head("POST /v1/predict HTTP/1.1", "Content-Length: -1"),
        head("POST /v1/predict HTTP/1.1", "Content-Length: 0x10"),
        head("POST /v1/predict HTTP/1.1", "Content-Length : 5"),
        head("POST /v1/predict HTTP/1.1", "Content-Length: 5", "Transfer-Encoding: chunked"),
        head("POST /v1/predict HTTP/1.1", "Content-Length: 5", "Expect: 100-continue"),
        head("POST /v1/predict HTTP/1.1", "Content-Length: 5", "Connection: upgrade"),
        head("POST /v1/predict HTTP/1.1", "Content-Length: 5", "X: a", " folded"),
        head("POST /v1/predict HTTP/1.1", "no colon here", "Content-Length: 5"),
        head("POST /v1/predict HTTP/1.1", *[f"X-{i}: y" for i in range(101)], "Content-Length: 5"),
    ],
)
def test_anything_unusual_is_left_to_the_standard_parser(data: bytes) -> None:
    assert parse_fast_head(data, PATHS) is None


def exchange(port: int, raw: bytes, *, split: bool) -> tuple[int, dict[str, str], Any]:
    """Send ``raw`` (``split``: the request line, a pause, the rest); status, headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        if split:
            cut = raw.index(b"\r\n") + 2
            sock.sendall(raw[:cut])
            time.sleep(0.05)  # the server's first read now holds the request line only
            raw = raw[cut:]
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        headers = {k: v for k, v in response.getheaders() if k != "Date"}
        payload = response.read()
        # The length varies with latency_ms's digits: checked, then left out.
        assert int(headers.pop("Content-Length")) == len(payload)
        document = json.loads(payload)
    if isinstance(document, dict):
        document.pop("latency_ms", None)
    return response.status, headers, document


def request(body: bytes, *extra: str, path: str = "/v1/predict") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}", *extra]
    return head(*lines) + body


@pytest.mark.parametrize(
    "raw",
    [
        request(json.dumps({"inputs": {"input": [ROW]}, "request_id": "r-1"}).encode()),
        request(json.dumps({"inputs": {"input": [ROW, ROW]}, "request_id": "r-2"}).encode()),
        request(b"{not json", "Connection: close"),
        request(b'{"inputs": {"input": [[1.0, 2.0]]}}'),
        request(json.dumps({"inputs": {"input": [ROW] * 60}}).encode()),  # over MAX_BODY
        request(json.dumps({"request_id": "r-1", "label": 1}).encode(), path="/v1/feedback"),
    ],
)
def test_the_fast_head_answers_what_the_standard_parser_answers(
    api: InferenceApi, raw: bytes
) -> None:
    fast = exchange(api.port, raw, split=False)
    slow = exchange(api.port, raw, split=True)
    assert fast == slow
    assert fast[0] in (200, 400, 409, 413)


def test_predict_over_the_unix_socket_with_keep_alive(api: InferenceApi, host: ModelHost) -> None:
    assert api.unix_socket is not None
    assert api.unix_socket.is_socket()
    assert api.unix_socket.stat().st_mode & 0o777 == 0o660
    conn = UnixConnection(api.unix_socket)
    try:
        for i in range(5):
            body = json.dumps({"inputs": {"input": [ROW]}, "request_id": f"u-{i}"}).encode()
            conn.request("POST", "/v1/predict", body=body)
            response = conn.getresponse()
            assert response.status == 200
            document = json.loads(response.read())
            assert document["request_id"] == f"u-{i}"
            assert document["model"] == {"name": "wine", "version": "1.2.0"}
        conn.request("GET", "/v1/health")
        health = conn.getresponse()
        assert (health.status, json.loads(health.read())["model_loaded"]) == (200, True)
    finally:
        conn.close()
    assert host.metrics.interval().inferences == 5


def test_a_stale_socket_is_replaced_a_regular_file_is_not_and_stop_removes_it(
    host: ModelHost, tmp_path: Path
) -> None:
    path = tmp_path / "agent.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file of a dead process stays behind
    api = serve(host, path)
    try:
        conn = UnixConnection(path)
        conn.request("GET", "/v1/health")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        api.stop()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="in use"):
        serve(host, path)
    assert path.read_text() == "not a socket"


def test_the_agent_serves_its_api_on_the_configured_unix_socket(
    tmp_path: Path, shared_mosquitto: MosquittoBroker, unique_id: str, wine_model: TrainedModel
) -> None:
    path = tmp_path / "run" / "agent.sock"
    config = agent_config(
        tmp_path,
        shared_mosquitto,
        f"unix-{unique_id}",
        api={"port": 0, "unix_socket": str(path)},
        model={"path": str(wine_model.path), "name": "wine", "version": "1.0.0"},
    )
    agent = Agent(config)
    agent.start()
    try:
        conn = UnixConnection(path)
        body = json.dumps({"inputs": {"input": [ROW]}}).encode()
        conn.request("POST", "/v1/predict", body=body)
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["model"]["name"] == "wine"
        conn.close()
    finally:
        agent.stop(1.0)
    assert not path.exists()


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": {"input": [[1.5, -0.0, 1e-05, 1e+20, 3]]}, "request_id": "x"}',
        b'{"a": NaN, "b": [Infinity, -Infinity]}',
        b'{"big": 100000000000000000000000}',
        b'{"inputs": {"input": [[1208925819614629174706176, 2.5]]}}',
        b'{"long": 0.12345678901234567890123, "i": 9223372036854775807}',
        b'{"s": "\\ud800"}',
        '{"s": "\u00e9"}'.encode("utf-16"),
        b'\xef\xbb\xbf{"bom": 1}',
        b'{"dup": 1, "dup": 2}',
        b"[" * 2000 + b"]" * 2000,
        b"{not json",
        b'{"a": 1} trailing',
        b"\xff\xfe\x00{",
    ],
)
def test_json_bodies_read_as_the_standard_library_reads_them(body: bytes) -> None:
    """orjson first, json.loads for what it refuses: the same document or the same 400."""
    from edgefleet.agent.inference_api import ApiError, _load_json

    try:
        expected: Any = repr(json.loads(body))
    except (ValueError, RecursionError):
        expected = ApiError
    try:
        got: Any = repr(_load_json(body))
    except ApiError:
        got = ApiError
    assert got == expected
