"""Verification pairs and identification gallery/probe split, generated from a manifest.

TGFR's protocol (data/*/scripts/test_list_identification.py in the released code): for every
test subject, a genuine pair (its first image against another of its images) and impostor
pairs (its first image against one image of each of N-1 other subjects). Here the N-1 impostor
subjects and their images are drawn with a seeded generator (the released script took the
first subjects of the list and unseeded images), so the pairs are reproducible. Images are
ordered within a subject by path as degrade names its copy (suffix .png, each ".." a "__"), so a degraded
copy of a split gets corresponding pairs for the same seed.
"""

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tgfr.data.degrade import degraded_path
from tgfr.data.files import read_text_file
from tgfr.data.manifest import ManifestRecord, identity_labels, select_split
from tgfr.text_formats import check_utf8, parse_json, read_csv_rows
from tgfr.output_paths import write_atomically
from tgfr.validation import check_count


@dataclass(frozen=True)
class VerificationPair:
    """Two image paths (relative to the manifest's folder); same = 1 for a genuine pair."""

    path_a: str
    path_b: str
    same: int


def path_order(path: str) -> tuple[str, str]:
    """Sort key of an image within its subject: its path as `tgfr data degrade` names its copy (suffix .png, each
    ".." a "__"), first, so that a degraded copy's images sort as the clean split's do (img/1/face.jpg before
    img/1/face.left.jpg as face.png before face.left.png; ../data/1/b.jpg after A.jpg as __/data/1/b.png after
    A.png)."""
    return degraded_path(".", path), path


def _images_by_subject(records: Sequence[ManifestRecord]) -> list[list[str]]:
    labels = identity_labels(records)
    by_subject: list[list[str]] = [[] for _ in labels]
    for record in records:
        by_subject[labels[record.identity]].append(record.path)
    return [sorted(paths, key=path_order) for paths in by_subject]


def make_verification_pairs(records: Sequence[ManifestRecord], split: str | None = "test",
                            impostor_subjects: int = 399, seed: int = 0) -> list[VerificationPair]:
    """Per subject: one genuine pair (if it has two images) and min(impostor_subjects, S-1) impostors.

    No pair is listed twice: when the other subject already drew this subject's first image
    against its own first one, another of its images is drawn, or, if it has no other, the pair
    (already listed) is not repeated.
    """
    if isinstance(impostor_subjects, bool) or not isinstance(impostor_subjects, int) or impostor_subjects < 0:
        raise ValueError(f"impostor_subjects must be a non-negative integer, got {impostor_subjects!r}")
    subjects = _images_by_subject(select_split(records, split))
    if len(subjects) < 2:
        raise ValueError(f"verification needs at least 2 subjects in split {split!r}, got {len(subjects)}")
    rng = np.random.default_rng(check_count("seed", seed, minimum=0))
    count = min(impostor_subjects, len(subjects) - 1)
    pairs, first_pairs = [], set()  # first_pairs: impostor pairs of two first images, as drawn
    for subject, images in enumerate(subjects):
        if len(images) > 1:
            pairs.append(VerificationPair(images[0], images[1 + int(rng.integers(len(images) - 1))], 1))
        others = rng.choice(len(subjects) - 1, size=count, replace=False)
        for other in others:
            other_images = subjects[other + (other >= subject)]
            # A repeated pair would count one comparison twice (both subjects draw each other).
            candidates = other_images[1:] if (other_images[0], images[0]) in first_pairs else other_images
            if not candidates:
                continue
            image = candidates[int(rng.integers(len(candidates)))]
            if image == other_images[0]:
                first_pairs.add((images[0], image))
            pairs.append(VerificationPair(images[0], image, 0))
    return pairs


