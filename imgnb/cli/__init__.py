"""The ``imgnb`` command line: ``imgnb worker`` runs a queue's jobs on this machine's devices,
``imgnb status`` shows a queue. Installed as the ``imgnb`` script; also ``python -m imgnb``.

Each command is a module with ``SUMMARY``, ``DESCRIPTION``, ``EPILOG``, ``add_arguments(parser)`` and
``run(args) -> exit status``. ``main`` turns a refusal to start (``CommandError``) into one line on
stderr and its exit status, so no command prints a traceback for a mistake on its command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import status, worker
from .failures import CommandError

__all__ = ["build_parser", "main"]

_COMMANDS = {"worker": worker, "status": status}
_EPILOG = "`imgnb COMMAND --help` explains each command."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgnb", description="imgnb: a persistent queue of diffusers text-to-image jobs.", epilog=_EPILOG
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in _COMMANDS.items():
        sub = commands.add_parser(
            name,
            help=command.SUMMARY,
            description=command.DESCRIPTION,
            epilog=command.EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` (default: the process's arguments); return its exit status."""
    args = build_parser().parse_args(argv)  # a usage error exits here with status 2
    try:
        code: int = args.run(args)
    except CommandError as exc:
        print(f"imgnb {args.command}: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the worker took over the signal (loading a model)
        return 130
    return code
