"""The `stemweave` command: one subcommand module per concern, registered here."""

from __future__ import annotations

import argparse
import importlib
import sys

from stemweave import __version__

# Each module defines `register(subparsers)`; the order is the order in --help.
COMMAND_MODULES = ("tasks", "data", "train", "evaluate", "serve", "client", "export", "bench", "latent", "gmsdi")


class UserError(Exception):
    """An error the user can fix; printed without a traceback, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stemweave",
        description="Separate a mix into stems, accompany recorded stems, or generate new ones.",
    )
    parser.add_argument("--version", action="version", version=f"stemweave {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"stemweave.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"stemweave.cli.{name}":
                continue  # a command not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return args.run(args) or 0
    except UserError as error:
        print(f"stemweave: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stemweave: interrupted", file=sys.stderr)
        return 130
