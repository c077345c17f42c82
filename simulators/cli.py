"""``edgefleet sim`` and ``edgefleet demo``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register_demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``edgefleet demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="run a fleet service, an embedded broker and simulated devices",
        description="Start an embedded MQTT broker (or use --broker), the fleet service on "
        "SQLite and N simulated devices running the real agent with a real ONNX model. "
        "Prints the console URL and token, then a live summary. Ctrl-C stops it.",
    )
    parser.add_argument("--devices", type=int, default=20, help="simulated devices (default 20)")
    parser.add_argument("--data-dir", type=Path, default=Path("var/demo"), help="state directory")
    parser.add_argument("--broker", metavar="URL", help="use this MQTT broker instead of amqtt")
    parser.add_argument("--broker-port", type=int, default=0, help="embedded broker port")
    parser.add_argument("--port", type=int, default=8080, help="fleet API port (0 = any free)")
    parser.add_argument("--telemetry-interval", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from shared.cli import CLIError
    from simulators.demo import DemoOptions, run_demo

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
        )
    )


def register_sim(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``edgefleet sim``: simulated devices against an existing broker and fleet."""
    parser = subparsers.add_parser(
        "sim",
        help="run N simulated devices (real agent code) against a broker",
        description="Each simulated device runs the real agent with its own MQTT connection, "
        "state directory and identity, and scores synthetic sensor readings.",
    )
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--broker", metavar="URL", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--data-dir", type=Path, default=Path("var/sim"))
    parser.add_argument("--prefix", default="sim", help="device id prefix")
    parser.add_argument("--hardware", default="sim-gateway")
    parser.add_argument("--tag", action="append", default=[], help="tag (repeatable)")
    parser.add_argument("--telemetry-interval", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--rate", type=float, default=1.0, help="inferences/s per device")
    parser.add_argument("--duration", type=float, metavar="SECONDS")
    parser.set_defaults(handler=_run_sim)


def _run_sim(args: argparse.Namespace) -> int:
    import threading

    from shared.cli import CLIError
    from simulators.fleet import DeviceProfile, FleetPlan, SimulatedFleet
    from simulators.models import train_wine_classifier

    if args.devices < 1:
        raise CLIError(f"--devices must be at least 1, got {args.devices}")
    model = train_wine_classifier(args.data_dir.resolve() / "models" / "wine.onnx")
    profile = DeviceProfile(
        hardware=args.hardware, tags=tuple(args.tag or ["sim"]), inferences_per_s=args.rate
    )
    sim = SimulatedFleet(
        FleetPlan(
            count=args.devices,
            broker_url=args.broker,
            data_dir=args.data_dir.resolve(),
            model=model,
            telemetry_interval_s=args.telemetry_interval,
            profiles=(profile,),
            id_prefix=args.prefix,
        )
    )
    stop = threading.Event()
    sim.start()
    print(f"{args.devices} simulated devices on {args.broker}; Ctrl-C stops them")
    try:
        while not stop.wait(5.0):
            print(
                f"connected {sim.connected()}/{len(sim.devices)}, "
                f"inferences {sum(d.inferences for d in sim.devices)}"
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
