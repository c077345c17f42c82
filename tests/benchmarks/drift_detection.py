"""Detection delay and false alarms through real agents: our summaries vs raw-sample KS.

Run: .venv/bin/python tests/benchmarks/drift_detection.py [--seeds 5]  (~1-2 min, 2 cores)

For each scikit-learn bundled data set (breast_cancer, wine, digits) and seed, half the
rows (stratified) are the reference: a logistic regression is trained on them, exported
to ONNX and packaged with `build_package(..., reference_data=...)`, so the package
carries the reference profile a device would get. One in-process `edgefleet.agent.daemon.Agent`
per data set and seed serves that package (no broker: closed drift windows are read
back from the agent's outbox, exactly the `DriftMessage`s it would publish). The stream
replays windows of ``--window`` rows drawn with replacement from the other half through
`Agent.infer`; after ``--before`` windows a real shift starts:

- ``class``: the stream switches to the rarest class only (prior shift, real rows);
- ``mean+0.5sd``: the most variable feature moves by half a standard deviation;
- ``scale1.5``: that feature's spread around its mean grows by half.

Each window the agent closed is judged by the fleet-side verdict
(`edgefleet.shared.drift.evaluate`, as `edgefleet.fleet.drift` runs it) under several
rules, and the very rows the agent saw go to scipy's raw two-sample KS per feature
(Bonferroni over the non-constant features, alpha 0.05, the alibi-detect default).
Printed per data set, shift and detector: false-alarm rate (alarms over the windows
before the shift) and delay (windows until the first alarm after it; a miss counts as
``--after`` + 1), median over the seeds, and in how many seeds the shift was detected
at all.
"""

from __future__ import annotations

import argparse
import logging
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.model_selection import train_test_split

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.daemon import Agent
from edgefleet.shared.drift import (
    DriftThresholds,
    FeatureThresholds,
    ReferenceProfile,
    WindowSketch,
    evaluate,
)
from edgefleet.shared.messages import DriftMessage
from edgefleet.shared.modeltools.builder import build_package
from edgefleet.shared.package.read import read_package
from edgefleet.shared.topics import Channel

ALPHA = 0.05
SHIFTS = ("class", "mean+0.5sd", "scale1.5")
Array = NDArray[np.float64]

# The fleet's rules, evaluated on the same sketches.
DETECTORS: dict[str, DriftThresholds] = {
    "default (new)": DriftThresholds(),
    "old default": DriftThresholds(defaults=FeatureThresholds(psi_min_reference_per_bin=0)),
    "PSI alone": DriftThresholds(defaults=FeatureThresholds(alert_on=["psi"])),
    "binned KS alone": DriftThresholds(defaults=FeatureThresholds(alert_on=["ks"])),
}
RAW_KS = "raw KS (scipy)"
LOADERS: dict[str, Callable[..., Any]] = {
    "breast_cancer": load_breast_cancer,
    "wine": load_wine,
    "digits": load_digits,
}


@dataclass(frozen=True)
class Split:
    reference: Array
    pool: Array
    pool_labels: NDArray[np.int64]


def _train_package(split_x: Array, split_y: NDArray[np.int64], name: str, out: Path) -> Path:
    """A scaled logistic regression on the reference half, as a package with its profile."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = split_x.astype(np.float32)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    pipeline.fit(x, split_y)
    onnx_model = to_onnx(
        pipeline, x[:1], options={id(pipeline.steps[-1][1]): {"zipmap": False}}, target_opset=17
    )
    graph = onnx_model.graph
    old = graph.input[0].name
    graph.input[0].name = "input"
    for node in graph.node:
        node.input[:] = ["input" if n == old else n for n in node.input]
    model_path = out / f"{name}.onnx"
    model_path.write_bytes(onnx_model.SerializeToString())
    reference = out / f"{name}-reference.npy"
    np.save(reference, x)
    return build_package(
        model_path,
        name=name,
        version="1.0.0",
        out_dir=out,
        reference_data=reference,
        golden_count=4,
    )


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def _agent(package: Path, work: Path, window: int) -> Iterator[Agent]:
    """An agent serving ``package``; its broker port is closed, so the outbox keeps all."""
    config = AgentConfig.model_validate(
        {
            "device_id": f"bench-{package.stem.replace('.', '-')}",
            "data_dir": str(work / f"agent-{package.stem}"),
            "broker": {"url": f"mqtt://127.0.0.1:{_closed_port()}", "reconnect_min_s": 5.0},
            "model": {"path": str(package)},
            "api": {"enabled": False},
            "telemetry_interval_s": 3600,
            # The timer never fires on its own: the benchmark closes windows with tick().
            "drift": {"window_count": window, "window_s": 3600, "tick_s": 3600},
        }
    )
    agent = Agent(config)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop(0.5)


class WindowReader:
    """Closed drift windows, read back from the agent's outbox in order."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._after = 0

    def next_window(self) -> WindowSketch:
        """Close the full window (the drift timer's tick) and return its sketch."""
        queued = self._agent.drift.tick(self._agent.model_host)
        if queued != 1:
            raise RuntimeError(f"expected the agent to close one window, it queued {queued}")
        for message in self._agent.outbox.peek(self._after, limit=1000):
            self._after = message.id
            if message.kind == Channel.DRIFT.value:
                drift = DriftMessage.model_validate_json(message.payload)
                if drift.sketch is None:
                    raise RuntimeError("a drift message without a sketch")
                return drift.sketch
        raise RuntimeError("the agent closed a window but no drift message is in its outbox")


