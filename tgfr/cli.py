"""The `tgfr` command: one subcommand per module listed in COMMAND_MODULES.

Each module defines `register(subparsers)`, which adds its subparser and sets `func` (called
with the parsed arguments, returning an exit code) as its default.
"""

import argparse
import importlib
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from tgfr.interruptions import interruptions_deferred

# Idle OpenMP threads spin-wait by default, and next to any other busy process on the machine that
# spinning made training several times slower (profiled on 2 cores), while on a quiet machine
# sleeping threads cost nothing measurable. libgomp reads the variable once, when torch loads it:
# here, before any subcommand imports torch. A value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

COMMAND_MODULES = ("tgfr.data.cli", "tgfr.train.cli", "tgfr.evaluation.cli")


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type of the subcommands' options: an integer >= minimum (argparse's error names the option)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


def non_empty_path(text: str) -> Path:
    """An argparse type of the subcommands' path options: a path that is not empty, a leading ~ expanded
    (argparse's error names the option)."""
    # As a Path, "" is ".": an unset shell variable (`--out "$RUN"`) wrote into, or read, the current folder.
    if not text:
        raise argparse.ArgumentTypeError(f"must be a non-empty path, got {text!r}")
    # The shell expands `--out ~/x` but not `--out=~/x`, which made a folder named `~` in the current one.
    return Path(os.path.expanduser(text))


def _speaks_for_the_job(args: argparse.Namespace | None) -> bool:
    """Whether this process prints an interruption's line: under torchrun the interruption reaches every rank of
    `tgfr train`, and rank 0 says it for the job, as it does an error; other commands never run distributed,
    whatever RANK a job's environment holds."""
    if args is None or args.command != "train":
        return True
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or int(os.environ.get("RANK", "0")) == 0
    except ValueError:  # a stray value, which training names as an error of its own
        return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tgfr", description="Text-guided face recognition.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signum)


def _train_hint(args: argparse.Namespace) -> str:
    """How to go on after an interrupted `tgfr train`: --resume once the run folder holds its config.toml, else
    (interrupted while generating the synthetic set or building the model) the same command again, since
    --resume would find no run to continue."""
    out = shlex.quote(str(args.out))
    if args.resume or os.path.exists(args.out / "config.toml"):  # os.path's: False, not an error, when unreadable
        return (f"; `tgfr train --resume --out {out}` continues the run from its last checkpoint (from its first "
                "step before one is written)")
    return f"; the run had not started in {out} (no config.toml yet): run the same command again"


def main(argv: list[str] | None = None) -> int:
    """Runs the command; Ctrl-C or SIGTERM (a scheduler's time limit, `kill`) ends it with one line on
    stderr and exit status 128 + the signal's number (130, 143), through the same clean-up as an
    error: SIGTERM raises KeyboardInterrupt here instead of ending the process where it stands, which
    left worker pools and temporary files behind. While the subcommands are imported (torch with them: seconds
    on a busy machine), an interruption is held back until they are: raised inside torch's C++ set-up it aborted
    the process, and before this handling it printed a traceback (SIGINT) or nothing (SIGTERM); the line then
    names no command, none having been read."""
    on_main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
    args = None
    try:
        with interruptions_deferred():
            parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt as interruption:
        signum = next((arg for arg in interruption.args if isinstance(arg, int)), signal.SIGINT)
        if args is None:
            name, hint = "", ""
        else:
            name = " " + " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
            hint = _train_hint(args) if args.command == "train" else ""
        if _speaks_for_the_job(args):
            print(f"tgfr{name}: interrupted ({signal.Signals(signum).name}){hint}", file=sys.stderr)
        return 128 + signum
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
