import csv
import dataclasses
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from tgfr.data.files import load_image, read_caption_file
from tgfr.data.manifest import (ManifestRecord, identity_labels, read_manifest, records_digest, select_split,
                                 write_manifest)

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


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_cell_past_the_csv_modules_default_field_limit_reads_back(tmp_path, suffix):
    """The csv module refuses a field over csv.field_size_limit() (131072 characters by default) with a
    csv.Error naming no file, though write_manifest writes one; reading leaves the module's limit as it was."""
    limit = csv.field_size_limit()
    captions = tuple(f"caption {k} " + "x" * 9990 for k in range(15))
    assert len(json.dumps(list(captions))) > limit
    records = [*RECORDS, ManifestRecord("images/d/1.png", "3", "test", captions, {"note": "y" * (limit + 1)})]
    assert read_manifest(write_manifest(tmp_path / f"m{suffix}", records)) == records
    assert csv.field_size_limit() == limit


def test_a_csv_error_names_file_and_line(tmp_path, monkeypatch):
    """Should the field limit stay low (here: not raised), the csv.Error is a ValueError naming file and line."""
    path = write_manifest(tmp_path / "m.csv", [*RECORDS, ManifestRecord("d.png", "3", "test", ("x" * 200000,))])
    monkeypatch.setattr(csv, "field_size_limit", lambda *limit: 131072)
    with pytest.raises(ValueError, match=re.escape(f"{path}:5: not valid CSV (field larger than field "
                                                   "limit (131072))")):
        read_manifest(path)


# Every character str.splitlines() breaks at besides "\n" and "\r".
LINE_BREAKS = "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_round_trip_keeps_unicode_line_breaks(tmp_path, suffix):
    records = [ManifestRecord("images/a,\"b\".png", "1", "test", tuple(f"caption{c}end" for c in LINE_BREAKS)),
               ManifestRecord(f"images/x{LINE_BREAKS}.png", f"id{LINE_BREAKS}end", "test", (f"two{LINE_BREAKS}lines",),
                              {"note": f"m{LINE_BREAKS}"}),
               ManifestRecord("images/c.png", "2", "train", ("crlf\r\ninside",))]
    assert read_manifest(write_manifest(tmp_path / f"m{suffix}", records)) == records


