"""`tgfr train`: train a TGFR model from a preset with `--set key=value` overrides."""

import argparse
import traceback
from pathlib import Path

from tgfr.cli import integer_at_least, non_empty_path
from tgfr.data.image_cache import DEFAULT_IMAGE_CACHE_BYTES
from tgfr.interruptions import interruptions_deferred
from tgfr.train.config import TrainConfig, load_config, preset_names, read_run_config, to_toml


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a TGFR model (stages fr, align, fuse)",
        description="Train the face backbone (fr), the alignment heads (align) and the fusion module (fuse). "
                    "Without data.manifest the embedded synthetic dataset is generated into the cache "
                    "(data.cache_dir, else $TGFR_CACHE_DIR, else $XDG_CACHE_HOME/tgfr, by default ~/.cache/tgfr). "
                    "Writes config.toml, metrics.jsonl, checkpoints/last.pt, model/, train_summary.json and "
                    "run_info.json into --out.")
    parser.add_argument("--preset", default="default",
                        help=f"a packaged preset ({', '.join(preset_names())}) or a TOML file that sets every key "
                             "(default: %(default)s); ignored with --resume")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value: KEY a dotted key as --print-config shows it, VALUE a "
                             "TOML value (a bare word is a string; one opening with a quote, [ or { must be valid "
                             "TOML), e.g. --set fr.steps=50 (repeatable; refused with --resume)")
    parser.add_argument("--out", type=non_empty_path, default=Path("runs/default"),
                        help="run folder (default: runs/default); without --resume it must be new or empty")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from checkpoints/last.pt (or, when it stopped before its "
                             "first checkpoint, train it again from its first step), with the run's own config.toml "
                             "(--preset is ignored, --set refused) and as many processes as wrote the checkpoint")
    # At least 1: it must take a step to checkpoint one.
    parser.add_argument("--stop-after", type=integer_at_least(1), default=None, metavar="STEPS",
                        help="take at most STEPS (>= 1) more optimizer steps, counted over all stages, then "
                             "checkpoint and stop (continue later with --resume)")
    parser.add_argument("--image-cache-mib", type=integer_at_least(0), default=DEFAULT_IMAGE_CACHE_BYTES >> 20,
                        metavar="MIB",
                        help="keep up to MIB MiB of decoded training images in memory per process, so that later "
                             "epochs skip reading them (default: %(default)s; 0: read every image from disk each "
                             "time); the results are the same with any value")
    parser.add_argument("--print-config", action="store_true",
                        help="check the resolved config, print it as TOML and exit (with --resume: the run's config)")
    parser.set_defaults(func=main)


def _run_config(out: Path) -> TrainConfig:
    """--resume: the config.toml of the run in `out`."""
    try:
        return read_run_config(out)
    except ValueError as error:
        raise SystemExit(f"tgfr train: error: --resume: {error}") from None


def _destroy_process_group() -> None:
    """The group train() made under torchrun, destroyed while Python still runs: left to the interpreter's
    exit, a gloo thread that drops the last collectives' tensors then aborts the finished run's process
    (SIGABRT, nonzero exit status)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _met_by_every_rank(error: Exception) -> bool:
    """Whether under torchrun every rank meets `error` together, with the same message, so that rank 0's
    line reports it for the job: an error raised before a stage's training loop (every rank checks the same
    settings, folders and files), a non-finite loss (the ranks compare theirs) or a failed check of every
    rank's tensors. Anything else raised in the training loop (an image only this rank's share reads) may
    be this rank's alone."""
    from tgfr.distributed import CollectiveCheckError
    from tgfr.train.loop import run_stage

    if isinstance(error, (FloatingPointError, CollectiveCheckError)):
        return True
    return all(frame.f_code is not run_stage.__code__ for frame, _ in traceback.walk_tb(error.__traceback__))


def main(args: argparse.Namespace) -> int:
    # The models and their libraries: loaded once a command runs, not for --help; an interruption meanwhile waits
    # for the imports (as tgfr.cli's own): raised inside an extension's set-up, it aborted the process.
    with interruptions_deferred():
        from tgfr.distributed import launch_variable
        from tgfr.train.run import train

    if args.resume and args.overrides:
        raise SystemExit("tgfr train: error: --resume uses the run's config.toml; --set cannot change a run midway")
    # This process's rank under torchrun, 0 without: read before train() makes the process group, so that what
    # the job prints once (the config, the error line, the run folder line) is printed by rank 0 alone.
    try:
        rank = launch_variable("RANK", 0)
    except ValueError as error:
        raise SystemExit(f"tgfr train: error: {error}") from None
    try:
        config = _run_config(args.out) if args.resume else load_config(args.preset, args.overrides)
        if args.print_config:
            if rank == 0:  # under torchrun one TOML document, not one per process
                print(to_toml(config), end="")
            return 0
        out = train(config, args.out, resume=args.resume, stop_after=args.stop_after,
                    image_cache_bytes=args.image_cache_mib << 20)
    except (ValueError, FloatingPointError, OSError) as error:  # bad settings, folders or files, a file that
        # cannot be written (a full disk; the message names it), or a loss that is not finite (the message
        # names the stage, step and rank): a traceback adds nothing.
        if rank == 0:
            raise SystemExit(f"tgfr train: error: {error}") from None
        if _met_by_every_rank(error):  # rank 0 says it once
            raise SystemExit(1) from None
        # Said before this process exits: the other ranks then fail in their next collective with a backend
        # error that does not say why.
        raise SystemExit(f"tgfr train: error (rank {rank}): {error}") from None
    _destroy_process_group()
    finished = (out / "model").is_dir()
    if rank == 0:  # under torchrun, one line for the run, not one per process
        print(f"run folder: {out} ({'finished' if finished else 'stopped; continue with --resume'})")
    return 0
