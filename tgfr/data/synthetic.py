"""The embedded synthetic face-caption dataset: generation, degraded test splits, caching.

Layout written under `out`: TGFR's image layout, images/<split>/<id>/<id>_<k>.png, with the captions in
manifest.jsonl only (paths relative to `out`; no text/ folder, so `tgfr data convert` does not read it), and
synthetic.json (the generation parameters).
Identities are split identity-disjointly into train/val/test. Every image and caption depends
only on (seed, identity, image), so two runs with one seed write identical files whatever the
number of worker processes.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from tgfr.data.degrade import check_plain_name, check_recipe_fits, degrade_records, parse_recipe
from tgfr.data.manifest import ManifestRecord, write_manifest
from tgfr.data.synthetic_captions import make_captions
from tgfr.data.synthetic_faces import OUTPUT_SIZE, identity_attributes, image_state, render_face
from tgfr.data.worker_pool import WorkerPool, check_workers
from tgfr.input_paths import file_problem
from tgfr.text_formats import parse_json
from tgfr.folder_lock import folder_lock
from tgfr.output_paths import check_output_folder, naming_write_errors, write_atomically

# The newest generator version. SyntheticConfig.version picks any from 1 to this one, and a version
# writes forever the dataset it wrote when it was the newest: a run records the version it trained
# on (data.synthetic_version), so that its evaluation and its resumption read that same data.
# All versions name their images alike (_writes); they differ in what they draw or say.
# 1: the first. 2: the captions leave out a scar, mole or wrinkles that bangs or a beard cover
# (synthetic_faces.covered_marks), which version 1 named although the image does not show them.
# 3: they also leave out the wrinkles that any hair front covers (all but bald heads and hats), which
# version 2 still named.
# 4: the same captions as 3; the mole, scar, freckles, wrinkles and brows are drawn at least
# synthetic_faces.MARK_CONTRAST luma levels from the skin, and wrinkles twice as wide, where version 3
# drew dark skin's mole, scar and wrinkles, and blond brows on olive or tan skin, hardly apart from it;
# its datasets (SyntheticConfig's default, tgfr train's, tgfr data synth's) degrade val as well as test
# (degraded_splits).
GENERATOR_VERSION = 4
# Low resolution plus TGFR's CelebA recipe: erases freckles, moles, scars, eye colour and
# earrings while hair, skin, face shape and clothes stay visible.
DEFAULT_DEGRADATION = "down24+celeba"
# Written first without a key, and last with the generation parameters and their key: a folder whose
# marker holds a key is a finished synthetic dataset. The first one lists, under "written", the
# parameters of every run whose images the folder may hold, so that a run cut short leaves a
# record of what the next one has to remove.
MARKER = "synthetic.json"


def degraded_splits(recipe: str, version: int) -> dict[str, str]:
    """The degraded copies (split name -> recipe) that the embedded dataset and `tgfr data synth` of generator
    `version` write: of test, and from version 4 of val too, so that settings can be chosen on degraded
    images that the test figures, kept for reporting, do not include."""
    return {"test_degraded": recipe, **({"val_degraded": recipe} if version >= 4 else {})}


# Far past any use, and below the sizes at which numpy's draws fail ("Maximum allowed size exceeded")
# after the folder's marker is written.
SIZE_LIMITS = {"identities": 10**7, "images_per_identity": 10**5, "captions_per_image": 10**4}


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic dataset; equal configs give identical datasets. version: the
    generator version (1 to GENERATOR_VERSION) whose images and captions to write. degradations: the
    degraded copies, split name -> recipe; None (the default) gives the version's own,
    degraded_splits(DEFAULT_DEGRADATION, version), those that tgfr train and tgfr data synth write."""

    identities: int = 1000
    images_per_identity: int = 10
    captions_per_image: int = 5
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    degradations: dict[str, str] | None = None
    version: int = GENERATOR_VERSION

    def __post_init__(self):
        for name, limit in SIZE_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise ValueError(f"{name} must be an integer in [1, {limit}], got {value!r}")
        for name in ("val_fraction", "test_fraction"):
            # A Python number: the config's key is its JSON, which has no numpy float32.
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), (int, float)):
                raise ValueError(f"{name} must be an int or float, got {getattr(self, name)!r}")
            # A float: 0 and 0.0, equal, would give two keys (JSON "0" and "0.0"), and so two cache folders.
            object.__setattr__(self, name, float(getattr(self, name)))
        if type(self.version) is not int or not 1 <= self.version <= GENERATOR_VERSION:
            raise ValueError(f"version must be a synthetic generator version from 1 to {GENERATOR_VERSION} (this "
                             f"tgfr's newest), got {self.version!r}")
        if self.degradations is None:
            # Resolved, not kept as None: equal to a config given these copies (tgfr train's), with its key; and a
            # version 1 to 3 config keeps the key it had when test_degraded alone was every version's default.
            object.__setattr__(self, "degradations", degraded_splits(DEFAULT_DEGRADATION, self.version))
        if not isinstance(self.degradations, dict) or not all(isinstance(name, str) for name in self.degradations):
            raise ValueError(f"degradations must be a dict {{split name: recipe}}, got {self.degradations!r}")
        # Sorted by name (a copy, which the caller's dict changing later leaves alone): equal configs, whatever
        # their dicts' order, write their degraded copies, and so their manifests' records, in one order.
        object.__setattr__(self, "degradations", dict(sorted(self.degradations.items())))
        if not (0 <= self.val_fraction and 0 <= self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"val_fraction and test_fraction must be >= 0 with sum < 1, got "
                             f"{self.val_fraction} and {self.test_fraction}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        for name, recipe in self.degradations.items():
            if not name.endswith("_degraded") or name.split("_")[0] not in ("train", "val", "test"):
                raise ValueError(f"degradation split names look like '<train|val|test>[_...]_degraded', got {name!r}")
            check_plain_name(name, "a degradation split name (the degraded copy's folder)")
            # Checked here, not after every image has been rendered.
            try:
                parse_recipe(recipe)
            except ValueError as error:
                raise ValueError(f"degradation recipe of split {name!r}: {error}") from None
        # A split cut to no identity by the rounding (2 identities: no val, no test) would show only
        # when training or evaluation finds it empty, and a dataset without train is of no use.
        empty = _empty_splits(self.identities, self.val_fraction, self.test_fraction)
        if empty:
            sizes = self.split_sizes()
            raise ValueError(f"identities={self.identities} with val_fraction={self.val_fraction} and test_fraction="
                             f"{self.test_fraction} leaves split(s) {', '.join(empty)} without an identity (train/val/"
                             f"test get {sizes['train']}/{sizes['val']}/{sizes['test']}): give more identities, or "
                             "set the fraction of a split that is not wanted to 0")

    def split_sizes(self) -> dict[str, int]:
        """Identities in each of train, val and test: the fractions of `identities`, rounded."""
        return _split_sizes(self.identities, self.val_fraction, self.test_fraction)

    def key(self) -> str:
        # A version 1 config keeps the key (and the cache folder) that tgfr gave it before the version
        # was a parameter, when the marker and the key added the version by hand.
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _split_sizes(identities: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Identities in each of train, val and test: the fractions of `identities`, rounded."""
    test = round(identities * test_fraction)
    val = round(identities * val_fraction)
    return {"train": identities - test - val, "val": val, "test": test}


def _empty_splits(identities: int, val_fraction: float, test_fraction: float) -> list[str]:
    """The splits, among train and those of val and test with a positive fraction, that the fractions
    of `identities` leave without an identity."""
    sizes = _split_sizes(identities, val_fraction, test_fraction)
    return [name for name, fraction in (("train", 1), ("val", val_fraction), ("test", test_fraction))
            if fraction > 0 and sizes[name] == 0]


def fewest_identities(val_fraction: float = SyntheticConfig.val_fraction,
                      test_fraction: float = SyntheticConfig.test_fraction) -> int:
    """The fewest identities that SyntheticConfig accepts with these fractions (by default its own,
    those `tgfr train` generates with): every wanted split gets an identity."""
    identities = 1
    while _empty_splits(identities, val_fraction, test_fraction):
        identities += 1
    return identities


SYNTHETIC_PRESETS = {
    "default": SyntheticConfig(),
    "small": SyntheticConfig(identities=200, images_per_identity=8),
    "tiny": SyntheticConfig(identities=24, images_per_identity=4, captions_per_image=3),
}


def _identity_ranks(config: SyntheticConfig) -> np.ndarray:
    """(identities,) int64: the rank of each identity in the seeded permutation that the fractions cut into
    splits (_split_at_rank)."""
    order = np.random.default_rng((config.seed, 3)).permutation(config.identities)
    ranks = np.empty_like(order)
    ranks[order] = np.arange(config.identities)
    return ranks


def _split_at_rank(rank: int, sizes: dict[str, int]) -> str:
    """The split of the identity of this rank: test takes the first ranks, val the next, train the rest."""
    return "test" if rank < sizes["test"] else "val" if rank < sizes["test"] + sizes["val"] else "train"


def identity_splits(config: SyntheticConfig) -> list[str]:
    """Split name of every identity (a seeded permutation cut by the fractions)."""
    sizes = config.split_sizes()
    return [_split_at_rank(rank, sizes) for rank in _identity_ranks(config).tolist()]


def _image_path(split: str, identity: int, k: int) -> str:
    """Path, relative to the dataset folder, of image k of an identity."""
    return f"images/{split}/{identity}/{identity}_{k}.png"


def _writes(config: SyntheticConfig) -> Callable[[str], bool]:
    """Whether generating `config` writes the image `path` (relative to the dataset folder, one of
    _generated_images), in O(1) a path: a set of every path it writes would take minutes and gigabytes for
    a config of millions of identities (a run started by mistake, cut short after a second)."""
    ranks, sizes = _identity_ranks(config), config.split_sizes()

    def writes(path: str) -> bool:
        image = _GENERATED_IMAGE.fullmatch(path)
        identity = int(image["identity"])
        # A degraded copy holds the images of the split its name starts with (_generated_images checks it).
        return (identity < config.identities and int(image["k"]) < config.images_per_identity
                and image["copy"] in (None, *config.degradations)
                and _split_at_rank(int(ranks[identity]), sizes) == image["split"])
    return writes


# The most images of one task: an identity of more is split into several, since a Ctrl-C waits for the tasks
# under way (WorkerPool) and a task is about a second of work at this size (7 ms an image on this project's
# CPU), where an identity of 1500 images kept it waiting a minute.
IMAGES_PER_TASK = 160


def _render_identity(task: tuple[str, SyntheticConfig, int, str, int, int]) -> list[ManifestRecord]:
    """Renders images first to end - 1 of an identity; task is (out, config, identity, split, first, end).
    Returns their records, in image order."""
    out, config, identity, split, first, end = task
    attributes = identity_attributes(config.seed, identity)
    folder = Path(out) / "images" / split / str(identity)
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for k in range(first, end):
        state = image_state(config.seed, identity, k, attributes)
        relative = _image_path(split, identity, k)
        with naming_write_errors("image", Path(out) / relative):
            render_face(attributes, state, config.version).save(Path(out) / relative, format="PNG", compress_level=1)
        captions = make_captions(attributes, state, config.captions_per_image,
                                 np.random.default_rng((config.seed, 13, identity, k)),
                                 version=config.version)
        visible = {"expression": state["expression"], "hat": state["hat"], "glasses_on": state["glasses_on"],
                   "earrings_on": state["earrings_on"]}
        records.append(ManifestRecord(relative, str(identity), split, tuple(captions),
                                      {"attributes": {n: v for n, v in attributes.items() if n != "freckle_seed"},
                                       "image": visible}))
    return records


def _marker(folder: Path) -> dict | None:
    """folder's synthetic.json as this generator writes it (an integer version, a key that is a string
    or, while the dataset is written, null); None for an absent, unreadable or cut-short one, or a
    synthetic.json of another tool's."""
    if file_problem(folder / MARKER):  # a pipe would be waited on for ever
        return None
    try:
        marker = parse_json((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(marker, dict) or type(marker.get("version")) is not int:
        return None
    return marker if "key" in marker and (marker["key"] is None or isinstance(marker["key"], str)) else None


def _marker_key(folder: Path) -> str | None:
    """The key that a finished dataset's synthetic.json records; None when there is none, or the
    dataset is still being written or was cut short (its marker has no key yet)."""
    key = (_marker(folder) or {}).get("key")
    return key if isinstance(key, str) else None


def _earlier_configs(marker: dict | None) -> list[SyntheticConfig]:
    """The configs of the runs whose images a folder with this marker may hold: a finished dataset's
    own, or those a run cut short listed. Parameters that no longer make a valid config (a newer
    generator's version, a config since refused) are passed over: what they wrote is unknown."""
    if marker is None:
        return []
    listed = [marker] if isinstance(marker["key"], str) else marker.get("written", [])
    configs = []
    for parameters in listed if isinstance(listed, list) else []:
        if not isinstance(parameters, dict):
            continue
        try:
            configs.append(SyntheticConfig(**{f.name: parameters[f.name] for f in fields(SyntheticConfig)}))
        except (KeyError, TypeError, ValueError):
            continue
    return configs


# The names this generator gives its images (_image_path) and their degraded copies (degrade.degraded_path of
# a split's "<split>[_...]_degraded" copy, which holds that split's images only).
_GENERATED_IMAGE = re.compile(r"(?:(?P<copy>(?P<copy_split>train|val|test)(?:_[^/]*)?_degraded)/)?images/"
                              r"(?P<split>train|val|test)/(?P<identity>0|[1-9][0-9]*)/(?P=identity)_"
                              r"(?P<k>0|[1-9][0-9]*)\.png")


def _generated_images(out: Path) -> set[str]:
    """The files under `out` (relative paths) that bear the names of this generator's images and their
    degraded copies: what a run of an earlier tgfr, cut short before listing its parameters, may have
    written. Other files are not among them."""
    paths = set()
    for candidate in [*out.glob("images/*/*/*.png"), *out.glob("*/images/*/*/*.png")]:
        match = _GENERATED_IMAGE.fullmatch(candidate.relative_to(out).as_posix())
        if match and match["copy_split"] in (None, match["split"]) and candidate.is_file():
            paths.add(match.group(0))
    return paths


def _remove_images(out: Path, paths: set[str]) -> None:
    """Removes the images `paths` (relative to `out`), and the folders under `out` they leave empty."""
    folders = set()
    for path in paths:
        (out / path).unlink(missing_ok=True)
        folders.update((out / path).parents)
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):  # the deepest first
        if folder.is_relative_to(out) and folder != out:
            with contextlib.suppress(OSError):  # not empty: it holds other images, or files of the user's
                folder.rmdir()


def _write_marker(out: Path, content: dict) -> None:
    # Atomically: a marker cut short by an interrupted run would otherwise be a half-written file
    # that readers take for the dataset's description.
    with write_atomically(out / MARKER, "synthetic dataset marker") as stream:
        stream.write(json.dumps(content, indent=1, sort_keys=True) + "\n")


def _check_synthetic_or_empty(out: Path) -> None:
    """Refuses an `out` that holds files but no synthetic.json of an earlier run, finished or cut
    short: its manifest.jsonl and images/ are someone else's, which generating would overwrite."""
    if not out.is_dir() or _marker(out) is not None:
        return
    example = min(out.iterdir(), default=None)
    if example is not None:
        raise ValueError(f"output folder (--out) {out} already holds files (e.g. {example.name}) but no {MARKER} of "
                         "an earlier synthetic dataset; not writing over them: choose an empty or new folder")


def generate_synthetic_dataset(out: str | Path, config: SyntheticConfig = SyntheticConfig(),
                               workers: int = 2) -> Path:
    """Renders the dataset (and its degraded splits) into `out`; returns the manifest path.

    `out` must be new, empty or an earlier synthetic dataset (holding its synthetic.json, written
    first and given the dataset's key last, so a run cut short leaves one too), whose files are then
    rewritten: the images that its runs wrote and this one does not (other identities, splits or
    degraded copies) are removed first, so that of the images generated there, only those the new
    manifest lists remain; files that no run wrote are left alone. The earlier manifest.jsonl is
    removed before any image changes, and the new one written last, so a run cut short leaves no
    manifest. A folder holding other files but no synthetic.json is a ValueError, before anything
    is written, and so is a folder that another process generates into (tgfr.folder_lock), and an `out`
    that is a file, a broken symbolic link or under a file."""
    check_workers(workers)
    out = check_output_folder("out", out)
    _check_synthetic_or_empty(out)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, f"output folder {out} is being written by another process generating a synthetic "
                          "dataset: wait for it to end, or choose another folder"):
        return _generate(out, config, workers)


def _generate(out: Path, config: SyntheticConfig, workers: int) -> Path:
    """generate_synthetic_dataset once it holds `out`'s lock."""
    for name, recipe in config.degradations.items():  # else found once every clean face is drawn
        try:
            check_recipe_fits(recipe, OUTPUT_SIZE, OUTPUT_SIZE)
        except ValueError as error:
            raise ValueError(f"degradation {name!r} = {recipe!r} of the {OUTPUT_SIZE} x {OUTPUT_SIZE} synthetic "
                             f"faces: {error}") from None
    _check_synthetic_or_empty(out)  # again: another process may have written there since
    marker = _marker(out)
    earlier = _earlier_configs(marker)
    writes = _writes(config)
    cut_short_unlisted = marker is not None and marker["key"] is None and "written" not in marker
    if marker is not None and (marker["version"] > GENERATOR_VERSION or cut_short_unlisted):
        # Written by a newer generator version, or cut short by a tgfr that did not list its runs'
        # parameters: what it wrote is known only by the generator's names. Removed before this run's
        # marker lists the runs, so that a rerun cut short here finds the old marker and looks again.
        _remove_images(out, {path for path in _generated_images(out) if not writes(path)})
    # A marker without a key first: a run cut short (Ctrl-C, a full disk) leaves a folder that the
    # next run may write over, and that no reader takes for a finished dataset; it lists this run's
    # parameters with the earlier ones, whose images are not all removed yet. Its version is the
    # newest this tgfr knows: an older tgfr, which cannot read the parameters of a newer version,
    # then removes what the runs wrote by the generator's names. (Not the reverted commits 3db1e1f to
    # 3874a79, which called themselves version 2 too but read only version 2's parameters: rerun by
    # them, a folder that a version 1 run left cut short keeps that run's images.)
    runs = {run.key(): run for run in [*earlier, config]}.values()
    _write_marker(out, {"version": GENERATOR_VERSION, "key": None, "finished": False,
                        "written": [asdict(run) for run in runs]})
    # The earlier manifest goes before any of its images is overwritten or removed: left beside them by
    # a run cut short, it would describe images of two datasets to any reader of data.manifest.
    (out / "manifest.jsonl").unlink(missing_ok=True)
    # Only the earlier runs' images that are there: a run cut short early may have planned millions it never
    # wrote, each a failed unlink.
    written_earlier = list(map(_writes, earlier))
    _remove_images(out, {path for path in _generated_images(out)
                         if not writes(path) and any(written(path) for written in written_earlier)})
    splits = identity_splits(config)
    per_task = min(IMAGES_PER_TASK, config.images_per_identity)
    tasks = [(str(out), config, identity, splits[identity], first, min(first + per_task, config.images_per_identity))
             for identity in range(config.identities) for first in range(0, config.images_per_identity, per_task)]
    if workers > 1:
        with WorkerPool(workers) as pool:
            # A chunk of at most IMAGES_PER_TASK images, about a second of work: the wait of a Ctrl-C.
            chunksize = min(IMAGES_PER_TASK // per_task, max(1, len(tasks) // (16 * workers)))
            chunks = pool.map(_render_identity, tasks, chunksize=chunksize)
    else:
        chunks = [_render_identity(task) for task in tasks]
    records = [record for chunk in chunks for record in chunk]
    for name, recipe in config.degradations.items():
        source = [record for record in records if record.split == name.split("_")[0]]
        degraded, _ = degrade_records(source, out, recipe, name, seed=config.seed, workers=workers)
        records += degraded
    manifest = write_manifest(out / "manifest.jsonl", records)
    _write_marker(out, {**asdict(config), "key": config.key(), "finished": True})
    return manifest


def default_cache_dir() -> Path:
    """$TGFR_CACHE_DIR, else $XDG_CACHE_HOME/tgfr, else ~/.cache/tgfr. An empty variable counts as unset
    (Path("") is the current folder, where a cache would land unasked), and so does a relative
    $XDG_CACHE_HOME, which the XDG Base Directory Specification says to ignore."""
    if os.environ.get("TGFR_CACHE_DIR"):
        return Path(os.environ["TGFR_CACHE_DIR"])
    xdg_cache = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg_cache) if os.path.isabs(xdg_cache) else Path.home() / ".cache") / "tgfr"