def test_csv_record_with_a_newline_in_a_quoted_cell(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('path,identity,split,captions\n"images/a\nb.png",1,train,"[""c""]"\nx.png,1,train,[oops\n',
                    encoding="utf-8", newline="")
    with pytest.raises(ValueError, match=r"m.csv:4: column 'captions'"):  # the file's line, not the record's
        read_manifest(path)
    path.write_text('path,identity,split,captions\r\n"images/a\r\nb.png",1,train,"[""c""]"\r\n', newline="")
    assert read_manifest(path)[0].path == "images/a\r\nb.png"


def jsonl(*rows):
    return "".join(json.dumps({"identity": "1", "split": "test", "captions": ["c"], **row}) + "\n" for row in rows)


@pytest.mark.parametrize("second", [
    {"path": "images/a.png"},                                     # the same record twice
    {"path": "images/a.png", "split": "train"},                   # train/test overlap
    {"path": "images/a.png", "identity": "2"},                    # two identities for one image
    {"path": "images/./a.png", "split": "train", "identity": "2"},  # another spelling of the same file
])
def test_repeated_image_path_is_rejected(tmp_path, second):
    path = tmp_path / "dup.jsonl"
    path.write_text(jsonl({"path": "images/a.png"}, {"path": "images/b.png"}, second))
    with pytest.raises(ValueError, match=r"every image may appear in one record only") as error:
        read_manifest(path)
    message = str(error.value)
    assert message.startswith(f"{path}:3: image {second['path']!r} is already listed on line 1")
    assert ("as 'images/a.png'" in message) == (second["path"] != "images/a.png")
    csv_path = tmp_path / "dup.csv"
    csv_path.write_text("path,identity,split,captions\nimages/a.png,1,test,[]\n"
                        f"{second['path']},{second.get('identity', '1')},{second.get('split', 'test')},[]\n")
    with pytest.raises(ValueError, match=r"dup.csv:3: image .* is already listed on line 2"):
        read_manifest(csv_path)


def test_write_refuses_a_repeated_image_path(tmp_path):
    records = [*RECORDS, ManifestRecord("images/b/1.png", "2", "train", ("again",))]
    with pytest.raises(ValueError, match=r"records 1 and 3 both list image 'images/b/1.png'"):
        write_manifest(tmp_path / "m.jsonl", records)
    assert not (tmp_path / "m.jsonl").exists()


@pytest.mark.parametrize("link", ["symlink", "hard link"])
def test_one_file_reached_by_two_paths_is_one_image(tmp_path, link):
    # A link in train to a test image leaks that image into training as surely as its path would.
    (tmp_path / "images/test/7").mkdir(parents=True)
    (tmp_path / "images/train/2").mkdir(parents=True)
    (tmp_path / "images/test/7/7_0.jpg").write_bytes(b"a face")
    (tmp_path / "images/train/2/2_6.jpg").write_bytes(b"a face")  # the same bytes, another file: allowed
    if link == "symlink":
        os.symlink("../../test/7/7_0.jpg", tmp_path / "images/train/2/2_7.jpg")
    else:
        os.link(tmp_path / "images/test/7/7_0.jpg", tmp_path / "images/train/2/2_7.jpg")
    records = [ManifestRecord("images/test/7/7_0.jpg", "7", "test", ("c",)),
               ManifestRecord("images/train/2/2_6.jpg", "2", "train", ("c",)),
               ManifestRecord("images/train/2/2_7.jpg", "2", "train", ("c",))]
    write_manifest(tmp_path / "two.jsonl", records[:2])
    assert read_manifest(tmp_path / "two.jsonl") == records[:2]
    with pytest.raises(ValueError, match=re.escape("records 0 and 2 both list image 'images/train/2/2_7.jpg' "
                                                   "(record 0 as 'images/test/7/7_0.jpg')")):
        write_manifest(tmp_path / "m.jsonl", records)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r.to_json()) + "\n" for r in records))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'm.jsonl'}:3: image 'images/train/2/2_7.jpg' is "
                                                   "already listed on line 1 as 'images/test/7/7_0.jpg'")):
        read_manifest(tmp_path / "m.jsonl")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
@pytest.mark.parametrize("field", ["path", "identity", "split"])
def test_text_that_is_not_utf8_is_named_and_the_old_manifest_kept(tmp_path, suffix, field):
    # How os.listdir spells a folder named "José" in Latin-1 (the bytes b"Jos\xe9").
    latin1 = os.fsdecode(b"Jos\xe9")
    assert latin1 == "Jos\udce9"
    bad = {"path": f"images/{latin1}/0.png", "identity": latin1, "split": latin1}[field]
    record = ManifestRecord("images/x/0.png", "x", "train", ("c",))
    records = [*RECORDS, dataclasses.replace(record, **{field: bad})]
    path = tmp_path / f"m{suffix}"
    old = b"the user's own manifest\n"
    path.write_bytes(old)
    with pytest.raises(ValueError) as error:
        write_manifest(path, records)
    assert str(error.value) == (f"cannot write manifest {path}: the {field} field of record 3 (image "
                                f"{ascii(records[3].path)}) holds bytes that are not UTF-8, as a file or folder name "
                                "in another encoding (e.g. Latin-1) does; rename it to UTF-8")
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left


def test_identity_labels_are_contiguous_and_numeric_order():
    labels = identity_labels(RECORDS)
    assert labels == {"2": 0, "10": 1}
    assert identity_labels([ManifestRecord("x", "bob", "s"), ManifestRecord("y", "alice", "s")]) == {"alice": 0, "bob": 1}
    # "²" is a digit but not a decimal number: names sort as text then.
    assert identity_labels([ManifestRecord("x", "²", "s"), ManifestRecord("y", "10", "s")]) == {"10": 0, "²": 1}


