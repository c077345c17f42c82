"""``edgefleet sim`` and ``edgefleet demo``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgefleet.simulators.enrollment import IdentityPlan


def register_demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``edgefleet demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="run a fleet service, an embedded broker and simulated devices",
        description="Start an embedded MQTT broker (or use --broker), the fleet service on "
        "SQLite and N simulated devices running the real agent with a real ONNX model. "
        "Prints the console URL and token, then a live summary; partway through, half "
        "the devices drift and the fleet raises drift alerts. Ctrl-C stops it.",
    )
    parser.add_argument("--devices", type=int, default=20, help="simulated devices (default 20)")
    parser.add_argument("--data-dir", type=Path, default=Path("var/demo"), help="state directory")
    parser.add_argument("--broker", metavar="URL", help="use this MQTT broker instead of amqtt")
    parser.add_argument("--broker-port", type=int, default=0, help="embedded broker port")
    parser.add_argument("--port", type=int, default=8080, help="fleet API port (0 = any free)")
    parser.add_argument("--telemetry-interval", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    parser.add_argument(
        "--rate", type=float, default=2.0, help="inferences/s per device (default 2)"
    )
    parser.add_argument(
        "--drift-after",
        type=float,
        default=40.0,
        metavar="SECONDS",
        help="when half the devices (tag site-b) start drifting (default 40; negative: never)",
    )
    parser.add_argument(
        "--drift-shift", type=float, default=1.5, metavar="STD", help="how far (default 1.5 std)"
    )
    parser.add_argument(
        "--identities",
        action="store_true",
        help="a closed broker: Mosquitto (installed) on the fleet's broker-config, every"
        " device enrolled and connecting with its own certificate",
    )
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from edgefleet.shared.cli import CLIError
    from edgefleet.simulators.demo import DemoOptions, run_demo

    if args.devices < 1:
        raise CLIError(f"--devices must be at least 1, got {args.devices}")
    return run_demo(
        DemoOptions(
            devices=args.devices,
            data_dir=args.data_dir,
            broker_url=args.broker,
            broker_port=args.broker_port,
            api_port=args.port,
            telemetry_interval_s=args.telemetry_interval,
            duration_s=args.duration,
            inferences_per_s=args.rate,
            drift_after_s=args.drift_after if args.drift_after >= 0 else None,
            drift_shift=args.drift_shift,
            identities=args.identities,
        )
    )


PROFILE_HELP = """\
--profile takes comma-separated key=value pairs and may be repeated, one per group of
devices:
  hardware=rpi4          the hardware the device reports (default sim-gateway)
  tags=a;b               its tags, separated by ';' (default: the --tag values, or sim)
  count=100              how many devices get the profile (default: an even share of
                         the devices the counted profiles leave)
  rate=2                 inferences per second
  shift=1.5              input drift: readings shifted by this many std devs
  fault=KIND[@V1;V2]     a fault, repeatable; KIND is one of
                           golden_fail  outputs perturbed: the golden check fails
                           slow         each inference sleeps slow_ms (default 300)
                           crash        loading the model raises (activation fails)
                           offline      the agent is switched off every period_s for down_s
                           flaky        the MQTT connection drops, on average every period_s
                         model faults hit versions V1;V2, by default every version but
                         the factory one
  slow_ms=, period_s=, down_s=   fault parameters
