"""The ``edgefleet`` command: a thin dispatcher over subcommands that each side registers.

Subcommands come from the ``edgefleet.commands`` entry-point group (see pyproject.toml),
so this module never imports `agent` or `fleet`. A registrar adds its subparser and sets
``handler`` (a callable taking the parsed namespace and returning an exit code); it must
import its heavy dependencies inside the handler, so ``edgefleet --help`` stays fast and a
device without the fleet extra still runs ``edgefleet agent``.

When the command line names a subcommand (``edgefleet agent run ...``), only that
subcommand's registrar is loaded: the others' modules import SQLAlchemy, Alembic and
the model tooling at module level, which cost the agent ~33 MiB of RSS it never used.
``edgefleet --help`` (no subcommand) still loads them all.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points

from edgefleet.shared import __version__, logs

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

_ORDER = ["agent", "fleet", "model", "keys", "sim", "demo"]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser: every installed subcommand, or only the one ``argv`` names."""
    parser = argparse.ArgumentParser(
        prog="edgefleet",
        description="Deploy ML models to fleets of edge devices and keep them healthy.",
    )
    parser.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default: INFO)",
    )
    logs.add_format_argument(parser)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    found = sorted(
        entry_points(group="edgefleet.commands"),
        key=lambda ep: (_ORDER.index(ep.name) if ep.name in _ORDER else len(_ORDER), ep.name),
    )
    chosen = _named_command(parser, argv, {ep.name for ep in found})
    for ep in found:
        if chosen is not None and ep.name != chosen:
            continue
        try:
            register: Registrar = ep.load()
            register(subparsers)
        except ImportError as e:  # an extra that is not installed on this machine
            logging.getLogger(__name__).debug("command %s unavailable: %s", ep.name, e)
    return parser


def _named_command(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, names: set[str]
) -> str | None:
    """The subcommand ``argv`` names (the first word that is not a top-level option or its
    value), if it is one of ``names``; ``None`` when there is none or it is unknown."""
    if argv is None:
        return None
    words = iter(argv)
    for word in words:
        if word == "--":
            break
        if word.startswith("-"):
            action = parser._option_string_actions.get(word)
            if action is not None and action.nargs != 0 and "=" not in word:
                next(words, None)  # the option's value, e.g. ``--log-level WARNING``
            continue
        return word if word in names else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgefleet`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    try:
        logs.configure(getattr(logging, args.log_level), logs.resolve_format(args.log_format))
        if handler is None:
            parser.print_help()
            return 2
        return int(handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edgefleet ... | head` closed the pipe: not an error
        return 0
    except (CLIError, logs.LogFormatError) as e:
        print(f"edgefleet: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a port in use, a missing or unwritable file, a full disk
        logging.getLogger(__name__).debug("command failed", exc_info=True)
        print(f"edgefleet: error: {e} (--log-level DEBUG shows the traceback)", file=sys.stderr)
        return 1


class CLIError(Exception):
    """An error a command reports to the user as one line, without a traceback."""


if __name__ == "__main__":
    # Under ``python -m`` this file is ``__main__``, a second copy of the module whose
    # CLIError is not the one the commands raise; run the imported module's main.
    from edgefleet.shared.cli import main as imported_main

    sys.exit(imported_main())
