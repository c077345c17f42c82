"""The ``edgefleet ctl`` parser: commands, their options, and the exit codes in --help.

Handlers live in `edgefleet.fleet.ctl.commands`; this module imports nothing heavy, so
``edgefleet --help`` stays fast. The options every command shares (``--url``,
``--profile``, ``--config``, ``--output``, ``--request-timeout``) are accepted before or
after the command words: ``edgefleet ctl -o json devices list`` and ``edgefleet ctl
devices list -o json`` are the same.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.fleet.ctl.errors import EXIT_CODES_HELP

if TYPE_CHECKING:  # not subscriptable at run time
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

CONFIG_HELP = """configuration (the first found wins, per setting):
  --url, then EDGEFLEET_URL, EDGEFLEET_TOKEN, EDGEFLEET_CA_FILE, then the config file
  ($EDGEFLEET_CONFIG or ~/.config/edgefleet/ctl.toml): url, token, ca_file, timeout_s at
  its top, or under [profiles.NAME] picked by --profile, $EDGEFLEET_PROFILE or
  profile = "NAME". There is no --token flag: command lines are visible to other users."""

ROLLOUT_COMMANDS = {
    "pause": "stop assigning devices (running, soaking or created -> paused)",
    "resume": "go on after a pause (past a failed gate, that gate counts as passed by you)",
    "abort": "stop for good, leaving devices as they are",
    "rollback": "roll every touched device back to the version it ran before",
}


def register(subparsers: SubParsers) -> None:
    """Add ``ctl`` and its commands to the ``edgefleet`` parser."""
    common = _common_options()
    ctl = subparsers.add_parser(
        "ctl",
        parents=[common],
        help="operate a fleet through its REST API (devices, models, rollouts, alerts)",
        description="Operate a running fleet through its REST API.",
        epilog=f"{CONFIG_HELP}\n\n{EXIT_CODES_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _group_help(ctl)
    groups = ctl.add_subparsers(title="ctl commands", metavar="COMMAND")
    leaf = _Leaves(common)
    leaf(groups, "whoami", "show who the token acts as, and its permissions", "whoami")
    devices = _group(groups, "devices", "the device registry and enrollment")
    _devices(devices, leaf)
    _enroll_token(devices, leaf)
    _models(_group(groups, "models", "the model registry"), leaf)
    _rollouts(_group(groups, "rollouts", "staged rollouts"), leaf)
    _alerts(_group(groups, "alerts", "drift and health alerts"), leaf)


class _Leaves:
    """Makes a command parser with the shared options and the exit codes in its help."""

    def __init__(self, common: argparse.ArgumentParser) -> None:
        self._common = common

    def __call__(
        self, parent: SubParsers, name: str, help_text: str, run: str
    ) -> argparse.ArgumentParser:
        parser = parent.add_parser(
            name,
            parents=[self._common],
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(handler=_handler(run))
        return parser


def _devices(devices: SubParsers, leaf: _Leaves) -> None:
    found = leaf(devices, "list", "list devices, ordered by id", "devices_list")
    found.add_argument("--tag", help="only devices with this tag")
    found.add_argument("--hardware", help="only devices of this hardware")
    online = found.add_mutually_exclusive_group()
    online.add_argument(
        "--online", dest="online", action="store_const", const=True, help="only online ones"
    )
    online.add_argument(
        "--offline", dest="online", action="store_const", const=False, help="only offline ones"
    )
    _paging(found)
    show = leaf(devices, "show", "show one device", "devices_show")
    show.add_argument("device_id", metavar="DEVICE")
    deployed = leaf(
        devices,
        "deployments",
        "what a device reported doing about each desired state",
        "devices_deployments",
    )
    deployed.add_argument("device_id", metavar="DEVICE")
    assign = leaf(
        devices,
        "assign",
        "sign and publish one device's desired state (a published version)",
        "devices_assign",
    )
    assign.add_argument("device_id", metavar="DEVICE")
    assign.add_argument("model", metavar="MODEL")
    assign.add_argument("version", metavar="VERSION")
    assign.add_argument(
        "--rollback",
        action="store_true",
        help="allow a downgrade (the device refuses one otherwise)",
    )


def _enroll_token(devices: SubParsers, leaf: _Leaves) -> None:
    enroll = leaf(
        devices,
        "enroll-token",
        "make a one-time enrollment token for `edgefleet agent enroll` (printed alone)",
        "devices_enroll_token",
    )
    enroll.add_argument("--device-id", help="admit only this device id")
    enroll.add_argument(
        "--key-fingerprint", help="admit only this key (`edgefleet agent key-fingerprint`)"
    )
    enroll.add_argument(
        "--expires-in", type=_positive_int, metavar="SECONDS", help="default 86400 (24 h)"
    )


def _models(models: SubParsers, leaf: _Leaves) -> None:
    listed = leaf(models, "list", "list model versions, newest upload first", "models_list")
    listed.add_argument("--name", help="only versions of this model")
    show = leaf(models, "show", "show one model version", "models_show")
    _name_version(show)
    push = leaf(models, "push", "upload a model package (.efpkg)", "models_push")
    push.add_argument("package", type=Path, metavar="PACKAGE")
    push.add_argument(
        "--publish", action="store_true", help="then sign it into the repository (lab mode)"
    )
    for flag in ("code-revision", "run-uri", "parent-version", "dataset-version"):
        push.add_argument(f"--{flag}", help="lineage the manifest leaves out")
    publish = leaf(
        models, "publish", "sign a version into the repository (lab mode)", "models_publish"
    )
    _name_version(publish)
    for action, help_text in (
        ("approve", "approve a version someone else uploaded (four eyes)"),
        ("reject", "reject a version, saying why"),
        ("retire", "retire a version: it starts no rollout and no assignment"),
    ):
        review = leaf(models, action, help_text, f"models_{action}")
        _name_version(review)
        review.add_argument("--remark", required=action == "reject", help="why")


def _rollouts(rollouts: SubParsers, leaf: _Leaves) -> None:
    listed = leaf(rollouts, "list", "list rollouts, newest first", "rollouts_list")
    listed.add_argument("--status", help="only rollouts in this status (e.g. running)")
    listed.add_argument("--limit", type=_positive_int, default=100)
    show = leaf(rollouts, "show", "show one rollout's waves, gates and counts", "rollouts_show")
    show.add_argument("rollout_id", metavar="ROLLOUT")
    create = leaf(
        rollouts,
        "create",
        "plan a rollout from a file (JSON, or TOML by its suffix)",
        "rollouts_create",
    )
    create.add_argument(
        "-f",
        "--file",
        type=Path,
        required=True,
        metavar="FILE",
        help="the rollout: the body of POST /v1/rollouts; - reads JSON from stdin",
    )
    create.add_argument("--model", help="use this model instead of the file's")
    create.add_argument("--version", dest="model_version", help="use this version instead")
    create.add_argument("--watch", action="store_true", help="then watch it until it ends")
    _watch_options(create)
    watching = leaf(
        rollouts, "watch", "show a rollout's progress live until it ends", "rollouts_watch"
    )
    watching.add_argument("rollout_id", metavar="ROLLOUT")
    _watch_options(watching)
    for command, help_text in ROLLOUT_COMMANDS.items():
        commanded = leaf(rollouts, command, help_text, "rollouts_command")
        commanded.add_argument("rollout_id", metavar="ROLLOUT")
        commanded.set_defaults(rollout_command=command, remark=None)
    for command, help_text in (
        ("approve", "approve a rollout waiting for approval (four eyes)"),
        ("deny", "deny a rollout waiting for approval, saying why"),
    ):
        reviewed = leaf(rollouts, command, help_text, "rollouts_command")
        reviewed.add_argument("rollout_id", metavar="ROLLOUT")
        reviewed.add_argument("--remark", required=command == "deny", help="why")
        reviewed.set_defaults(rollout_command=command)


def _alerts(alerts: SubParsers, leaf: _Leaves) -> None:
    listed = leaf(alerts, "list", "list alerts, newest first", "alerts_list")
    listed.add_argument("--since", help="ISO 8601 time: only alerts raised at or after it")
    listed.add_argument("--kind", help="only alerts of this kind (e.g. data_drift)")
    listed.add_argument("--model", help="only alerts about this model")
    listed.add_argument("--limit", type=_positive_int, default=100)
    ack = leaf(alerts, "ack", "acknowledge an alert", "alerts_ack")
    ack.add_argument("alert_id", metavar="ALERT")
    ack.add_argument("--remark")


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS: an option given before the command words is not reset by the command's
    # own copy of it; commands read them with their defaults (`commands.option`).
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("fleet connection and output")
    group.add_argument("--url", default=argparse.SUPPRESS, help="the fleet's URL")
    group.add_argument("--profile", default=argparse.SUPPRESS, help="a profile of the config file")
    group.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="the config file to read"
    )
    group.add_argument(
        "-o",
        "--output",
        choices=["table", "json"],
        default=argparse.SUPPRESS,
        help="table (default) for people, json (the API's representation) for scripts",
    )
    group.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help="per HTTP request (default 30, or the config's timeout_s)",
    )
    return common


def _group(parent: SubParsers, name: str, help_text: str) -> SubParsers:
    parser = parent.add_parser(
        name, help=help_text, description=help_text[0].upper() + help_text[1:] + "."
    )
    _group_help(parser)
    return parser.add_subparsers(title=f"{name} commands", metavar="COMMAND")


def _group_help(parser: argparse.ArgumentParser) -> None:
    """Without a command word, print the group's help and exit with the usage code."""

    def show(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(handler=show)


def _handler(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from edgefleet.fleet.ctl import commands

        return commands.run(name, args)

    return run


def _name_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("version", metavar="VERSION")


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=_positive_int, default=100, help="at most this many")
    parser.add_argument("--offset", type=_non_negative_int, default=0, help="skip this many")


def _watch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between polls (default 1)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="give up after this long (exit 15); default: wait until the rollout ends",
    )
    parser.add_argument(
        "--exit-on-pause",
        action="store_true",
        help="end the watch when the rollout pauses (exit 14), e.g. on a failed gate",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value
