"""The manifest: the one input format of training and evaluation.

A manifest is a JSON Lines file (or a CSV file) with one record per image:

    {"path": "images/test/17/17_3.png", "identity": "17", "split": "test",
     "captions": ["The man has ...", "This person ..."], "meta": {...}}

`path` is relative to the manifest's folder, `identity` is a string (integers are read as
strings), `captions` is a list of strings (may be empty for image-only data, though `tgfr train` and
`tgfr evaluate` refuse an image without one: the text-guided model reads a caption of every image) and `meta` is an
optional JSON object passed through untouched (absent, it is {}; null, a list, a number, ... are refused). CSV
manifests have the columns path,identity,split,captions[,meta] where captions is a JSON list and meta a JSON object
(an empty cell: no meta). A field or column outside these is refused, and so is an identity or split that
begins or ends with white space (a CSV cell " 7" is not the identity "7").

Every image appears in one record only: a path listed twice (in one split or two) would let an
image match itself in evaluation, count its pairs twice or leak it from test into train.
"""

import csv
import hashlib
import json
import os
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tgfr.data.files import read_text_file, text_lines
from tgfr.input_paths import refuse_empty_path
from tgfr.text_formats import check_caption_utf8, parse_json, read_csv_rows
from tgfr.output_paths import write_atomically

MANIFEST_FIELDS = ("path", "identity", "split", "captions")
# A field outside these (a "metadata" key, a CSV row's cell past the header's last column) would be dropped
# without a word, though meta is read: `tgfr evaluate` reports a split's degradations from meta["recipe"].
_RECORD_FIELDS = (*MANIFEST_FIELDS, "meta")


@dataclass(frozen=True)
class ManifestRecord:
    """One image of a manifest; `path` is relative to the manifest's folder."""

    path: str
    identity: str
    split: str
    captions: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        """Holds a record built in Python (FaceCaptionDataset's records, degrade_records' input) to the
        manifest reader's rules, which read_manifest prefixes with the file and line: a str of captions was
        sampled one letter a caption, an int identity failed in identity_labels naming nothing. A list of
        captions becomes a tuple."""
        path, identity, split, captions, meta = self.path, self.identity, self.split, self.captions, self.meta
        if not isinstance(path, str) or not path:
            raise ValueError(f"'path' must be a non-empty string, got {path!r}")
        if "\0" in path:  # no file name holds one: opening it failed with "embedded null byte", naming no file
            raise ValueError(f"'path' holds a NUL character, which no file name can: {path!r}")
        if Path(path).is_absolute():
            raise ValueError(f"'path' must be relative to the manifest's folder, got {path!r}")
        if not isinstance(identity, str) or not identity:
            raise ValueError(f"'identity' must be a non-empty string, got {identity!r}")
        if not isinstance(split, str) or not split:
            raise ValueError(f"'split' must be a non-empty string, got {split!r}")
        # A CSV cell "b.png, 7, train" holds " 7" and " train": another identity than "7" (a negative of
        # person 7's own images in the contrastive losses) and a split that select_split("train") leaves out.
        for name, value in (("identity", identity), ("split", split)):
            if not value.strip():
                raise ValueError(f"{name!r} must not be blank, got {value!r}")
            if value != value.strip():
                raise ValueError(f"{name!r} {value!r} begins or ends with white space, which is part of the "
                                 f"{name}, not ignored ({value!r} is not {value.strip()!r}); remove it")
        if not isinstance(captions, (tuple, list)) or not all(isinstance(c, str) and c.strip() for c in captions):
            raise ValueError(f"'captions' must be a list of non-empty strings, got {captions!r}")
        for caption in captions:
            check_caption_utf8(f"a caption of image {path!r}", caption)
        if not isinstance(meta, dict):
            raise ValueError(f"'meta' must be a JSON object, got {meta!r}")
        object.__setattr__(self, "captions", tuple(captions))  # frozen

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "path": self.path,
            "identity": self.identity,
            "split": self.split,
            "captions": list(self.captions),
        }
        if self.meta:
            row["meta"] = self.meta
        return row


