import dataclasses
import json
import re
from collections import Counter

import pytest

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


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_pairs_round_trip_keeps_line_breaks_in_paths(tmp_path, suffix):
    # Linux file names may hold "\r", "\n", U+0085 and U+2028; the manifest keeps them, so must the pairs.
    pairs = [VerificationPair(f"a{c}b.png", f"c{c}.png", same) for c in ("\r", "\n", "\r\n", "\x85", "\u2028")
             for same in (0, 1)]
    assert read_verification_pairs(write_verification_pairs(tmp_path / f"p.{suffix}", pairs)) == pairs


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


def test_identification_split(tmp_path):
    split = make_identification_split(records(), gallery_per_subject=1)
    assert len(split["gallery"]) == 12 and len(split["probes"]) == 36
    assert {g["identity"] for g in split["gallery"]} == {str(s) for s in range(12)}
    assert not {g["path"] for g in split["gallery"]} & {p["path"] for p in split["probes"]}
    assert all(identity(e["path"]) == e["identity"] for e in split["gallery"] + split["probes"])
    assert read_identification_split(write_identification_split(tmp_path / "i.json", split)) == split
    with pytest.raises(ValueError, match="no probe images"):
        make_identification_split(records(images=1))
    (tmp_path / "bad.json").write_text('{"gallery": []}')
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
    (tmp_path / "short.csv").write_text("path_a,path_b,same\na.png,b.png,1\nc.png\n")  # a row cut short
    with pytest.raises(ValueError, match=r"short.csv:3: 'path_b' must be a non-empty string, got None"):
        read_verification_pairs(tmp_path / "short.csv")
