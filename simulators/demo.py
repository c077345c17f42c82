"""``edgefleet demo``: fleet service + embedded broker + simulated devices, one command.

Everything runs in this process: an amqtt broker (or ``--broker URL``), the fleet
service on SQLite in ``--data-dir``, and N simulated devices running the real agent
with a real ONNX model trained on the spot from scikit-learn's wine data. The summary
is read back through the fleet's own REST API, so the demo shows what an operator sees.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.shared.cli import CLIError
from edgefleet.simulators.broker import EmbeddedBroker

if TYPE_CHECKING:
    from edgefleet.fleet.settings import FleetSettings
    from edgefleet.simulators.fleet import FleetPlan, SimulatedFleet
    from edgefleet.simulators.models import TrainedModel

log = logging.getLogger(__name__)

DEMO_MODEL = "wine-classifier"
DEMO_VERSION = "1.0.0"
DEMO_DRIFT_WINDOW_S = 5.0


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
    inferences_per_s: float = 2.0
    drift_after_s: float | None = 40.0
    drift_shift: float = 1.5


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
    from edgefleet.fleet.service import FleetService
    from edgefleet.simulators.fleet import SimulatedFleet

    stop = stop or threading.Event()
    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    for noisy in ("amqtt", "transitions", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if logging.getLogger().level > logging.DEBUG:
        # Twenty agents' connect lines would bury the summary; --log-level DEBUG shows them.
        logging.getLogger("edgefleet").setLevel(logging.WARNING)

    broker: EmbeddedBroker | None = None
    broker_url = options.broker_url
    if broker_url is None:
        broker = EmbeddedBroker(port=options.broker_port or _free_port())
        broker.start()
        broker_url = broker.url
        print(f"embedded MQTT broker (amqtt) on {broker_url}")

    model, package = _demo_model(data_dir)
    token = demo_admin_token(data_dir)
    fleet_service = FleetService(_fleet_settings(options, data_dir, broker_url, token))
    fleet_service.start()
    sim = SimulatedFleet(_fleet_plan(options, data_dir, broker_url, model, package))
    try:
        base = fleet_service.base_url
        _upload_model(base, token, package)
        sim.start()
        print()
        print(f"  fleet console:  {base}/docs   (REST API, OpenAPI)")
        print(f"  admin token:    {token}")
        print(f"  try:            curl -H 'Authorization: Bearer {token}' {base}/v1/devices")
        print(f"  devices:        {options.devices} simulated agents, state in {data_dir}/devices")
        if options.drift_after_s is not None and options.devices > 1:
            print(
                f"  drift:          site-b's {options.devices // 2} devices drift by "
                f"{options.drift_shift} std "
                f"after {options.drift_after_s:.0f}s; watch for the fleet's alerts"
            )
        print("  Ctrl-C stops everything.\n")
        with _ctrl_c_sets(stop):
            _watch(options, base, token, sim, stop)
        if stop.is_set():
            print("\nstopping ...")
    except KeyboardInterrupt:
        print("\nstopping ...")
    finally:
        sim.stop()
        fleet_service.stop()
        if broker is not None:
            broker.stop()
    print("demo stopped cleanly")
    return 0


def _fleet_settings(
    options: DemoOptions, data_dir: Path, broker_url: str, token: str
) -> FleetSettings:
    from edgefleet.fleet.settings import FleetSettings

    return FleetSettings(
        data_dir=data_dir / "fleet",
        broker_url=broker_url,
        # amqtt speaks MQTT 3.1.1 without shared subscriptions.
        shared_subscription=options.broker_url is not None,
        broker_protocol="3.1.1",
        api_port=options.api_port,
        admin_token=token,  # type: ignore[arg-type]  # pydantic turns str into SecretStr
        # A demo wants to see drift within a minute, not within the hour of production.
        drift_interval_s=DEMO_DRIFT_WINDOW_S,
        drift_lookback_s=6 * DEMO_DRIFT_WINDOW_S,
        drift_cooldown_s=120,
    )


def _fleet_plan(
    options: DemoOptions, data_dir: Path, broker_url: str, model: TrainedModel, package: Path
) -> FleetPlan:
    from edgefleet.simulators.fleet import DeviceProfile, FleetPlan

    # Half the devices at each site; site-b's sensors drift partway through the demo.
    half = options.devices // 2
    return FleetPlan(
        count=options.devices,
        broker_url=broker_url,
        data_dir=data_dir / "devices",
        model=model,
        model_name=DEMO_MODEL,
        model_version=DEMO_VERSION,
        factory_package=package,
        telemetry_interval_s=options.telemetry_interval_s,
        drift_window_s=DEMO_DRIFT_WINDOW_S,
        profiles=(
            DeviceProfile(
                tags=("sim", "site-a"),
                count=options.devices - half,
                inferences_per_s=options.inferences_per_s,
            ),
            DeviceProfile(
                tags=("sim", "site-b"), count=half, inferences_per_s=options.inferences_per_s
            ),
        ),
    )


@contextlib.contextmanager
def _ctrl_c_sets(stop: threading.Event) -> Iterator[None]:
    """While watching, Ctrl-C (SIGINT) sets ``stop`` instead of raising KeyboardInterrupt.

    A KeyboardInterrupt that lands inside a finalizer (a socket or response closed by
    the garbage collector) is printed and swallowed by Python, and the demo would run
    on; setting an event cannot be lost. Only the main thread may handle signals.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _watch(
    options: DemoOptions, base: str, token: str, sim: SimulatedFleet, stop: threading.Event
) -> None:
    """Print the summary and new alerts until stopped; start site-b's drift on time."""
    started = time.monotonic()
    drifted = False
    seen_alerts: set[str] = set()
    while not stop.wait(options.summary_interval_s):
        elapsed = time.monotonic() - started
        if not drifted and options.drift_after_s is not None and elapsed >= options.drift_after_s:
            site_b = [d for d in sim.devices if "site-b" in d.profile.tags]
            sim.set_shift(options.drift_shift, site_b)
            drifted = True
            print(f"[{elapsed:6.0f}s] site-b's sensors start drifting")
        _print_summary(base, token, sim, elapsed)
        _print_new_alerts(base, token, seen_alerts, elapsed)
        if options.duration_s is not None and elapsed >= options.duration_s:
            return


