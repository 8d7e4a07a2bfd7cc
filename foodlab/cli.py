"""The ``foodlab`` console script (also ``python -m foodlab``).

Each area registers its own subcommands (``add_commands(subparsers)`` in its
``commands`` module), so this file only assembles them, configures logging once, and
turns every error into one line on stderr:

- exit 2: a usage error, refused before any work (bad flag value, missing folder, a device
  this machine lacks): ``foodlab.errors.UsageError``, a ValueError, a missing or unwritable
  path, and argparse's own errors;
- exit 1: a failure at run time (``foodlab.errors.FoodlabError``, an OS error such as a full
  disk, or an unexpected exception, which is named as such);
- exit 130: interrupted.

``--debug`` (on any subcommand) or ``FOODLAB_DEBUG=1`` re-raises, so the traceback shows.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

from foodlab import __version__
from foodlab.errors import FoodlabError
from foodlab.logging_setup import setup_logging

# area -> module defining add_commands(subparsers); each sets args.func(args) -> int
COMMAND_MODULES = (
    "foodlab.data.commands",     # foodlab data synth|info
    "foodlab.models.commands",   # foodlab predict, foodlab embed, foodlab models
    "foodlab.train.commands",    # foodlab train, foodlab distill
    "foodlab.bench.commands",    # foodlab bench ..., foodlab run, foodlab report, foodlab ui
)
PROG = "foodlab"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it and where help is, not a usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """``--debug`` on every (sub)command, so it works wherever a user types it."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors (also FOODLAB_DEBUG=1)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _add_debug_flag(child)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"foodlab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    _add_debug_flag(parser)
    return parser


def _worker_message(message: str) -> str:
    """The original message of an error torch re-raised from a DataLoader worker ("Caught X in DataLoader
    worker process N. Original Traceback ...": the last traceback line is "module.X: message")."""
    if not (message.startswith("Caught ") and "Original Traceback" in message):
        return message
    last = message.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit code, message) for an exception that reached the command line.

    foodlab's own errors carry their exit code. A ValueError or a missing/unwritable path is
    the user's input (exit 2); other OS errors, a full disk among them, are run-time failures.
    Anything else is a bug, named as such.
    """
    if isinstance(exc, FoodlabError):
        return exc.exit_code, _worker_message(str(exc))
    if isinstance(exc, ValueError):
        return 2, str(exc)
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOSPC:
            where = f" while writing {exc.filename}" if exc.filename else ""
            return 1, f"no space left on device{where}"
        target = f": {exc.filename}" if exc.filename else ""
        user_input = isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError))
        return (2 if user_input else 1), f"{exc.strerror or exc}{target}"
    return 1, (f"unexpected {type(exc).__name__}: {exc} (run again with --debug for the traceback, "
               "and please report it)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get("FOODLAB_DEBUG", "") not in ("", "0")
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        code, message = describe(exc)
        first, _, rest = message.strip().partition("\n")
        print(f"{PROG} {args.command}: error: {first}", file=sys.stderr)
        if rest:   # e.g. the per-reason summary of a mostly-bad dataset
            print(rest, file=sys.stderr)
        return code

