import dataclasses
import json
import os
import re
from collections import Counter

import pytest

from tgfr.data.degrade import degraded_path
from tgfr.data.manifest import ManifestRecord
from tgfr.data.protocol import (VerificationPair, make_identification_split, make_verification_pairs,
                                read_identification_split, read_verification_pairs, write_identification_split,
                                write_verification_pairs)


def records(subjects=12, images=4, split="test"):
    return [ManifestRecord(f"{split}/{s}/{s}_{k}.png", str(s), split, ("c",))
            for s in range(subjects) for k in range(images)] + [ManifestRecord("train/x.png", "x", "train", ("c",))]


def identity(path: str) -> str:
    return path.split("/")[1]


@pytest.mark.parametrize("impostors, expected", [(5, 5), (399, 11)])
def test_pairs_counts_and_labels(impostors, expected):
    pairs = make_verification_pairs(records(), "test", impostor_subjects=impostors, seed=2)
    assert len(pairs) == 12 * (1 + expected)
    for pair in pairs:
        assert pair.path_a != pair.path_b
        assert (identity(pair.path_a) == identity(pair.path_b)) == (pair.same == 1)
        assert not pair.path_b.startswith("train")
    by_subject = Counter(identity(p.path_a) for p in pairs if p.same == 0)
    assert set(by_subject.values()) == {expected}
    for subject in map(str, range(12)):
        impostor_subjects = [identity(p.path_b) for p in pairs if p.same == 0 and identity(p.path_a) == subject]
        assert len(set(impostor_subjects)) == expected  # N-1 distinct other subjects
        probes = {p.path_a for p in pairs if identity(p.path_a) == subject}
        assert probes == {f"test/{subject}/{subject}_0.png"}  # the subject's first image, as in TGFR


@pytest.mark.parametrize("images, seed", [(1, 0), (2, 0), (2, 1), (3, 2)])
def test_no_pair_is_listed_twice(images, seed):
    # Subjects with few images drawing each other: the same comparison must not count twice.
    test = [ManifestRecord(f"test/{s}/{s}_{k}.png", str(s), "test", ("c",))
            for s in range(30) for k in range(images + s % 2)]
    pairs = make_verification_pairs(test, "test", impostor_subjects=29, seed=seed)
    unordered = Counter(frozenset((p.path_a, p.path_b)) for p in pairs)
    assert max(unordered.values()) == 1 and all(len(pair) == 2 for pair in unordered)
    assert all((identity(p.path_a) == identity(p.path_b)) == (p.same == 1) for p in pairs)
    # Every two subjects are compared (each drew all others), first image against some image.
    compared = {frozenset((identity(p.path_a), identity(p.path_b))) for p in pairs if p.same == 0}
    assert len(compared) == 30 * 29 // 2
    if images > 1:  # a repeat is replaced by another image of the other subject, never dropped
        assert Counter(identity(p.path_a) for p in pairs if p.same == 0) == {str(s): 29 for s in range(30)}


def test_pairs_draw_from_every_image():
    """Genuine partners come from all of a subject's other images, impostors from all images of the others."""
    pairs = make_verification_pairs(records(subjects=40, images=4), "test", impostor_subjects=39, seed=0)
    image_index = {p: int(p.rsplit("_", 1)[1].removesuffix(".png")) for pair in pairs for p in (pair.path_a, pair.path_b)}
    assert {image_index[p.path_b] for p in pairs if p.same == 1} == {1, 2, 3}
    assert {image_index[p.path_b] for p in pairs if p.same == 0} == {0, 1, 2, 3}


def test_a_negative_seed_is_named():
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        make_verification_pairs(records(), seed=-1)


