"""Measure the agent's footprint: RSS with the wine model loaded and connected, idle CPU.

Usage: ``.venv/bin/python tests/benchmarks/agent_footprint.py [--duration-s 30]``

Starts its own Mosquitto, trains the wine model, runs ``edgefleet agent run`` as a
process (telemetry every 10 s, the default), waits for its birth message, then samples
the process with psutil once a second and prints the median RSS and CPU percent.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edgefleet.simulators.models import train_wine_classifier  # noqa: E402
from tests.support.mosquitto import MosquittoBroker  # noqa: E402


def wait_for_birth(port: int, device_id: str, timeout_s: float = 30) -> None:
    got: list[bytes] = []
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, m: got.append(bytes(m.payload))
    client.connect("127.0.0.1", port)
    client.subscribe(f"edgefleet/v1/devices/{device_id}/state", 1)
    client.loop_start()
    deadline = time.monotonic() + timeout_s
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    if not got:
        raise SystemExit("the agent never published its birth")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration-s", type=float, default=30.0)
    args = parser.parse_args()
    edgefleet = shutil.which("edgefleet") or str(Path(sys.executable).parent / "edgefleet")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = MosquittoBroker(work / "mosquitto")
        broker.start()
        model = train_wine_classifier(work / "wine.onnx")
        config = work / "agent.toml"
        config.write_text(
            f'device_id = "footprint"\ndata_dir = "{work / "data"}"\n'
            f'[broker]\nurl = "{broker.url}"\n'
            f'[model]\npath = "{model.path}"\nname = "wine"\nversion = "1"\n'
            "[api]\nport = 0\n"
        )
        process = subprocess.Popen(
            [edgefleet, "--log-level", "WARNING", "agent", "run", "--config", str(config)]
        )
        try:
            wait_for_birth(broker.port, "footprint")
            proc = psutil.Process(process.pid)
            proc.cpu_percent(None)
            rss: list[int] = []
            cpu: list[float] = []
            started = time.monotonic()
            while time.monotonic() - started < args.duration_s:
                time.sleep(1.0)
                cpu.append(proc.cpu_percent(None))
                rss.append(proc.memory_info().rss)
            total_cpu_s = sum(proc.cpu_times()[:2])
        finally:
            process.terminate()
            process.wait(15)
            broker.stop()
    print(f"samples: {len(rss)} over {args.duration_s:.0f} s (idle, connected, wine model loaded)")
    print(f"median RSS: {statistics.median(rss) / 2**20:.1f} MiB (max {max(rss) / 2**20:.1f})")
    print(f"median CPU: {statistics.median(cpu):.2f} % (mean {statistics.mean(cpu):.2f} %)")
    print(f"process CPU time including start-up: {total_cpu_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