def test_a_line_of_white_space_is_skipped_as_a_blank_line_is(tmp_path):
    """An editor's trailing spaces or tabs on a line of their own are no record, nor invalid JSON."""
    path = tmp_path / "m.jsonl"
    lines = jsonl({"path": "a.png"}, {"path": "b.png"}).splitlines(keepends=True)
    path.write_text(lines[0] + " \t \n" + lines[1] + "   \n")
    assert [r.path for r in read_manifest(path)] == ["a.png", "b.png"]


def test_integer_identity_read_as_string(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"path": "x.png", "identity": 7, "split": "train", "captions": []}) + "\n")
    assert read_manifest(path)[0].identity == "7"


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ("[" * 100000 + "]" * 100000, "not valid JSON (arrays or objects nested too deeply)"),
    ('{"path": "x.png", "identity": 1, "split": "train"}', "missing field(s) captions"),
    ('{"path": "/abs/x.png", "identity": 1, "split": "train", "captions": []}', "relative"),
    ('{"path": "x\\u0000.png", "identity": 1, "split": "train", "captions": []}',
     "'path' holds a NUL character, which no file name can: 'x\\x00.png'"),
    ('{"path": "x.png", "identity": 1, "split": "train", "captions": "a caption"}', "list of non-empty strings"),
    ('{"path": "x.png", "identity": true, "split": "train", "captions": []}', "identity"),
    ('[1, 2]', "expected a JSON object"),
    ('{"path": "x.png", "identity": " 7", "split": "train", "captions": []}',
     "'identity' ' 7' begins or ends with white space, which is part of the identity, not ignored (' 7' is not '7')"),
    ('{"path": "x.png", "identity": "7\\t", "split": "train", "captions": []}', "'identity' '7\\t' begins or ends"),
    ('{"path": "x.png", "identity": "7", "split": "train ", "captions": []}',
     "'split' 'train ' begins or ends with white space, which is part of the split, not ignored"),
    ('{"path": "x.png", "identity": " ", "split": "train", "captions": []}', "'identity' must not be blank, got ' '"),
    ('{"path": "x.png", "identity": "7", "split": "\\t", "captions": []}', "'split' must not be blank, got '\\t'"),
    ('{"path": "x.png", "identity": "7", "split": "train", "captions": [], "metadata": {"source": "a.png"}}',
     "unknown field(s) 'metadata' (a record has the fields path, identity, split, captions, meta; other data goes "
     "into meta)"),
    ('{"path": "x.png", "identity": ' + "7" * 5000 + ', "split": "train", "captions": []}',
     "not valid JSON (an integer of over 4300 digits)"),
])
def test_schema_errors_name_file_and_line(tmp_path, line, message):
    good = json.dumps({"path": "ok.png", "identity": "1", "split": "train", "captions": ["c"]})
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        read_manifest(path)
    assert f"{path}:3" in str(error.value)


@pytest.mark.parametrize("meta", [[], 0, False, "", None, ["source", "x"]])
def test_a_meta_that_is_not_an_object_is_refused_naming_file_and_line(tmp_path, meta):
    """[], 0, false and "" read as no meta ({}) without a word."""
    path = tmp_path / "m.jsonl"
    path.write_text(jsonl({"path": "a.png"}, {"path": "b.png", "meta": meta}))
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: 'meta' must be a JSON object, got {meta!r}")):
        read_manifest(path)
    csv_path = tmp_path / "m.csv"
    with csv_path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["path", "identity", "split", "captions", "meta"],
                                      ["a.png", "1", "test", "[]", ""], ["b.png", "1", "test", "[]", json.dumps(meta)]])
    with pytest.raises(ValueError, match=re.escape(f"{csv_path}:3: 'meta' must be a JSON object, got {meta!r}")):
        read_manifest(csv_path)


