"""Converters from the released dataset layouts to a manifest.

TGFR's MMCelebA and Face2Text trees (github Mahedi-61/Text_Guided_Face_Recognition, data/):

    <root>/images/<split>/<id>/<id>_<k>.jpg          one folder per identity (.png, ...: IMAGE_SUFFIXES)
    <root>/text/<id>/<id>_<k>.txt                     captions of that image, one per line
    <root>/<split>/filenames.(json|csv|pickle|pkl)    optional split list of "<id>/<id>_<k>"
                                                      (or "<id>/<id>_<k>.jpg", naming the file),
                                                      its name in any letter case

CelebA-Dialog: a caption JSON {"<image>.jpg": {"overall_caption": str,
"attribute_wise_captions": {attribute: str}} | str | [str]}, CelebA's identity file
("<celeba image> <identity>" per line), optionally the CelebA-HQ-to-CelebA mapping file
("idx orig_idx orig_file" table) when the images are CelebA-HQ numbered, and optionally a split
file; without one, each identity goes to a split by a seeded hash of its name.

Released split lists are pickles; unpickling runs code from the file, so they are read only
with trust_pickle=True (CLI: --trust-pickle). JSON lists or CSV files are read otherwise.
"""

import hashlib
import json
import os
import pickle
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from tgfr.data.files import check_image, read_caption_file, read_text_file, text_lines
from tgfr.data.manifest import ManifestRecord
from tgfr.input_paths import file_problem, is_broken_link, refuse_empty_path
from tgfr.text_formats import check_caption_utf8, parse_json, read_csv_lines

# Formats that Pillow's wheels decode, matched in any letter case; when files of one stem have
# several, the first in this order is used.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
_SUFFIX_CHOICE = f"({'|'.join(s.removeprefix('.') for s in IMAGE_SUFFIXES)})"  # as messages spell them


def read_split_list(path: str | Path, trust_pickle: bool = False) -> list[str]:
    """A list of entries from a .json list, a .csv/.txt file (first column) or, if trusted, a pickle."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pickle" or suffix == ".pkl":
        if not trust_pickle:
            raise ValueError(f"refusing to unpickle split list {path}: pickles can run code. Pass "
                             "trust_pickle=True (--trust-pickle) if you trust the file, or provide a JSON/CSV list")
        try:
            with path.open("rb") as handle:
                entries = pickle.load(handle)
        # A corrupt pickle can raise nearly any exception type (UnpicklingError, EOFError,
        # AttributeError, ImportError, IndexError, ...), and an absent one OSError: none names the file.
        except Exception as error:
            raise ValueError(f"split list {path} is not a readable pickle ({type(error).__name__}: {error})") from None
    elif suffix == ".json":
        try:
            entries = parse_json(read_text_file(path, "split list", encoding="utf-8-sig"))
        except json.JSONDecodeError as error:
            raise ValueError(f"split list {path} is not valid JSON ({error})") from None
    else:
        rows = read_csv_lines(read_text_file(path, "split list", encoding="utf-8-sig"), f"split list {path}")
        entries = [row[0].strip() for _, row in rows if row[0].strip() and row[0].strip() != "filename"]
    if not isinstance(entries, list) or not all(isinstance(e, (str, int)) for e in entries):
        raise ValueError(f"split list {path} must hold a list of strings")
    return [str(e) for e in entries]


# A split list's names, in order of preference.
_SPLIT_LIST_NAMES = ("filenames.json", "filenames.csv", "filenames.pickle", "filenames.pkl")


def _split_list_file(root: Path, split: str) -> Path | None:
    """The split list of <root>/<split>/: the first of _SPLIT_LIST_NAMES there, matched in any letter case;
    None when there is none. Passed over, a list named filenames.JSON, or a folder, a broken link or a pipe in a
    list's place, or a broken link or a file in its folder's, would have every image of the split's folders taken
    instead of the list's."""
    folder = root / split
    _refuse_broken_link(folder, "Every image of the split would be taken instead of its list's")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is not a folder: it is where the split list of {root / 'images' / split} is "
                         "looked for (filenames.*); rename it, or make it a folder holding the list")
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    for name in _SPLIT_LIST_NAMES:
        candidates = [entry for entry in entries if entry.name.lower() == name]
        if len(candidates) > 1:
            raise ValueError(f"split lists {' and '.join(map(str, candidates))} differ in letter case only: "
                             "keep the one to use")
        if candidates:
            if not candidates[0].is_file():
                raise ValueError(f"split list {candidates[0]} {file_problem(candidates[0])}")
            return candidates[0]
    return None