def make_identification_split(records: Sequence[ManifestRecord], split: str | None = "test",
                              gallery_per_subject: int = 1) -> dict[str, list[dict[str, str]]]:
    """Gallery: the first `gallery_per_subject` images (by path as degrade names its copy) of every subject; probes:
    the rest."""
    if isinstance(gallery_per_subject, bool) or not isinstance(gallery_per_subject, int) or gallery_per_subject < 1:
        raise ValueError(f"gallery_per_subject must be a positive integer, got {gallery_per_subject!r}")
    selected = select_split(records, split)
    identity_of = {record.path: record.identity for record in selected}
    gallery, probes = [], []
    for images in _images_by_subject(selected):
        gallery += [{"path": p, "identity": identity_of[p]} for p in images[:gallery_per_subject]]
        probes += [{"path": p, "identity": identity_of[p]} for p in images[gallery_per_subject:]]
    if not probes:
        raise ValueError(f"no probe images: every subject of split {split!r} has at most {gallery_per_subject} image(s)")
    return {"gallery": gallery, "probes": probes}


def check_pairs_writable(path: str | Path, pairs: Sequence[VerificationPair]) -> None:
    """ValueError naming the pair and the image when `path` is a CSV pairs file and an image path of `pairs`
    is not encodable as UTF-8 (a file name in another encoding); JSON escapes it. The write's own
    UnicodeEncodeError named neither file nor image."""
    if Path(path).suffix.lower() == ".json":
        return
    for index, pair in enumerate(pairs):
        for field in ("path_a", "path_b"):
            check_utf8(f"cannot write pairs file {path}: {field} of pair {index}", getattr(pair, field),
                       need="as a CSV pairs file is", remedy="rename it to UTF-8, or write the pairs as JSON (a "
                       ".json file; tgfr data protocol --format json), which escapes it")


def write_verification_pairs(path: str | Path, pairs: Sequence[VerificationPair]) -> Path:
    """Writes pairs as CSV (path_a,path_b,same) or, for a .json path, a JSON list of objects; atomically:
    on any error an existing file at `path` is left as it was. check_pairs_writable runs first."""
    path = Path(path)
    check_pairs_writable(path, pairs)
    with write_atomically(path, "pairs file") as handle:
        if path.suffix.lower() == ".json":
            rows = [{"path_a": p.path_a, "path_b": p.path_b, "same": p.same} for p in pairs]
            handle.write(json.dumps({"pairs": rows}, indent=0) + "\n")
        else:
            writer = csv.writer(handle)
            writer.writerow(["path_a", "path_b", "same"])
            writer.writerows([p.path_a, p.path_b, p.same] for p in pairs)
    return path


def _check_text_fields(entry: dict, fields: Sequence[str], where: str) -> None:
    """Refuses an entry whose `fields` are not non-empty strings: a null, a number or a list would
    otherwise become a path such as "None" or "[1]", found missing only when evaluation opens it."""
    for name in fields:
        if not isinstance(entry[name], str) or not entry[name]:
            raise ValueError(f"{where}: {name!r} must be a non-empty string, got {entry[name]!r}")


def _pair_from_row(row: object, where: str) -> VerificationPair:
    if not isinstance(row, dict) or not {"path_a", "path_b", "same"} <= set(row):
        raise ValueError(f"{where}: expected fields path_a, path_b, same, got {row!r}")
    _check_text_fields(row, ("path_a", "path_b"), where)
    if str(row["same"]) not in ("0", "1"):
        raise ValueError(f"{where}: 'same' must be 0 or 1, got {row['same']!r}")
    if row["path_a"] == row["path_b"]:  # an image matched with itself scores 1 whatever the model
        raise ValueError(f"{where}: pairs image {row['path_a']!r} with itself")
    return VerificationPair(str(row["path_a"]), str(row["path_b"]), int(row["same"]))


def _check_pair_labels_agree(pairs: Sequence[VerificationPair], places: Sequence[tuple[str, str]]) -> None:
    """Refuses two images paired twice, in either order, with different labels: one comparison counted as
    genuine and as impostor. A repeat with the same label is read as listed (tgfr before ceb8b00 wrote
    such repeats, and its pairs files must still read). `places`: each pair's (file and row, row), as errors
    name them."""
    first_index: dict[frozenset[str], int] = {}
    for index, pair in enumerate(pairs):
        images = frozenset((pair.path_a, pair.path_b))
        first = first_index.setdefault(images, index)
        if pairs[first].same != pair.same:
            raise ValueError(f"{places[index][0]}: {pair.path_a!r} and {pair.path_b!r} are already paired on "
                             f"{places[first][1]} with another label (same {pairs[first].same} there, {pair.same} "
                             "here)")


