"""The local inference API's round trip against the in-process call and the transport floor.

Run: .venv/bin/python tests/benchmarks/api_latency.py [--rounds 10] [--requests 300]

For the wine MLP (ONNX, 13 features) and the 32x32x3 small CNN (ONNX, written at run
time by `edgefleet.simulators.tflite_models.small_cnn`), batch 1, a started `Agent`
(drift monitoring on, a real package) serves ``POST /v1/predict`` on TCP and on a Unix
socket (``[api] unix_socket``). Each row is posted two ways: as JSON
(``{"inputs": {"input": [[...]]}, "request_id": "bench"}``) and as an
``application/x-npy`` body (``np.save`` of the float32 row, ``X-Request-Id: bench``).
Side by side in the same run:

- ``in-process``: `Agent.infer` on the row as a float32 array, timed per call in this
  process (half the calls before the HTTP rounds, half after);
- ``api``: the agent's own API, from a client in a separate process (as a local app
  would be: no GIL shared with the agent);
- ``floor``: the same server stack (`InferenceApi`, its handler and fast head, the same
  threads) whose predict route reads the body but answers a fixed document (a real
  answer, so the same size) without parsing it or inferring: what HTTP, the sockets
  and the client cost on their own, for the same request bytes.

Two clients, each on one persistent keep-alive connection per target:

- the primary one, ``lean``: what a real-time caller on a device would use. A bare
  socket (TCP_NODELAY on TCP), the request head prebuilt but for its Content-Length,
  head, length and body joined and sent in one ``sendall``, the answer read by its
  Content-Length (no header parsing beyond that). The body bytes themselves are
  encoded once, before timing: what encoding costs the caller (``json.dumps`` of the
  list, ``np.save``) is printed beside, not counted in the round trip (nor is decoding
  the answer's JSON);
- ``http.client``: the standard library's keep-alive `http.client.HTTPConnection`
  (``request``, ``getresponse``, ``read``), printed as a second line: what a caller
  using it pays (its own parsing is ~100 us of the floor).

The client runs ``--rounds`` rounds; in each, ``--requests`` requests to every target in
a rotating order, after a warm-up. Figures are p50 and p99 over all requests.
``added`` = api p50 - in-process p50; the target is added <= 100 us on TCP and on the
Unix socket, judged on the lean client. ``ours`` = api p50 - floor p50 - in-process
p50: what the agent's handler adds beyond the transport (body parsing, input
conversion, the answer's JSON, a cold-cache call). With ``--baseline FILE`` (an older
``agent/inference_api.py``, e.g. ``git show 4c2cdb5:agent/inference_api.py``), that
module's API serves the same model host on TCP too (JSON, lean client): before and
after side by side. The load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from agent_overhead import package, started_agent  # type: ignore[import-not-found]
from numpy.typing import NDArray

from edgefleet.agent.daemon import Agent
from edgefleet.agent.inference_api import InferenceApi
from edgefleet.simulators.tflite_models.catalog import model_path
from edgefleet.simulators.tflite_models.datasets import wine_split
from edgefleet.simulators.tflite_models.small_cnn import build_small_cnn, digit_images

TARGET_US = 100.0
WARMUP = 50
JSON = "application/json"
NPY = "application/x-npy"
BODIES = ("json", "npy")
CLIENTS = ("lean", "http.client")
TRANSPORTS = ("tcp", "unix")


class _LeanClient:
    """The primary client (see the module docstring): one keep-alive socket, the head
    prebuilt but for Content-Length, the answer read by its Content-Length."""

    def __init__(self, kind: str, where: Any, content_type: str, body: bytes) -> None:
        if kind == "tcp":
            self.sock = socket.create_connection(("127.0.0.1", where), timeout=10)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(where)
        extra = "X-Request-Id: bench\r\n" if content_type == NPY else ""
        self.head = (
            f"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\n{extra}"
            f"Content-Type: {content_type}\r\nContent-Length: "
        ).encode("ascii")
        self.body = body

    def post(self, body: bytes) -> bytes:
        """One round trip; the answer's body. Raises RuntimeError on a non-200."""
        sock = self.sock
        sock.sendall(b"%b%d\r\n\r\n%b" % (self.head, len(body), body))
        data = sock.recv(65536)
        while (end := data.find(b"\r\n\r\n")) < 0:
            data += sock.recv(65536)
        if not data.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(data[:200].decode("latin-1"))
        at = data.index(b"Content-Length: ", 0, end) + 16
        total = end + 4 + int(data[at : data.index(b"\r\n", at)])
        while len(data) < total:
            data += sock.recv(65536)
        return data[end + 4 : total]

    def once(self) -> None:
        self.post(self.body)

    def close(self) -> None:
        self.sock.close()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