# A folder's image files by stem and its other entries (_list_folder).
_Listing = tuple[dict[str, list[Path]], list[Path]]


def _list_folder(folder: Path) -> _Listing:
    """The image files of `folder` by stem, each stem's in IMAGE_SUFFIXES order of preference (then
    by name), and its other entries (files of other suffixes, subfolders); both empty when there is
    no such folder. A link to nowhere named like an image counts as one: check_image then names it."""
    images: dict[str, list[Path]] = {}
    others = []
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            if entry.suffix.lower() in IMAGE_SUFFIXES and not entry.is_dir():
                images.setdefault(entry.stem, []).append(entry)
            else:
                others.append(entry)
    for files in images.values():
        files.sort(key=lambda p: IMAGE_SUFFIXES.index(p.suffix.lower()))  # stable: by name within a suffix
    return images, others


def _refuse_broken_link(entry: Path, passed_over: str = "Its images would be left out") -> None:
    """An entry of the tree's images/ or split folders, or a split list's folder, that is a broken link: a folder
    linked from a disk that is not mounted, say. Passed over, a split's or identity's folder would have its images
    left out of the manifest with only a line in the summary, and a split list's folder its list; `passed_over`
    says which, in the error."""
    if is_broken_link(entry):
        raise ValueError(f"{entry} {file_problem(entry)}: a folder of the tree on a disk that is not mounted? "
                         f"{passed_over}")


def _scan_split(split_folder: Path, listings: dict[Path, _Listing]) -> tuple[list[tuple[str, str]], list[str]]:
    """The entries (identity, stem) of a split's image folders, in _entry_order, and what in them holds
    no image, each with why; fills `listings` (folder -> _list_folder) for the folders it lists.

    Pairs, not "<id>/<stem>" strings: parsed again as a split list's entries, a folder "AC\\DC" was split at
    its backslash into identity "AC", and its image then missing."""
    entries, unused = [], []
    for folder in sorted(split_folder.iterdir()):
        _refuse_broken_link(folder)
        if not folder.is_dir():
            unused.append(f"{folder}: not inside an identity folder")
            continue
        images, others = listings[folder] = _list_folder(folder)
        for stem, files in images.items():
            if stem in (".", ".."):  # "..jpg": in a path, the stem is the folder itself or its parent
                unused.extend(f"{file}: its stem {stem!r} names a folder in a path, not an image: rename the file"
                              for file in files)
            else:
                entries.append((folder.name, stem))
        unused.extend(f"{other}: a folder inside an identity folder" if other.is_dir() else
                      f"{other}: not one of the image suffixes {_SUFFIX_CHOICE}" for other in others)
    return sorted(entries, key=lambda entry: _entry_order("/".join(entry))), unused


def _list_entries(list_file: Path, entries: list[str]) -> list[tuple[str, str, bool, str]]:
    """The entries of split list `list_file`, each as (identity, name, whether the name ends in an image suffix,
    the name without it); a malformed entry, or one listed twice, is refused naming the list."""
    parsed, seen = [], set()
    for entry in entries:
        parts = entry.replace("\\", "/").split("/")
        # The path drops "." and empty parts and would find the image, while the identity stayed "." or
        # "" ("./4/4_0"), or another subject's ("4/../6/6_0").
        if len(parts) < 2 or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"{list_file}: entry {entry!r} is not of the form '<id>/<image name>' (with no "
                             "empty, '.' or '..' part)")
        identity, name = parts[0], "/".join(parts[1:])
        # "4/4_1.jpg" names that file; "4/4_1" (TGFR's lists) the first of IMAGE_SUFFIXES found.
        named_suffix = PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES
        stem = PurePosixPath(name).with_suffix("").as_posix() if named_suffix else name
        if (identity, stem) in seen:
            raise ValueError(f"{list_file}: entry {entry!r} is listed twice")
        seen.add((identity, stem))
        parsed.append((identity, name, named_suffix, stem))
    return parsed