def test_an_absent_meta_and_an_empty_csv_meta_cell_read_as_no_meta(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(jsonl({"path": "a.png"}))
    (tmp_path / "m.csv").write_text("path,identity,split,captions,meta\na.png,1,test,[],\n")
    assert [read_manifest(tmp_path / name)[0].meta for name in ("m.jsonl", "m.csv")] == [{}, {}]


def test_a_repeated_path_names_the_lines_of_the_file_blank_lines_counted(tmp_path):
    """The line numbers are the file's, not the records': a blank line before a record moves it down."""
    text = "\n" + jsonl({"path": "a.png"}) + "\n\n" + jsonl({"path": "b.png"}, {"path": "a.png"})
    first, again = [number for number, line in enumerate(text.split("\n"), start=1) if '"a.png"' in line]
    path = tmp_path / "m.jsonl"
    path.write_text(text)
    expected = f"{path}:{again}: image 'a.png' is already listed on line {first} (split 'test', identity '1')"
    with pytest.raises(ValueError, match=re.escape(expected)):
        read_manifest(path)


def test_an_empty_csv_captions_cell_is_an_image_only_record(tmp_path):
    """A spreadsheet leaves the cell empty rather than writing []."""
    path = tmp_path / "image_only.csv"
    path.write_text('path,identity,split,captions\nx.png,1,train,\ny.png,2,test,"[""c""]"\n')
    assert [(r.path, r.captions) for r in read_manifest(path)] == [("x.png", ()), ("y.png", ("c",))]


def test_a_short_csv_row_is_named_whichever_required_column_it_lacks(tmp_path):
    """With the columns in another order, the row ends before identity and split, not captions."""
    path = tmp_path / "m.csv"
    path.write_text("path,captions,identity,split,meta\nb.png,[]\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: the row has 2 cells, the header 5 columns")):
        read_manifest(path)


@pytest.mark.parametrize("row, message", [
    ("b.png, 7,train,[]", "'identity' ' 7' begins or ends with white space, which is part of the identity"),
    ("b.png,7, train,[]", "'split' ' train' begins or ends with white space, which is part of the split"),
    ("b.png, ,train,[]", "'identity' must not be blank, got ' '"),
    ('b.png,7,train,[],,"{""source"": ""a.png""}"', "the row has 6 cells, the header 5 columns "
     "(path, identity, split, captions, meta)"),
    ('b.png,7,train', "the row has 3 cells, the header 5 columns (path, identity, split, captions, meta)"),
    ('b.png,7,[]', "the row has 3 cells, the header 5 columns"),
])
def test_a_csv_row_of_spaced_surplus_or_missing_cells_is_refused_naming_file_and_line(tmp_path, row, message):
    """" 7" read as a second identity of person 7, " train" as a split select_split("train") left out, a
    cell past the header's last column was dropped, and a row that ended early read as one without captions
    (the rows here leave out an empty meta, which may be)."""
    path = tmp_path / "m.csv"
    path.write_text(f"path,identity,split,captions,meta\na.png,7,train,[],\n{row}\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: {message}")):
        read_manifest(path)