def _cached_manifest(folder: Path, key: str) -> Path | None:
    """folder's manifest when its synthetic.json records `key` and the manifest is there; an absent,
    unreadable or cut-short marker is a folder still being written or left half-written, and a missing
    manifest (a cache cleaner's, a user's tidying) one to write again, so None."""
    manifest = folder / "manifest.jsonl"
    return manifest if _marker_key(folder) == key and manifest.is_file() else None


def synthetic_cache_folder(manifest: str | Path) -> Path | None:
    """The folder <cache_dir>/synthetic/<key> of ensure_synthetic_dataset whose manifest.jsonl `manifest` is, when
    its synthetic.json records that key; None for any other manifest (a tgfr data synth --out folder's too, whose
    name the user chose). Such a folder is tgfr's to write: a damaged one is deleted and generated again, not
    edited, since an edited one would be reused for good as that config's dataset."""
    folder = Path(manifest).parent
    return (folder if Path(manifest).name == "manifest.jsonl" and folder.parent.name == "synthetic"
            and _marker_key(folder) == folder.name else None)


def _staging_owner() -> str:
    """This process as the owner named in a staging folder's name: <pid>@<host>, since a process id names a
    process of its own machine only, and a cache folder on a network file system is shared by several."""
    return f"{os.getpid()}@{re.sub(r'[^A-Za-z0-9]', '_', socket.gethostname())}"