def _entry_image(spelled: Path, named_suffix: bool, listing: _Listing) -> tuple[Path, list[Path]]:
    """The image file of an entry, `spelled` as the entry names it, and the files of its stem passed
    over for it (for an entry naming a stem); raises naming what was looked for when there is none.

    `listing` is _list_folder(spelled.parent). An entry naming a file ("4_1.jpg") takes the file of
    that name, else of that name in another letter case (4_1.JPG); an entry naming a stem ("4_1")
    the first of its stem's files."""
    images, others = listing
    stem = spelled.stem if named_suffix else spelled.name
    candidates = images.get(stem, [])
    if named_suffix:
        # The exact name first: a case-sensitive file system can hold both 4_1.jpg and 4_1.JPG.
        image = next((p for p in candidates if p.name == spelled.name),
                     next((p for p in candidates if p.name.lower() == spelled.name.lower()), None))
        if image is not None:
            return image, []
    elif candidates:
        return candidates[0], candidates[1:]
    other_types = [p.name for p in others if stem in (p.stem, p.name)]
    raise ValueError((f"image file {spelled} does not exist" if named_suffix else
                      f"image file {spelled}.{_SUFFIX_CHOICE} does not exist, in any letter case")
                     + (f" ({', '.join(other_types)}: not an image suffix)" if other_types else ""))


def _entry_order(entry: str) -> list[tuple[int, int, str]]:
    """Sort key of "<id>/<id>_<k>": numbers by value ("4_2" before "4_10"), all before names.

    Tagged tuples, because a key mixing int and str tokens cannot compare "5" with "abc".
    """
    return [(0, int(t), t) if t.isdecimal() else (1, 0, t) for t in entry.replace("/", "_").split("_")]


# Found otherwise only by `tgfr evaluate`, once the run it evaluates has trained (evaluation.run's
# _check_evaluated_splits).
_EVALUATE_REFUSES = ("which tgfr evaluate refuses to evaluate (verification needs 2 or more identities, one of them with "
                     "2 or more images)")


def _unevaluable_splits(pairs: list[tuple[str, str]]) -> str:
    """What makes splits other than train unevaluable, of (split, identity) pairs, one per image: "a single identity
    in split(s) ..." and "a single image per identity in split(s) ..." (no genuine pair, no probe), joined by
    "and"; "" when no split is so. The training split is not evaluated (training checks its own needs)."""
    images: dict[str, Counter] = {}
    for split, identity in pairs:
        if split != "train":
            images.setdefault(split, Counter())[identity] += 1
    alone = sorted(split for split, counts in images.items() if len(counts) == 1)
    single = sorted(split for split, counts in images.items() if len(counts) > 1 and max(counts.values()) == 1)
    return " and ".join([*([f"a single identity in split(s) {', '.join(alone)}"] if alone else []),
                         *([f"a single image per identity in split(s) {', '.join(single)}"] if single else [])])