def test_a_csv_column_outside_the_schema_is_refused(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('path,identity,split,captions,metadata\na.png,1,train,[],"{""source"": ""b.png""}"\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: the CSV header has unknown column(s) 'metadata' (a "
                                                   "manifest has the columns path, identity, split, captions, meta")):
        read_manifest(path)
    path.write_text('path,identity,split,captions\na.png,1,train,[],"{""source"": ""b.png""}"\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: the row has 5 cells, the header 4 columns")):
        read_manifest(path)


@pytest.mark.parametrize("name, text, message", [
    # DictReader and json.loads kept the last of two columns or keys of one name: identity 8, not 7.
    ("m.csv", 'path,identity,split,captions,identity\na.png,7,train,[],8\n',
     "{path}:1: the CSV header repeats column(s) 'identity'"),
    ("m.jsonl", '{"path": "a.png", "identity": "7", "split": "train", "captions": [], "identity": "8"}\n',
     "{path}:1: not valid JSON (key 'identity' appears twice in one object)"),
    ("m.csv", 'path,identity,split,captions,meta\na.png,7,train,[],"{""source"": ""a"", ""source"": ""b""}"\n',
     "{path}:2: column 'meta' is not valid JSON (key 'source' appears twice in one object)"),
])
def test_a_repeated_column_or_key_is_refused_naming_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^{re.escape(message.format(path=path))}$"):
        read_manifest(path)


def test_csv_errors_name_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('path,identity,split,captions\nx.png,1,train,"[""c""]"\ny.png,1,train,[oops\n')
    with pytest.raises(ValueError, match=r"bad.csv:3: column 'captions'"):
        read_manifest(path)
    (tmp_path / "nohead.csv").write_text("path,identity\nx.png,1\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_manifest(tmp_path / "nohead.csv")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_byte_order_mark_is_not_part_of_the_manifest(tmp_path, suffix):
    path = write_manifest(tmp_path / f"m{suffix}", RECORDS)
    path.write_bytes("\ufeff".encode("utf-8") + path.read_bytes())  # as spreadsheet programs save UTF-8
    assert read_manifest(path) == RECORDS


def test_empty_missing_and_non_utf8_manifest(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_manifest(tmp_path / "none.jsonl")
    # An unset shell variable: as a Path, "" is the current folder, "manifest . is a folder".
    with pytest.raises(ValueError, match="^manifest is empty: name the manifest file to read$"):
        read_manifest("")
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
    # One unknown split of several was left out without a word (TGFR calls its val split "valid").
    with pytest.raises(ValueError, match=re.escape("split ['nope', 'valid'] has no records; the manifest has splits "
                                                   "['test', 'train']")):
        select_split(RECORDS, ["train", "valid", "test", "nope"])
    with pytest.raises(ValueError, match=re.escape("split [] has no records")):
        select_split(RECORDS, [])


def test_caption_file_errors(tmp_path):
    (tmp_path / "ok.txt").write_text("first caption\n\n second \n", encoding="utf-8")
    assert read_caption_file(tmp_path / "ok.txt") == ["first caption", "second"]
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match=r"empty.txt is empty"):
        read_caption_file(tmp_path / "empty.txt")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.txt is not valid UTF-8 \(byte 3\)$"):  # where the 0xe9 is
        read_caption_file(tmp_path / "latin.txt")
    with pytest.raises(ValueError, match=r"gone.txt does not exist"):
        read_caption_file(tmp_path / "gone.txt")


def test_a_caption_file_with_a_byte_order_mark_and_crlf_line_ends_reads_as_its_captions(tmp_path):
    """As Windows Notepad saves UTF-8: neither the mark nor the carriage returns are part of a caption."""
    path = tmp_path / "notepad.txt"
    path.write_bytes(b"\xef\xbb\xbfThe man has a scar.\r\nHe wears glasses.\r\n")
    assert read_caption_file(path) == ["The man has a scar.", "He wears glasses."]


def test_corrupt_and_missing_image(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ValueError, match=r"bad.png is corrupt"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"gone.png does not exist"):
        load_image(tmp_path / "gone.png")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_caption_utf8_cannot_encode_is_named_by_line_and_image(tmp_path, suffix):
    """JSON's "\\ud800" is half of a character: read, it would reach the tokenizer, whose TypeError
    names no file (tgfr train and evaluate read captions from the manifest)."""
    captions = json.dumps(["a smiling man", "glasses \ud800"])
    assert "\\ud800" in captions
    path = tmp_path / f"m{suffix}"
    if suffix == ".csv":
        path.write_text('path,identity,split,captions\nok.png,1,train,"[""c""]"\n'
                        f'x.png,1,train,"{captions.replace(chr(34), chr(34) * 2)}"\n')
    else:
        good = json.dumps({"path": "ok.png", "identity": "1", "split": "train", "captions": ["c"]})
        path.write_text(f'{good}\n{{"path": "x.png", "identity": 1, "split": "train", "captions": {captions}}}\n')
    with pytest.raises(ValueError) as error:
        read_manifest(path)
    line = 3 if suffix == ".csv" else 2  # a CSV's header is line 1
    assert str(error.value).startswith(f"{path}:{line}: a caption of image 'x.png' must be encodable as UTF-8, as the "
                                       f"text encoder's tokenizer needs, got {'glasses ' + chr(0xD800)!r} "
                                       "(a lone surrogate at position 8:")


def test_records_digest_follows_every_field_but_meta_and_the_order():
    digest = records_digest(RECORDS)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert records_digest([dataclasses.replace(RECORDS[0], meta={"k": 2}), *RECORDS[1:]]) == digest
    edits = [{"path": "images/a/2.png"}, {"identity": "11"}, {"split": "val"}, {"captions": ("a man",)},
             {"captions": ("a person", "a man")}, {"captions": ("a man", "a person", "a face")}]
    digests = {records_digest([dataclasses.replace(RECORDS[0], **edit), *RECORDS[1:]]) for edit in edits}
    digests |= {records_digest(RECORDS[::-1]), records_digest(RECORDS[:2])}
    assert digest not in digests and len(digests) == len(edits) + 2
    # Fields are kept apart: text moved from one field to the next is another record.
    assert records_digest([ManifestRecord("ab", "c", "train")]) != records_digest([ManifestRecord("a", "bc", "train")])


@pytest.mark.parametrize("fields, message", [
    ({"captions": "a man with a beard"}, "'captions' must be a list of non-empty strings, got 'a man with a beard'"),
    # Without a blank letter to refuse, only the type check stands between a str and a caption a letter.
    ({"captions": "bearded"}, "'captions' must be a list of non-empty strings, got 'bearded'"),
    ({"captions": ("a face", 3)}, "'captions' must be a list of non-empty strings, got ('a face', 3)"),
    ({"captions": [""]}, "'captions' must be a list of non-empty strings, got ['']"),
    ({"captions": ("a face", "  ")}, "'captions' must be a list of non-empty strings, got ('a face', '  ')"),
    ({"captions": ("a face \ud800",)}, "a caption of image 'a.png' must be encodable as UTF-8"),
    ({"identity": 7}, "'identity' must be a non-empty string, got 7"),
    ({"identity": ""}, "'identity' must be a non-empty string, got ''"),
    ({"identity": " 7"}, "'identity' ' 7' begins or ends with white space"),
    ({"split": None}, "'split' must be a non-empty string, got None"),
    ({"split": "\t"}, "'split' must not be blank, got '\\t'"),
    ({"path": Path("a.png")}, "'path' must be a non-empty string, got PosixPath('a.png')"),
    ({"path": "a\0.png"}, "'path' holds a NUL character"),
    ({"path": "/data/a.png"}, "'path' must be relative to the manifest's folder, got '/data/a.png'"),
    ({"meta": None}, "'meta' must be a JSON object, got None"),
])
def test_a_record_built_in_python_is_refused_as_reading_it_would_be_naming_the_field(fields, message):
    """FaceCaptionDataset(records) sampled a str of captions one letter a caption, and identity_labels failed on an
    int identity with an AttributeError naming nothing; write_manifest wrote what reading back refused."""
    record = ManifestRecord("a.png", "1", "test", ("a face",))
    with pytest.raises(ValueError, match=re.escape(message)):
        dataclasses.replace(record, **fields)


def test_a_list_of_captions_becomes_a_tuple():
    record = ManifestRecord("a.png", "1", "test", ["a face", "a smile"])
    assert record.captions == ("a face", "a smile") and record == ManifestRecord("a.png", "1", "test",
                                                                                  ("a face", "a smile"))


@pytest.mark.parametrize("record, message", [
    # json.dumps's TypeError named neither the manifest nor the image.
    (ManifestRecord("a.png", "1", "test", ("a face",), {"quality": np.float32(0.5)}),
     "its meta must hold JSON values with string keys (Object of type float32 is not JSON serializable)"),
    (ManifestRecord("a.png", "1", "test", ("a face",), {1: "a", "b": 2}),
     "its meta must hold JSON values with string keys ('<' not supported between instances of 'str' and 'int')"),
])
def test_a_record_that_reading_would_refuse_is_not_written(tmp_path, record, message):
    """Written, such a manifest failed only when read back (by training, say), naming its line."""
    path = tmp_path / "m.jsonl"
    expected = f"cannot write manifest {path}: record 0 (image {ascii(record.path)}): {message}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        write_manifest(path, [record])
    assert not path.exists()