# A staging folder's name (ensure_synthetic_dataset): .<config key>-<process id>[@<machine>]-<unique part>, the machine
# missing from an earlier tgfr's, and "-stale" after the unique part (earlier tgfrs: in it) for what it moved aside.
# At most 9 digits: a process id has at most 7 (pid_max <= 2**22), and os.kill raises OverflowError, no OSError, past 2**31.
_STAGING_NAME = re.compile(r"\.[0-9a-f]{16}-(?P<owner>[0-9]{1,9})(?:@(?P<machine>[A-Za-z0-9_]*))?-.+")


def _remove_abandoned_staging(parent: Path) -> None:
    """Removes the staging folders, of any config, whose process, on this machine, has ended without removing
    its own (killed: SIGKILL, out of memory): each would hold a partial copy of a dataset for good, and a run of
    another config (a sweep over seeds, killed) may never come again to remove it; and
    the stale cache folders (or files or links in a cache folder's place) such a process moved aside (named
    after its staging folder) and was killed while removing.
    Staging folders of live processes or of another machine, and names of another form, are left alone
    (a name without a machine is an earlier tgfr's, taken for this machine's), and so is one whose lock
    (folder_lock, which its owner holds while it generates) is held: its owner may be a process that this
    one cannot see (another container of this host name, sharing the cache, has other process ids)."""
    this_machine = _staging_owner().partition("@")[2]
    for staging in parent.glob(".*-*-*"):
        name = _STAGING_NAME.fullmatch(staging.name)
        if name is None or int(name["owner"]) == os.getpid() or (name["machine"] or "") not in ("", this_machine):
            continue
        try:
            os.kill(int(name["owner"]), 0)
        except ProcessLookupError:
            if staging.name.endswith("-stale") and (staging.is_symlink() or not staging.is_dir()):
                # folder_lock cannot open a file, and rmtree refuses a link. No lock is needed: only the dead
                # owner's rename made this name.
                with contextlib.suppress(OSError):  # already gone, or not ours to remove: the run goes on
                    staging.unlink()
                continue
            # Where the file system has no locks, the process id alone decides.
            with contextlib.suppress(ValueError, OSError):  # held, or already gone
                with folder_lock(staging, in_use=f"staging folder {staging} is in use"):
                    shutil.rmtree(staging, ignore_errors=True)
        except OSError:  # alive under another user (PermissionError), or unknowable: keep it
            continue