@pytest.mark.parametrize("count", [-1, True, 1.5])
def test_counts_that_are_not_non_negative_integers_are_named(count):
    """impostor_subjects=-1 failed in numpy ("negative dimensions are not allowed", naming no argument), and
    gallery_per_subject=0 gave an empty gallery."""
    with pytest.raises(ValueError, match=re.escape(f"impostor_subjects must be a non-negative integer, got {count!r}")):
        make_verification_pairs(records(), impostor_subjects=count)
    for gallery in (count, 0):
        with pytest.raises(ValueError, match=re.escape(f"gallery_per_subject must be a positive integer, got "
                                                       f"{gallery!r}")):
            make_identification_split(records(), gallery_per_subject=gallery)


def test_pairs_deterministic_and_seeded():
    assert make_verification_pairs(records(), seed=1, impostor_subjects=4) == \
        make_verification_pairs(list(reversed(records())), seed=1, impostor_subjects=4)
    assert make_verification_pairs(records(), seed=1, impostor_subjects=4) != \
        make_verification_pairs(records(), seed=2, impostor_subjects=4)


def test_single_image_subjects_have_no_genuine_pair():
    pairs = make_verification_pairs(records(images=1), impostor_subjects=3)
    # 12 subjects x 3 impostors, less the pairs that two subjects drew from both sides (listed once)
    assert all(p.same == 0 for p in pairs) and 18 <= len(pairs) <= 36
    with pytest.raises(ValueError, match="at least 2 subjects"):
        make_verification_pairs(records(subjects=1))


@pytest.mark.parametrize("suffix", ["csv", "json", "JSON"])
def test_pairs_round_trip(tmp_path, suffix):
    """A .json file, the suffix in any case, is JSON; any other is CSV with a header row."""
    pairs = make_verification_pairs(records(), impostor_subjects=3)
    path = write_verification_pairs(tmp_path / f"p.{suffix}", pairs)
    assert read_verification_pairs(path) == pairs
    text = path.read_text(encoding="utf-8")
    if suffix == "csv":
        assert text.splitlines()[0] == "path_a,path_b,same"
    else:
        assert json.loads(text)["pairs"] == [dataclasses.asdict(pair) for pair in pairs]


