"""Low-quality degradations, seeded and reproducible, and degraded copies of manifest splits.

Recipes (names joined with "+" apply left to right, e.g. "down24+jpeg30"):

- "celeba": TGFR's CelebA recipe (data/celeba/scripts/transform_fair.py), on 112 x 112 images
  as TGFR's: resize to 112, horizontal flip p=0.5, rotation U(-5, 5) deg with white fill,
  Gaussian blur kernel 3 sigma U(2, 9), brightness factor U(0.6, 1.4), hue shift U(-0.5, 0.5),
  additive Gaussian noise std sqrt(0.002); the result stays 112 x 112. Blur and noise act per
  pixel, so only at TGFR's size do they have TGFR's strength relative to the face; and resizing
  back up would not keep it: the model's bilinear resize to 112 (transforms) would average away
  about half of the noise. A 112 x 112 image (the synthetic set) is not resized at all.
  Written after that script's steps, with these known departures: the rotation is bilinear (torchvision's
  rotate defaults to nearest), brightness always comes before hue (torchvision's ColorJitter draws
  their order), and the hue shift goes through PIL's 8-bit HSV with a wrap modulo 256, as torchvision's
  PIL path does (a zero shift still moves some pixels by a few levels).
- "face2text": TGFR's Face2Text recipe (data/face2text/scripts/transform.py), with celeba's departures: resize to 144,
  flip p=0.5, rotation U(-30, 30), blur kernel 5 sigma U(1, 5), brightness U(0.6, 1.4), hue
  U(-0.2, 0.2), noise std sqrt(0.005); then back to the input size, so every split of a
  manifest keeps one image size.
- "down<S>": down-and-up sampling, bicubic with antialiasing to S x S and back (S = 16, 24, 32); S must be
  below both sides of the image (a larger S would make a near-clean or up-sampled "degraded" copy).
- "jpeg<Q>": JPEG encoding at quality Q (1-95).

Every image's generator is seeded by (seed, CRC32 of its manifest path), so a degraded image
does not depend on the order or the number of worker processes.
"""

import contextlib
import io
import itertools
import os
import posixpath
import re
import secrets
import shutil
import zlib
from collections.abc import Callable, Collection, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps

from tgfr.data.files import check_image, load_image, to_rgb
from tgfr.data.manifest import ManifestRecord, read_manifest, select_split, write_manifest
from tgfr.data.worker_pool import WorkerPool, check_workers
from tgfr.folder_lock import folder_lock
from tgfr.output_paths import STAGING, check_output_file, naming_write_errors
from tgfr.text_formats import check_utf8

Step = Callable[[Image.Image, np.random.Generator], Image.Image]


def gaussian_kernel(kernel_size: int, sigma: float) -> np.ndarray:
    """1-D normalized Gaussian of odd length `kernel_size` (as torchvision's gaussian_blur)."""
    half = (kernel_size - 1) / 2
    weights = np.exp(-0.5 * (np.linspace(-half, half, kernel_size) / sigma) ** 2)
    return weights / weights.sum()


def gaussian_blur(image: Image.Image, kernel_size: int, sigma: float) -> Image.Image:
    """Separable Gaussian blur with reflect padding (rows, then columns)."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    kernel, pad = gaussian_kernel(kernel_size, sigma), kernel_size // 2
    array = np.asarray(image, dtype=np.float32)
    for axis in (0, 1):
        padding = [(0, 0)] * array.ndim
        padding[axis] = (pad, pad)
        padded = np.pad(array, padding, mode="reflect")
        length = array.shape[axis]
        window = [slice(None)] * array.ndim
        # Views, not np.take copies: the same sum of the same products, a fifth faster.
        shifted = (padded[tuple(window[:axis] + [slice(offset, offset + length)] + window[axis + 1:])]
                   for offset in range(kernel_size))
        array = sum(weight * part for weight, part in zip(kernel, shifted))
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8))


def adjust_brightness(image: Image.Image, factor: float) -> Image.Image:
    array = np.asarray(image, dtype=np.float32) * factor
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8))


def adjust_hue(image: Image.Image, shift: float) -> Image.Image:
    """Rotates hue by `shift` turns (in [-0.5, 0.5]) in HSV space."""
    hsv = np.array(image.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + int(round(shift * 255))) % 256
    return Image.fromarray(hsv, mode="HSV").convert("RGB")


def add_gaussian_noise(image: Image.Image, std: float, rng: np.random.Generator) -> Image.Image:
    """Adds N(0, std^2) noise on the [0, 1] scale, then clips."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = array + rng.normal(0.0, std, size=array.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8))