def _demo_model(data_dir: Path) -> tuple[TrainedModel, Path]:
    """Train the demo model and package it with a reference profile of its training data.

    A data dir that holds the package of an earlier run keeps it: the fleet's registry
    and the devices' stores there know those bytes as version 1.0.0, and a package built
    again differs (build time), which the registry refuses as a conflict.
    """
    import numpy as np

    from edgefleet.shared.modeltools.builder import build_package
    from edgefleet.shared.package.format import PackageError
    from edgefleet.shared.package.read import read_package
    from edgefleet.shared.signing.errors import DigestMismatch
    from edgefleet.simulators.models import train_wine_classifier

    print("training the demo model on scikit-learn's wine data ...")
    models_dir = data_dir / "models"
    kept = models_dir / f"{DEMO_MODEL}-{DEMO_VERSION}.efpkg"
    # The seed is fixed, so the model and its sensor data are the ones packaged before.
    model = train_wine_classifier(models_dir / "wine.onnx")
    if kept.exists():
        try:
            read_package(kept)
        except (PackageError, DigestMismatch, OSError) as e:
            print(f"  the package of an earlier run is unreadable ({e}); building it again")
        else:
            print(f"  reusing {kept.name} from the earlier run in {data_dir}")
            return model, kept
    reference = models_dir / "reference.npy"
    np.save(reference, model.x_train)
    package = build_package(
        model.path,
        name=DEMO_MODEL,
        version=DEMO_VERSION,
        out_dir=data_dir / "models",
        reference_data=reference,
        feature_names=model.feature_names,
        metrics={"accuracy": model.accuracy},
    )
    print(
        f"  ONNX model {model.path.name} ({model.path.stat().st_size} bytes), held-out "
        f"accuracy {model.accuracy:.3f}, packaged with its reference profile as {package.name}"
    )
    return model, package


def _upload_model(base: str, token: str, package: Path) -> None:
    """Upload the package to the fleet's registry, which registers its reference profile."""
    request = urllib.request.Request(  # noqa: S310 - the fleet's own http:// URL
        f"{base}/v1/models",
        data=package.read_bytes(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            response.read()
    except urllib.error.HTTPError as e:
        detail = _error_message(e)
        raise CLIError(
            f"the fleet refused the demo model ({e.code}: {detail}); "
            "start with an empty --data-dir to begin again"
        ) from e


def _error_message(error: urllib.error.HTTPError) -> str:
    """The message of the fleet's ``{"error": {...}}`` body, else the HTTP reason."""
    try:
        return str(json.loads(error.read())["error"]["message"])
    except (ValueError, KeyError, TypeError, OSError):
        return str(error.reason)


def _print_summary(base: str, token: str, sim: SimulatedFleet, elapsed_s: float) -> None:
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


def fetch_alerts(base_url: str, token: str) -> list[dict[str, Any]]:
    """The fleet's alerts, newest first, through the REST API."""
    request = urllib.request.Request(  # noqa: S310 - the fleet's own http:// URL
        f"{base_url}/v1/alerts?limit=100", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        items: list[dict[str, Any]] = json.load(response)["items"]
    return items


def _print_new_alerts(base: str, token: str, seen: set[str], elapsed_s: float) -> None:
    try:
        alerts = fetch_alerts(base, token)
    except OSError:
        return
    for alert in reversed(alerts):
        if alert["id"] in seen:
            continue
        seen.add(alert["id"])
        print(
            f"[{elapsed_s:6.0f}s] ALERT {alert['kind']} ({alert['severity']}) on "
            f"{alert['slice_key']}: {alert['message']}"
        )
