"""What the agent adds to an inference: bare runtime versus `Agent.infer`, drift on and off.

Run: .venv/bin/python tests/benchmarks/agent_overhead.py [--blocks 30] [--block-ms 10]

Models, at batch 1 with one intra-op thread:

- ``wine``: the committed wine MLP (tabular, 13 features), ONNX and TFLite;
- ``digits_cnn``: the committed digits CNN (8x8x1 images, ~20 us a call), ONNX and TFLite;
- ``small_cnn``: a 32x32x3 CNN of edge-device size (4 convolutions, ~61k parameters,
  ~3.4 M multiply-adds), written as ONNX at run time by
  `edgefleet.simulators.tflite_models.small_cnn` (seeded convolution weights; see there why
  that does not change the timing).

Paths, all fed the same held-out rows in the same order, from the same thread:

- ``bare``: ``onnxruntime.InferenceSession.run`` with the agent's session options, or
  LiteRT ``set_tensor, invoke, get_tensor`` -- the issue's baseline;
- ``bare C`` (ONNX only): the session's compiled ``_sess.run``, which the agent's ONNX
  runtime calls after its own input check: ``session.run`` minus its Python checks, the
  floor no Python caller can go under. ``on/bare C`` is the agent's full cost;
- ``agent on``: `edgefleet.agent.daemon.Agent.infer` of a started agent serving a real model
  package (built with `build_package`, default reference profile, images flattened one
  feature per pixel) with drift monitoring on, a fresh request id per call, and its
  drift timer folding and closing windows (every 10,000 rows) in the background;
- ``agent off``: the same with ``drift.enabled = false``.

Method (this machine has 2 cores shared with other work, so single calls are noisy):
each path runs in blocks of ``n`` back-to-back calls (``n`` so that a block takes about
``--block-ms``, at most 500), timed as a whole with ``perf_counter_ns``; per-call time is
block time / ``n``. Blocks of the paths alternate in a rotating order, ``--blocks``
blocks per path, after a warm-up. The headline per-call figure (``wall us``) is the
median over a path's blocks, minus the median cost of the same loop calling a no-op
(a few tens of ns, so the ratio is not diluted by the harness), and ``on/bare`` is the
ratio of those medians; the verdict uses it. Three cross-checks: ``paired``, the
median over rounds of the ratio of a path's block to the bare block of the same round
(cancels slow drifts in machine speed); ``p10``, the 10th percentile of block times
(the least disturbed blocks); ``cpu``, the median from the calling thread's CPU time
(``thread_time_ns``: immune to being descheduled when the machine is overloaded, but
blind to the agent's background threads). The verdict says so when they disagree with
it. The load average is printed first. Secondary figures: per-call p50 and
p99 from a separate pass timing every call (``--per-call`` calls per path, in
alternating blocks of 100), which include the ~60 ns of ``perf_counter_ns`` per call.

Targets (the issue): on/bare <= 1.10 for the tabular model, <= 1.03 for a small CNN,
against bare onnxruntime, so the verdicts are for the ONNX rows (``small_cnn`` is the
issue's small CNN; ``digits_cnn``, a 20 us model, is held to the same 1.03). TFLite rows
compare with bare LiteRT for reference: a 2-6 us model leaves no room for any per-call
Python work (lock, clocks, metrics, drift) within 10 %. Issue 15 sets an absolute one
for the wine model in ONNX, TFLite float and TFLite int8 (``wine_int8.tflite``, float
in and out): ``agent on - bare`` <= 1 us per call (median block figures; p10, CPU time
and drift off shown beside it).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.daemon import Agent
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.simulators.tflite_models.catalog import model_path
from edgefleet.simulators.tflite_models.datasets import digits_split, wine_split
from edgefleet.simulators.tflite_models.small_cnn import build_small_cnn, digit_images

Call = Callable[[NDArray[np.float32], str], object]
WARMUP_S = 0.3
MAX_BLOCK_CALLS = 500
MIN_BLOCK_CALLS = 5
PER_CALL_BLOCK = 100
HTTP_CALLS = 200
TARGETS = {"wine": 1.10, "digits_cnn": 1.03, "small_cnn": 1.03}
# Issue 15: what the agent adds per call over the bare runtime, in microseconds (wine).
ADDED_TARGET_US = 1.0
ADDED_TARGETS = {("wine", "onnx"), ("wine", "tflite"), ("wine", "tflite int8")}


@dataclass(frozen=True)
class Task:
    """A model family: reference rows for its package, held-out rows to time."""

    name: str
    reference: NDArray[np.float32]
    held_out: NDArray[np.float32]
    formats: dict[str, Path]


@dataclass(frozen=True)
class PathFigures:
    block_us: float  # median per-call wall time over blocks, loop cost removed
    best_us: float  # 10th percentile of the same: the least disturbed blocks
    paired: float  # median over rounds of (this path's block / bare's block)
    cpu_us: float  # median per-call time in the calling thread's CPU time
    p50_us: float
    p99_us: float


def tasks(workdir: Path) -> list[Task]:
    wine, digits = wine_split(), digits_split()
    images, _ = digit_images()
    small = build_small_cnn(workdir / "small_cnn.onnx")
    return [
        Task(
            "wine",
            wine.x_train,
            wine.x_test,
            {
                **{f: model_path(f"wine_float.{f}") for f in ("onnx", "tflite")},
                "tflite int8": model_path("wine_int8.tflite"),
            },
        ),
        Task(
            "digits_cnn",
            digits.x_train,
            digits.x_test,
            {f: model_path(f"digits_cnn_float.{f}") for f in ("onnx", "tflite")},
        ),
        Task("small_cnn", images[:1200], images[1200:], {"onnx": small}),
    ]


def package(model: Path, reference: NDArray[np.float32], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    data = out / f"{model.stem}-reference.npy"
    np.save(data, reference)
    return build_package(
        model,
        name=model.stem.replace("_", "-"),
        version="1.0.0",
        out_dir=out,
        reference_data=data,
        golden_count=8,
    )


@contextmanager
def started_agent(
    pkg: Path, workdir: Path, name: str, *, drift: bool, unix_socket: Path | None = None
) -> Iterator[Agent]:
    api: dict[str, Any] = {"port": 0}
    if unix_socket is not None:
        api["unix_socket"] = str(unix_socket)
    config = AgentConfig.model_validate(
        {
            "device_id": name,
            "data_dir": str(workdir / name),
            # No broker: the link retries quietly; windows wait in the outbox.
            "broker": {"url": "mqtt://127.0.0.1:1", "reconnect_min_s": 5, "reconnect_max_s": 30},
            "model": {"path": str(pkg)},
            "api": api,
            "drift": {"enabled": drift},
            "telemetry_interval_s": 10,
        }
    )
    agent = Agent(config)
    agent.start()
    try:
        if drift and agent.model_host.drift_monitor is None:
            raise RuntimeError(f"{pkg}: the agent does not monitor this model for drift")
        yield agent
    finally:
        agent.stop(1.0)


def onnx_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bare_onnx(path: Path) -> Call:
    session = onnx_session(path)
    names = [o.name for o in session.get_outputs()]
    return lambda x, rid: session.run(names, {"input": x})


def bare_onnx_compiled(path: Path) -> Call:
    session = onnx_session(path)
    run = session._sess.run
    names = [o.name for o in session.get_outputs()]
    return lambda x, rid: run(names, {"input": x}, None)


def bare_tflite(path: Path) -> Call:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    detail = interpreter.get_input_details()[0]
    inp = detail["index"]
    interpreter.resize_tensor_input(inp, [1, *detail["shape"][1:]])  # batch 1
    interpreter.allocate_tensors()
    out = interpreter.get_output_details()[0]["index"]

    def call(x: NDArray[np.float32], rid: str) -> object:
        interpreter.set_tensor(inp, x)
        interpreter.invoke()
        return interpreter.get_tensor(out)

    return call


def via_agent(agent: Agent) -> Call:
    infer = agent.infer
    return lambda x, rid: infer({"input": x}, (rid,))


def no_op(x: NDArray[np.float32], rid: str) -> object:
    return None


class Ids:
    """Fresh request ids, made before timing so no path pays for them in the loop."""

    def __init__(self, count: int) -> None:
        stamp = time.perf_counter_ns()
        self.ids = [f"bench-{stamp}-{i}" for i in range(count)]
        self.next = 0

    def take(self, n: int) -> list[str]:
        if self.next + n > len(self.ids):
            self.next = 0  # reused ids only refresh the monitor's label memory
        out = self.ids[self.next : self.next + n]
        self.next += n
        return out


def run_block(call: Call, xs: list[NDArray[np.float32]], ids: list[str]) -> tuple[int, int]:
    """Wall and thread-CPU nanoseconds for ``len(ids)`` back-to-back calls over ``xs``."""
    clock, cpu = time.perf_counter_ns, time.thread_time_ns
    n = len(xs)
    start, start_cpu = clock(), cpu()
    for i, rid in enumerate(ids):
        call(xs[i % n], rid)
    return clock() - start, cpu() - start_cpu


def block_times(
    paths: dict[str, Call], xs: list[NDArray[np.float32]], blocks: int, calls: int
) -> dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]]:
    """Per-call (wall ns, CPU ns) of each of ``blocks`` alternating blocks of ``calls``.

    Entry ``k`` of every path comes from round ``k``, so rounds can be paired.
    """
    names = list(paths)
    ids = {name: Ids(calls * 8) for name in names}
    wall = {name: np.empty(blocks) for name in names}
    cpu = {name: np.empty(blocks) for name in names}
    for block in range(blocks):
        shift = block % len(names)
        for name in names[shift:] + names[:shift]:
            wall_ns, cpu_ns = run_block(paths[name], xs, ids[name].take(calls))
            wall[name][block] = wall_ns / calls
            cpu[name][block] = cpu_ns / calls
    return {name: (wall[name], cpu[name]) for name in names}


def per_call_percentiles(
    paths: dict[str, Call], xs: list[NDArray[np.float32]], iterations: int
) -> dict[str, tuple[float, float]]:
    """p50 and p99 (us) of individually timed calls, in alternating blocks of 100."""
    names = list(paths)
    ids = Ids(iterations)
    out = {name: np.empty(iterations) for name in names}
    clock = time.perf_counter_ns
    for block, first in enumerate(range(0, iterations, PER_CALL_BLOCK)):
        shift = block % len(names)
        for name in names[shift:] + names[:shift]:
            call, times = paths[name], out[name]
            for i in range(first, min(first + PER_CALL_BLOCK, iterations)):
                x, rid = xs[i % len(xs)], ids.ids[i]
                start = clock()
                call(x, rid)
                times[i] = clock() - start
    return {
        name: (float(np.percentile(t, 50)) / 1e3, float(np.percentile(t, 99)) / 1e3)
        for name, t in out.items()
    }


def warm_up(paths: dict[str, Call], xs: list[NDArray[np.float32]]) -> float:
    """Run every path for a while; return the slowest path's per-call seconds."""
    slowest = 0.0
    for call in paths.values():
        calls, started = 0, time.perf_counter()
        while time.perf_counter() - started < WARMUP_S:
            call(xs[calls % len(xs)], f"warm-{calls}")
            calls += 1
        slowest = max(slowest, (time.perf_counter() - started) / calls)
    return slowest