example: --profile hardware=rpi3,count=100,fault=golden_fail --profile hardware=rpi4
"""


ADMIN_TOKEN_ENV = "EDGEFLEET_SIM_ADMIN_TOKEN"  # noqa: S105 - a variable name, not a secret


def register_sim(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``edgefleet sim``: simulated devices against an existing broker and fleet."""
    parser = subparsers.add_parser(
        "sim",
        help="run N simulated devices (real agent code) against a broker",
        description="Each simulated device runs the real agent with its own MQTT connection, "
        "state directory and identity, and scores synthetic sensor readings. With "
        "--repository-url and --trust-dir the devices take signed updates from a fleet.",
        epilog=PROFILE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--broker", metavar="URL", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--data-dir", type=Path, default=Path("var/sim"))
    parser.add_argument("--prefix", default="sim", help="device id prefix")
    parser.add_argument("--hardware", default="sim-gateway")
    parser.add_argument("--tag", action="append", default=[], help="tag (repeatable)")
    parser.add_argument("--telemetry-interval", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--rate", type=float, default=1.0, help="inferences/s per device")
    parser.add_argument("--profile", action="append", default=[], help="see below")
    parser.add_argument("--factory-package", type=Path, help="the .efpkg devices ship with")
    parser.add_argument(
        "--model-name",
        default="wine-classifier",
        help="the factory model's name (the registry's name for it, so rollouts of that"
        " model find the devices running it)",
    )
    parser.add_argument("--model-version", default="1.0.0", help="the factory model's version")
    parser.add_argument("--repository-url", help="the fleet's image repository (updates on)")
    parser.add_argument("--trust-dir", type=Path, help="the provisioning bundle")
    parser.add_argument("--device-token", help="bearer token for the repository")
    parser.add_argument(
        "--enroll-at",
        metavar="FLEET_URL",
        help="identities on: each device enrolls at this fleet API (a token with device:enroll"
        f" in ${ADMIN_TOKEN_ENV}) and connects to --broker, the mqtts:// device listener,"
        " with its own certificate",
    )
    parser.add_argument(
        "--fleet-ca-file", type=Path, help="verifies an https --enroll-at before devices pin it"
    )
    parser.add_argument(
        "--per-process", type=int, default=125, help="agents per worker process (default 125)"
    )
    parser.add_argument(
        "--update-slots",
        type=int,
        default=1,
        metavar="N",
        help="agents of one worker that may run a heavy update step at once (0: no limit;"
        " default 1, see simulators.fleet.FleetPlan.update_slots)",
    )
    parser.add_argument("--duration", type=float, metavar="SECONDS")
    parser.set_defaults(handler=_run_sim)


def _identity_plan(args: argparse.Namespace) -> IdentityPlan | None:
    """The devices' identities (``--enroll-at``), or None; raises CLIError for a missing
    token or a --broker that is not a TLS device listener."""
    import os

    from edgefleet.shared.cli import CLIError
    from edgefleet.simulators.enrollment import IdentityPlan

    if args.enroll_at is None:
        return None
    admin_token = os.environ.get(ADMIN_TOKEN_ENV)
    if not admin_token:
        raise CLIError(f"--enroll-at needs a token with device:enroll in ${ADMIN_TOKEN_ENV}")
    if not args.broker.startswith("mqtts://"):
        raise CLIError("with --enroll-at, --broker is the device listener: an mqtts:// URL")
    return IdentityPlan(
        fleet_url=args.enroll_at,
        admin_token=admin_token,
        device_broker_url=args.broker,
        fleet_ca_file=args.fleet_ca_file.resolve() if args.fleet_ca_file else None,
    )


def _run_sim(args: argparse.Namespace) -> int:
    import threading

    from edgefleet.shared.cli import CLIError
    from edgefleet.simulators.fleet import DeviceProfile, FleetPlan, UpdatePlan
    from edgefleet.simulators.models import train_wine_classifier
    from edgefleet.simulators.profiles import ProfileError, parse_profile
    from edgefleet.simulators.shards import ShardedFleet

    if args.devices < 1:
        raise CLIError(f"--devices must be at least 1, got {args.devices}")
    if args.update_slots < 0:
        raise CLIError(f"--update-slots must be 0 (no limit) or more, got {args.update_slots}")
    if (args.repository_url is None) != (args.trust_dir is None):
        raise CLIError("--repository-url and --trust-dir go together (signed updates)")
    default = DeviceProfile(
        hardware=args.hardware, tags=tuple(args.tag or ["sim"]), inferences_per_s=args.rate
    )
    try:
        profiles = tuple(parse_profile(text, default) for text in args.profile) or (default,)
    except ProfileError as e:
        raise CLIError(str(e)) from e
    identities = _identity_plan(args)
    model = train_wine_classifier(args.data_dir.resolve() / "models" / "wine.onnx")
    updates = None
    if args.repository_url is not None:
        updates = UpdatePlan(
            repository_url=args.repository_url,
            trust_dir=args.trust_dir.resolve(),
            device_token=args.device_token,
        )
    try:
        plan = FleetPlan(
            count=args.devices,
            broker_url=args.broker,
            data_dir=args.data_dir.resolve(),
            model=model,
            model_name=args.model_name,
            model_version=args.model_version,
            telemetry_interval_s=args.telemetry_interval,
            profiles=profiles,
            id_prefix=args.prefix,
            factory_package=args.factory_package.resolve() if args.factory_package else None,
            updates=updates,
            update_slots=args.update_slots,
            identities=identities,
        )
        sim = ShardedFleet(plan, per_process=args.per_process)
    except ValueError as e:
        raise CLIError(str(e)) from e
    stop = threading.Event()
    sim.start()
    print(f"{args.devices} simulated devices on {args.broker}; Ctrl-C stops them", flush=True)
    try:
        while not stop.wait(5.0):
            shards = sim.status()
            print(
                f"connected {sum(s.connected for s in shards)}/{args.devices}, "
                f"inferences {sum(s.inferences for s in shards)}",
                flush=True,
            )
            if args.duration is not None:
                args.duration -= 5.0
                if args.duration <= 0:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0
