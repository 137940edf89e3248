"""The manifest: the one input format of training and evaluation.

A manifest is a JSON Lines file (or a CSV file) with one record per image:

    {"path": "images/test/17/17_3.png", "identity": "17", "split": "test",
     "captions": ["The man has ...", "This person ..."], "meta": {...}}

`path` is relative to the manifest's folder, `identity` is a string (integers are read as
strings), `captions` is a list of strings (may be empty for image-only data) and `meta` is an
optional JSON object passed through untouched. CSV manifests have the columns
path,identity,split,captions[,meta] where captions is a JSON list and meta a JSON object.
"""

import csv
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_FIELDS = ("path", "identity", "split", "captions")


@dataclass(frozen=True)
class ManifestRecord:
    """One image of a manifest; `path` is relative to the manifest's folder."""

    path: str
    identity: str
    split: str
    captions: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

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
    path, identity, split, captions = (row[name] for name in MANIFEST_FIELDS)
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}: 'path' must be a non-empty string, got {path!r}")
    if Path(path).is_absolute():
        raise ValueError(f"{where}: 'path' must be relative to the manifest's folder, got {path!r}")
    if isinstance(identity, bool) or not isinstance(identity, (str, int)) or identity == "":
        raise ValueError(f"{where}: 'identity' must be a non-empty string or an integer, got {identity!r}")
    if not isinstance(split, str) or not split:
        raise ValueError(f"{where}: 'split' must be a non-empty string, got {split!r}")
    if not isinstance(captions, list) or not all(isinstance(c, str) and c.strip() for c in captions):
        raise ValueError(f"{where}: 'captions' must be a list of non-empty strings, got {captions!r}")
    meta = row.get("meta") or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: 'meta' must be a JSON object, got {type(meta).__name__}")
    return ManifestRecord(path, str(identity), split, tuple(captions), meta)


def _parse_json_cell(text: str, column: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: column '{column}' is not valid JSON ({error.msg})") from None


def read_manifest(path: str | Path) -> list[ManifestRecord]:
    """Reads a .jsonl or .csv manifest; schema errors name the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"manifest {path} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"manifest {path} is not valid UTF-8 (byte {error.start})") from None
    records = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = [name for name in MANIFEST_FIELDS if name not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}:1: CSV header lacks column(s) {', '.join(missing)}")
        for line_number, row in enumerate(reader, start=2):
            where = f"{path}:{line_number}"
            row = dict(row)
            row["captions"] = _parse_json_cell(row["captions"] or "[]", "captions", where)
            row["meta"] = _parse_json_cell(row["meta"], "meta", where) if row.get("meta") else {}
            records.append(_record_from_row(row, where))
    else:
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg})") from None
            records.append(_record_from_row(row, where))
    if not records:
        raise ValueError(f"manifest {path} has no records")
    return records


def write_manifest(path: str | Path, records: Iterable[ManifestRecord]) -> Path:
    """Writes records as JSON Lines (or CSV when `path` ends in .csv); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = list(records)
    if path.suffix.lower() == ".csv":
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([*MANIFEST_FIELDS, "meta"])
            for record in records:
                writer.writerow([record.path, record.identity, record.split,
                                 json.dumps(list(record.captions), ensure_ascii=False),
                                 json.dumps(record.meta, sort_keys=True) if record.meta else ""])
    else:
        with path.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record.to_json(), ensure_ascii=False, sort_keys=True) + "\n")
    return path


def select_split(records: Sequence[ManifestRecord], split: str | Sequence[str] | None) -> list[ManifestRecord]:
    """Records of one split (or several; None keeps all); an unknown split is an error."""
    if split is None:
        return list(records)
    wanted = {split} if isinstance(split, str) else set(split)
    selected = [record for record in records if record.split in wanted]
    if not selected:
        available = sorted({record.split for record in records})
        raise ValueError(f"split {sorted(wanted)} has no records; the manifest has splits {available}")
    return selected


def identity_labels(records: Sequence[ManifestRecord]) -> dict[str, int]:
    """Maps identities to contiguous labels 0..C-1 in sorted order (numeric when all are digits)."""
    identities = {record.identity for record in records}
    key = (lambda name: (int(name), name)) if all(i.isdigit() for i in identities) else None
    return {identity: label for label, identity in enumerate(sorted(identities, key=key))}