def measure(
    paths: dict[str, Call], xs: list[NDArray[np.float32]], args: Any
) -> dict[str, PathFigures]:
    per_call_s = warm_up(paths, xs)
    calls = int(min(MAX_BLOCK_CALLS, max(MIN_BLOCK_CALLS, args.block_ms / 1e3 / per_call_s)))
    times = block_times({"loop": no_op, **paths}, xs, args.blocks, calls)
    loop_wall, loop_cpu = (float(np.median(t)) for t in times.pop("loop"))
    iterations = min(args.per_call, max(200, int(args.per_call_s / per_call_s)))
    percentiles = per_call_percentiles(paths, xs, iterations)
    bare_wall = times["bare"][0] - loop_wall
    figures = {}
    for name in paths:
        wall, cpu = times[name][0] - loop_wall, times[name][1] - loop_cpu
        figures[name] = PathFigures(
            block_us=float(np.median(wall)) / 1e3,
            best_us=float(np.percentile(wall, 10)) / 1e3,
            paired=float(np.median(wall / bare_wall)),
            cpu_us=float(np.median(cpu)) / 1e3,
            p50_us=percentiles[name][0],
            p99_us=percentiles[name][1],
        )
    return figures


def http_p50_us(agent: Agent, x: NDArray[np.float32]) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", agent.api_port or 0, timeout=5)
    body = json.dumps({"inputs": {"input": x.tolist()}})
    times = []
    for _ in range(HTTP_CALLS):
        start = time.perf_counter_ns()
        conn.request("POST", "/v1/predict", body=body)
        response = conn.getresponse()
        response.read()
        times.append(time.perf_counter_ns() - start)
    conn.close()
    return float(np.percentile(times, 50)) / 1000.0


