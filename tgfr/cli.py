"""The `tgfr` command: one subcommand per module listed in COMMAND_MODULES.

Each module defines `register(subparsers)`, which adds its subparser and sets `func` (called
with the parsed arguments, returning an exit code) as its default.
"""

import argparse
import importlib
import os
import sys

# Idle OpenMP threads spin-wait by default, and next to any other busy process on the machine that
# spinning made training several times slower (profiled on 2 cores), while on a quiet machine
# sleeping threads cost nothing measurable. libgomp reads the variable once, when torch loads it:
# here, before any subcommand imports torch. A value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

COMMAND_MODULES = ("tgfr.data.cli", "tgfr.train.cli", "tgfr.evaluation.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tgfr", description="Text-guided face recognition.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
