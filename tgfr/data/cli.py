"""`tgfr data ...`: synth, convert, degrade, protocol, grid."""

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from tgfr.cli import integer_at_least
from tgfr.data.convert import convert_celeba_dialog, convert_tgfr_tree
from tgfr.data.degrade import check_plain_name, default_out_manifest, degrade_manifest
from tgfr.data.grid import manifest_rows, render_grid, synthetic_rows
from tgfr.data.manifest import ManifestRecord, read_manifest, write_manifest
from tgfr.data.protocol import (check_pairs_writable, make_identification_split, make_verification_pairs,
                                write_identification_split, write_verification_pairs)
from tgfr.data.synthetic import (DEFAULT_DEGRADATION, GENERATOR_VERSION, SyntheticConfig, degraded_splits,
                                 generate_synthetic_dataset)
from tgfr.output_paths import check_output_file, check_output_folder, replace_entries_atomically, write_atomically


def _synth(args: argparse.Namespace) -> int:
    if args.no_degraded and args.degradation is not None:
        raise ValueError("--degradation: the recipe of the degraded splits, which --no-degraded leaves out")
    # `is None`: an empty recipe (an unset shell variable) is refused, not taken as the default.
    recipe = DEFAULT_DEGRADATION if args.degradation is None else args.degradation
    degradations = {} if args.no_degraded else degraded_splits(recipe, args.generator_version)
    config = SyntheticConfig(identities=args.identities, images_per_identity=args.images_per_identity,
                             captions_per_image=args.captions_per_image, seed=args.seed,
                             val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                             degradations=degradations, version=args.generator_version)
    out = check_output_folder("--out", args.out)
    start = time.perf_counter()
    manifest = generate_synthetic_dataset(out, config, workers=args.workers)
    print(f"wrote {manifest} ({config.identities} identities x {config.images_per_identity} images) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


def _relocated(records: list[ManifestRecord], root: Path, manifest: Path) -> list[ManifestRecord]:
    """Rewrites paths relative to `root` as paths relative to the manifest's folder.

    Only the two folders are resolved: a symlink inside `root` (images -> /data/celeba) stays in
    the path, so the manifest keeps the dataset's layout and moves with it.
    """
    # The folder of the manifest as given: readers join its paths to Path(manifest).parent, so a manifest that
    # is a link to a file in another folder is read from the link's folder, not from its target's.
    base, root = manifest.parent.resolve(), root.resolve()
    return [ManifestRecord(Path(os.path.relpath(root / r.path, base)).as_posix(), r.identity, r.split,
                           r.captions, r.meta) for r in records]


_LISTED = 20  # files left out that the output names one per line, per label


def _left_out_list(output: Path) -> Path:
    """Where a command that writes `output` lists every file it left out, when it left out more than it prints:
    <output>.skipped.txt beside it."""
    return output.with_name(f"{output.name}.skipped.txt")


def _print_left_out(output: Path, left_out: dict[str, list[str]]) -> None:
    """One line per file left out (its message names it and says why), at most _LISTED per label (`left_out` maps
    "skipped", "not used" to them). Past that, every one of them is written to _left_out_list(output), one line
    "<label>: <message>" each, which the output names; otherwise a list an earlier run left there is removed, so
    that the file never outlives the run it lists."""
    listing = _left_out_list(output)
    if any(len(problems) > _LISTED for problems in left_out.values()):
        with write_atomically(listing, "list of the files left out") as stream:
            stream.writelines(f"{label}: {problem}\n" for label, problems in left_out.items() for problem in problems)
    else:
        listing.unlink(missing_ok=True)
    for label, problems in left_out.items():
        for problem in problems[:_LISTED]:
            print(f"  {label}: {problem}")
        if len(problems) > _LISTED:
            print(f"  ... and {len(problems) - _LISTED} more {label}; all {len(problems)} are listed in {listing}")


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Prints each UserWarning of the block as it comes, as one line "tgfr data convert: warning: ...", not as a
    Python warning naming a source line: they are for the user (a seeded split left empty; an image's, which
    files.check_image words as "image file X: ...")."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)  # other categories keep their filters
        python_way = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None,
                 line: str | None = None) -> None:
            if issubclass(category, UserWarning):
                print(f"tgfr data convert: warning: {message}", file=sys.stderr)
            else:
                python_way(message, category, filename, lineno, file, line)
        warnings.showwarning = show  # put back by catch_warnings
        yield


