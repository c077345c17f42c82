"""``edgefleet demo``: fleet service + embedded broker + simulated devices, one command.

Everything runs in this process: an amqtt broker (or ``--broker URL``), the fleet
service on SQLite in ``--data-dir``, and N simulated devices running the real agent
with a real ONNX model trained on the spot from scikit-learn's wine data. The summary
is read back through the fleet's own REST API, so the demo shows what an operator sees.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulators.broker import EmbeddedBroker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoOptions:
    """What ``edgefleet demo`` was asked to do."""

    devices: int = 20
    data_dir: Path = Path("var/demo")
    broker_url: str | None = None
    broker_port: int = 0
    api_port: int = 8080
    telemetry_interval_s: float = 5.0
    summary_interval_s: float = 5.0
    duration_s: float | None = None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_admin_token(data_dir: Path) -> str:
    """The demo's admin token: made once per data dir, kept in a 0600 file beside the DB."""
    path = data_dir / "admin-token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    data_dir.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token


def fetch_summary(base_url: str, token: str) -> dict[str, Any]:
    """Devices online/total and ingest counters, read through the REST API and /metrics."""
    request = urllib.request.Request(  # noqa: S310 - the fleet's own http:// URL
        f"{base_url}/v1/devices?limit=1000", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        page = json.load(response)
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as response:  # noqa: S310
        metrics_text = response.read().decode()
    counters: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("edgefleet_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            # Sum a labelled counter over its labels (persisted{channel=...}).
            base = name.split("{", 1)[0]
            counters[base] = counters.get(base, 0.0) + float(value)
    items = page["items"]
    return {
        "devices": page["total"],
        "online": sum(1 for d in items if d["online"]),
        "counters": counters,
    }


def run_demo(options: DemoOptions, stop: threading.Event | None = None) -> int:
    """Run the demo until ``stop`` is set, ``duration_s`` passes, or Ctrl-C; returns 0."""
    from fleet.service import FleetService
    from fleet.settings import FleetSettings
    from simulators.fleet import FleetPlan, SimulatedFleet
    from simulators.models import train_wine_classifier

    stop = stop or threading.Event()
    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    for noisy in ("amqtt", "transitions", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if logging.getLogger().level > logging.DEBUG:
        # Twenty agents' connect lines would bury the summary; --log-level DEBUG shows them.
        for chatty in ("agent", "fleet", "simulators"):
            logging.getLogger(chatty).setLevel(logging.WARNING)

    broker: EmbeddedBroker | None = None
    broker_url = options.broker_url
    if broker_url is None:
        broker = EmbeddedBroker(port=options.broker_port or _free_port())
        broker.start()
        broker_url = broker.url
        print(f"embedded MQTT broker (amqtt) on {broker_url}")

    print("training the demo model on scikit-learn's wine data ...")
    model = train_wine_classifier(data_dir / "models" / "wine.onnx")
    print(
        f"  ONNX model {model.path} ({model.path.stat().st_size} bytes), "
        f"held-out accuracy {model.accuracy:.3f}"
    )

    token = demo_admin_token(data_dir)
    settings = FleetSettings(
        data_dir=data_dir / "fleet",
        broker_url=broker_url,
        # amqtt speaks MQTT 3.1.1 without shared subscriptions.
        shared_subscription=options.broker_url is not None,
        broker_protocol="3.1.1",
        api_port=options.api_port,
        admin_token=token,  # type: ignore[arg-type]  # pydantic turns str into SecretStr
    )
    fleet_service = FleetService(settings)
    fleet_service.start()
    sim = SimulatedFleet(
        FleetPlan(
            count=options.devices,
            broker_url=broker_url,
            data_dir=data_dir / "devices",
            model=model,
            telemetry_interval_s=options.telemetry_interval_s,
        )
    )
    try:
        sim.start()
        base = fleet_service.base_url
        print()
        print(f"  fleet console:  {base}/docs   (REST API, OpenAPI)")
        print(f"  admin token:    {token}")
        print(f"  try:            curl -H 'Authorization: Bearer {token}' {base}/v1/devices")
        print(f"  devices:        {options.devices} simulated agents, state in {data_dir}/devices")
        print("  Ctrl-C stops everything.\n")
        started = time.monotonic()
        while not stop.wait(options.summary_interval_s):
            _print_summary(base, token, sim, time.monotonic() - started)
            if options.duration_s is not None and time.monotonic() - started >= options.duration_s:
                break
    except KeyboardInterrupt:
        print("\nstopping ...")
    finally:
        sim.stop()
        fleet_service.stop()
        if broker is not None:
            broker.stop()
    print("demo stopped cleanly")
    return 0


def _print_summary(base: str, token: str, sim: Any, elapsed_s: float) -> None:
    try:
        summary = fetch_summary(base, token)
    except OSError as e:
        print(f"[{elapsed_s:6.0f}s] fleet API not answering: {e}")
        return
    c = summary["counters"]
    inferences = sum(d.inferences for d in sim.devices)
    print(
        f"[{elapsed_s:6.0f}s] devices online {summary['online']}/{summary['devices']}"
        f" | agents connected {sim.connected()}/{len(sim.devices)}"
        f" | inferences {inferences}"
        f" | messages persisted {c.get('edgefleet_ingest_persisted_total', 0):.0f}"
        f", dead-lettered {c.get('edgefleet_ingest_dead_lettered_total', 0):.0f}"
    )