def _record_from_row(row: Any, where: str) -> ManifestRecord:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [name for name in MANIFEST_FIELDS if name not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)} (expected {', '.join(MANIFEST_FIELDS)})")
    if unknown := [name for name in row if name not in _RECORD_FIELDS]:
        raise ValueError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} (a record has the fields "
                         f"{', '.join(_RECORD_FIELDS)}; other data goes into meta)")
    path, identity, split, captions = (row[name] for name in MANIFEST_FIELDS)
    # The reader's own rules (an integer identity, a JSON list of captions); ManifestRecord checks the rest.
    if isinstance(identity, bool) or not isinstance(identity, (str, int)) or identity == "":
        raise ValueError(f"{where}: 'identity' must be a non-empty string or an integer, got {identity!r}")
    if not isinstance(captions, list):
        raise ValueError(f"{where}: 'captions' must be a list of non-empty strings, got {captions!r}")
    # Not `or {}`: a [], 0, false or "" (a column of other data, shifted) read as no meta without a word.
    try:
        return ManifestRecord(path, str(identity), split, captions, row.get("meta", {}))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _parse_json_cell(text: str, column: str, where: str) -> Any:
    try:
        return parse_json(text, unique_keys=True)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: column '{column}' is not valid JSON ({error.msg})") from None


def _repeated_path(records: Sequence[ManifestRecord], folder: Path) -> tuple[int, int] | None:
    """Indices (first, repeat) of the first path that reaches an image already listed, else None;
    paths are relative to `folder`, the manifest's.

    An existing file is known by its device and inode, as os.path.samefile compares files (one
    stat per record), so that a link to it (images/train/2/2_7.jpg -> ../../test/7/7_0.jpg), a hard
    link or another letter case on a case-insensitive file system is the same image; a path to no
    file by its spelling, where "a/./b.png" and "a//b.png" name the file "a/b.png" names.
    """
    first_index: dict[tuple, int] = {}
    for index, record in enumerate(records):
        try:
            status = os.stat(folder / record.path)
            key: tuple = (status.st_dev, status.st_ino)
        except (OSError, ValueError):  # ValueError: a NUL in the path
            key = (posixpath.normpath(record.path),)
        if key in first_index:
            return first_index[key], index
        first_index[key] = index
    return None