def _convert(args: argparse.Namespace) -> int:
    bad_files = "skip" if args.skip_bad else "error"
    out = Path(args.root) / "manifest.jsonl" if args.out is None else Path(args.out)
    # Checked before any image is decoded (the default's folder failed at the write, after all of them); a --root
    # that is no folder is named by the conversion. The string as given: "" and "DIR/" are refused, not taken as
    # "." and "DIR".
    if args.out is not None:
        check_output_file("--out", args.out)
        # Written after the manifest, its longer name failed there (File name too long), with the work done.
        check_output_file("list of the files left out beside --out", _left_out_list(out))
    elif Path(args.root).is_dir():
        check_output_file("--out's default", out)
        check_output_file("list of the files left out beside --out's default", _left_out_list(out))
    unused: list[str] = []  # files of the image folders that no record uses (TGFR trees)
    if args.layout in ("mmcelebA", "face2text"):
        # Accepted and passed over, a split file would leave the splits to the tree without a word.
        options = (("--captions", args.captions), ("--identity-file", args.identity_file), ("--images", args.images),
                   ("--hq-mapping", args.hq_mapping), ("--split-file", args.split_file), ("--seed", args.seed))
        given = [flag for flag, value in options if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: celeba-dialog options, which {args.layout} does not read (its "
                             "splits come from the tree under --root: images/<split>/ and <split>/filenames.*)")
        root = Path(args.root)
        with _warnings_as_lines():
            records, skipped, unused = convert_tgfr_tree(root, trust_pickle=args.trust_pickle, bad_files=bad_files)
    else:
        # Accepted and passed over, it would seem to let a pickled --split-file be read.
        if args.trust_pickle:
            raise ValueError("--trust-pickle: an option of mmcelebA and face2text (their pickled split lists), which "
                             "celeba-dialog does not read (its --split-file is JSON or CSV, never a pickle)")
        # Accepted, the seed would be passed over for the split file's splits without a word.
        if args.split_file is not None and args.seed is not None:
            raise ValueError("--seed, --split-file: --seed draws the identity split that --split-file gives "
                             "instead; give one of them")
        missing = [flag for flag, value in (("--captions", args.captions), ("--identity-file", args.identity_file),
                                            ("--images", args.images)) if value is None]
        if missing:
            raise ValueError(f"celeba-dialog needs {', '.join(missing)}")
        root = Path(args.root)
        with _warnings_as_lines():
            records, skipped = convert_celeba_dialog(args.captions, args.identity_file, args.images, root,
                                                     hq_mapping=args.hq_mapping, split_file=args.split_file,
                                                     seed=args.seed or 0, bad_files=bad_files)
    write_manifest(out, _relocated(records, root, out))
    not_used = f"; {len(unused)} other file(s) in the image folders not used" if unused else ""
    print(f"wrote {out}: {len(records)} images; skipped {len(skipped)}{not_used}")
    _print_left_out(out, {"skipped": skipped, "not used": unused})
    return 0


def _degrade(args: argparse.Namespace) -> int:
    if args.out_manifest is not None:  # as in _convert, the manifest named first, then its list's longer name
        check_output_file("out_manifest (--out-manifest)", args.out_manifest)
        check_output_file("list of the files left out beside --out-manifest", _left_out_list(Path(args.out_manifest)))
    else:
        try:
            default = default_out_manifest(args.manifest, f"{args.split}_degraded" if args.name is None else args.name)
        except ValueError:  # no plain name ("a/b"): degrade_manifest refuses it, naming --name or --split
            default = None
        if default is not None:
            check_output_file("list of the files left out beside --out-manifest's default", _left_out_list(default))
    manifest, skipped = degrade_manifest(args.manifest, split=args.split, recipe=args.recipe, name=args.name,
                                         seed=args.seed, out_manifest=args.out_manifest, workers=args.workers,
                                         bad_images="skip" if args.skip_bad else "error")
    print(f"wrote {manifest}; skipped {len(skipped)} unreadable image(s)")
    _print_left_out(manifest, {"skipped": skipped})
    return 0


def _protocol(args: argparse.Namespace) -> int:
    # The split names the files written into --out: "../x" would write them outside it.
    check_plain_name(args.split, "split (--split)")
    out = check_output_folder("--out", args.out)
    # Both are made and both paths checked before either is written: a pairs file without its
    # identification split would be left behind by an error in the second.
    pairs_path = check_output_file("pairs file", out / f"{args.split}_pairs.{args.format}")
    ident_path = check_output_file("identification file", out / f"{args.split}_identification.json")
    records = read_manifest(args.manifest)
    pairs = make_verification_pairs(records, args.split, impostor_subjects=args.impostors, seed=args.seed)
    identification = make_identification_split(records, args.split, args.gallery_per_subject)
    check_pairs_writable(pairs_path, pairs)  # here, naming the file --out gets, not its staged copy
    # Staged and renamed in together: a full disk while writing the second file left the first, new, beside
    # an earlier identification split or none.
    with replace_entries_atomically(out, "protocol files") as staging:
        write_verification_pairs(staging / pairs_path.name, pairs)
        write_identification_split(staging / ident_path.name, identification)
    genuine = sum(p.same for p in pairs)
    print(f"wrote {pairs_path} ({genuine} genuine, {len(pairs) - genuine} impostor pairs) and {ident_path}")
    return 0


def _grid(args: argparse.Namespace) -> int:
    if args.split is not None and args.manifest is None:
        raise ValueError("--split: a split of --manifest; without it the faces are synthetic and have no split")
    out = check_output_file("--out", args.out)
    if not args.out.lower().endswith(".png"):  # render_grid writes PNG data whatever the name says
        raise ValueError(f"--out: the picture is written as PNG, so name a .png file, got {args.out!r}")
    # `is None`: an empty --manifest or --split (an unset shell variable) reaches their checks, not the defaults.
    split = "test" if args.split is None else args.split
    rows = (synthetic_rows(args.rows, args.seed) if args.manifest is None
            else manifest_rows(args.manifest, args.rows, split, args.recipe))
    shown = "" if len(rows) == args.rows else (f" ({len(rows)} of the {args.rows} rows asked: split {split!r} of "
                                               f"{args.manifest} has no more identities with two images)")
    print(f"wrote {render_grid(rows, out, args.recipe, args.seed)}{shown}")
    return 0


# The options of the subcommands that name files or folders (argparse dests).
_PATH_OPTIONS = ("out", "root", "manifest", "out_manifest", "captions", "identity_file", "images", "hq_mapping",
                 "split_file")


def _run(handler):
    def run(args: argparse.Namespace) -> int:
        try:
            # An unset shell variable: as a path, "" is the current folder (a dataset or protocol written into it,
            # "manifest . is a folder"); as a name or recipe, an error naming no option, or none at all. Every
            # option's dest is its flag spelled with "_" for "-".
            empty = next((dest for dest, value in vars(args).items() if value == ""), None)
            if empty is not None:
                raise ValueError(f"--{empty.replace('_', '-')} is empty (an unset shell variable?): give it a value")
            # The shell expands `--out ~/x` but not `--out=~/x`, which made a folder named `~` in the current one.
            for dest in _PATH_OPTIONS:
                if isinstance(value := getattr(args, dest, None), str) and value.startswith("~"):
                    setattr(args, dest, os.path.expanduser(value))
            return handler(args)
        # OSError: a file that cannot be written or read (its message names it) is bad input too.
        except (ValueError, OSError) as error:
            print(f"tgfr data {args.data_command}: error: {error}", file=sys.stderr)
            return 2
    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="datasets: synthetic set, converters, degradations, protocols",
                                 description="Write and transform face-caption manifests (manifest.jsonl: one "
                                             "record per image, paths relative to the manifest's folder).")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    synth = commands.add_parser("synth", help="generate the synthetic face-caption dataset",
                                description="Draw a synthetic face-caption dataset: train/val/test splits of "
                                            "disjoint identities and a degraded copy of test (test_degraded) and, from "
                                            "generator version 4, of val (val_degraded).")
    synth.add_argument("--out", required=True,
                       help="output folder (manifest.jsonl, synthetic.json, images/, test_degraded/, val_degraded/)")
    synth.add_argument("--identities", type=int, default=1000, help="number of identities (default: %(default)s)")
    synth.add_argument("--images-per-identity", type=int, default=10, help="default: %(default)s")
    synth.add_argument("--captions-per-image", type=int, default=5, help="default: %(default)s")
    synth.add_argument("--seed", type=integer_at_least(0), default=0,
                       help="seed of faces, captions, splits and degradation (default: %(default)s)")
    synth.add_argument("--val-fraction", type=float, default=0.1,
                       help="fraction of the identities in val (default: %(default)s)")
    synth.add_argument("--test-fraction", type=float, default=0.2,
                       help="fraction of the identities in test (default: %(default)s)")
    synth.add_argument("--degradation",
                       help="recipe of the degraded splits, as `tgfr data degrade --recipe` "
                            f"(default: {DEFAULT_DEGRADATION})")
    synth.add_argument("--no-degraded", action="store_true", help="write no degraded split")
    synth.add_argument("--generator-version", type=int, choices=range(1, GENERATOR_VERSION + 1),
                       default=GENERATOR_VERSION,
                       help="generator version, as `tgfr train`'s data.synthetic_version: each writes the "
                            "dataset it wrote when it was the newest; 1 also names marks that hair or a beard "
                            "cover (default: the newest, %(default)s)")
    synth.add_argument("--workers", type=integer_at_least(1), default=2, help="worker processes (default: %(default)s)")
    synth.set_defaults(func=_run(_synth))

    convert = commands.add_parser("convert", help="write a manifest from a released dataset layout",
                                  description="mmcelebA and face2text read TGFR's tree under --root "
                                              "(images/<split>/<id>/, text/<id>/, optional <split>/filenames.*); "
                                              "celeba-dialog also needs --captions, --identity-file and --images.")
    convert.add_argument("layout", choices=("mmcelebA", "face2text", "celeba-dialog"), help="the dataset's layout")
    convert.add_argument("--root", required=True, help="dataset root (TGFR tree; for celeba-dialog the manifest "
                                                       "folder that contains the images)")
    convert.add_argument("--out", help="manifest path (default ROOT/manifest.jsonl)")
    convert.add_argument("--trust-pickle", action="store_true",
                         help="allow unpickling released split lists (<split>/filenames.pickle or .pkl); refused "
                              "without it")
    convert.add_argument("--skip-bad", action="store_true",
                         help="skip and count missing or corrupt image and caption files (default: an error naming "
                              "the file)")
    convert.add_argument("--captions", help="celeba-dialog caption JSON (required for celeba-dialog)")
    convert.add_argument("--identity-file", help="CelebA identity_CelebA.txt (required for celeba-dialog)")
    convert.add_argument("--images", help="celeba-dialog image folder, inside --root (required for celeba-dialog)")
    convert.add_argument("--hq-mapping", help="celeba-dialog: CelebA-HQ-to-CelebA-mapping.txt (images numbered as "
                                              "CelebA-HQ)")
    convert.add_argument("--split-file", help="celeba-dialog: JSON {split: [image names]} or CSV image,split "
                                              "(default: identities split 0.8/0.1/0.1 by --seed)")
    convert.add_argument("--seed", type=integer_at_least(0),
                         help="celeba-dialog: seed of the identity split, which --split-file gives instead (so "
                              "not with it; default: 0)")
    convert.set_defaults(func=_run(_convert))

    degrade = commands.add_parser("degrade", help="add a degraded copy of a split to a manifest",
                                  description="Write degraded PNGs of a split under <manifest folder>/<name>/ "
                                              "(over the images of an earlier copy of that name) and a manifest "
                                              "with every record plus the degraded copies (by default a new file "
                                              "next to the input, see --out-manifest).")
    degrade.add_argument("--manifest", required=True, help="input manifest")
    degrade.add_argument("--split", default="test", help="split to degrade (default: %(default)s)")
    degrade.add_argument("--recipe", default="celeba",
                         help="celeba, face2text, down<S>, jpeg<Q>, joined by '+' and applied left to right, "
                              "e.g. down24+celeba (default: %(default)s)")
    degrade.add_argument("--name", help="new split name, also the images' folder, so one plain folder name "
                                        "(default <split>_degraded); an existing split is refused unless it is an "
                                        "earlier degraded copy of --split, which is replaced")
    degrade.add_argument("--out-manifest", help="output manifest, in the input manifest's folder; may be the input "
                                                "itself (default: <stem>_<name>.jsonl next to the input)")
    degrade.add_argument("--seed", type=integer_at_least(0), default=0,
                         help="seed, combined with each image's path (default: %(default)s)")
    degrade.add_argument("--workers", type=integer_at_least(1), default=1,
                         help="worker processes (default: %(default)s)")
    degrade.add_argument("--skip-bad", action="store_true", help="skip and count unreadable images")
    degrade.set_defaults(func=_run(_degrade))

    protocol = commands.add_parser("protocol", help="verification pairs and identification split of a split",
                                   description="Write OUT/<split>_pairs.csv (or .json): per subject one genuine "
                                               "pair and impostor pairs against other subjects, and "
                                               "OUT/<split>_identification.json: gallery and probes. Their image "
                                               "paths are the manifest's: relative to the manifest's folder, not "
                                               "to OUT.")
    protocol.add_argument("--manifest", required=True, help="input manifest")
    protocol.add_argument("--split", default="test", help="split to use (default: %(default)s)")
    protocol.add_argument("--out", required=True, help="output folder")
    protocol.add_argument("--impostors", type=integer_at_least(0), default=399,
                          help="impostor subjects per subject, N-1 of TGFR's protocol; capped at the number of "
                               "other subjects (default: %(default)s)")
    protocol.add_argument("--gallery-per-subject", type=integer_at_least(1), default=1,
                          help="first images (by path, its suffix read as .png) of each subject in the gallery, the "
                               "rest are probes (default: %(default)s)")
    protocol.add_argument("--format", choices=("csv", "json"), default="csv",
                          help="format of the pairs file (default: %(default)s)")
    protocol.add_argument("--seed", type=integer_at_least(0), default=0,
                          help="seed of the impostor draw (default: %(default)s)")
    protocol.set_defaults(func=_run(_protocol))

    grid = commands.add_parser("grid", help="render faces, clean and degraded, with captions to a PNG",
                               description="Renders --rows faces (synthetic, or from --manifest), each clean and "
                                           "degraded by --recipe, with their captions, into one PNG.")
    grid.add_argument("--out", required=True, help="PNG path")
    grid.add_argument("--manifest", help="take faces from this manifest (default: draw synthetic faces)")
    grid.add_argument("--split", help="split of --manifest to take faces from (default: test)")
    grid.add_argument("--rows", type=integer_at_least(1), default=8,
                      help="rows, one identity each (default: %(default)s)")
    grid.add_argument("--recipe", default=DEFAULT_DEGRADATION,
                      help="degradation recipe of the right-hand copies (default: %(default)s)")
    grid.add_argument("--seed", type=integer_at_least(0), default=0,
                      help="seed of the synthetic faces and of the degradation (default: %(default)s)")
    grid.set_defaults(func=_run(_grid))