def _shifted(split: Split, kind: str, rng: np.random.Generator, n: int, column: int) -> Array:
    pool = split.pool
    if kind == "class":
        target = np.bincount(split.pool_labels).argmin()
        rows = pool[split.pool_labels == target]
        picked: Array = rows[rng.integers(0, len(rows), n)]
        return picked
    x: Array = pool[rng.integers(0, len(pool), n)].copy()
    mean, std = pool[:, column].mean(), pool[:, column].std()
    if kind == "mean+0.5sd":
        x[:, column] += 0.5 * std
    else:
        x[:, column] = mean + 1.5 * (x[:, column] - mean)
    return x


def _raw_ks_alarm(reference: Array, window: Array, informative: NDArray[np.bool_]) -> bool:
    columns = np.flatnonzero(informative)
    pvalues = [
        stats.ks_2samp(reference[:, j], window[:, j], method="asymp").pvalue for j in columns
    ]
    return bool(min(pvalues) < ALPHA / len(columns))


def _stream(
    agent: Agent,
    profile: ReferenceProfile,
    split: Split,
    kind: str,
    args: argparse.Namespace,
    seed: int,
) -> dict[str, list[bool]]:
    rng = np.random.default_rng(seed * 1000 + SHIFTS.index(kind))
    reader = WindowReader(agent)
    informative = split.reference.std(axis=0) > 0
    column = int(np.argmax(split.reference.std(axis=0)))
    alarms: dict[str, list[bool]] = {name: [] for name in [*DETECTORS, RAW_KS]}
    for step in range(args.before + args.after):
        if step < args.before:
            rows = split.pool[rng.integers(0, len(split.pool), args.window)]
        else:
            rows = _shifted(split, kind, rng, args.window, column)
        window = rows.astype(np.float32)
        agent.infer({"input": window})
        sketch = reader.next_window()
        if sketch.count != args.window:
            raise RuntimeError(f"window of {sketch.count} rows, expected {args.window}")
        for name, thresholds in DETECTORS.items():
            alarms[name].append(evaluate(profile, sketch, thresholds).data_drift)
        alarms[RAW_KS].append(
            _raw_ks_alarm(split.reference, window.astype(np.float64), informative)
        )
    return alarms


def _summary(flags: list[bool], before: int, after: int) -> tuple[float, int, bool]:
    pre, post = flags[:before], flags[before:]
    delay = next((i + 1 for i, f in enumerate(post) if f), after + 1)
    return float(np.mean(pre)), delay, any(post)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--before", type=int, default=20)
    parser.add_argument("--after", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    started = time.perf_counter()
    # results[(data set, shift, detector)] = [(false alarm rate, delay, detected) per seed]
    results: dict[tuple[str, str, str], list[tuple[float, int, bool]]] = {}
    reference_rows: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        work = Path(tmp)
        for name, loader in LOADERS.items():
            x, y = loader(return_X_y=True)
            for seed in range(args.seeds):
                ref, pool, y_ref, y_pool = train_test_split(
                    x, y, test_size=0.5, random_state=seed, stratify=y
                )
                split = Split(ref.astype(np.float64), pool.astype(np.float64), y_pool)
                reference_rows[name] = len(ref)
                out = work / f"{name}-{seed}"
                out.mkdir()
                package = _train_package(split.reference, y_ref, name, out)
                stored = read_package(package)[0].reference_profile
                assert stored is not None
                profile = ReferenceProfile.model_validate(stored)
                with _agent(package, out, args.window) as agent:
                    for kind in SHIFTS:
                        alarms = _stream(agent, profile, split, kind, args, seed)
                        for detector, flags in alarms.items():
                            results.setdefault((name, kind, detector), []).append(
                                _summary(flags, args.before, args.after)
                            )
    print(
        f"windows of {args.window} rows scored by real agents; {args.before} windows before "
        f"the shift, {args.after} after; median over {args.seeds} seeds"
    )
    header = ("data set (ref rows)", "shift", "detector", "false alarms", "delay", "detected")
    print("{:<20} {:<11} {:<16} {:>12} {:>6} {:>9}".format(*header))
    for (name, kind, detector), runs in results.items():
        false_alarm = float(np.median([r[0] for r in runs]))
        delay = float(np.median([r[1] for r in runs]))
        detected = sum(r[2] for r in runs)
        label = f"{name} ({reference_rows[name]})"
        print(
            f"{label:<20} {kind:<11} {detector:<16} {false_alarm:>12.3f} {delay:>6.1f} "
            f"{detected:>6}/{len(runs)}"
        )
    print(f"took {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
