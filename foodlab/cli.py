"""The ``foodlab`` console script (also ``python -m foodlab``).

Each area registers its own subcommands (``add_commands(subparsers)`` in its
``commands`` module), so this file only assembles them and configures logging once.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from foodlab import __version__
from foodlab.logging_setup import setup_logging

# area -> module defining add_commands(subparsers); each sets args.func(args) -> int
COMMAND_MODULES = (
    "foodlab.data.commands",     # foodlab data synth|info
    "foodlab.models.commands",   # foodlab predict, foodlab embed
    "foodlab.train.commands",    # foodlab train, foodlab distill
    "foodlab.bench.commands",    # foodlab bench ..., foodlab run, foodlab report, foodlab ui
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foodlab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"foodlab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