def convert_tgfr_tree(root: str | Path, trust_pickle: bool = False, bad_files: str = "error"
                      ) -> tuple[list[ManifestRecord], list[str], list[str]]:
    """Records (paths relative to `root`) of an MMCelebA/Face2Text tree, the skipped files, and the
    files of the image folders that no record uses.

    A split's entries come from <root>/<split>/filenames.* when present, else from its image
    folders. An entry names an image stem: of files sharing one, the first suffix of
    IMAGE_SUFFIXES is used and the others are reported as not used; or a file, when it ends in one
    of them ("4/4_1.png"), in any letter case. An entry listed twice ("4/4_1" and "4/4_1.jpg" count
    as one) is an error, and so is an identity with images in two splits (a test identity that is
    also trained on). An image listed without a file, with a corrupt file (files.check_image) or
    without a readable caption file, raises (bad_files="error") or is skipped and reported
    (bad_files="skip"). A split list in a folder <root>/<split>/ without a folder images/<split>/ is an
    error (its images not extracted, say), and so is a broken link or a file at <root>/<split>. Not
    used, each with why: a file beside the split folders; in a split without a split list, every other
    entry of images/<split>/ and its identity folders (a .gif, a note, a subfolder, an image whose stem is
    "." or "..", such as "..jpg"); in every split, an image that an entry naming its stem passes over for
    another suffix of that stem. Every split's list is read and its entries checked, and a split or identity
    folder whose name begins or ends with white space refused, before any image is decoded. A split that
    holds a single identity, or a single image per identity, which tgfr evaluate refuses, is warned of
    (UserWarning).
    """
    if bad_files not in ("error", "skip"):
        raise ValueError(f"bad_files must be 'error' or 'skip', got {bad_files!r}")
    root = Path(root)
    images_root = root / "images"
    if not images_root.is_dir():
        raise ValueError(f"{root} is not a TGFR tree: expected a folder {images_root}")
    for entry in images_root.iterdir():
        _refuse_broken_link(entry)
    splits = sorted(p.name for p in images_root.iterdir() if p.is_dir())
    # Refused by the manifest only once the split's first image was decoded, naming no folder.
    for split in splits:
        if split != split.strip():
            raise ValueError(f"split folder {ascii(split)} of {images_root} begins or ends with white space, which "
                             f"a manifest's split may not ({split.strip()!r} would be another split): rename it, "
                             f"and the folder {split!r} of {root} alike if it holds the split's list")
    # A list whose split's images were not extracted would leave that split out without a word, to be found
    # missing only when training or evaluation selects it.
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and not (images_root / folder.name).is_dir() and (
                list_file := _split_list_file(root, folder.name)) is not None:
            raise ValueError(f"split list {list_file} lists images of split {folder.name!r}, but there is no folder "
                             f"{images_root / folder.name}: put the split's images there, or remove the list to "
                             "leave the split out")
    records, skipped = [], []
    unused = [f"{p}: not inside a split folder" for p in sorted(images_root.iterdir()) if not p.is_dir()]
    first_of_identity: dict[str, ManifestRecord] = {}
    # Every split's entries are read and checked before any image is decoded: a pickle or a malformed list under
    # valid/ was found only once every image of test/ and train/ was.
    planned = []
    for split in splits:
        listings: dict[Path, _Listing] = {}
        list_file = _split_list_file(root, split)
        not_images: list[str] = []
        if list_file is not None:
            entries = _list_entries(list_file, read_split_list(list_file, trust_pickle))
            # An empty list (cut short, or written by a failed export) would leave the split out without a word,
            # to be found missing only at evaluation.
            if not entries and (images := _scan_split(images_root / split, {})[0]):
                raise ValueError(f"split list {list_file} lists no image, while {images_root / split} holds "
                                 f"{len(images)} image(s): remove the list to take them all, or that folder to "
                                 "leave the split out")
        else:
            scanned, not_images = _scan_split(images_root / split, listings)
            # A stem that ends in an image suffix ("4_1.jpg" of 4_1.jpg.png) names no file: the stem is the entry.
            entries = [(identity, stem, False, stem) for identity, stem in scanned]
        # Found before any image is decoded, not by write_manifest once all are.
        for identity in sorted({identity for identity, _, _, _ in entries}):
            if identity != identity.strip():
                raise ValueError(f"identity folder {ascii(identity)} of {images_root / split} begins or ends with "
                                 f"white space, which a manifest's identity may not ({identity.strip()!r} would be "
                                 "another person): rename the folder, and its text/ folder alike")
        for identity, name, _, _ in entries:
            folder = (images_root / split / identity / name).parent
            if folder not in listings:
                _refuse_broken_link(folder)
                listings[folder] = _list_folder(folder)
        planned.append((split, entries, listings, not_images))
    for split, entries, listings, not_images in planned:
        unused.extend(not_images)
        for identity, name, named_suffix, stem in entries:
            spelled = images_root / split / identity / name
            try:
                image, passed_over = _entry_image(spelled, named_suffix, listings[spelled.parent])
                unused.extend(f"{other}: another image of the entry {identity}/{stem}, which uses {image.name}"
                              for other in passed_over)
                check_image(image)
                captions = read_caption_file(root / "text" / identity / f"{stem}.txt")
            except ValueError as error:
                if bad_files == "error":
                    raise ValueError(f"{error} (pass bad_files='skip' / --skip-bad to skip such images)") from None
                skipped.append(str(error))
                continue
            record = ManifestRecord(image.relative_to(root).as_posix(), identity, split, tuple(captions))
            # The splits of TGFR's open-set protocol share no identity: one also trained on would be
            # recognised in test by what training learnt of it.
            first = first_of_identity.setdefault(identity, record)
            if first.split != split:
                raise ValueError(f"{images_root} puts identity {identity!r} in two splits: image {first.path} in "
                                 f"{first.split!r} and image {record.path} in {split!r}")
            records.append(record)
    if not records:
        why = f" ({len(skipped)} skipped, the first because: {skipped[0]})" if skipped else ""
        raise ValueError(f"no images found under {images_root}{why}")
    if unevaluable := _unevaluable_splits([(record.split, record.identity) for record in records]):
        warnings.warn(f"{images_root} puts {unevaluable}, {_EVALUATE_REFUSES}: give each more identities or "
                      "images, or evaluate another split", stacklevel=2)
    return records, skipped, unused