def read_manifest(path: str | Path) -> list[ManifestRecord]:
    """Reads a .jsonl or .csv manifest; schema errors and repeated paths name the file and line number."""
    refuse_empty_path("manifest", path, "name the manifest file to read")  # not "manifest . is a folder"
    path = Path(path)
    # utf-8-sig: spreadsheet programs start a CSV with a byte-order mark, which would otherwise
    # become part of the first column's name ("\ufeffpath").
    text = read_text_file(path, "manifest", encoding="utf-8-sig")
    records, lines = [], []
    if path.suffix.lower() == ".csv":
        header, rows = read_csv_rows(text, str(path), MANIFEST_FIELDS)  # an empty meta may be left out of a row
        if unknown := [name for name in header if name not in _RECORD_FIELDS]:
            raise ValueError(f"{path}:1: the CSV header has unknown column(s) {', '.join(map(repr, unknown))} "
                             f"(a manifest has the columns {', '.join(_RECORD_FIELDS)}; other data goes into meta)")
        for line_number, row in rows:
            where = f"{path}:{line_number}"
            row["captions"] = _parse_json_cell(row["captions"] or "[]", "captions", where)
            row["meta"] = _parse_json_cell(row["meta"], "meta", where) if row.get("meta") else {}
            records.append(_record_from_row(row, where))
            lines.append(line_number)
    else:
        # JSON escapes newlines inside strings, so "\n" alone ends a record; write_manifest writes
        # U+2028, U+0085, ... raw, which text_lines, unlike str.splitlines, leaves inside a record.
        for line_number, line in enumerate(text_lines(text), start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                row = parse_json(line, unique_keys=True)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
            records.append(_record_from_row(row, where))
            lines.append(line_number)
    if not records:
        raise ValueError(f"manifest {path} has no records")
    repeated = _repeated_path(records, path.parent)
    if repeated is not None:
        first, again = repeated
        earlier = records[first]
        spelled = f" as {earlier.path!r}" if earlier.path != records[again].path else ""
        raise ValueError(f"{path}:{lines[again]}: image {records[again].path!r} is already listed on line "
                         f"{lines[first]}{spelled} (split {earlier.split!r}, identity {earlier.identity!r}); "
                         "every image may appear in one record only")
    return records


def _not_utf8(record: ManifestRecord, raw_meta: bool) -> str | None:
    """Name of the first field of `record` that UTF-8 cannot encode, else None: one holding a lone
    surrogate, which is how Python spells the bytes of a file name that is not UTF-8 (Latin-1
    "Jos\\xe9"). `raw_meta`: meta is written unescaped (JSON Lines), not as ASCII JSON (CSV). Captions are not
    looked at: ManifestRecord refuses one that UTF-8 cannot encode."""
    fields = {"path": [record.path], "identity": [record.identity], "split": [record.split],
              "meta": [json.dumps(record.meta, ensure_ascii=False)] if raw_meta else []}
    for name, texts in fields.items():
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return name
    return None


def write_manifest(path: str | Path, records: Iterable[ManifestRecord]) -> Path:
    """Writes records as JSON Lines (or CSV when `path` ends in .csv); returns the path.

    Written atomically (a temporary file renamed over `path`): on any error an existing file at
    `path` is left as it was. A record with text that is not valid Unicode (a file name in another
    encoding than UTF-8) is a ValueError naming its image path with ascii()."""
    path = Path(path)
    records = list(records)
    as_csv = path.suffix.lower() == ".csv"
    # ManifestRecord refuses what read_manifest would (an empty identity or split, a blank caption) where the record
    # is made; a meta JSON cannot hold is refused here, and text that is not UTF-8 is named below.
    for index, record in enumerate(records):
        try:  # a numpy number, keys of two types (sorted), a loop: json.dumps's error below named nothing
            json.dumps(record.meta, sort_keys=True)
        except (TypeError, ValueError) as error:
            raise ValueError(f"cannot write manifest {path}: record {index} (image {ascii(record.path)}): its meta "
                             f"must hold JSON values with string keys ({error})") from None
    repeated = _repeated_path(records, path.parent)
    if repeated is not None:
        first, again = repeated
        spelled = f" (record {first} as {records[first].path!r})" if records[first].path != records[again].path else ""
        raise ValueError(f"cannot write manifest {path}: records {first} and {again} both list image "
                         f"{records[again].path!r}{spelled}; every image may appear in one record only")
    try:
        with write_atomically(path, "manifest") as handle:
            if as_csv:
                writer = csv.writer(handle)
                writer.writerow(_RECORD_FIELDS)
                for record in records:
                    writer.writerow([record.path, record.identity, record.split,
                                     json.dumps(list(record.captions), ensure_ascii=False),
                                     json.dumps(record.meta, sort_keys=True) if record.meta else ""])
            else:
                for record in records:
                    handle.write(json.dumps(record.to_json(), ensure_ascii=False, sort_keys=True) + "\n")
    except UnicodeEncodeError:
        index, field = next((i, name) for i, r in enumerate(records) if (name := _not_utf8(r, not as_csv)) is not None)
        raise ValueError(f"cannot write manifest {path}: the {field} field of record {index} (image "
                         f"{ascii(records[index].path)}) holds bytes that are not UTF-8, as a file or folder "
                         "name in another encoding (e.g. Latin-1) does; rename it to UTF-8") from None
    return path


def select_split(records: Sequence[ManifestRecord], split: str | Sequence[str] | None) -> list[ManifestRecord]:
    """Records of one split (or several; None keeps all); an unknown split is an error."""
    if split is None:
        return list(records)
    wanted = {split} if isinstance(split, str) else set(split)
    available = {record.split for record in records}
    # One unknown split of several (TGFR's "valid" beside train and val) would be left out without a word.
    missing = wanted - available
    if missing or not wanted:
        raise ValueError(f"split {sorted(missing)} has no records; the manifest has splits {sorted(available)}")
    return [record for record in records if record.split in wanted]


def identity_labels(records: Sequence[ManifestRecord]) -> dict[str, int]:
    """Maps identities to contiguous labels 0..C-1 in sorted order (numeric when all are digits)."""
    identities = {record.identity for record in records}
    # isdecimal, not isdigit: "²" is a digit that int() rejects.
    key = (lambda name: (int(name), name)) if all(i.isdecimal() for i in identities) else None
    return {identity: label for label, identity in enumerate(sorted(identities, key=key))}


def records_digest(records: Sequence[ManifestRecord]) -> str:
    """sha256 (hex) of the records' paths, identities, splits and captions, in order (meta is left
    out): the same records give the same digest wherever their folder lies, as paths are relative."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps([record.path, record.identity, record.split, list(record.captions)]).encode())
        digest.update(b"\n")
    return digest.hexdigest()