def _library_client(
    kind: str, where: Any, content_type: str, body: bytes
) -> tuple[Callable[[], None], Callable[[], None]]:
    conn = (
        http.client.HTTPConnection("127.0.0.1", where, timeout=10)
        if kind == "tcp"
        else _UnixConnection(where)
    )
    headers = {"Content-Type": content_type}
    if content_type == NPY:
        headers["X-Request-Id"] = "bench"

    def once() -> None:
        conn.request("POST", "/v1/predict", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")

    return once, conn.close


def client(spec: dict[str, Any]) -> dict[str, list[int]]:
    """The client process: round trips (ns) per target, rotating order each round.

    A target is ``(client, kind, where, body)``: client "lean" or "http.client", kind
    "tcp" or "unix", body "json" or "npy" (``spec["bodies"]``, base64)."""
    bodies = {name: base64.b64decode(text) for name, text in spec["bodies"].items()}
    calls: dict[str, Callable[[], None]] = {}
    closers: list[Callable[[], None]] = []
    for name, (library, kind, where, body) in spec["targets"].items():
        content_type = NPY if body == "npy" else JSON
        if library == "lean":
            lean = _LeanClient(kind, where, content_type, bodies[body])
            calls[name], _ = lean.once, closers.append(lean.close)
        else:
            calls[name], closer = _library_client(kind, where, content_type, bodies[body])
            closers.append(closer)
    clock = time.perf_counter_ns
    for call in calls.values():
        for _ in range(WARMUP):
            call()
    times: dict[str, list[int]] = {name: [] for name in calls}
    names = list(calls)
    for round_ in range(spec["rounds"]):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            call, out = calls[name], times[name]
            for _ in range(spec["requests"]):
                start = clock()
                call()
                out.append(clock() - start)
    for close in closers:
        close()
    return times


def in_process(agent: Agent, x: NDArray[np.float32], calls: int) -> list[int]:
    infer, clock = agent.infer, time.perf_counter_ns
    times = []
    for i in range(WARMUP):
        infer({"input": x}, (f"warm-{i}",))
    for i in range(calls):
        rid = (f"in-{i}",)
        start = clock()
        infer({"input": x}, rid)
        times.append(clock() - start)
    return times


def percentiles(times: list[int]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(times, dtype=np.float64), [50, 99]) / 1e3
    return float(p50), float(p99)


def _bodies(x: NDArray[np.float32]) -> tuple[dict[str, bytes], dict[str, float]]:
    """The request bodies, and what encoding each costs a caller (us, median)."""
    encoders: dict[str, Callable[[], bytes]] = {
        "json": lambda: json.dumps(
            {"inputs": {"input": x.tolist()}, "request_id": "bench"}
        ).encode(),
        "npy": lambda: _npy(x),
    }
    bodies, costs = {}, {}
    for name, encode in encoders.items():
        times = []
        for _ in range(200):
            start = time.perf_counter_ns()
            bodies[name] = encode()
            times.append(time.perf_counter_ns() - start)
        costs[name] = float(np.median(times)) / 1e3
    return bodies, costs


def _npy(x: NDArray[np.float32]) -> bytes:
    stream = io.BytesIO()
    np.save(stream, x, allow_pickle=False)
    return stream.getvalue()


def measure(
    label: str, pkg: Path, x: NDArray[np.float32], workdir: Path, args: argparse.Namespace
) -> list[str]:
    bodies, encoding = _bodies(x)
    sock = workdir / f"{label}-api.sock"
    with started_agent(pkg, workdir, f"api-{label}", drift=True, unix_socket=sock) as agent:
        _, outputs = agent.infer({"input": x}, ("fixed",))
        fixed = {
            "request_id": "bench",
            "model": {"name": "m", "version": "1.0.0"},
            "outputs": {k: np.asarray(v).tolist() for k, v in outputs.items()},
            "latency_ms": 0.0123,
        }
        floor = InferenceApi(
            agent.model_host,
            bind_host="127.0.0.1",
            port=0,
            max_body_bytes=4 * 1024 * 1024,
            health=lambda: {},
            unix_socket=workdir / f"{label}-floor.sock",
            routes={"/v1/predict": lambda host, raw: fixed},
        )
        floor.start()
        old = None
        if args.baseline is not None:
            old = _baseline_api(args.baseline, agent)
            old.start()
        where = {
            ("api", "tcp"): agent.api_port,
            ("api", "unix"): str(sock),
            ("floor", "tcp"): floor.port,
            ("floor", "unix"): str(floor.unix_socket),
        }
        targets: dict[str, tuple[str, str, Any, str]] = {
            f"{library} {body} {server} {kind}": (library, kind, where[server, kind], body)
            for library in CLIENTS
            for body in BODIES
            for server in ("api", "floor")
            for kind in TRANSPORTS
        }
        if old is not None:
            targets["old api tcp"] = ("lean", "tcp", old.port, "json")
        try:
            spec = {
                "bodies": {k: base64.b64encode(v).decode() for k, v in bodies.items()},
                "rounds": args.rounds,
                "requests": args.requests,
                "targets": targets,
            }
            calls = args.rounds * args.requests
            local = in_process(agent, x, calls // 2)
            result = subprocess.run(
                [sys.executable, __file__, "--client"],
                input=json.dumps(spec),
                capture_output=True,
                text=True,
                check=True,
            )
            local += in_process(agent, x, calls - calls // 2)
        finally:
            floor.stop()
            if old is not None:
                old.stop()
    times: dict[str, list[int]] = json.loads(result.stdout)
    figures = {"in-process": percentiles(local)} | {t: percentiles(v) for t, v in times.items()}
    for name, (p50, p99) in figures.items():
        print(f"{label:<11}{name:<28}{p50:>9.1f}{p99:>9.1f}")
    local_p50, local_p99 = figures["in-process"]
    verdicts = [
        f"{label}: in-process p50 {local_p50:.1f} us, p99 {local_p99:.1f} us; bodies: json"
        f" {len(bodies['json'])} B (encoding it {encoding['json']:.1f} us), npy"
        f" {len(bodies['npy'])} B ({encoding['npy']:.1f} us), not in the round trips"
    ]
    for body in BODIES:
        for kind in TRANSPORTS:
            api_p50, api_p99 = figures[f"lean {body} api {kind}"]
            floor_p50 = figures[f"lean {body} floor {kind}"][0]
            added = api_p50 - local_p50
            verdict = "MET" if added <= TARGET_US else "NOT MET"
            lib_api = figures[f"http.client {body} api {kind}"][0]
            lib_floor = figures[f"http.client {body} floor {kind}"][0]
            verdicts.append(
                f"  {body:<5}{kind:<5} lean client: api p50 {api_p50:6.1f} p99 {api_p99:6.1f};"
                f" floor {floor_p50:6.1f}; added {added:6.1f} us (ours"
                f" {added - floor_p50:6.1f}); target <= {TARGET_US:.0f}: {verdict}"
                f"\n{'':<12}http.client: api p50 {lib_api:6.1f}; floor {lib_floor:6.1f};"
                f" added {lib_api - local_p50:6.1f} us"
            )
    if "old api tcp" in figures:
        old_p50 = figures["old api tcp"][0]
        now = figures["lean json api tcp"][0]
        verdicts.append(
            f"  json tcp  before this change (--baseline): api {old_p50:6.1f} us, added"
            f" {old_p50 - local_p50:6.1f} us; now {now / old_p50:.2f}x that"
        )
    return verdicts


def _baseline_api(path: Path, agent: Agent) -> Any:
    """The API of an older ``inference_api.py`` (e.g. ``git show REV:agent/inference_api.py``)
    serving the same model host on another port, for a side-by-side before/after."""
    spec = importlib.util.spec_from_file_location("baseline_inference_api", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.InferenceApi(
        agent.model_host,
        bind_host="127.0.0.1",
        port=0,
        max_body_bytes=4 * 1024 * 1024,
        health=lambda: {},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests", type=int, default=300, help="per target and round")
    parser.add_argument("--only", nargs="*", help="wine, small_cnn (default: both)")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="an older agent/inference_api.py to serve beside this one (TCP), for before/after",
    )
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        json.dump(client(json.load(sys.stdin)), sys.stdout)
        return
    workdir = Path(tempfile.mkdtemp(prefix="api-latency-"))
    started = time.perf_counter()
    print(f"load average at start: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"{'model':<11}{'client body server transport':<28}{'p50 us':>9}{'p99 us':>9}")
    wine = wine_split()
    images, _ = digit_images()
    cases = {
        "wine": (model_path("wine_float.onnx"), wine.x_train, wine.x_test[:1]),
        "small_cnn": (
            build_small_cnn(workdir / "small_cnn.onnx"),
            images[:1200],
            images[1200:1201],
        ),
    }
    verdicts = []
    for label, (model, reference, row) in cases.items():
        if args.only and label not in args.only:
            continue
        pkg = package(model, reference, workdir / f"pkg-{label}")
        x = np.ascontiguousarray(row, dtype=np.float32)
        verdicts += measure(label, pkg, x, workdir, args)
    print()
    print("\n".join(verdicts))
    print(f"load average at end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
