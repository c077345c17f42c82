"""The local inference API's round trip against the in-process call and the transport floor.

Run: .venv/bin/python tests/benchmarks/api_latency.py [--rounds 10] [--requests 300]

For the wine MLP (ONNX, 13 features) and the 32x32x3 small CNN (ONNX, written at run
time by `edgefleet.simulators.tflite_models.small_cnn`), batch 1, a started `Agent`
(drift monitoring on, a real package) serves ``POST /v1/predict`` on TCP and on a Unix
socket (``[api] unix_socket``). Side by side in the same run:

- ``in-process``: `Agent.infer` on the row as a float32 array, timed per call in this
  process (half the calls before the HTTP rounds, half after);
- ``api tcp`` / ``api unix``: a keep-alive `http.client` connection in a separate
  client process (as a local app would be: no GIL shared with the agent) posting the
  row as JSON; per request: send, read the whole answer;
- ``raw api ...`` / ``raw floor ...``: the same two servers from a bare socket sending
  a prebuilt request and reading the answer by its Content-Length: what a lean client
  sees, and the floor less what `http.client` itself costs;
- ``floor tcp`` / ``floor unix``: the same client against the same server stack
  (`InferenceApi`, its handler and fast head, the same threads) whose predict route
  returns a fixed document (a real answer, so the same size) without reading the JSON
  or inferring: what HTTP, the sockets and the client cost on their own.

The agent's own API serves both ``api`` targets (its config sets ``api.unix_socket``).
With ``--baseline FILE`` (an older ``agent/inference_api.py``, e.g. from
``git show 4c2cdb5:agent/inference_api.py``), that module's API serves the same model host
on TCP too (``old api tcp``), measured in the same rounds: before and after side by side.

The client runs ``--rounds`` rounds; in each, ``--requests`` requests to every target in
a rotating order, after a warm-up. Figures are p50 and p99 over all requests.
``added`` = api p50 - in-process p50 (target: <= 100 us, on TCP and on the Unix
socket); ``ours`` = api p50 - floor p50 - in-process p50: what the agent's handler
adds beyond the transport (JSON in and out, input conversion, the call); ``http.client``
= floor p50 - raw floor p50, the client library's share of the floor. The load
average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
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
TARGETS = (
    "api tcp",
    "api unix",
    "floor tcp",
    "floor unix",
    "raw api tcp",
    "raw api unix",
    "raw floor tcp",
    "raw floor unix",
)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


class _RawClient:
    """A prebuilt request on a bare socket, the answer read by its Content-Length.

    No client library: what the floor costs without `http.client`'s own parsing.
    """

    def __init__(self, kind: str, where: Any, body: bytes) -> None:
        if kind == "tcp":
            self.sock = socket.create_connection(("127.0.0.1", where), timeout=10)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(where)
        self.request = (
            b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        ) + body

    def once(self) -> None:
        self.sock.sendall(self.request)
        data = b""
        while (end := data.find(b"\r\n\r\n")) < 0:
            data += self.sock.recv(65536)
        if not data.startswith(b"HTTP/1.1 200 "):
            raise RuntimeError(data[:80].decode("latin-1"))
        at = data.index(b"Content-Length: ") + 16
        length = int(data[at : data.index(b"\r\n", at)])
        while len(data) < end + 4 + length:
            data += self.sock.recv(65536)

    def close(self) -> None:
        self.sock.close()


def client(spec: dict[str, Any]) -> dict[str, list[int]]:
    """The client process: round trips (ns) per target, rotating order each round."""
    body = spec["body"].encode()
    headers = {"Content-Type": "application/json"}
    calls: dict[str, Callable[[], None]] = {}
    closers: list[Callable[[], None]] = []
    for name, (kind, where) in spec["targets"].items():
        if name.startswith("raw"):
            raw = _RawClient(kind.removeprefix("raw "), where, body)
            calls[name], _ = raw.once, closers.append(raw.close)
            continue
        conn = (
            http.client.HTTPConnection("127.0.0.1", where, timeout=10)
            if kind == "tcp"
            else _UnixConnection(where)
        )

        def once(conn: http.client.HTTPConnection = conn) -> None:
            conn.request("POST", "/v1/predict", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"status {response.status}")

        calls[name], _ = once, closers.append(conn.close)
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


def measure(
    label: str, pkg: Path, x: NDArray[np.float32], workdir: Path, args: argparse.Namespace
) -> list[str]:
    body = json.dumps({"inputs": {"input": x.tolist()}, "request_id": "bench"})
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
        try:
            spec = {
                "body": body,
                "rounds": args.rounds,
                "requests": args.requests,
                "targets": {
                    "api tcp": ("tcp", agent.api_port),
                    "api unix": ("unix", str(sock)),
                    "floor tcp": ("tcp", floor.port),
                    "floor unix": ("unix", str(floor.unix_socket)),
                    "raw api tcp": ("raw tcp", agent.api_port),
                    "raw api unix": ("raw unix", str(sock)),
                    "raw floor tcp": ("raw tcp", floor.port),
                    "raw floor unix": ("raw unix", str(floor.unix_socket)),
                },
            }
            if old is not None:
                spec["targets"]["old api tcp"] = ("tcp", old.port)  # type: ignore[index]
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
    shown = (*TARGETS, "old api tcp") if "old api tcp" in times else TARGETS
    figures = {"in-process": percentiles(local)} | {t: percentiles(times[t]) for t in shown}
    for name, (p50, p99) in figures.items():
        print(f"{label:<12}{name:<12}{p50:>10.1f}{p99:>10.1f}")
    verdicts = []
    local_p50 = figures["in-process"][0]
    for transport in ("tcp", "unix"):
        api_p50, floor_p50 = figures[f"api {transport}"][0], figures[f"floor {transport}"][0]
        added = api_p50 - local_p50
        ours = added - floor_p50
        verdict = "MET" if added <= TARGET_US else "NOT MET"
        client_us = floor_p50 - figures[f"raw floor {transport}"][0]
        raw_added = figures[f"raw api {transport}"][0] - local_p50
        verdicts.append(
            f"{label:<10}{transport:<5} api {api_p50:6.1f} us vs in-process {local_p50:5.1f} us:"
            f" added {added:6.1f} us ({api_p50 / local_p50:4.1f}x) = floor {floor_p50:6.1f}"
            f" (of it http.client {client_us:5.1f}) + ours {ours:6.1f};"
            f" target added <= {TARGET_US:.0f} us: {verdict}"
            f"\n{'':<15}from a bare-socket client (no http.client): added {raw_added:6.1f} us"
            f" (raw floor {figures[f'raw floor {transport}'][0]:5.1f})"
        )
    if "old api tcp" in figures:
        old_p50 = figures["old api tcp"][0]
        verdicts.append(
            f"{label:<10}tcp   before this change (--baseline): api {old_p50:6.1f} us, added"
            f" {old_p50 - local_p50:6.1f} us; now {figures['api tcp'][0] / old_p50:.2f}x that"
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
    print(f"{'model':<12}{'path':<12}{'p50 us':>10}{'p99 us':>10}")
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