def _set_once(table: dict[str, tuple[str, int]], key: str, value: str, path: Path, line_number: int) -> None:
    """table[key] = (value, line_number), unless an earlier line gave `key` another value: an error
    naming both lines. Silently keeping the last would give an image whichever identity (or source
    file) came last. The same value given twice is accepted: both lines say one thing, as in a file
    concatenated from overlapping parts."""
    earlier_value, earlier_line = table.setdefault(key, (value, line_number))
    if earlier_value != value:
        raise ValueError(f"{path}:{line_number}: {key} is given {value!r}, but line {earlier_line} "
                         f"gave it {earlier_value!r}")


def _read_identity_file(path: Path) -> dict[str, str]:
    """CelebA image file name -> identity, from '<image> <identity>' rows."""
    identities: dict[str, tuple[str, int]] = {}
    text = read_text_file(path, "identity file", encoding="utf-8-sig")
    for line_number, line in enumerate(text_lines(text), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"{path}:{line_number}: expected '<image> <identity>', got {line!r}")
        _set_once(identities, fields[0], fields[1], path, line_number)
    return {name: identity for name, (identity, _) in identities.items()}


def _read_hq_mapping(path: Path) -> dict[str, str]:
    """CelebA-HQ index -> CelebA file name, from 'idx orig_idx orig_file' rows (header skipped)."""
    mapping: dict[str, tuple[str, int]] = {}
    text = read_text_file(path, "CelebA-HQ mapping file", encoding="utf-8-sig")
    for line_number, line in enumerate(text_lines(text), start=1):
        fields = line.split()
        if not fields or not fields[0].isdigit():
            continue
        if len(fields) < 3:
            raise ValueError(f"{path}:{line_number}: expected 'idx orig_idx orig_file', got {line!r}")
        _set_once(mapping, fields[0], fields[2], path, line_number)
    return {index: name for index, (name, _) in mapping.items()}


def _dialog_captions(value: object, where: str) -> list[str]:
    """The non-blank captions, stripped, of a caption file's entry `value` (a string, a list of them, or
    {"overall_caption": str, "attribute_wise_captions": {attribute: str}}), none when all are blank (an image
    without a caption, to skip as a bad file or refuse); `where` names the entry in errors. A caption that is
    not a string, or an entry of another type, is an error: the file is not in the format read."""
    if isinstance(value, str):
        named = [("the caption", value)]
    elif isinstance(value, list):
        named = [(f"caption {index}", caption) for index, caption in enumerate(value)]
    elif isinstance(value, dict):
        attribute_wise = value.get("attribute_wise_captions") or {}
        if not isinstance(attribute_wise, dict):
            raise ValueError(f"{where}: 'attribute_wise_captions' must be an object {{attribute: caption}}, "
                             f"got {type(attribute_wise).__name__}")
        named = [("'overall_caption'", value.get("overall_caption", "")),
                 *((f"the attribute-wise caption {attribute!r}", caption)
                   for attribute, caption in attribute_wise.items())]
    else:
        raise ValueError(f"{where}: expected a caption string, list or object, got {type(value).__name__}")
    # Dropped, a number or null left the image with fewer captions (or only attribute-wise ones) without a word.
    for name, caption in named:
        if not isinstance(caption, str):
            raise ValueError(f"{where}: {name} must be a string, got {caption!r}")
    captions = [caption.strip() for _, caption in named if caption.strip()]
    for caption in captions:
        check_caption_utf8(f"{where}: a caption", caption)
    return captions


