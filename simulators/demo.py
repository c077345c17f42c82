"""``edgefleet demo``: fleet service + embedded broker + simulated devices, one command.

Everything runs in this process: an amqtt broker (or ``--broker URL``), the fleet
service on SQLite in ``--data-dir``, and N simulated devices running the real agent
with a real ONNX model trained on the spot from scikit-learn's wine data. The summary
is read back through the fleet's own REST API, so the demo shows what an operator sees.

With ``--identities`` the broker is a Mosquitto child process on the configuration
`edgefleet fleet broker-config` writes (an mTLS device listener with per-device ACLs,
the fleet on a listener of its own), and every simulated device enrolls with a
one-time token before it starts, then connects with its own certificate.
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
    from edgefleet.simulators.enrollment import IdentityPlan
    from edgefleet.simulators.fleet import FleetPlan, SimulatedFleet
    from edgefleet.simulators.models import TrainedModel
    from edgefleet.simulators.mosquitto import ClosedMosquitto

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
    identities: bool = False


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
    """Run the demo until ``stop`` is set, ``duration_s`` passes, or Ctrl-C; returns 0.

    Raises CLIError for ``identities`` with a ``broker_url``, a closed broker that cannot
    be set up, or a fleet that refuses the demo model.
    """
    if options.identities and options.broker_url is not None:
        raise CLIError(
            "--identities runs its own Mosquitto with the fleet's certificates; leave out --broker"
        )
    from edgefleet.fleet.service import FleetService
    from edgefleet.simulators.enrollment import IdentityPlan
    from edgefleet.simulators.fleet import SimulatedFleet
    from edgefleet.simulators.mosquitto import ClosedMosquitto

    stop = stop or threading.Event()
    data_dir = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    for noisy in ("amqtt", "transitions", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if logging.getLogger().level > logging.DEBUG:
        # Twenty agents' connect lines would bury the summary; --log-level DEBUG shows them.
        logging.getLogger("edgefleet").setLevel(logging.WARNING)

    model, package = _demo_model(data_dir)
    token = demo_admin_token(data_dir)
    broker, settings = _start_broker(options, data_dir, token)
    fleet_service = FleetService(settings)
    sim: SimulatedFleet | None = None
    try:
        fleet_service.start()
        base = fleet_service.base_url
        identities = None
        if isinstance(broker, ClosedMosquitto):
            identities = IdentityPlan(
                fleet_url=base, admin_token=token, device_broker_url=broker.device_url
            )
        sim = SimulatedFleet(
            _fleet_plan(
                options, data_dir, settings.broker_url, model, package, identities=identities
            )
        )
        _upload_model(base, token, package)
        sim.start()
        _print_banner(options, base, token, data_dir, identities=identities is not None)
        with _ctrl_c_sets(stop):
            _watch(options, base, token, sim, stop)
        if stop.is_set():
            print("\nstopping ...")
    except KeyboardInterrupt:
        print("\nstopping ...")
    finally:
        if sim is not None:
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
        # The demo is its own operator: it brings its database to head at start.
        migrate_at_start=True,
        # amqtt speaks MQTT 3.1.1 without shared subscriptions.
        shared_subscription=options.broker_url is not None,
        broker_protocol="3.1.1",
        api_port=options.api_port,
        admin_token=token,  # type: ignore[arg-type]  # pydantic turns str into SecretStr
        # A demo wants to see drift within a minute, not within the hour of production.
        drift_interval_s=DEMO_DRIFT_WINDOW_S,
        drift_lookback_s=6 * DEMO_DRIFT_WINDOW_S,
        drift_cooldown_s=120,
        # With --identities the device CA lives in the demo's data dir, key in clear.
        lab_mode=options.identities,
    )


def _start_broker(
    options: DemoOptions, data_dir: Path, token: str
) -> tuple[EmbeddedBroker | ClosedMosquitto | None, FleetSettings]:
    """The broker the demo starts (none with ``--broker``) and the fleet's settings for it.

    Raises CLIError for a closed broker that cannot be set up (see `_closed_broker`).
    """
    if options.identities:
        closed, settings = _closed_broker(options, data_dir, token)
        print(
            f"Mosquitto {closed.device_url}: a device certificate of the fleet CA required,"
            " each device confined to its own topics"
        )
        return closed, settings
    if options.broker_url is not None:
        return None, _fleet_settings(options, data_dir, options.broker_url, token)
    embedded = EmbeddedBroker(port=options.broker_port or _free_port())
    embedded.start()
    print(f"embedded MQTT broker (amqtt) on {embedded.url}")
    return embedded, _fleet_settings(options, data_dir, embedded.url, token)


def _print_banner(
    options: DemoOptions, base: str, token: str, data_dir: Path, *, identities: bool
) -> None:
    print()
    print(f"  fleet console:  {base}/docs   (REST API, OpenAPI)")
    print(f"  admin token:    {token}")
    print(f"  try:            curl -H 'Authorization: Bearer {token}' {base}/v1/devices")
    print(f"  devices:        {options.devices} simulated agents, state in {data_dir}/devices")
    if identities:
        print(
            f"  identities:     each device enrolled (GET {base}/v1/identities);"
            f" broker config in {data_dir}/broker"
        )
    if options.drift_after_s is not None and options.devices > 1:
        print(
            f"  drift:          site-b's {options.devices // 2} devices drift by "
            f"{options.drift_shift} std "
            f"after {options.drift_after_s:.0f}s; watch for the fleet's alerts"
        )
    print("  Ctrl-C stops everything.\n")


def _closed_broker(
    options: DemoOptions, data_dir: Path, token: str
) -> tuple[ClosedMosquitto, FleetSettings]:
    """Write the broker config for the demo's fleet, start Mosquitto on it, and return it
    with the fleet settings that go with it (the fleet's own listener and certificate).

    Raises CLIError when the config cannot be written or Mosquitto does not start.
    """
    from edgefleet.fleet.identity.broker_cli import broker_setup_for_fleet
    from edgefleet.fleet.identity.broker_config import Listener
    from edgefleet.fleet.identity.service import IdentityUnavailableError
    from edgefleet.fleet.settings import FleetSettings
    from edgefleet.simulators.mosquitto import ClosedMosquitto

    host = "127.0.0.1"
    fleet_listener = Listener(_free_port(), host)
    settings = _fleet_settings(options, data_dir, f"mqtts://{host}:{fleet_listener.port}", token)
    try:
        setup = broker_setup_for_fleet(
            settings,
            data_dir / "broker",
            device=Listener(_free_port(), host),
            fleet=fleet_listener,
            server_names=(host, "localhost"),
        )
    except (IdentityUnavailableError, ValueError, OSError) as e:
        raise CLIError(f"cannot write the demo's broker config: {e}") from e
    broker = ClosedMosquitto(data_dir / "broker-run", setup, host=host)
    try:
        broker.start()
    except RuntimeError as e:
        raise CLIError(str(e)) from e
    fields: dict[str, Any] = settings.model_dump()
    fields.update(setup.fleet_fields(host))
    fields.update(
        broker_protocol="5", shared_subscription=True, broker_reload_command=broker.reload_command
    )
    fields["admin_token"] = (
        settings.admin_token.get_secret_value() if settings.admin_token else None
    )
    return broker, FleetSettings(**fields)


def _fleet_plan(
    options: DemoOptions,
    data_dir: Path,
    broker_url: str,
    model: TrainedModel,
    package: Path,
    *,
    identities: IdentityPlan | None = None,
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
        identities=identities,
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