def report(label: str, target: float | None, figures: dict[str, PathFigures]) -> str:
    bare = figures["bare"]
    for name, fig in figures.items():
        print(
            f"{label:<20}{name:<10}{fig.block_us:>9.2f}{fig.block_us / bare.block_us:>7.3f}"
            f"{fig.paired:>7.3f}{fig.best_us:>9.2f}{fig.best_us / bare.best_us:>7.3f}"
            f"{fig.cpu_us:>9.2f}{fig.cpu_us / bare.cpu_us:>7.3f}"
            f"{fig.p50_us:>8.1f}{fig.p99_us:>8.1f}"
        )
    on = figures["agent on"]
    ratio = on.block_us / bare.block_us
    others = {
        "paired": on.paired,
        "p10": on.best_us / bare.best_us,
        "cpu": on.cpu_us / bare.cpu_us,
    }
    shown = ", ".join(f"{k} {v:.3f}" for k, v in others.items())
    if target is None:
        line = (
            f"{label:<18} on/bare {ratio:.3f} ({shown}); no target: the issue's baseline"
            " is bare onnxruntime, LiteRT's own bare is shown for reference"
        )
    else:
        verdict = "MET" if ratio <= target else "NOT MET"
        if any((r <= target) != (ratio <= target) for r in others.values()):
            verdict += " (the cross-checks disagree: the machine was too noisy to be sure)"
        line = f"{label:<18} on/bare {ratio:.3f} ({shown}); target <= {target:.2f}: {verdict}"
    if "bare C" in figures:
        line += f"\n{'':<18} on/bare C {on.block_us / figures['bare C'].block_us:.3f}"
    return line