def _path_inside(path: Path, root: Path) -> str | None:
    """`path` relative to `root` (posix) when it lies inside it, else None.

    Compared as spelled first, so that a symlink inside `root` (images -> /data/celeba) stays a
    path under `root`, as the user laid it out; then with symlinks resolved.
    """
    for inner, outer in ((Path(os.path.abspath(path)), Path(os.path.abspath(root))), (path.resolve(), root.resolve())):
        if inner.is_relative_to(outer):
            return inner.relative_to(outer).as_posix()
    return None


def convert_celeba_dialog(captions_json: str | Path, identity_file: str | Path, images_dir: str | Path,
                          root: str | Path, hq_mapping: str | Path | None = None,
                          split_file: str | Path | None = None, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                          seed: int = 0, bad_files: str = "error") -> tuple[list[ManifestRecord], list[str]]:
    """Records (paths relative to `root`) of CelebA-Dialog, and the skipped images.

    split_file: JSON {"train": [image names], "val": [...], "test": [...]} or CSV rows
    "image,split", each image named by its caption file key ("a/0.jpg" for images_dir/a/0.jpg); read,
    as every file, before any image is decoded. An image it does not list, one listed under two splits, or
    an identity's images under two, is an error, found before any image is decoded; so an image whose file
    then proves missing or corrupt counts in it, skipped or not (the split file is wrong either way).
    Without it each identity is split train/val/test by `fractions` (seeded_identity_split). A split
    left empty by the seeded split, or holding a single identity or a single image per identity, which tgfr
    evaluate refuses, is warned of (UserWarning).
    An entry whose captions are all blank, or whose image has no mapping row or identity, raises
    (bad_files="error") or is skipped and reported (bad_files="skip") before any image is decoded; then a
    missing image file or a corrupt one (files.check_image) likewise. An image key repeated in the caption
    file is an error. The skip reasons come in the records' order of images, whichever check found them.
    An empty string for a file or folder is an error naming the argument, not taken as ".".
    """
    if bad_files not in ("error", "skip"):
        raise ValueError(f"bad_files must be 'error' or 'skip', got {bad_files!r}")
    if split_file is None and (len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0):
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) summing to 1, "
                         f"got {fractions}")
    # An empty --hq-mapping was also dropped, as no mapping.
    for argument, option, value, name_it in (
            ("captions_json", "--captions", captions_json, "name the caption file"),
            ("identity_file", "--identity-file", identity_file, "name the identity file"),
            ("images_dir", "--images", images_dir, "name the images folder"),
            ("hq_mapping", "--hq-mapping", hq_mapping, "name the CelebA-HQ mapping file, or leave it out"),
            ("split_file", "--split-file", split_file, "name the split file, or leave it out")):
        refuse_empty_path(f"{argument} / {option}", value, name_it)
    captions_json, images_dir, root = Path(captions_json), Path(images_dir), Path(root)
    text = read_text_file(captions_json, "caption file", encoding="utf-8-sig")
    try:
        # A repeated image key would keep its last entry's captions and drop the others without a word.
        table = parse_json(text, unique_keys=True)
    except json.JSONDecodeError as error:
        raise ValueError(f"caption file {captions_json} is not readable UTF-8 JSON ({error})") from None
    if not isinstance(table, dict) or not table:
        raise ValueError(f"caption file {captions_json} must be a non-empty JSON object keyed by image name")
    images_folder = _path_inside(images_dir, root)
    if images_folder is None:
        raise ValueError(f"images_dir {images_dir} must lie inside the manifest folder {root}")
    celeba_identity = _read_identity_file(Path(identity_file))
    mapping = _read_hq_mapping(Path(hq_mapping)) if hq_mapping is not None else None
    # Read before any image is decoded (30,000 HQ images: minutes), as the other files are.
    split_table = _read_dialog_split_file(Path(split_file)) if split_file is not None else None
    names = sorted(table, key=lambda n: (len(n), n))
    problems: dict[str, str] = {}  # image name -> why it is skipped

    def bad_file(name: str, problem: str) -> None:
        if bad_files == "error":
            raise ValueError(f"{problem} (pass bad_files='skip' / --skip-bad to skip such images)")
        problems[name] = problem

    # First every check the files can answer, so that their faults come before minutes of decoding:
    # (caption file key, path, identity, captions) of each image that passes them.
    candidates = []
    for name in names:
        where = f"{captions_json}: entry {name!r}"
        # The image is images_dir / name, recorded as such: "/x.jpg" or "../x.jpg" would leave the manifest's folder.
        if PurePosixPath(name).is_absolute() or Path(name).is_absolute() or ".." in PurePosixPath(name).parts:
            raise ValueError(f"{where}: an image name must be a path inside images_dir {images_dir}")
        captions = _dialog_captions(table[name], where)
        celeba_name = mapping.get(Path(name).stem) if mapping is not None else name
        if not captions:
            bad_file(name, f"{where}: no non-empty caption")
        elif celeba_name is None:
            bad_file(name, f"image {name} has no row in the CelebA-HQ mapping file {hq_mapping}")
        elif celeba_name not in celeba_identity:
            bad_file(name, f"image {name} (CelebA {celeba_name}) has no identity in {identity_file}")
        elif split_table is not None and name not in split_table:  # a fault of the split file, not a bad file
            raise ValueError(f"split file {split_file} does not list image {name}")
        else:
            path = (PurePosixPath(images_folder) / name).as_posix()
            candidates.append((name, path, celeba_identity[celeba_name], tuple(captions)))
    if split_table is not None:
        # An identity in two splits, checked here before decoding, so that an image whose file is then missing
        # or corrupt still counts: the split file is as wrong with it skipped.
        _dialog_splits([(name, identity) for name, _, identity, _ in candidates], split_file, split_table,
                       fractions, seed)
    images = []
    for candidate in candidates:
        try:
            check_image(images_dir / candidate[0])
        except ValueError as error:
            bad_file(candidate[0], str(error))
            continue
        images.append(candidate)
    skipped = [problems[name] for name in names if name in problems]  # in the images' order, as the records
    if not images:
        raise ValueError(f"no images found: every one of the {len(skipped)} image(s) of {captions_json} was "
                         f"skipped, the first because: {skipped[0]}")
    # By the caption file's key, as the split file names the image ("a/0.jpg"): its base name would give every
    # b/0.jpg the split of a/0.jpg.
    splits = _dialog_splits([(name, identity) for name, _, identity, _ in images], split_file, split_table,
                            fractions, seed)
    # Here, not in _dialog_splits: a split file's splits are checked there twice, before and after decoding.
    if unevaluable := _unevaluable_splits([(split, identity) for (_, _, identity, _), split in zip(images, splits)]):
        drawn = (f"the seeded split (--seed {seed}) of {len({identity for _, _, identity, _ in images})} identities"
                 if split_table is None else f"split file {split_file}")
        remedy = ("convert more identities, try another --seed, or give --split-file" if split_table is None else
                  "move more identities into each")
        warnings.warn(f"{drawn} puts {unevaluable}, {_EVALUATE_REFUSES}: {remedy}", stacklevel=2)
    return [ManifestRecord(path, identity, split, captions)
            for (_, path, identity, captions), split in zip(images, splits)], skipped