def test_a_csv_pairs_note_column_is_read_past_and_may_be_left_out_of_a_row(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("note,path_a,path_b,same,source\nx,a.png,b.png,1,lab\n,a.png,c.png,0\n")
    assert read_verification_pairs(path) == [VerificationPair("a.png", "b.png", 1), VerificationPair("a.png", "c.png", 0)]


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_pairs_round_trip_keeps_line_breaks_in_paths(tmp_path, suffix):
    # Linux file names may hold "\r", "\n", U+0085 and U+2028; the manifest keeps them, so must the pairs.
    pairs = [VerificationPair(f"a{c}b.png", f"c{c}{same}.png", same) for c in ("\r", "\n", "\r\n", "\x85", "\u2028")
             for same in (0, 1)]
    assert read_verification_pairs(write_verification_pairs(tmp_path / f"p.{suffix}", pairs)) == pairs


def test_a_csv_pairs_path_that_is_not_utf8_is_named_and_the_old_file_kept(tmp_path):
    """A manifest may hold a Latin-1 file name (os.fsdecode's lone surrogate, which images load through);
    writing it as CSV failed with "'utf-8' codec can't encode character '\\udce9' ...", naming nothing."""
    latin1 = "img/0_0" + os.fsdecode(b"\xe9") + ".png"
    pairs = [VerificationPair("img/1_0.png", "img/1_1.png", 1), VerificationPair("img/1_0.png", latin1, 0)]
    path = tmp_path / "p.csv"
    path.write_text("the user's own pairs\n")
    with pytest.raises(ValueError, match=re.escape(f"cannot write pairs file {path}: path_b of pair 1 must be "
                                                   f"encodable as UTF-8, as a CSV pairs file is, got {latin1!r} (a "
                                                   "lone surrogate at position 7: a non-UTF-8 byte of a file name? "
                                                   "rename it to UTF-8, or write the pairs as JSON (a .json file; "
                                                   "tgfr data protocol --format json), which escapes it)")):
        write_verification_pairs(path, pairs)
    assert path.read_text() == "the user's own pairs\n"
    for name in ("p.json", "P.JSON"):  # JSON by its suffix in any case
        assert read_verification_pairs(write_verification_pairs(tmp_path / name, pairs)) == pairs


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_protocol_files_with_a_byte_order_mark_are_read(tmp_path, suffix):
    """As a spreadsheet program saves UTF-8: the mark became part of the first column's name ("the CSV header
    lacks column(s) path_a"), or made the JSON invalid."""
    pairs = make_verification_pairs(records(), impostor_subjects=3)
    path = write_verification_pairs(tmp_path / f"p.{suffix}", pairs)
    path.write_bytes("\ufeff".encode("utf-8") + path.read_bytes())
    assert read_verification_pairs(path) == pairs
    split = make_identification_split(records())
    path = write_identification_split(tmp_path / "i.json", split)
    path.write_bytes("\ufeff".encode("utf-8") + path.read_bytes())
    assert read_identification_split(path) == split


@pytest.mark.parametrize("suffix", ["csv", "json"])
@pytest.mark.parametrize("second, message", [
    (VerificationPair("a.png", "b.png", 1), "'a.png' and 'b.png' are already paired on {first} with another label "
                                            "(same 0 there, 1 here)"),
    (VerificationPair("b.png", "a.png", 1), "'b.png' and 'a.png' are already paired on {first} with another label "
                                            "(same 0 there, 1 here)"),
    (VerificationPair("c.png", "c.png", 1), "pairs image 'c.png' with itself"),
    (VerificationPair("b.png", "a.png", 0), None),
])
def test_a_self_pair_or_a_pair_labelled_both_ways_is_refused(tmp_path, suffix, second, message):
    """An image against itself scores 1 whatever the model; a pair labelled both ways counts one comparison as
    genuine and impostor. A repeat with the same label, which tgfr before ceb8b00 wrote, is read as listed."""
    pairs = [VerificationPair("a.png", "b.png", 0), VerificationPair("a.png", "c.png", 0), second]
    path = tmp_path / f"p.{suffix}"
    if suffix == "csv":
        path.write_text("path_a,path_b,same\n" + "".join(f"{p.path_a},{p.path_b},{p.same}\n" for p in pairs))
        where, first = f"{path}:4", "line 2"
    else:
        path.write_text(json.dumps({"pairs": [dataclasses.asdict(p) for p in pairs]}))
        where, first = f"{path}: pair 2", "pair 0"
    if message is None:
        assert read_verification_pairs(path) == pairs
        return
    with pytest.raises(ValueError, match=re.escape(f"{where}: {message.format(first=first)}")):
        read_verification_pairs(path)


@pytest.mark.parametrize("empty", ["gallery", "probes"])
def test_an_identification_file_without_gallery_or_probes_is_refused(tmp_path, empty):
    split = {"gallery": [{"path": "a.png", "identity": "1"}], "probes": [{"path": "b.png", "identity": "1"}]}
    path = tmp_path / "i.json"
    path.write_text(json.dumps({**split, empty: []}))
    with pytest.raises(ValueError, match=re.escape(f"identification file {path}: {empty!r} is empty; identification "
                                                   "needs at least one gallery image and one probe")):
        read_identification_split(path)


def test_pairs_file_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("path_a,path_b,same\na.png,b.png,2\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: 'same' must be 0 or 1"):
        read_verification_pairs(tmp_path / "bad.csv")
    (tmp_path / "bad.json").write_text('{"rows": []}')
    with pytest.raises(ValueError, match="'pairs' list"):
        read_verification_pairs(tmp_path / "bad.json")
    (tmp_path / "latin1.csv").write_bytes("path_a,path_b,same\n\xe9.png,b.png,0\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"pairs file .*latin1.csv is not valid UTF-8"):
        read_verification_pairs(tmp_path / "latin1.csv")
    for rows in ("null", "5"):
        (tmp_path / "bad.json").write_text(f'{{"pairs": {rows}}}')
        with pytest.raises(ValueError, match=f"bad.json: 'pairs' must be a list, got {rows.replace('null', 'None')}"):
            read_verification_pairs(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text('{"pairs": [{"path_a": "a.png", "path_b": "b.png", "same": true}]}')
    with pytest.raises(ValueError, match=r"bad.json: pair 0: 'same' must be 0 or 1, got True"):
        read_verification_pairs(tmp_path / "bad.json")
    # Empty, or TGFR's own "a b same" lines: no pairs read is an error, not an empty protocol.
    for text, missing in (("", "path_a, path_b, same"), ("4_0.jpg 4_1.jpg 1\n", "path_a, path_b, same"),
                          ("path_a,path_b\na.png,b.png\n", "same")):
        (tmp_path / "other.csv").write_text(text)
        with pytest.raises(ValueError, match=rf"other.csv:1: the CSV header lacks column\(s\) {missing}$"):
            read_verification_pairs(tmp_path / "other.csv")


@pytest.mark.parametrize("name, text, message", [
    # DictReader kept the last of two columns of one name (same 0 read as 1) and dropped a cell past the header.
    ("p.csv", "path_a,path_b,same,same\na.png,b.png,0,1\n",
     "pairs file {path}:1: the CSV header repeats column(s) 'same'"),
    ("p.csv", "path_a,path_b,same\na.png,b.png,0\na.png,c.png,0,1\n",
     "pairs file {path}:3: the row has 4 cells, the header 3 columns (path_a, path_b, same)"),
    # A row that ended before same read as a pair whose 'same' was None.
    ("p.csv", "path_a,path_b,same,note\na.png,b.png\n",
     "pairs file {path}:2: the row has 2 cells, the header 4 columns (path_a, path_b, same, note)"),
    ("p.csv", "path_a,path_b,same\na.png,b.png,1\nc.png\n",
     "pairs file {path}:3: the row has 1 cell, the header 3 columns (path_a, path_b, same)"),
    # json.loads kept the last of two keys of one object.
    ("p.json", '{"pairs": [{"path_a": "a.png", "path_b": "b.png", "same": 0, "same": 1}]}',
     "pairs file {path} is not valid JSON (key 'same' appears twice in one object)"),
    ("i.json", '{"gallery": [{"path": "a.png", "identity": "1"}], "probes": [{"path": "b.png", "identity": "1", '
               '"identity": "2"}]}', "identification file {path} is not valid JSON (key 'identity' appears twice in "
                                     "one object)"),
])
def test_a_protocol_file_with_a_repeated_column_or_key_or_a_surplus_cell_is_refused(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    read = read_identification_split if name.startswith("i") else read_verification_pairs
    with pytest.raises(ValueError, match=f"^{re.escape(message.format(path=path))}$"):
        read(path)


def test_identification_split(tmp_path):
    split = make_identification_split(records(), gallery_per_subject=1)
    assert len(split["gallery"]) == 12 and len(split["probes"]) == 36
    assert {g["identity"] for g in split["gallery"]} == {str(s) for s in range(12)}
    assert not {g["path"] for g in split["gallery"]} & {p["path"] for p in split["probes"]}
    assert all(identity(e["path"]) == e["identity"] for e in split["gallery"] + split["probes"])
    assert read_identification_split(write_identification_split(tmp_path / "i.json", split)) == split
    with pytest.raises(ValueError, match="no probe images"):
        make_identification_split(records(images=1))
    (tmp_path / "bad.json").write_text('{"gallery": [{"path": "a.png", "identity": "1"}]}')
    with pytest.raises(ValueError, match="'probes' must be a list"):
        read_identification_split(tmp_path / "bad.json")
    twice = {"gallery": [{"path": "a.png", "identity": "1"}], "probes": [{"path": "a.png", "identity": "2"}]}
    (tmp_path / "twice.json").write_text(json.dumps(twice))
    with pytest.raises(ValueError, match=r"twice.json: image 'a.png' is listed twice"):
        read_identification_split(tmp_path / "twice.json")


def test_degraded_split_gets_corresponding_pairs():
    clean = make_verification_pairs(records(split="test"), "test", impostor_subjects=3, seed=4)
    degraded = make_verification_pairs(records(split="test_degraded"), "test_degraded", impostor_subjects=3, seed=4)
    assert [VerificationPair(p.path_a.replace("test_degraded", "test"), p.path_b.replace("test_degraded", "test"),
                             p.same) for p in degraded] == clean


@pytest.mark.parametrize("suffix", [".jpg", ".JPG", ".jpeg"])
def test_a_degraded_copy_whose_suffix_is_png_gets_corresponding_pairs_and_gallery(suffix):
    """degraded_path writes every image as .png, which reordered names that extend one another after a dot:
    "face.jpg" < "face.left.jpg" but "face.left.png" < "face.png"; and each ".." as "__", which reordered a path
    outside the manifest's folder against names that begin with a digit or a capital: "../d/b.jpg" < "A.jpg" but
    "A.png" < "__/d/b.png"."""
    names = ["face", "face.left", "face.left.2", "face-b", "face_b", "0", "0.1"]
    clean = [ManifestRecord(f"img/{s}/{name}{suffix}", str(s), "test", ("c",)) for s in range(6) for name in names]
    clean += [ManifestRecord(path, str(s), "test", ("c",)) for s in range(6)
              for path in (f"../data/{s}/b{suffix}", f"A{s}{suffix}", f"0{s}{suffix}")]
    copy = {degraded_path("test_degraded", r.path): r.path for r in clean}
    assert len(copy) == len(clean)
    assert [copy[path] for path in sorted(copy)] != sorted(copy.values())  # by whole path the orders differ
    degraded = [ManifestRecord(new, r.identity, "test_degraded", r.captions) for new, r in zip(copy, clean)]
    pairs = make_verification_pairs(degraded, "test_degraded", impostor_subjects=3, seed=4)
    assert [VerificationPair(copy[p.path_a], copy[p.path_b], p.same) for p in pairs] == \
        make_verification_pairs(clean, "test", impostor_subjects=3, seed=4)
    split = make_identification_split(degraded, "test_degraded", gallery_per_subject=2)
    assert {part: [{**e, "path": copy[e["path"]]} for e in entries] for part, entries in split.items()} == \
        make_identification_split(clean, "test", gallery_per_subject=2)


def test_protocol_files_with_bad_bytes_or_non_string_paths_are_named(tmp_path):
    (tmp_path / "latin1.json").write_bytes('{"gallery": [{"path": "\xe9.png", "identity": "1"}], "probes": []}'
                                           .encode("latin-1"))
    with pytest.raises(ValueError, match=r"identification file .*latin1.json is not valid UTF-8"):
        read_identification_split(tmp_path / "latin1.json")
    for bad_path in (None, [1], 3, ""):
        (tmp_path / "pairs.json").write_text(json.dumps({"pairs": [{"path_a": "a.png", "path_b": "b.png", "same": 1},
                                                                   {"path_a": bad_path, "path_b": "c.png", "same": 0}]}))
        with pytest.raises(ValueError, match=re.escape(f"pairs.json: pair 1: 'path_a' must be a non-empty string, "
                                                       f"got {bad_path!r}")):
            read_verification_pairs(tmp_path / "pairs.json")
        for field in ("path", "identity"):
            probe = {"path": "b.png", "identity": "1", field: bad_path}
            (tmp_path / "i.json").write_text(json.dumps({"gallery": [{"path": "a.png", "identity": "1"}],
                                                         "probes": [probe]}))
            with pytest.raises(ValueError, match=re.escape(f"i.json: probes entry 0: {field!r} must be a non-empty "
                                                           f"string, got {bad_path!r}")):
                read_identification_split(tmp_path / "i.json")