def added_report(label: str, figures: dict[str, PathFigures]) -> str:
    """The per-call difference agent - bare (us), drift on and off, against its target."""
    bare, on, off = figures["bare"], figures["agent on"], figures["agent off"]
    added = on.block_us - bare.block_us
    checks = {
        "p10": on.best_us - bare.best_us,
        "cpu": on.cpu_us - bare.cpu_us,
        "off": off.block_us - bare.block_us,
    }
    verdict = "MET" if added <= ADDED_TARGET_US else "NOT MET"
    if (checks["p10"] <= ADDED_TARGET_US) != (added <= ADDED_TARGET_US):
        verdict += " (p10 disagrees: the machine was too noisy to be sure)"
    shown = ", ".join(f"{k} {v:+.2f}" for k, v in checks.items())
    return (
        f"{label:<18} agent on - bare {added:+.2f} us (bare {bare.block_us:.2f}, agent"
        f" {on.block_us:.2f}; {shown}); target <= +{ADDED_TARGET_US:.1f} us: {verdict}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=100, help="timed blocks per path")
    parser.add_argument("--block-ms", type=float, default=5.0, help="target block length")
    parser.add_argument("--per-call", type=int, default=3000, help="max individually timed calls")
    parser.add_argument("--per-call-s", type=float, default=1.0, help="time budget per path")
    parser.add_argument("--only", nargs="*", help="task names to run (default: all)")
    args = parser.parse_args()
    if args.blocks < 5:
        parser.error("--blocks must be at least 5")
    workdir = Path(tempfile.mkdtemp(prefix="agent-overhead-"))
    started = time.perf_counter()
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(
        f"{'model':<20}{'path':<10}{'wall us':>9}{'x bare':>7}{'paired':>7}{'p10 us':>9}"
        f"{'x bare':>7}{'cpu us':>9}{'x bare':>7}{'p50 us':>8}{'p99 us':>8}"
    )
    verdicts = []
    for task in tasks(workdir):
        if args.only and task.name not in args.only:
            continue
        rows = min(64, len(task.held_out))
        xs = [np.ascontiguousarray(task.held_out[i : i + 1]) for i in range(rows)]
        for fmt, path in task.formats.items():
            pkg = package(
                path, task.reference, workdir / f"pkg-{task.name}-{fmt}".replace(" ", "-")
            )
            name = f"{task.name}-{fmt}".replace("_", "-").replace(" ", "-")
            label = f"{task.name} {fmt}"
            with (
                started_agent(pkg, workdir, f"{name}-on", drift=True) as on,
                started_agent(pkg, workdir, f"{name}-off", drift=False) as off,
            ):
                paths: dict[str, Call] = {
                    "bare": (bare_onnx if fmt == "onnx" else bare_tflite)(path)
                }
                figures: dict[str, PathFigures]
                if fmt == "onnx":
                    paths["bare C"] = bare_onnx_compiled(path)
                paths |= {"agent on": via_agent(on), "agent off": via_agent(off)}
                target = TARGETS[task.name] if fmt == "onnx" else None
                figures = measure(paths, xs, args)
                verdicts.append(report(label, target, figures))
                if (task.name, fmt) in ADDED_TARGETS:
                    verdicts.append(added_report(label, figures))
                http_us = http_p50_us(on, xs[0])
                print(f"{label:<20}{'http p50':<10}{http_us:>9.1f}  (not in the ratio)")
                print(f"{'':<20}(drift windows closed while measuring: {on.drift.published})")
        print()
    print("\n".join(verdicts))
    print(f"took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
