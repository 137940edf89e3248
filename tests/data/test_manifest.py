import json
import re

import pytest

from tgfr.data.files import load_image, read_caption_file
from tgfr.data.manifest import ManifestRecord, identity_labels, read_manifest, select_split, write_manifest

RECORDS = [
    ManifestRecord("images/a/1.png", "10", "train", ("a man", "a person"), {"k": 1}),
    ManifestRecord("images/b/1.png", "2", "test", ("a woman",)),
    ManifestRecord("images/c/1.png", "2", "test", ()),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_round_trip(tmp_path, suffix):
    path = write_manifest(tmp_path / f"m{suffix}", RECORDS)
    back = read_manifest(path)
    assert back == RECORDS
    assert back[0].meta == {"k": 1}


def test_identity_labels_are_contiguous_and_numeric_order():
    labels = identity_labels(RECORDS)
    assert labels == {"2": 0, "10": 1}
    assert identity_labels([ManifestRecord("x", "bob", "s"), ManifestRecord("y", "alice", "s")]) == {"alice": 0, "bob": 1}


def test_integer_identity_read_as_string(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"path": "x.png", "identity": 7, "split": "train", "captions": []}) + "\n")
    assert read_manifest(path)[0].identity == "7"


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('{"path": "x.png", "identity": 1, "split": "train"}', "missing field(s) captions"),
    ('{"path": "/abs/x.png", "identity": 1, "split": "train", "captions": []}', "relative"),
    ('{"path": "x.png", "identity": 1, "split": "train", "captions": "a caption"}', "list of non-empty strings"),
    ('{"path": "x.png", "identity": true, "split": "train", "captions": []}', "identity"),
    ('[1, 2]', "expected a JSON object"),
])
def test_schema_errors_name_file_and_line(tmp_path, line, message):
    good = json.dumps({"path": "ok.png", "identity": "1", "split": "train", "captions": ["c"]})
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        read_manifest(path)
    assert f"{path}:3" in str(error.value)


def test_csv_errors_name_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('path,identity,split,captions\nx.png,1,train,"[""c""]"\ny.png,1,train,[oops\n')
    with pytest.raises(ValueError, match=r"bad.csv:3: column 'captions'"):
        read_manifest(path)
    (tmp_path / "nohead.csv").write_text("path,identity\nx.png,1\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_manifest(tmp_path / "nohead.csv")


def test_empty_missing_and_non_utf8_manifest(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_manifest(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no records"):
        read_manifest(tmp_path / "empty.jsonl")
    (tmp_path / "latin.jsonl").write_bytes(b'{"path": "\xe9.png"}\n')
    with pytest.raises(ValueError, match="not valid UTF-8"):
        read_manifest(tmp_path / "latin.jsonl")


def test_select_split():
    assert [r.path for r in select_split(RECORDS, "test")] == ["images/b/1.png", "images/c/1.png"]
    assert len(select_split(RECORDS, ["train", "test"])) == 3
    with pytest.raises(ValueError, match=r"has splits \['test', 'train'\]"):
        select_split(RECORDS, "val")


def test_caption_file_errors(tmp_path):
    (tmp_path / "ok.txt").write_text("first caption\n\n second \n", encoding="utf-8")
    assert read_caption_file(tmp_path / "ok.txt") == ["first caption", "second"]
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match=r"empty.txt is empty"):
        read_caption_file(tmp_path / "empty.txt")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.txt is not valid UTF-8"):
        read_caption_file(tmp_path / "latin.txt")
    with pytest.raises(ValueError, match=r"gone.txt does not exist"):
        read_caption_file(tmp_path / "gone.txt")


def test_corrupt_and_missing_image(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"bad.png is corrupt"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"gone.png does not exist"):
        load_image(tmp_path / "gone.png")