def _read_dialog_split_file(split_file: Path) -> dict[str, str]:
    """Image name (the caption file's key) -> split, from JSON {split: [image names]} or CSV rows "image,split"."""
    if split_file.suffix.lower() in (".pickle", ".pkl"):  # else read as CSV: "not valid UTF-8 (byte 0)"
        raise ValueError(f"split file {split_file} must be .json or .csv: pickles are not read (they can run code)")
    text = read_text_file(split_file, "split file", encoding="utf-8-sig")
    if split_file.suffix.lower() == ".json":
        try:
            # A split given twice (two lists pasted together) kept its last list: the first one's images unlisted.
            by_split = parse_json(text, unique_keys=True)
        except json.JSONDecodeError as error:
            raise ValueError(f"split file {split_file} is not valid JSON ({error})") from None
        if not isinstance(by_split, dict) or not all(
                isinstance(names, list) and all(isinstance(n, str) for n in names) for names in by_split.values()):
            raise ValueError(f"split file {split_file} must hold a JSON object {{split: [image names]}}, "
                             f"got {type(by_split).__name__}: {str(by_split)[:80]}")
        listed = [(name, split) for split, names in by_split.items() for name in names]
    else:
        # "0.jpg, train" is how many write a CSV: the split is "train", not " train".
        listed = []
        for line_number, row in read_csv_lines(text, f"split file {split_file}"):
            # A row without its split was dropped (the image then seemed unlisted, "does not list image ..."),
            # and a third cell ("0.jpg,train,test") was dropped too; a trailing comma is only an empty cell.
            if (len(row) == 1 and row[0].strip()) or any(cell.strip() for cell in row[2:]):
                raise ValueError(f"split file {split_file}, line {line_number}: a row must be image,split, got "
                                 f"{','.join(row)!r}")
            if len(row) >= 2:
                listed.append((row[0].strip(), row[1].strip()))
    table: dict[str, str] = {}
    for name, split in listed:
        if not split.strip():
            raise ValueError(f"split file {split_file} gives image {name} an empty split name")
        # Refused by the manifest once every image was decoded, naming neither the file nor the image.
        if split != split.strip():
            raise ValueError(f"split file {split_file} gives image {name} the split {split!r}, which begins or ends "
                             f"with white space ({split.strip()!r} would be another split): remove it")
        # One image in two splits would leak it between train and test, whichever came last.
        if table.setdefault(name, split) != split:
            raise ValueError(f"split file {split_file} lists image {name} under two splits, "
                             f"{table[name]!r} and {split!r}")
    return table