def read_verification_pairs(path: str | Path) -> list[VerificationPair]:
    """Reads pairs written by `write_verification_pairs` (CSV or JSON); errors name file and row. A CSV column
    other than path_a, path_b and same (a note) is read past; a repeated one, or a cell past the header's last
    column, is refused."""
    path = Path(path)
    # utf-8-sig: a CSV saved by a spreadsheet program starts with a byte-order mark, which would become part
    # of the first column's name ("\ufeffpath_a"), as for manifests.
    text = read_text_file(path, "pairs file", encoding="utf-8-sig")
    pairs, places = [], []
    if path.suffix.lower() == ".json":
        try:
            entries = parse_json(text, unique_keys=True)["pairs"]
        except json.JSONDecodeError as error:
            raise ValueError(f"pairs file {path} is not valid JSON ({error.msg})") from None
        except (KeyError, TypeError) as error:
            raise ValueError(f"pairs file {path} is not a JSON object with a 'pairs' list ({error})") from None
        if not isinstance(entries, list):
            raise ValueError(f"pairs file {path}: 'pairs' must be a list, got {entries!r}")
        places = [(f"{path}: pair {index}", f"pair {index}") for index in range(len(entries))]
        pairs = [_pair_from_row(entry, where) for entry, (where, _) in zip(entries, places)]
    else:
        # A note column besides path_a, path_b and same is read past; an empty file, or one of another format
        # (TGFR's "a.jpg b.jpg 1" lines), would read as no pairs.
        _, rows = read_csv_rows(text, f"pairs file {path}", ("path_a", "path_b", "same"))
        for line_number, entry in rows:
            places.append((f"{path}:{line_number}", f"line {line_number}"))
            pairs.append(_pair_from_row(entry, places[-1][0]))
    _check_pair_labels_agree(pairs, places)
    return pairs


def write_identification_split(path: str | Path, split: dict[str, list[dict[str, str]]]) -> Path:
    """Writes the gallery/probe split as JSON; atomically: on any error an existing file at `path` is left
    as it was."""
    path = Path(path)
    with write_atomically(path, "identification file") as handle:
        handle.write(json.dumps(split, indent=0) + "\n")
    return path


def read_identification_split(path: str | Path) -> dict[str, list[dict[str, str]]]:
    """Reads a gallery/probe JSON written by `write_identification_split`; errors name the file and
    the entry."""
    path = Path(path)
    text = read_text_file(path, "identification file", encoding="utf-8-sig")  # as read_verification_pairs
    try:
        split = parse_json(text, unique_keys=True)
    except json.JSONDecodeError as error:
        raise ValueError(f"identification file {path} is not valid JSON ({error.msg})") from None
    for part in ("gallery", "probes"):
        entries = split.get(part) if isinstance(split, dict) else None
        if not isinstance(entries, list) or not all(isinstance(e, dict) and {"path", "identity"} <= set(e) for e in entries):
            raise ValueError(f"identification file {path}: '{part}' must be a list of {{path, identity}} objects")
        if not entries:  # as make_identification_split refuses to write: no probe has a rank
            raise ValueError(f"identification file {path}: '{part}' is empty; identification needs at least one "
                             "gallery image and one probe")
        for index, entry in enumerate(entries):
            _check_text_fields(entry, ("path", "identity"), f"identification file {path}: {part} entry {index}")
    # A probe that is also a gallery image would match itself at rank 1.
    seen: set[str] = set()
    for part in ("gallery", "probes"):
        for entry in split[part]:
            if entry["path"] in seen:
                raise ValueError(f"identification file {path}: image {entry['path']!r} is listed twice (in the "
                                 "gallery and the probes, or twice in one)")
            seen.add(entry["path"])
    return split
