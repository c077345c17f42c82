"""Measure a signed model update end to end: wall time per phase and the agent's RSS.

Usage: ``.venv/bin/python tests/benchmarks/update_bench.py [--runs 3] [--sizes-mb 1 50]``

For each model size: builds a real package of the wine model padded with an unused
initializer to that size, approves it in a real TUF repository served over loopback
HTTP, then per run starts ``python -m agent run`` fresh (factory model: the plain wine
package), publishes a signed desired state and times the phases from the device's own
event timestamps:

- download: ``downloading`` → ``info: downloaded`` (TUF refresh + HTTP download + hash)
- verify:   → ``verified`` (re-hash, director and TUF check, package read)
- stage:    → ``staged`` (extract into the store, fsync)
- activate: → ``activated`` (store re-verify, slot switch, runtime load, swap)
- probation: → ``committed`` (golden samples; the probation window is set to zero here)

RSS of the agent process is sampled every 20 ms: the baseline before the update and the
peak during it. Prints medians over the runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edgefleet.shared.manifest import ProbationBudget  # noqa: E402
from edgefleet.simulators.models import train_wine_classifier  # noqa: E402
from tests.e2e.updates.support import Pkg, Rig, build, event_docs, padded_model  # noqa: E402
from tests.support.agent import Subscriber, toml_config  # noqa: E402
from tests.support.mosquitto import MosquittoBroker  # noqa: E402

Mark = str | tuple[str, str]  # an event kind, or (kind, reason)

PHASES: list[tuple[str, Mark, Mark]] = [
    ("download", "downloading", ("info", "downloaded")),
    ("verify", ("info", "downloaded"), "verified"),
    ("stage", "verified", "staged"),
    ("activate", "staged", "activated"),
    ("probation", "activated", "committed"),
]


def stamp(events: list[dict[str, object]], which: Mark) -> datetime:
    for doc in events:
        if isinstance(which, tuple):
            if doc["kind"] == which[0] and doc["reason"] == which[1]:
                return datetime.fromisoformat(str(doc["ts"]))
        elif doc["kind"] == which:
            return datetime.fromisoformat(str(doc["ts"]))
    raise SystemExit(f"no {which} event; got {[(d['kind'], d['reason']) for d in events]}")


class RssSampler:
    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.samples.append(self._process.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join()
        return self.samples


def one_run(
    work: Path, broker: MosquittoBroker, rig: Rig, factory: Pkg, target: Pkg, run: int
) -> dict[str, float]:
    device = f"bench-{target.version.replace('.', '-')}-{run}"
    root = work / device
    root.mkdir()
    config = toml_config(
        root / "agent.toml",
        broker,
        device,
        model=factory.path,
        model_version=factory.version,
        data_dir=root / "data",
        update=rig.update_config(),
    )
    events = Subscriber(broker.port, [f"edgefleet/v1/devices/{device}/events"])
    births = Subscriber(broker.port, [f"edgefleet/v1/devices/{device}/state"])
    log = (root / "agent.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.agent", "run", "--config", str(config)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        births.wait_for(lambda r: len(r) >= 1, 30)
        time.sleep(0.5)
        baseline = psutil.Process(process.pid).memory_info().rss
        sampler = RssSampler(process.pid)
        started = time.monotonic()
        rig.publish(device, rig.sign(device, target, 1))
        events.wait_for(lambda r: any(d["kind"] == "committed" for d in event_docs(r)), 120)
        wall = time.monotonic() - started
        samples = sampler.stop()
    finally:
        process.terminate()
        process.wait(15)
        log.close()
        events.close()
        births.close()
    docs = event_docs(events.received)
    result = {
        name: (stamp(docs, end) - stamp(docs, begin)).total_seconds() for name, begin, end in PHASES
    }
    result["wall"] = wall
    result["rss_baseline_mb"] = baseline / 2**20
    result["rss_peak_mb"] = max(samples, default=baseline) / 2**20
    shutil.rmtree(root / "data", ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[1.0, 50.0])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgefleet-update-bench-"))
    broker = MosquittoBroker(work / "mosquitto")
    broker.start()
    rig = Rig(work / "fleet", broker)
    try:
        wine = train_wine_classifier(work / "wine.onnx")
        zero = ProbationBudget(min_inferences=0, duration_s=0)
        factory = build(wine.path, "0.1.0", work / "pkgs", zero)
        print(f"{'size':>8} {'phase':>10} {'median s':>9}   runs")
        for size_mb in args.sizes_mb:
            pad = max(0, int(size_mb * 2**20) - wine.path.stat().st_size)
            model = padded_model(wine.path, work / f"wine-{size_mb}.onnx", pad)
            target = build(model, f"1.0.{int(size_mb)}", work / "pkgs", zero)
            rig.add(target)
            runs = [one_run(work, broker, rig, factory, target, i) for i in range(args.runs)]
            label = f"{target.length / 2**20:.1f} MB"
            for key in [name for name, _, _ in PHASES] + ["wall"]:
                values = [r[key] for r in runs]
                shown = " ".join(f"{v:.3f}" for v in values)
                print(f"{label:>8} {key:>10} {statistics.median(values):9.3f}   {shown}")
            for key in ("rss_baseline_mb", "rss_peak_mb"):
                values = [r[key] for r in runs]
                print(f"{label:>8} {key:>10} {statistics.median(values):9.1f}   (MB)")
            print(json.dumps({"size_mb": size_mb, "runs": runs}))
    finally:
        rig.close()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