def seeded_identity_split(identity: str, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """"train", "val" or "test" for an identity: sha256 of f"{seed}:{identity}" read as a number in
    [0, 1), cut at fractions (train, val, test). An identity's split depends on nothing else, so
    skipping or adding other identities moves none (a permutation of the identity list would)."""
    digest = hashlib.sha256(f"{seed}:{identity}".encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "train" if position < fractions[0] else "val" if position < fractions[0] + fractions[1] else "test"


def _dialog_splits(images: list[tuple[str, str]], split_file: str | Path | None, table: dict[str, str] | None,
                   fractions: Sequence[float], seed: int) -> list[str]:
    """The split of each image, given as (caption file key, identity), from `table` (_read_dialog_split_file of
    `split_file`, which lists every image) or, without one, by seeded_identity_split."""
    if table is None:
        splits = [seeded_identity_split(identity, seed, fractions) for _, identity in images]
        # Per-identity draws can leave a small set's val or test split empty (10 identities: often),
        # which would otherwise show only at evaluation.
        empty = [name for name, fraction in zip(("train", "val", "test"), fractions) if fraction > 0
                 and name not in splits]
        if empty:
            identities = len({identity for _, identity in images})
            warnings.warn(f"the seeded split (--seed {seed}) of {identities} identities leaves split(s) "
                          f"{', '.join(empty)} empty: convert more identities, try another --seed, or give "
                          "--split-file", stacklevel=2)
        return splits
    splits, first_of_identity = [], {}
    for name, identity in images:
        # An identity in two splits would be trained on and tested with, and a test leak.
        other = first_of_identity.setdefault(identity, (name, table[name]))
        if other[1] != table[name]:
            raise ValueError(f"split file {split_file} puts identity {identity} in two splits: image "
                             f"{other[0]} in {other[1]!r} and image {name} in {table[name]!r}")
        splits.append(table[name])
    return splits
