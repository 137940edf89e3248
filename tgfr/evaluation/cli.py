"""`tgfr evaluate`: verification and identification report of a trained run."""

import argparse
import tomllib
from pathlib import Path

from tgfr.cli import integer_at_least, non_empty_path
from tgfr.data.image_cache import DEFAULT_IMAGE_CACHE_BYTES
from tgfr.input_paths import file_problem
from tgfr.interruptions import interruptions_deferred
from tgfr.text_formats import parse_toml
from tgfr.train.config import config_from_dict, parse_override, set_key


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a trained run on clean and degraded test splits",
        description="Image-only (backbone) vs TGFR fused embeddings, with two controls (text only, and TGFR with "
                    "another identity's captions; evaluation.controls): verification (ROC, AUC, EER, TAR@FAR) and "
                    "identification (rank-1, rank-5, CMC) with bootstrap intervals, on the splits of "
                    "evaluation.splits (clean = test, degraded = test_degraded); writes report.md, metrics.json, "
                    "report_info.json, roc_<name>.png, cmc_<name>.png and attention_<name>.png into --out.")
    parser.add_argument("--run", type=non_empty_path, required=True,
                        help="run folder of a finished `tgfr train` (it has model/)")
    parser.add_argument("--out", type=non_empty_path, default=None, help="report folder (default: RUN/report)")
    parser.add_argument("--manifest", type=non_empty_path, default=None,
                        help="evaluate on this manifest instead of the run's data (it needs the splits that "
                             "evaluation.splits names)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one evaluation.<key> of the run's config (repeatable), or one "
                             "entry of evaluation.splits, e.g. --set evaluation.protocol=pairs --set "
                             "evaluation.bootstrap_resamples=50 --set evaluation.splits.degraded=test_blur")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="auto (CUDA when available), cpu or cuda (default: %(default)s)")
    parser.add_argument("--image-cache-mib", type=integer_at_least(0), default=DEFAULT_IMAGE_CACHE_BYTES >> 20,
                        metavar="MIB",
                        help="keep up to MIB MiB of the decoded images of the split being evaluated in memory, so "
                             "that each is decoded once (default: %(default)s; 0: decoded for the check of every "
                             "image, again for its embedding); the figures are the same with any value")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    with interruptions_deferred():  # models, transformers, matplotlib: not for --help; as tgfr.train.cli's
        from tgfr.evaluation.run import evaluate

    path = args.run / "config.toml"
    if problem := file_problem(path):
        hint = " (not a folder written by `tgfr train`)" if problem == "does not exist" else ""
        raise SystemExit(f"tgfr evaluate: error: --run: {path} {problem}{hint}")
    model = args.run / "model"
    if model.exists() and not model.is_dir():
        raise SystemExit(f"tgfr evaluate: error: --run: {model} is not a folder (`tgfr train` saves the model as one)")
    if not model.is_dir():
        raise SystemExit(f"tgfr evaluate: error: --run: {model} does not exist (training has not finished; use "
                         "`tgfr train --resume`)")
    try:
        values = parse_toml(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SystemExit(f"tgfr evaluate: error: --run: {path} is not valid TOML: {error}") from None
    except OSError as error:  # another user's run, say (umask 077)
        raise SystemExit(f"tgfr evaluate: error: --run: {path} cannot be read: {error.strerror}") from None
    try:
        for override in args.overrides:
            keys, value = parse_override(override)
            if keys[0] != "evaluation" or len(keys) < 2:
                raise SystemExit(f"tgfr evaluate: error: --set {override!r}: only evaluation.<key> can be set here")
            try:
                set_key(values, keys, value)
            except ValueError as error:  # a key that is no setting: the override, not the file, is wrong
                raise SystemExit(f"tgfr evaluate: error: --set {override!r}: {error}") from None
        # Validates every setting (e.g. evaluation.max_rank >= 1) before the model is loaded.
        config = config_from_dict(values)
    except ValueError as error:  # the setting is named; the file (and the overrides) tell where it came from
        raise SystemExit(f"tgfr evaluate: error: {path}{' with --set' if args.overrides else ''}: {error}") from None
    manifest = config.data.manifest
    if args.manifest is None and manifest and not Path(manifest).is_absolute():
        # An older tgfr wrote the path as given, relative to a directory it did not record: read from
        # here it could name another manifest, and the report would look like the run's.
        raise SystemExit(f"tgfr evaluate: error: --run: {path} holds data.manifest = {manifest!r}, a path "
                         "relative to the directory the run was trained in, which it does not record; name the "
                         "manifest with --manifest")
    try:
        report = evaluate(args.run, config, args.out, args.manifest, args.device,
                          image_cache_bytes=args.image_cache_mib << 20)
    except (ValueError, OSError) as error:  # bad settings or data, or a report file that cannot be written
        # (say a full disk): the message names them, a traceback adds nothing
        raise SystemExit(f"tgfr evaluate: error: {error}") from None
    print(f"report: {report}")
    return 0
