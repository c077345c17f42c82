"""``edgefleet model ...``: each tool module adds its own subcommand."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``edgefleet model`` and its subcommands."""
    from edgefleet.shared.modeltools import package, quantize, sign

    parser = subparsers.add_parser("model", help="package, quantize and sign model files")
    commands = parser.add_subparsers(title="model commands", metavar="COMMAND")
    for module in (package, quantize, sign):
        module.add_command(commands)
