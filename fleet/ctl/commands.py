"""What each ``edgefleet ctl`` command does: one call (or a few) of `FleetClient`, then
a table or the API's JSON. `run` loads the config, opens the client, runs the command,
and turns every `CtlError` into one ``edgefleet ctl: error: ...`` line on stderr and its
exit code (`edgefleet.fleet.ctl.errors.ExitCode`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from edgefleet.fleet.ctl import output, progress
from edgefleet.fleet.ctl.client import FleetClient
from edgefleet.fleet.ctl.config import load
from edgefleet.fleet.ctl.errors import CtlError, ExitCode, UsageError
from edgefleet.fleet.ctl.views import View
from edgefleet.fleet.ctl.watch import WatchOptions, watch

MAX_ROLLOUT_FILE_BYTES = 1024 * 1024


class Printer:
    """Writes a command's result: the API's JSON with ``--output json``, else text."""

    def __init__(self, *, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: View | list[View], text: Callable[[], str]) -> None:
        print(output.to_json(data) if self.as_json else text(), flush=True)

    def say(self, text: str) -> None:
        """A line for people only: progress and notes (stderr under ``--output json``)."""
        print(text, file=sys.stderr if self.as_json else sys.stdout, flush=True)


Handler = Callable[[FleetClient, argparse.Namespace, Printer], ExitCode]


def option(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    """A shared option, given before or after the command words (see `cli`)."""
    return getattr(args, name, default)


def run(name: str, args: argparse.Namespace) -> int:
    """Run command ``name``; returns its exit code."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # httpx logs every request at INFO, and edgefleet logs to stdout: that would
        # break ``--output json`` and clutter the tables.
        for noisy in ("httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    printer = Printer(as_json=option(args, "output") == "json")
    try:
        config = load(
            config_file=option(args, "config"),
            url=option(args, "url"),
            profile=option(args, "profile"),
            timeout_s=option(args, "request_timeout"),
        )
        with FleetClient(config) as client:
            return int(HANDLERS[name](client, args, printer))
    except CtlError as e:
        print(f"edgefleet ctl: error: {e}", file=sys.stderr, flush=True)
        return int(e.exit_code)


# --- whoami and devices ----------------------------------------------------------------


def whoami(client: FleetClient, _args: argparse.Namespace, out: Printer) -> ExitCode:
    who = client.whoami()
    data = who.as_json()
    out.emit(
        who,
        lambda: output.fields(
            [
                ("name", who.name),
                ("kind", data.get("kind")),
                ("token", data.get("token_prefix")),
                ("permissions", sorted(data.get("permissions", []))),
            ]
        ),
    )
    return ExitCode.OK


def devices_list(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
    page = client.devices(
        tag=args.tag,
        online=args.online,
        hardware=args.hardware,
        limit=args.limit,
        offset=args.offset,
    )

    def text() -> str:
        rows = [
            (
                d.device_id,
                d.online,
                f"{d.model_name} {d.model_version or ''}".strip() if d.model_name else None,
                d.hardware,
                d.tags,
                d.last_seen,
            )
            for d in page.items
        ]
        shown = output.table(["device", "online", "model", "hardware", "tags", "last seen"], rows)
        more = page.total - args.offset - len(page.items)
        if more > 0:
            after = args.offset + len(page.items)
            shown += f"\n({len(page.items)} of {page.total}; --offset {after} for more)"
        return shown

    out.emit(list(page.items), text)
    return ExitCode.OK


def devices_show(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
    device = client.device(args.device_id)
    data = device.as_json()
    out.emit(
        device,
        lambda: output.fields(
            [
                ("device", device.device_id),
                ("online", device.online),
                ("offline reason", device.offline_reason),
                ("last seen", device.last_seen),
                ("model", device.model_name),
                ("version", device.model_version),
                ("agent", device.agent_version),
                ("hardware", device.hardware),
                ("tags", device.tags),
                ("runtimes", data.get("runtimes")),
                ("first seen", data.get("first_seen")),
            ]
        ),
    )
    return ExitCode.OK


def devices_deployments(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
    found = client.deployments(args.device_id)
    rows = [
        (d.model_name, d.model_version, d.rollout_id, d.outcome, d.phase, d.started_at, d.reasons)
        for d in found.history
    ]
    headers = ["model", "version", "rollout", "outcome", "phase", "started", "reasons"]
    out.emit(found, lambda: output.table(headers, rows))
    return ExitCode.OK


def devices_assign(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
    desired = client.assign(args.device_id, args.model, args.version, rollback=args.rollback)
    body = desired.signed
    out.emit(
        desired,
        lambda: (
            f"device {args.device_id} should run {args.model} {body.target.version}"
            f" (desired state seq {body.seq}{', a signed rollback' if body.rollback else ''})"
        ),
    )
    return ExitCode.OK


def devices_enroll_token(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
    created = client.enrollment_token(
        device_id=args.device_id, key_fingerprint=args.key_fingerprint, expires_in_s=args.expires_in
    )
    # The token alone on stdout, so that TOKEN=$(edgefleet ctl devices enroll-token) works.
    print(
        f"one-time enrollment token{' for ' + created.device_id if created.device_id else ''},"
        f" expires {output.cell(created.expires_at)} UTC",
        file=sys.stderr,
    )
    out.emit(created, lambda: created.token)
    return ExitCode.OK


# --- models ----------------------------------------------------------------------------


def models_list(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
    found = client.models(args.name)
    rows = [
        (
            m.name,
            m.version,
            m.runtime,
            m.review.state if m.review else None,
            m.published,
            m.aliases,
            m.uploaded_by,
            m.uploaded_at,
        )
        for m in found
    ]
    headers = [
        "name",
        "version",
        "runtime",
        "review",
        "published",
        "aliases",
        "uploaded by",
        "uploaded",
    ]
    out.emit(list(found), lambda: output.table(headers, rows))
    return ExitCode.OK


def models_show(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
    m = client.model(args.name, args.version)
    data = m.as_json()
    out.emit(
        m,
        lambda: output.fields(
            [
                ("model", f"{m.name} {m.version}"),
                ("runtime", m.runtime),
                ("size", output.size(m.length)),
                ("sha256", m.sha256),
                ("review", m.review.state if m.review else None),
                ("reviewed by", m.review.reviewed_by if m.review else None),
                ("published", m.published),
                ("aliases", m.aliases),
                ("uploaded by", m.uploaded_by),
                ("uploaded", m.uploaded_at),
                (
                    "metrics",
                    ", ".join(f"{k}={v:g}" for k, v in sorted(data.get("metrics", {}).items())),
                ),
            ]
        ),
    )
    return ExitCode.OK


def models_push(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
    package: Path = args.package
    if not package.is_file():
        raise UsageError(f"package {package}: no such file")
    lineage = {
        "code_revision": args.code_revision,
        "run_uri": args.run_uri,
        "parent_version": args.parent_version,
        "dataset_version": args.dataset_version,
    }
    try:
        version, created = client.push(package, lineage=lineage)
    except OSError as e:
        raise UsageError(f"package {package}: {e.strerror or e}") from e
    what = f"{version.name} {version.version}"
    out.say(
        f"uploaded {what} ({output.size(version.length)}, sha256 {version.sha256[:12]})"
        if created
        else f"{what} is already in the registry with these bytes"
    )
    if args.publish and not version.published:
        version = client.publish(version.name, version.version)
        out.say(f"published {what}: devices can fetch it")
    review = version.review.state if version.review else "unknown"
    out.emit(
        version, lambda: f"{what}: review {review}, published {output.cell(version.published)}"
    )
    return ExitCode.OK


def models_publish(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
    version = client.publish(args.name, args.version)
    out.emit(version, lambda: f"published {version.name} {version.version}")
    return ExitCode.OK


def _review(action: str) -> Handler:
    def handle(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
        review = client.review(args.name, args.version, action, remark=args.remark)
        out.emit(
            review,
            lambda: (
                f"{args.name} {args.version}: {review.state}"
                + (f" ({review.remark})" if review.remark else "")
            ),
        )
        return ExitCode.OK

    return handle


# --- rollouts --------------------------------------------------------------------------


def rollouts_list(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
    page = client.rollouts(status=args.status, limit=args.limit)
    rows = [
        (
            r.id,
            f"{r.model} {r.version}",
            r.status,
            f"{r.current_wave + 1}/{len(r.wave_sizes)}" if r.wave_sizes else None,
            r.targets,
            r.counts.get("healthy", 0),
            r.created_by,
            r.created_at,
        )
        for r in page.items
    ]
    headers = ["rollout", "model", "status", "wave", "targets", "healthy", "created by", "created"]
    out.emit(list(page.items), lambda: output.table(headers, rows))
    return ExitCode.OK


def rollouts_show(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
    rollout = client.rollout(args.rollout_id)
    out.emit(rollout, lambda: "\n".join(progress.render(rollout, width=_bar_width())))
    return ExitCode.OK


def rollouts_create(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
    spec = read_rollout_file(args.file, sys.stdin)
    if args.model:
        spec["model"] = args.model
    if args.model_version:
        spec["version"] = args.model_version
    rollout = client.create_rollout(spec)
    sizes = ", ".join(str(n) for n in rollout.wave_sizes)
    out.say(
        f"created rollout {rollout.id}: {rollout.model} {rollout.version} to"
        f" {rollout.targets} device(s) in {len(rollout.wave_sizes)} wave(s) ({sizes}),"
        f" status {rollout.status}"
    )
    if not args.watch:
        if out.as_json:
            out.emit(rollout, str)
        return ExitCode.OK
    return _watch(client, rollout.id, args, out)


def rollouts_watch(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
    return _watch(client, args.rollout_id, args, out)


def rollouts_command(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
    rollout = client.command(args.rollout_id, args.rollout_command, remark=args.remark)
    out.emit(rollout, lambda: progress.header(rollout))
    return ExitCode.OK


def _watch(
    client: FleetClient, rollout_id: str, args: argparse.Namespace, out: Printer
) -> ExitCode:
    stream: TextIO = sys.stderr if out.as_json else sys.stdout
    tty = stream.isatty() and os.environ.get("TERM") != "dumb"
    options = WatchOptions(
        interval_s=args.interval,
        timeout_s=args.timeout,
        exit_on_pause=args.exit_on_pause,
        tty=tty,
        color=tty and "NO_COLOR" not in os.environ,
        width=_bar_width(),
    )
    last, code = watch(lambda: client.rollout(rollout_id), stream, options)
    if out.as_json and last is not None:
        out.emit(last, str)
    elif last is not None and code != ExitCode.OK:
        out.say(
            f"rollout {rollout_id} ended {last.status}"
            if code != ExitCode.TIMEOUT
            else f"rollout {rollout_id} is still {last.status}"
        )
    return code


def read_rollout_file(path: Path, stdin: TextIO) -> dict[str, Any]:
    """The rollout body in ``path`` (``-``: JSON on ``stdin``): TOML for a ``.toml``
    file, else JSON. Raises `UsageError` naming the file and the problem."""
    name = "stdin" if str(path) == "-" else str(path)
    try:
        if str(path) == "-":
            text = stdin.read(MAX_ROLLOUT_FILE_BYTES + 1)
        else:
            with path.open(encoding="utf-8") as handle:
                text = handle.read(MAX_ROLLOUT_FILE_BYTES + 1)
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UsageError(f"rollout file {name}: {reason}") from e
    if len(text) > MAX_ROLLOUT_FILE_BYTES:
        raise UsageError(f"rollout file {name} is larger than {MAX_ROLLOUT_FILE_BYTES} bytes")
    try:
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise UsageError(f"rollout file {name}: not valid {kind}: {e}") from e
    if not isinstance(data, dict):
        raise UsageError(f"rollout file {name}: expected an object, got {type(data).__name__}")
    return data


def _bar_width() -> int:
    return max(10, min(40, shutil.get_terminal_size().columns - 50))


# --- alerts ----------------------------------------------------------------------------


def alerts_list(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
    page = client.alerts(since=args.since, kind=args.kind, model=args.model, limit=args.limit)
    rows = [
        (
            a.id,
            a.kind,
            a.severity,
            f"{a.model_name} {a.model_version}",
            a.slice_key,
            a.created_at,
            (a.acknowledged or {}).get("by"),
            a.message if len(a.message) <= 80 else a.message[:77] + "...",
        )
        for a in page.items
    ]
    headers = ["alert", "kind", "severity", "model", "slice", "raised", "acked by", "message"]
    out.emit(list(page.items), lambda: output.table(headers, rows))
    return ExitCode.OK


def alerts_ack(client: FleetClient, args: argparse.Namespace, out: Printer) -> ExitCode:
    alert = client.ack(args.alert_id, remark=args.remark)
    out.emit(alert, lambda: f"acknowledged alert {alert.id} ({alert.kind} on {alert.slice_key})")
    return ExitCode.OK


HANDLERS: Mapping[str, Handler] = {
    "whoami": whoami,
    "devices_list": devices_list,
    "devices_show": devices_show,
    "devices_deployments": devices_deployments,
    "devices_assign": devices_assign,
    "devices_enroll_token": devices_enroll_token,
    "models_list": models_list,
    "models_show": models_show,
    "models_push": models_push,
    "models_publish": models_publish,
    "models_approve": _review("approve"),
    "models_reject": _review("reject"),
    "models_retire": _review("retire"),
    "rollouts_list": rollouts_list,
    "rollouts_show": rollouts_show,
    "rollouts_create": rollouts_create,
    "rollouts_watch": rollouts_watch,
    "rollouts_command": rollouts_command,
    "alerts_list": alerts_list,
    "alerts_ack": alerts_ack,
}