def ensure_synthetic_dataset(preset: str | SyntheticConfig = "default", cache_dir: str | Path | None = None,
                             workers: int = 2) -> Path:
    """Manifest of a synthetic dataset in <cache_dir>/synthetic/<config key>, generated on first use.

    A folder is reused only when its synthetic.json records the same key and its manifest.jsonl is there
    (else it is generated again). The dataset is generated in a temporary sibling folder and renamed
    into place, so neither an interrupted run nor a process generating it at the same time is ever seen
    half-written; of two processes that generate it at once, the one whose rename comes second uses the
    other's folder. A folder that cannot be made there (a file in the way, no permission) is a
    ValueError naming cache_dir and the path.
    """
    if isinstance(preset, str):
        if preset not in SYNTHETIC_PRESETS:
            raise ValueError(f"preset must be one of {sorted(SYNTHETIC_PRESETS)} or a SyntheticConfig, got {preset!r}")
        preset = SYNTHETIC_PRESETS[preset]
    check_workers(workers)
    key = preset.key()
    root = Path(cache_dir or default_cache_dir())
    folder = root / "synthetic" / key
    if (manifest := _cached_manifest(folder, key)) is not None:
        # A killed run of other settings (a sweep over seeds) left its partial copy: the later runs of a sweep
        # mostly read cached sets, and would otherwise never remove it. A cache this process cannot write (a
        # shared, read-only one) is read as it is.
        with contextlib.suppress(OSError):
            _remove_abandoned_staging(folder.parent)
        return manifest
    # A hidden sibling of a unique name (not tempfile.mkdtemp, whose folders only the user may read);
    # the process id in it, and its lock, let a later run remove it if this process is killed.
    staging = folder.with_name(f".{key}-{_staging_owner()}-{uuid.uuid4().hex}")
    # A file in the way, no permission, a full disk: a setting to fix, named in one line, not a traceback.
    check_output_folder(f"cache_dir {root}: the synthetic dataset's folder", folder.parent)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_staging(folder.parent)
        staging.mkdir()
    except OSError as error:
        raise ValueError(f"cache_dir {root}: cannot create the synthetic dataset's folder {folder}: "
                         f"{error.filename or staging}: {error.strerror}") from None
    try:
        # Held until the folder is renamed into place: another process removes a staging folder only if it
        # can take its lock, which it could not while this one generates, even without seeing this process.
        with folder_lock(staging):
            _generate(staging, preset, workers)
            if (folder.is_symlink() or folder.exists()) and _cached_manifest(folder, key) is None:
                # A stale folder (no valid marker: interrupted by an older version, or damaged) is
                # moved aside first, since a directory cannot be renamed over a non-empty one; if
                # another process moved or replaced it meanwhile, the rename below settles it. Named after the
                # staging folder: left by a kill during its removal, it goes with that folder's leftovers.
                stale = staging.with_name(f"{staging.name}-stale")
                with contextlib.suppress(FileNotFoundError):
                    os.replace(folder, stale)
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                else:  # a file or a link in the folder's place, which rmtree never removes
                    stale.unlink(missing_ok=True)
            try:
                os.replace(staging, folder)
            except OSError:
                if (manifest := _cached_manifest(folder, key)) is None:  # not a finished copy from another process
                    raise
                return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / "manifest.jsonl"