def _check_down_size(size: int, width: int, height: int) -> None:
    """Refuses a down<size> step on a width x height image: it would not lower its resolution."""
    if size >= min(width, height):
        raise ValueError(f"recipe step 'down{size}': {size} must be below both sides of the image, "
                         f"{width} x {height}, for the step to lower its resolution")


def down_up(image: Image.Image, size: int) -> Image.Image:
    """Bicubic (antialiased) resize to size x size and back to the original size; size must be below both sides."""
    _check_down_size(size, image.width, image.height)
    small = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
    return small.resize(image.size, Image.Resampling.BICUBIC)


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _tgfr_recipe(work_size: int, restore_size: bool, max_angle: float, kernel_size: int,
                 sigma: tuple[float, float], hue: float, noise_var: float, mirror: bool = True) -> Step:
    """mirror False leaves out the flip (its draw is still made, so the other draws stay the same)."""
    def step(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        size = image.size if restore_size else (work_size, work_size)
        image = image.resize((work_size, work_size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5 and mirror:
            image = ImageOps.mirror(image)
        image = image.rotate(rng.uniform(-max_angle, max_angle), Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))
        image = gaussian_blur(image, kernel_size, rng.uniform(*sigma))
        image = adjust_brightness(image, rng.uniform(0.6, 1.4))
        image = adjust_hue(image, rng.uniform(-hue, hue))
        image = add_gaussian_noise(image, noise_var ** 0.5, rng)
        return image.resize(size, Image.Resampling.BILINEAR) if image.size != size else image
    return step


# The arguments of _tgfr_recipe (but mirror) of TGFR's recipes.
NAMED_RECIPES: dict[str, tuple] = {
    "celeba": (112, False, 5.0, 3, (2.0, 9.0), 0.5, 0.002),
    "face2text": (144, True, 30.0, 5, (1.0, 5.0), 0.2, 0.005),
}


def parse_recipe(recipe: str, mirror: bool = True) -> list[Step]:
    """Turns "celeba", "down16", "jpeg30", "down24+jpeg50", ... into a list of steps. mirror False: the
    named recipes leave out their horizontal flip (for images paired with captions that say left and right)."""
    if not isinstance(recipe, str) or not recipe:
        raise ValueError(f"recipe must be a non-empty string, got {recipe!r}")
    steps: list[Step] = []
    for name in recipe.split("+"):
        if name in NAMED_RECIPES:
            steps.append(_tgfr_recipe(*NAMED_RECIPES[name], mirror=mirror))
        elif match := re.fullmatch(r"down(\d+)", name):
            size = int(match[1])
            if size < 1:
                raise ValueError(f"recipe step {name!r}: size must be positive")
            steps.append(lambda image, rng, size=size: down_up(image, size))
        elif match := re.fullmatch(r"jpeg(\d+)", name):
            quality = int(match[1])
            if not 1 <= quality <= 95:
                raise ValueError(f"recipe step {name!r}: JPEG quality must be in [1, 95]")
            steps.append(lambda image, rng, quality=quality: jpeg(image, quality))
        else:
            raise ValueError(f"unknown recipe step {name!r} in {recipe!r}: expected one of "
                             f"{sorted(NAMED_RECIPES)}, down<size>, jpeg<quality>")
    return steps


def check_recipe_fits(recipe: str, width: int, height: int) -> None:
    """Refuses, before any image is read, a recipe whose down<S> step would meet an image (width x height at
    the recipe's start, resized by its named steps as they resize) with a side of S or less."""
    size = (width, height)
    for name in recipe.split("+"):
        if name in NAMED_RECIPES:
            work_size, restore_size = NAMED_RECIPES[name][:2]
            size = size if restore_size else (work_size, work_size)
        elif match := re.fullmatch(r"down(\d+)", name):
            _check_down_size(int(match[1]), *size)


def check_generator(rng: object) -> None:
    """Refuses an `rng` that is not a numpy Generator (an int seed failed at rng.random(), naming no argument)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (numpy.random.default_rng(seed)), got "
                        f"{type(rng).__name__}")


def degrade_image(image: Image.Image, recipe: str, rng: np.random.Generator, mirror: bool = True) -> Image.Image:
    """Applies a recipe to an image made 8-bit RGB and upright as the transforms make it (tgfr.data.files.to_rgb:
    a 16-bit greyscale image scaled, not clipped white; an EXIF-turned photo turned); the same rng state gives
    the same output. mirror: as parse_recipe's."""
    check_generator(rng)
    image = to_rgb(image)
    for step in parse_recipe(recipe, mirror):
        image = step(image, rng)
    return image


def image_rng(seed: int, path: str) -> np.random.Generator:
    # surrogateescape: a manifest may hold a path that is not UTF-8 (a lone surrogate in Python), which
    # strict UTF-8 refused after every image was checked; UTF-8 paths give the same bytes either way.
    return np.random.default_rng((seed, zlib.crc32(path.encode("utf-8", "surrogateescape"))))


def _degrade_one(task: tuple[str, str, str, str, str, int]) -> str | None:
    """Writes the degraded image of `source` at `staged`; a write error names `target`, where it goes."""
    source, staged, target, relative, recipe, seed = task
    try:
        image = load_image(source)
    except ValueError as error:
        return str(error)
    try:
        degraded = degrade_image(image, recipe, image_rng(seed, relative))
    except ValueError as error:  # a recipe that does not suit this image: stop the copy, naming it
        raise ValueError(f"image {source}: {error}") from None
    Path(staged).parent.mkdir(parents=True, exist_ok=True)
    with naming_write_errors("image", target):
        degraded.save(staged, format="PNG")
    return None


def _check_one(source: str) -> str | None:
    try:
        check_image(source)
    except ValueError as error:
        return str(error)
    return None


def check_plain_name(name: str, what: str) -> None:
    """Refuses a file or folder name, named `what` in the error, that is not one plain path segment:
    "../x" or "/abs" would write outside the folder meant (a degraded copy outside the manifest's
    folder), and "." or "" over what is there (the source images)."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"{what} must be one plain name (no '/', '\\', '.' or '..'), got {name!r}")


def degraded_path(folder: str, path: str) -> str:
    """"<folder>/<path>.png", kept inside `folder`: a path that leaves the manifest's folder
    ("../data/x.jpg", as `tgfr data convert --out` elsewhere writes) gets "__" for each "..",
    where "<folder>/../data/x.png" would write outside the copy, over any image there."""
    parts = ["__" if part == ".." else part for part in PurePosixPath(posixpath.normpath(path)).parts]
    return PurePosixPath(folder, *parts).with_suffix(".png").as_posix()


def _check_targets(root: Path, folder: str, records: Sequence[ManifestRecord], targets: Sequence[str],
                   listed: Collection[str]) -> None:
    """Refuses, before anything is written, a target that resolves outside root/folder (through a
    symlink, or an absolute record path), that is an image of `listed`, or that two records share
    (img/1.jpg and img/1.png both become <folder>/img/1.png: the second would overwrite the first)."""
    inside = (root / folder).resolve()
    protected = {(root / path).resolve(): path for path in listed}
    source_of: dict[Path, str] = {}
    for record, target in zip(records, targets):
        resolved = (root / target).resolve()
        if not resolved.is_relative_to(inside):
            raise ValueError(f"the degraded copy of image {record.path} would be written to {resolved}, outside "
                             f"the copy's folder {inside}")
        if resolved in protected:
            raise ValueError(f"the degraded copy of image {record.path} would overwrite image "
                             f"{protected[resolved]}, which the manifest lists")
        if resolved in source_of:
            raise ValueError(f"images {source_of[resolved]} and {record.path} would both be degraded to {target}; "
                             "rename one of them")
        source_of[resolved] = record.path


def _raise_first(errors: Sequence[str | None]) -> None:
    failed = [error for error in errors if error is not None]
    if failed:
        raise ValueError(f"{failed[0]} ({len(failed)} image(s) failed; pass bad_images='skip' / --skip-bad "
                         "to skip them)")


def degrade_records(records: Sequence[ManifestRecord], root: str | Path, recipe: str, split_name: str,
                    seed: int = 0, folder: str | None = None, workers: int = 1,
                    bad_images: str = "error", listed: Collection[str] = (),
                    list_copy: Callable[[list[ManifestRecord], list[str]], object] | None = None,
                    ) -> tuple[list[ManifestRecord], list[str]]:
    """Writes a degraded PNG of every record under root/folder and returns their new records.

    New records keep identity and captions, take split `split_name`, path
    "<folder>/<old path>.png" (folder, one plain folder name, defaults to split_name; each ".."
    of the old path becomes "__") and meta {"source", "recipe", "seed"}: the image is `recipe` applied
    to `source` with image_rng(seed, source), and meta "recipe" is every degradation since the clean
    image (_recipe_chain: "celeba+jpeg30" for a celeba copy degraded with jpeg30). Nothing is written when a
    degraded image would land outside root/folder, on an image of `listed` (paths relative to
    root that must stay as they are) or on another record's degraded image.
    Returns (records, errors): with bad_images="skip" unreadable images are left out and their
    errors returned; with "error" every image is checked first and the first bad one raises
    before any is written. The images are written into a hidden folder root/.staging.<hex>.tmp
    and moved into root/folder once every one is written, so an earlier copy being replaced is not
    left half-replaced by a run cut short (a killed one leaves that hidden folder).
    list_copy(records, errors), when given, is called once every image is in place, to write what lists them
    (degrade_manifest's manifest, atomically); if it raises (a full disk, a Ctrl-C), or a move into place
    does, the images moved are taken away again and the files they replaced put back: root/folder is left as
    it was, in step with the listing that list_copy did not change.
    """
    parse_recipe(recipe)
    if bad_images not in ("error", "skip"):
        raise ValueError(f"bad_images must be 'error' or 'skip', got {bad_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    check_workers(workers)
    root, folder = Path(root), folder or split_name
    check_plain_name(folder, "folder")
    new_paths = [degraded_path(folder, r.path) for r in records]
    _check_targets(root, folder, records, new_paths, listed)
    # The images are written into a hidden folder beside the copy's and moved into place once all are:
    # a run cut short (Ctrl-C, a kill, a full disk) leaves no image cut short under its name, and an
    # earlier copy, with the manifest that lists it, as it was (a rerun then starts afresh).
    # Not named after `folder`: a name of up to 255 bytes, which the folder can have, would not fit.
    staging = root / f".{STAGING}.{secrets.token_hex(4)}.tmp"
    # The files that the new images replace wait under "old" until list_copy is done, to be put back if it fails.
    within = [PurePosixPath(path).relative_to(folder) for path in new_paths]
    staged, aside = [staging / "new" / path for path in within], [staging / "old" / path for path in within]
    tasks = [(str(root / r.path), str(s), str(root / path), r.path, recipe, seed)
             for r, s, path in zip(records, staged, new_paths)]
    parallel = workers > 1 and len(tasks) > 1
    # While the earlier copy's files wait under "old" to be put back, the staging folder is all that holds
    # them: a put-back cut short (a second Ctrl-C) leaves it, not deleted with them.
    holds_earlier = False
    try:
        with WorkerPool(workers) if parallel else contextlib.nullcontext() as pool:
            # At most about a second of work (4 ms an image on this project's CPU), the wait of a Ctrl-C.
            chunksize = min(256, max(1, len(tasks) // (8 * workers)))

            def run(function: Callable, items: list) -> list[str | None]:
                return pool.map(function, items, chunksize=chunksize) if parallel else [function(i) for i in items]

            if bad_images == "error":
                _raise_first(run(_check_one, [task[0] for task in tasks]))
            errors = run(_degrade_one, tasks)
        if bad_images == "error":
            _raise_first(errors)  # a file that changed since its check
        degraded = [ManifestRecord(path, r.identity, split_name, r.captions,
                                   {"source": r.path, "recipe": _recipe_chain(r, recipe), "seed": seed})
                    for r, path, error in zip(records, new_paths, errors) if error is None]
        failed = [error for error in errors if error is not None]
        placed: list[tuple[Path, Path | None]] = []
        made: list[Path] = []
        try:
            for path, staged_path, aside_path, error in zip(new_paths, staged, aside, errors):
                if error is None:
                    target = root / path
                    made += _make_folders(target.parent)
                    earlier = aside_path if os.path.lexists(target) else None
                    placed.append((target, earlier))
                    if earlier is not None:
                        holds_earlier = True
                        aside_path.parent.mkdir(parents=True, exist_ok=True)
                        shutil.move(target, aside_path)
                    shutil.move(staged_path, target)  # a rename, unless the copy's folder is elsewhere
            if list_copy is not None:
                list_copy(degraded, failed)
            holds_earlier = False  # listed: the earlier copy is replaced for good
        except BaseException:
            _put_back(placed, made)
            holds_earlier = False
            raise
    finally:
        if not holds_earlier:
            shutil.rmtree(staging, ignore_errors=True)
    return degraded, failed


def _recipe_chain(source: ManifestRecord, recipe: str) -> str:
    """What the degraded copy of `source` has been through: `recipe` after the source's own meta "recipe" (a
    str, as degrade_records records it), so that `tgfr evaluate` reports a copy of a copy as "celeba+jpeg30",
    not as the jpeg30 alone that made it from its celeba source."""
    earlier = source.meta.get("recipe")
    return f"{earlier}+{recipe}" if isinstance(earlier, str) and earlier else recipe


def _make_folders(folder: Path) -> list[Path]:
    """Makes `folder` with its missing parents; returns the folders it made, each after its parent."""
    missing = list(itertools.takewhile(lambda path: not os.path.lexists(path), (folder, *folder.parents)))
    folder.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def _put_back(placed: Sequence[tuple[Path, Path | None]], made: Sequence[Path]) -> None:
    """Undoes degrade_records' moves into place: each (target, aside) loses its new image and gets back the
    file it replaced, waiting at `aside` (None: it replaced nothing); then the folders made for them go."""
    for target, aside in reversed(placed):
        if aside is None:
            target.unlink(missing_ok=True)
        elif os.path.lexists(aside):  # else the move aside was cut short: `target` is still the earlier file
            shutil.move(aside, target)
    for folder in reversed(made):
        folder.rmdir()


def _check_folder_holds_only(folder: Path, name: str, out_manifest: Path,
                             replaced: Sequence[ManifestRecord] | None) -> None:
    """Refuses a `folder` holding files that the manifest about to be replaced (`out_manifest`,
    whose records of split `name` are `replaced`, read from the file when None) does not list
    under split `name`: they belong to another manifest (an earlier run with another
    --out-manifest), which would go on recording a recipe that its overwritten images no longer have."""
    if not folder.is_dir():
        return
    if replaced is None:
        replaced = [r for r in read_manifest(out_manifest) if r.split == name] if out_manifest.is_file() else []
    owned = {(out_manifest.parent / record.path).resolve() for record in replaced}
    stray = sorted(path for path in folder.rglob("*") if path.is_file() and path.resolve() not in owned)
    if stray:
        raise ValueError(f"folder {folder} already holds {len(stray)} file(s) that {out_manifest} does not list "
                         f"under split {name!r} (e.g. {stray[0]}), such as another manifest's degraded copy; "
                         "choose another name (--name), or remove them")


def default_out_manifest(manifest: str | Path, name: str) -> Path:
    """Where degrade_manifest writes the manifest of the copy `name` of `manifest` by default: <stem>_<name>.jsonl
    beside it."""
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}_{name}.jsonl")


def degrade_manifest(manifest: str | Path, split: str = "test", recipe: str = "celeba", name: str | None = None,
                     seed: int = 0, out_manifest: str | Path | None = None, workers: int = 1,
                     bad_images: str = "error") -> tuple[Path, list[str]]:
    """Adds a degraded copy of `split` as split `name` (default "<split>_degraded").

    Writes images under <manifest folder>/<name>/ (`name` is one plain folder name) and a
    manifest holding every input record (minus any earlier records of split `name`) plus the
    degraded ones, at `out_manifest` (default "<stem>_<name>.jsonl" next to the input; it may be
    the input itself).
    An existing split `name` is replaced only when it is an earlier degraded copy of `split`
    (every record's meta "source" is an image of `split`) and `out_manifest` is the input itself
    (its images are overwritten); any other existing split is an error. So is a folder `name`
    holding files that `out_manifest`, as it was, does not list under split `name`.
    Returns (manifest path, errors of skipped images).
    """
    parse_recipe(recipe)  # a bad recipe is the first error, before any about the manifest
    manifest = Path(manifest)
    # A default name comes from --split: an error about it must say so, not blame a --name never given.
    # `is None`: an empty name (an unset shell variable) is refused by check_plain_name, not taken as the default.
    what = "name (--name)" if name is not None else "name (--name; by default --split + '_degraded')"
    name = f"{split}_degraded" if name is None else name
    check_plain_name(name, what)
    # The manifest written last spells the name as split and in the new images' paths: one it cannot hold
    # would fail there, after every image was degraded.
    check_utf8(what, name, need="as the manifest that lists the copy is", remedy="choose a UTF-8 --name")
    read_manifest(manifest)  # a missing or bad manifest is named before any wait below
    # Another degrade writing into this folder (another copy, or this one with another recipe) goes first,
    # whole: interleaved, one copy's images could lie under the other's recipe.
    with folder_lock(manifest.parent, waiting=f"tgfr data degrade: waiting for another process writing into "
                                              f"{manifest.parent} to end"):
        records = read_manifest(manifest)
        sources = {record.path for record in records if record.split == split}
        earlier = [record for record in records if record.split == name]
        # Replacing any other split would relabel its images (e.g. name="train" would move degraded
        # test images into train, and drop the real training images).
        if earlier and not all(isinstance(r.meta.get("source"), str) and r.meta["source"] in sources
                               for r in earlier):
            raise ValueError(f"name {name!r} is already a split of {manifest} that is not a degraded copy of "
                             f"split {split!r}; choose another name (--name)")
        # Checked as given, before any image (else found out after every one): "" and "DIR/" are refused, not
        # read as "." and "DIR".
        out_manifest = check_output_file("out_manifest (--out-manifest)", default_out_manifest(manifest, name)
                                         if out_manifest is None else out_manifest)
        if out_manifest.resolve().parent != manifest.resolve().parent:
            raise ValueError(f"out_manifest {out_manifest} must be in the input manifest's folder "
                             f"{manifest.parent} so that image paths stay relative to it")
        # The new images overwrite the earlier copy's files, which the input manifest would go on
        # listing (with the old recipe in their meta) if it were not the manifest written.
        if earlier and out_manifest.resolve() != manifest.resolve():
            raise ValueError(f"split {name!r} of {manifest} is an earlier degraded copy whose images would be "
                             f"overwritten while {manifest} still lists them: replace it in place (out_manifest = "
                             f"the input manifest, --out-manifest {manifest}) or choose another name (--name)")
        copy_folder = manifest.parent / name
        if os.path.lexists(copy_folder) and not copy_folder.is_dir():  # found out after every image otherwise
            raise ValueError(f"{copy_folder}, where the degraded copy's images go, is a file, not a folder; "
                             f"remove it or choose another {what}")
        _check_folder_holds_only(copy_folder, name, out_manifest,
                                 earlier if out_manifest.resolve() == manifest.resolve() else None)
        kept = [record for record in records if record.split != name]

        def list_copy(degraded: list[ManifestRecord], failed: list[str]) -> None:
            if not degraded:  # every image skipped: a manifest without the split would look like a copy made
                raise ValueError(f"every image of split {split!r} was skipped, nothing was written; the first: "
                                 f"{failed[0]}")
            write_manifest(out_manifest, kept + degraded)

        # Written while the earlier copy's images are kept aside: a manifest that fails to write (a full disk) has the
        # new images taken away and the earlier put back, not new images left under the old recipe, or unlisted
        # images that refuse the rerun.
        degraded, failed = degrade_records(select_split(kept, split), manifest.parent, recipe, name, seed,
                                           workers=workers, bad_images=bad_images,
                                           listed=[r.path for r in kept], list_copy=list_copy)
        # An earlier copy's image whose source was skipped this time keeps the earlier recipe, listed by
        # no manifest now: left, it would make the next degrade into `name` refuse the folder.
        rewritten, inside = {record.path for record in degraded}, copy_folder.resolve()
        for record in earlier:
            path = manifest.parent / record.path
            if record.path not in rewritten and path.resolve().is_relative_to(inside):
                path.unlink(missing_ok=True)
        return out_manifest, failed
