import hashlib
import json
import os
import pickle
import re
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tgfr.data.convert as convert_module
from tgfr.cli import main
from tgfr.data.convert import convert_celeba_dialog, convert_tgfr_tree, read_split_list, seeded_identity_split
from tgfr.data.files import load_image
from tgfr.data.manifest import read_manifest


def write_image(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 20, 3), value, np.uint8)).save(path)


def tgfr_tree(root):
    """MMCelebA/Face2Text layout: images/<split>/<id>/<id>_<k>.jpg and text/<id>/<id>_<k>.txt."""
    layout = {"train": {"4": [1, 2, 10], "7": [1]}, "test": {"12": [1, 2]}}
    for split, identities in layout.items():
        for identity, ks in identities.items():
            for k in ks:
                write_image(root / "images" / split / identity / f"{identity}_{k}.jpg")
                text = root / "text" / identity / f"{identity}_{k}.txt"
                text.parent.mkdir(parents=True, exist_ok=True)
                text.write_text(f"The man {identity} has brown hair.\nThis person {k} is smiling.\n\n")
    return root


def test_an_identity_folder_with_outer_white_space_is_named_before_any_image_is_decoded(tmp_path, monkeypatch):
    """A manifest refuses the identity "4 " (another person than "4"): convert decoded every image first and then
    failed writing the manifest, naming a record."""
    root = tgfr_tree(tmp_path)
    (root / "images" / "train" / "4").rename(root / "images" / "train" / "4 ")
    (root / "text" / "4").rename(root / "text" / "4 ")
    decoded = []
    monkeypatch.setattr(convert_module, "check_image", decoded.append)
    with pytest.raises(ValueError, match=re.escape(f"identity folder '4 ' of {root / 'images'}/train begins or ends "
                                                   "with white space")):
        convert_tgfr_tree(root)
    assert all("train" not in str(path) for path in decoded)


def test_tgfr_tree_from_folders(tmp_path):
    records, skipped, unused = convert_tgfr_tree(tgfr_tree(tmp_path))
    assert not skipped and not unused
    assert [r.path for r in records] == ["images/test/12/12_1.jpg", "images/test/12/12_2.jpg",
                                         "images/train/4/4_1.jpg", "images/train/4/4_2.jpg",
                                         "images/train/4/4_10.jpg", "images/train/7/7_1.jpg"]
    assert [r.identity for r in records] == ["12", "12", "4", "4", "4", "7"]
    assert records[4].split == "train"
    assert records[4].captions == ("The man 4 has brown hair.", "This person 10 is smiling.")


def test_tgfr_tree_with_split_lists_and_pickles(tmp_path):
    root = tgfr_tree(tmp_path)
    (root / "test").mkdir()
    (root / "test" / "filenames.json").write_text(json.dumps(["12/12_2"]))
    (root / "train").mkdir()
    with open(root / "train" / "filenames.pickle", "wb") as handle:
        pickle.dump(["7/7_1", "4/4_1"], handle)
    with pytest.raises(ValueError, match="refusing to unpickle .*filenames.pickle.*--trust-pickle"):
        convert_tgfr_tree(root)
    records, _, _ = convert_tgfr_tree(root, trust_pickle=True)
    assert [(r.path, r.split) for r in records] == [("images/test/12/12_2.jpg", "test"),
                                                    ("images/train/7/7_1.jpg", "train"),
                                                    ("images/train/4/4_1.jpg", "train")]
    (root / "x.csv").write_text("filename\n4/4_1\n4/4_2\n")
    assert read_split_list(root / "x.csv") == ["4/4_1", "4/4_2"]
    (root / "x.csv").write_text("filename\n 4/4_1\n4/4_2 ,x\n")  # spaces around an entry are not part of it
    assert read_split_list(root / "x.csv") == ["4/4_1", "4/4_2"]


def test_tgfr_tree_bad_files(tmp_path):
    root = tgfr_tree(tmp_path)
    (root / "text" / "4" / "4_2.txt").write_bytes(b"\xff\xfe bad")
    (root / "text" / "7" / "7_1.txt").write_text("\n \n")
    with pytest.raises(ValueError, match=r"4_2.txt is not valid UTF-8"):
        convert_tgfr_tree(root)
    records, skipped, _ = convert_tgfr_tree(root, bad_files="skip")
    assert len(records) == 4 and len(skipped) == 2
    assert any("7_1.txt is empty" in s for s in skipped)
    (root / "test").mkdir()
    (root / "test" / "filenames.json").write_text(json.dumps(["12/12_9"]))
    with pytest.raises(ValueError, match=r"12_9.\(jpg\|jpeg\|png\|webp\|bmp\|tif\|tiff\) does not exist"):
        convert_tgfr_tree(root, bad_files="error")
    with pytest.raises(ValueError, match="expected a folder"):
        convert_tgfr_tree(tmp_path / "nothing")


def test_a_caption_file_that_cannot_be_read_is_skipped_as_a_bad_file(tmp_path, monkeypatch):
    """A read failing (permissions, an I/O error; simulated: root, who runs CI, may read any file) escaped
    --skip-bad as a bare PermissionError and stopped the whole conversion."""
    root = tgfr_tree(tmp_path)
    unreadable = root / "text" / "4" / "4_2.txt"
    read_bytes = Path.read_bytes

    def failing_read(self):
        if self == unreadable:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", failing_read)
    with pytest.raises(ValueError, match=rf"^caption file {re.escape(str(unreadable))} cannot be read \(Permission "
                                         r"denied\) \(pass bad_files='skip'"):
        convert_tgfr_tree(root)
    records, skipped, _ = convert_tgfr_tree(root, bad_files="skip")
    assert skipped == [f"caption file {unreadable} cannot be read (Permission denied)"]
    assert "images/train/4/4_2.jpg" not in [record.path for record in records] and len(records) == 5


def test_tgfr_tree_corrupt_image(tmp_path, capsys):
    root = tgfr_tree(tmp_path / "tree")
    (root / "images/train/4/4_2.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    with pytest.raises(ValueError, match=r"images/train/4/4_2.jpg is corrupt or not an image .*--skip-bad"):
        convert_tgfr_tree(root)
    records, skipped, _ = convert_tgfr_tree(root, bad_files="skip")
    assert [r.path for r in records] == ["images/test/12/12_1.jpg", "images/test/12/12_2.jpg",
                                         "images/train/4/4_1.jpg", "images/train/4/4_10.jpg", "images/train/7/7_1.jpg"]
    assert len(skipped) == 1 and "4_2.jpg is corrupt" in skipped[0]
    assert main(["data", "convert", "mmcelebA", "--root", str(root)]) == 2
    assert "4_2.jpg is corrupt" in capsys.readouterr().err
    assert main(["data", "convert", "mmcelebA", "--root", str(root), "--skip-bad"]) == 0
    assert "5 images; skipped 1" in capsys.readouterr().out
    assert len(read_manifest(root / "manifest.jsonl")) == 5


def test_tgfr_tree_mixed_numeric_and_named_folders(tmp_path):
    root = tmp_path
    for identity, stem in (("abc", "abc_1"), ("5", "5_10"), ("5", "5_2"), ("abc", "abc_x"), ("10", "10_1")):
        write_image(root / "images" / "train" / identity / f"{stem}.jpg")
        (root / "text" / identity).mkdir(parents=True, exist_ok=True)
        (root / "text" / identity / f"{stem}.txt").write_text(f"caption of {stem}\n")
    records, _, _ = convert_tgfr_tree(root)
    # Numbers by value and before names.
    assert [r.path.rsplit("/", 1)[1] for r in records] == ["5_2.jpg", "5_10.jpg", "10_1.jpg", "abc_1.jpg", "abc_x.jpg"]


def test_a_split_list_that_is_a_folder_is_refused(tmp_path):
    """It was passed over: every image of the split's folders was taken instead of the list's."""
    root = tgfr_tree(tmp_path)
    (root / "train" / "filenames.json").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"^split list .*train/filenames\.json is a folder, not a file$"):
        convert_tgfr_tree(root)


def test_an_empty_split_list_of_a_split_with_images_is_refused(tmp_path):
    """An empty list (cut short) left the whole split out of the manifest, without a word."""
    root = tgfr_tree(tmp_path)
    (root / "test").mkdir()
    (root / "test" / "filenames.json").write_text("[]")
    images = len(list((root / "images" / "test").glob("*/*.jpg")))
    with pytest.raises(ValueError, match=re.escape(f"split list {root / 'test' / 'filenames.json'} lists no image, "
                                                   f"while {root / 'images' / 'test'} holds {images} image(s)")):
        convert_tgfr_tree(root)
    # A split folder without images loses nothing to its empty list.
    (root / "images" / "val").mkdir()
    (root / "val").mkdir()
    (root / "val" / "filenames.json").write_text("[]")
    (root / "test" / "filenames.json").unlink()
    records, _, _ = convert_tgfr_tree(root)
    assert {r.split for r in records} == {"train", "test"}


LISTED = ["12/12_2"]
LIST_CONTENT = {".json": json.dumps(LISTED).encode(), ".csv": "".join(f"{e}\n" for e in LISTED).encode(),
                ".pkl": pickle.dumps(LISTED), ".pickle": pickle.dumps(LISTED)}  # by suffix


@pytest.mark.parametrize("trust_pickle", [False, True])
def test_a_json_split_list_beside_a_pickle_is_read_not_the_pickle(tmp_path, trust_pickle):
    """A user who made filenames.json beside TGFR's filenames.pickle, so as not to unpickle it, gets the JSON
    list, with --trust-pickle or without (without, a pickle preferred was refused)."""
    root = tgfr_tree(tmp_path)
    (root / "train").mkdir()
    (root / "train" / "filenames.json").write_text(json.dumps(["4/4_2", "7/7_1"]))
    (root / "train" / "filenames.pickle").write_bytes(pickle.dumps(["4/4_1"]))
    records, _, _ = convert_tgfr_tree(root, trust_pickle=trust_pickle)
    assert [r.path for r in records if r.split == "train"] == ["images/train/4/4_2.jpg", "images/train/7/7_1.jpg"]


@pytest.mark.parametrize("name", ["filenames.JSON", "FileNames.Csv", "filenames.pkl", "filenames.PICKLE"])
def test_a_split_list_is_found_in_any_letter_case_and_as_pkl(tmp_path, name):
    """A list named filenames.JSON (or .pkl) was not found: the split's folders were taken instead, every
    image of them converted."""
    root = tgfr_tree(tmp_path)
    (root / "test").mkdir()
    (root / "test" / name).write_bytes(LIST_CONTENT[os.path.splitext(name)[1].lower()])
    records, _, _ = convert_tgfr_tree(root, trust_pickle=True)
    assert [r.path for r in records if r.split == "test"] == [f"images/test/{entry}.jpg" for entry in LISTED]
    if name.lower().endswith((".pkl", ".pickle")):
        with pytest.raises(ValueError, match=re.escape(f"refusing to unpickle split list {root / 'test' / name}")):
            convert_tgfr_tree(root)


def test_two_split_lists_that_differ_in_letter_case_only_are_refused(tmp_path):
    root = tgfr_tree(tmp_path)
    (root / "test").mkdir()
    (root / "test" / "filenames.json").write_text(json.dumps(["12/12_1"]))
    (root / "test" / "filenames.JSON").write_text(json.dumps(["12/12_2"]))
    if len(list((root / "test").iterdir())) < 2:
        pytest.skip("a file system that ignores letter case holds one file of both names")
    lists = " and ".join(str(root / "test" / name) for name in sorted(["filenames.json", "filenames.JSON"]))
    with pytest.raises(ValueError, match=re.escape(f"split lists {lists} differ in letter case only")):
        convert_tgfr_tree(root)


@pytest.mark.parametrize("kind", ["broken link", "pipe"])
def test_a_split_list_that_cannot_be_read_is_refused(tmp_path, kind):
    """A link to lists on a disk that is not mounted was passed over like a missing list: every image of
    the split's folders went into the manifest."""
    root = tgfr_tree(tmp_path)
    split_list = root / "train" / "filenames.json"
    split_list.parent.mkdir()
    if kind == "pipe":
        os.mkfifo(split_list)
        expected = "is not a regular file"
    else:
        split_list.symlink_to(tmp_path / "unmounted" / "train.json")
        expected = re.escape(f"is a broken symbolic link (to {tmp_path / 'unmounted' / 'train.json'})")
    with pytest.raises(ValueError, match=rf"^split list .*train/filenames\.json {expected}"):
        convert_tgfr_tree(root)


@pytest.mark.parametrize("folder, split_list", [("images/test", False), ("images/train/4", False),
                                                ("images/train/4", True), ("train", True)])
def test_a_split_or_identity_folder_that_is_a_broken_link_is_refused(tmp_path, folder, split_list):
    """A folder linked from a disk that is not mounted left its split (or identity) out of the manifest, with a
    split list too (with --skip-bad, its images were skipped as missing). A split list's folder ("train") so
    linked was taken for a split without a list: every image of images/train/ went into the manifest."""
    root = tgfr_tree(tmp_path / "tree")
    if split_list:
        (root / "train").mkdir()
        (root / "train" / "filenames.json").write_text(json.dumps(["4/4_1", "7/7_1"]))
    shutil.rmtree(root / folder)
    (root / folder).symlink_to(tmp_path / "unmounted")
    with pytest.raises(ValueError, match=rf"^.*{folder} is a broken symbolic link \(to .*unmounted\): a folder of "
                                         "the tree on a disk that is not mounted"):
        convert_tgfr_tree(root, bad_files="skip")


def test_a_file_in_a_split_lists_folders_place_is_refused(tmp_path):
    """It was taken for a split without a list: every image of images/test/ went into the manifest."""
    root = tgfr_tree(tmp_path)
    (root / "test").write_text('["12/12_2"]')
    with pytest.raises(ValueError, match=re.escape(f"{root / 'test'} is not a folder: it is where the split list of "
                                                   f"{root / 'images' / 'test'} is looked for")):
        convert_tgfr_tree(root)


@pytest.mark.parametrize("name", ["filenames.json", "filenames.pickle"])
def test_a_split_list_without_its_image_folder_is_refused_naming_the_list(tmp_path, monkeypatch, name):
    """Splits came from images/*/ only: a valid/ list whose images were not extracted was passed over, the
    manifest written without a valid split and without a word. Refused before any image is decoded."""
    root = tgfr_tree(tmp_path)
    (root / "valid").mkdir()
    (root / "valid" / name).write_bytes(LIST_CONTENT[os.path.splitext(name)[1]])
    decoded = []
    monkeypatch.setattr(convert_module, "check_image", decoded.append)
    with pytest.raises(ValueError, match=re.escape(f"split list {root / 'valid' / name} lists images of split "
                                                   f"'valid', but there is no folder {root / 'images' / 'valid'}")):
        convert_tgfr_tree(root, bad_files="skip")
    assert decoded == []
    (root / "images" / "valid").mkdir()  # a split folder without images: the list's entries are looked for there
    with pytest.raises(ValueError, match=re.escape(f"image file {root / 'images/valid/12/12_2'}.")):
        convert_tgfr_tree(root, trust_pickle=True)


def test_tgfr_tree_lists_each_image_once(tmp_path):
    root = tgfr_tree(tmp_path)
    write_image(root / "images/train/7/7_1.png")  # a second file for the stem 7_1
    records, _, unused = convert_tgfr_tree(root)
    assert [r.path for r in records if r.identity == "7"] == ["images/train/7/7_1.jpg"]
    assert unused == [f"{root / 'images/train/7/7_1.png'}: another image of the entry 7/7_1, which uses 7_1.jpg"]
    (root / "train").mkdir()
    (root / "train" / "filenames.json").write_text(json.dumps(["7/7_1"]))  # a list's entry passes it over too
    assert convert_tgfr_tree(root)[2] == unused
    (root / "train" / "filenames.json").write_text(json.dumps(["4/4_1", "7/7_1", "4/4_1"]))
    with pytest.raises(ValueError, match=r"filenames.json: entry '4/4_1' is listed twice"):
        convert_tgfr_tree(root)
    # The stem after its file: one image too, whichever spelling comes first.
    (root / "train" / "filenames.json").write_text(json.dumps(["4/4_1.jpg", "7/7_1", "4/4_1"]))
    with pytest.raises(ValueError, match=r"filenames.json: entry '4/4_1' is listed twice"):
        convert_tgfr_tree(root)
    # Found through the path, these would get the identity "." or "", or 4 for subject 7's image.
    for entry in ("./4/4_1", "/4/4_1", "4/../7/7_1", "4//4_1", "4_1"):
        (root / "train" / "filenames.json").write_text(json.dumps([entry]))
        with pytest.raises(ValueError, match=re.escape(f"filenames.json: entry {entry!r} is not of the form "
                                                       "'<id>/<image name>' (with no empty, '.' or '..' part)")):
            convert_tgfr_tree(root)


def celeba_dialog(root):
    images = root / "CelebA-HQ-img"
    table = {}
    for hq in range(6):
        write_image(images / f"{hq}.jpg", hq * 10)
        # Padded captions: the manifest keeps them stripped.
        table[f"{hq}.jpg"] = {"overall_caption": f" Face {hq} smiles.\n",
                              "attribute_wise_captions": {"Bangs": f"No bangs {hq}.  ", "Young": " "}}
    (root / "captions_hq.json").write_text(json.dumps(table))
    # CelebA-HQ index -> CelebA file; CelebA file -> identity (pairs of HQ images share one)
    (root / "mapping.txt").write_text("idx orig_idx orig_file\n" +
                                      "".join(f"{hq} {500 + hq} {500 + hq + 1:06d}.jpg\n" for hq in range(6)))
    (root / "identity_CelebA.txt").write_text("".join(f"{500 + hq + 1:06d}.jpg {900 + hq // 2}\n" for hq in range(6)))
    return root, images


def hashed_split(identity: str, seed: int, fractions) -> str:
    """The documented split rule: sha256 of "<seed>:<identity>", first 8 bytes / 2^64, cut at the fractions."""
    position = int(hashlib.sha256(f"{seed}:{identity}".encode()).hexdigest()[:16], 16) / 2**64
    return "train" if position < fractions[0] else "val" if position < fractions[0] + fractions[1] else "test"


def test_celeba_dialog(tmp_path):
    root, images = celeba_dialog(tmp_path)
    records, skipped = convert_celeba_dialog(root / "captions_hq.json", root / "identity_CelebA.txt", images, root,
                                             hq_mapping=root / "mapping.txt", fractions=(0.34, 0.33, 0.33))
    assert not skipped and len(records) == 6
    assert [r.identity for r in records] == ["900", "900", "901", "901", "902", "902"]
    assert records[3].path == "CelebA-HQ-img/3.jpg"
    assert records[3].captions == ("Face 3 smiles.", "No bangs 3.")
    assert [r.split for r in records[::2]] == [hashed_split(i, 0, (0.34, 0.33, 0.33)) for i in ("900", "901", "902")]
    assert all(a.split == b.split for a, b in zip(records[::2], records[1::2]))  # identity-disjoint
    # The records come in the images' order, not the caption file's: a file listing them otherwise is the same set.
    table = json.loads((root / "captions_hq.json").read_text())
    (root / "reversed.json").write_text(json.dumps(dict(reversed(table.items()))))
    assert convert_celeba_dialog(root / "reversed.json", root / "identity_CelebA.txt", images, root,
                                 hq_mapping=root / "mapping.txt", fractions=(0.34, 0.33, 0.33)) == (records, skipped)
    (root / "splits.json").write_text(json.dumps({"train": [f"{i}.jpg" for i in range(4)], "test": ["4.jpg", "5.jpg"]}))
    records, _ = convert_celeba_dialog(root / "captions_hq.json", root / "identity_CelebA.txt", images, root,
                                       hq_mapping=root / "mapping.txt", split_file=root / "splits.json")
    assert [r.split for r in records] == ["train"] * 4 + ["test"] * 2


def test_celeba_dialog_bad_input(tmp_path):
    root, images = celeba_dialog(tmp_path)
    (images / "2.jpg").unlink()
    args = (root / "captions_hq.json", root / "identity_CelebA.txt", images, root)
    with pytest.raises(ValueError, match=r"2.jpg does not exist"):
        convert_celeba_dialog(*args, hq_mapping=root / "mapping.txt")
    records, skipped = convert_celeba_dialog(*args, hq_mapping=root / "mapping.txt", bad_files="skip")
    assert len(records) == 5 and len(skipped) == 1
    with pytest.raises(ValueError, match="has no identity"):  # without the mapping, HQ names are unknown to CelebA
        convert_celeba_dialog(*args)
    (root / "captions_hq.json").write_text("{")
    with pytest.raises(ValueError, match="captions_hq.json is not readable UTF-8 JSON"):
        convert_celeba_dialog(*args)


def test_celeba_dialog_caption_file_with_a_repeated_image_key_is_refused(tmp_path):
    """json.loads keeps the last entry of a repeated key: the image got the second entry's captions only."""
    root, images = celeba_dialog(tmp_path)
    repeated = (root / "captions_hq.json").read_text().removesuffix("}") + ', "0.jpg": "second caption"}'
    assert json.loads(repeated)["0.jpg"] == "second caption"  # what was read
    (root / "captions_hq.json").write_text(repeated)
    with pytest.raises(ValueError, match=re.escape(f"caption file {root / 'captions_hq.json'} is not readable UTF-8 "
                                                   "JSON (key '0.jpg' appears twice in one object")):
        convert_celeba_dialog(root / "captions_hq.json", root / "identity_CelebA.txt", images, root,
                              hq_mapping=root / "mapping.txt", bad_files="skip")


@pytest.mark.parametrize("name", ["/abs/0.jpg", "../0.jpg", "sub/../../0.jpg"])
def test_celeba_dialog_image_name_outside_the_images_folder_is_refused_naming_the_caption_file(tmp_path, name):
    root, images = celeba_dialog(tmp_path)
    table = json.loads((root / "captions_hq.json").read_text())
    table[name] = "A caption."
    (root / "captions_hq.json").write_text(json.dumps(table))
    # Where such an image existed, it was recorded as named: an absolute path, or one out of the manifest's folder.
    with open(root / "identity_CelebA.txt", "a") as identities:
        identities.write(f"{name} 900\n")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(root / 'captions_hq.json'))}: entry {re.escape(repr(name))}: "
                                         rf"an image name must be a path inside images_dir "):
        convert_celeba_dialog(root / "captions_hq.json", root / "identity_CelebA.txt", images, root, bad_files="skip")


def test_celeba_dialog_entry_without_a_caption_is_a_bad_file(tmp_path):
    """An entry whose captions are all blank stopped the run even with --skip-bad, while an empty caption file
    of a TGFR tree is skipped."""
    root, images = celeba_dialog(tmp_path)
    table = json.loads((root / "captions_hq.json").read_text())
    table["3.jpg"] = {"overall_caption": "  ", "attribute_wise_captions": {"Bangs": "\n"}}
    (root / "captions_hq.json").write_text(json.dumps(table))
    args = (root / "captions_hq.json", root / "identity_CelebA.txt", images, root)
    problem = f"{root / 'captions_hq.json'}: entry '3.jpg': no non-empty caption"
    with pytest.raises(ValueError, match=f"^{re.escape(problem)} \\(pass bad_files='skip'"):
        convert_celeba_dialog(*args, hq_mapping=root / "mapping.txt")
    records, skipped = convert_celeba_dialog(*args, hq_mapping=root / "mapping.txt", bad_files="skip")
    assert skipped == [problem]
    assert [r.path for r in records] == [f"CelebA-HQ-img/{i}.jpg" for i in range(6) if i != 3]


def test_celeba_dialog_records_come_in_the_numbers_order_of_their_image_names(tmp_path):
    """"10.jpg" after "9.jpg", not after "1.jpg" as names sort."""
    args = many_identity_dialog(tmp_path, identities=6)
    records, _ = convert_celeba_dialog(*args)
    assert [r.path for r in records] == [f"imgs/{i}.jpg" for i in range(12)]


def test_celeba_dialog_identity_row_with_a_third_field_is_refused(tmp_path):
    """A third field (an identity file with attribute columns, or a name with a space) would be dropped."""
    root, images = celeba_dialog(tmp_path)
    identity_file = root / "identity_CelebA.txt"
    identity_file.write_text(identity_file.read_text().replace("000502.jpg 900", "000502.jpg 900 1"))
    with pytest.raises(ValueError, match=re.escape(f"{identity_file}:2: expected '<image> <identity>', "
                                                   "got '000502.jpg 900 1'")):
        convert_celeba_dialog(root / "captions_hq.json", identity_file, images, root, hq_mapping=root / "mapping.txt")


def test_celeba_dialog_image_missing_from_the_mapping_names_the_mapping_file(tmp_path):
    """It was blamed on the identity file, which is right, as 'CelebA None'."""
    root, images = celeba_dialog(tmp_path)
    mapping = root / "mapping.txt"
    mapping.write_text("".join(mapping.read_text().splitlines(keepends=True)[:-1]))  # no row for 5.jpg
    args = (root / "captions_hq.json", root / "identity_CelebA.txt", images, root)
    with pytest.raises(ValueError, match=rf"^image 5.jpg has no row in the CelebA-HQ mapping file {re.escape(str(mapping))} "
                                         r"\(pass bad_files='skip'"):
        convert_celeba_dialog(*args, hq_mapping=mapping)
    records, skipped = convert_celeba_dialog(*args, hq_mapping=mapping, bad_files="skip")
    assert len(records) == 5 and skipped == [f"image 5.jpg has no row in the CelebA-HQ mapping file {mapping}"]


def test_celeba_dialog_corrupt_image(tmp_path):
    root, images = celeba_dialog(tmp_path)
    (images / "3.jpg").write_bytes(b"GIF89a? no")
    args = (root / "captions_hq.json", root / "identity_CelebA.txt", images, root)
    with pytest.raises(ValueError, match=r"3.jpg is corrupt or not an image"):
        convert_celeba_dialog(*args, hq_mapping=root / "mapping.txt")
    records, skipped = convert_celeba_dialog(*args, hq_mapping=root / "mapping.txt", bad_files="skip")
    assert [r.path for r in records] == [f"CelebA-HQ-img/{i}.jpg" for i in (0, 1, 2, 4, 5)]
    assert len(skipped) == 1 and "3.jpg is corrupt" in skipped[0]


@pytest.mark.parametrize("name, content, message", [
    ("splits.json", "{", r"split file .*splits.json is not valid JSON"),
    ("splits.json", "[" * 100000 + "]" * 100000,
     r"split file .*splits.json is not valid JSON \(arrays or objects nested too deeply"),
    ("splits.json", json.dumps(["0.jpg", "1.jpg"]), r"split file .*splits.json must hold a JSON object \{split: "
                                                      r"\[image names\]\}, got list"),
    ("splits.json", json.dumps({"train": "0.jpg"}), r"splits.json must hold a JSON object"),
    ("splits.json", json.dumps({"train": [f"{i}.jpg" for i in range(6)], "test": ["2.jpg"]}),
     r"split file .*splits.json lists image 2.jpg under two splits, 'train' and 'test'"),
    ("splits.csv", "".join(f"{i}.jpg,train\n" for i in range(6)) + "5.jpg,test\n",
     r"split file .*splits.csv lists image 5.jpg under two splits, 'train' and 'test'"),
    ("splits.csv", "0.jpg,\n", r"splits.csv gives image 0.jpg an empty split name"),
    # A row without its split was dropped: the error then said the file did not list the image.
    ("splits.csv", "0.jpg,train\n\n1.jpg\n", r"^split file .*splits.csv, line 3: a row must be image,split, got "
                                            r"'1.jpg'$"),
    ("splits.csv", "0.jpg,train\n1.jpg,train,test\n", r"^split file .*splits.csv, line 2: a row must be "
                                                      r"image,split, got '1.jpg,train,test'$"),
    # A stray quote made the rest of the file one field, past the csv module's limit: a bare csv.Error; below
    # it, image 0 was in a split named "train\nx.jpg,test\n..." and the others seemed unlisted.
    ("splits.csv", '0.jpg,"train\n' + "x.jpg,test\n" * 20000, r"^split file .*splits.csv:1: not valid CSV \(a quote "
                                                              r"opened on this line or after it never closes\)$"),
    # Read as CSV, a pickle was "not valid UTF-8 (byte 0)".
    ("splits.pkl", "", r"^split file .*splits.pkl must be .json or .csv: pickles are not read"),
    ("splits.PICKLE", "", r"^split file .*splits.PICKLE must be .json or .csv: pickles are not read"),
])
def test_celeba_dialog_bad_split_file(tmp_path, name, content, message):
    root, images = celeba_dialog(tmp_path)
    (root / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        convert_celeba_dialog(root / "captions_hq.json", root / "identity_CelebA.txt", images, root,
                              hq_mapping=root / "mapping.txt", split_file=root / name)


def test_celeba_dialog_missing_files_are_named(tmp_path, capsys):
    root, images = celeba_dialog(tmp_path)
    base = ["data", "convert", "celeba-dialog", "--root", str(root), "--captions", str(root / "captions_hq.json"),
            "--images", str(images), "--hq-mapping", str(root / "mapping.txt")]
    assert main([*base, "--identity-file", str(root / "nope.txt")]) == 2
    assert f"identity file {root / 'nope.txt'} does not exist" in capsys.readouterr().err
    assert main([*base, "--identity-file", str(root / "identity_CelebA.txt"), "--split-file",
                 str(root / "gone.json")]) == 2
    assert f"split file {root / 'gone.json'} does not exist" in capsys.readouterr().err
    assert main([*base[:-1], str(root / "nomap.txt"), "--identity-file", str(root / "identity_CelebA.txt")]) == 2
    assert f"CelebA-HQ mapping file {root / 'nomap.txt'} does not exist" in capsys.readouterr().err
    assert main([*base, "--identity-file", str(root / "identity_CelebA.txt")]) == 0


def test_cli_convert_and_protocol(tmp_path, capsys):
    root = tgfr_tree(tmp_path / "tree")
    out = tmp_path / "elsewhere" / "m.jsonl"
    assert main(["data", "convert", "mmcelebA", "--root", str(root), "--out", str(out)]) == 0
    records = read_manifest(out)
    assert records[0].path == "../tree/images/test/12/12_1.jpg" and (out.parent / records[0].path).is_file()
    (root / "train").mkdir()
    (root / "train" / "filenames.pickle").write_bytes(pickle.dumps(["4/4_1", "4/4_2", "7/7_1"]))
    assert main(["data", "convert", "face2text", "--root", str(root)]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(["data", "convert", "face2text", "--root", str(root), "--trust-pickle"]) == 0
    assert main(["data", "protocol", "--manifest", str(root / "manifest.jsonl"), "--split", "train",
                 "--out", str(tmp_path / "protocol"), "--impostors", "5"]) == 0
    assert "1 genuine, 2 impostor pairs" in capsys.readouterr().out


def test_convert_out_through_a_link_writes_paths_read_from_the_links_folder(tmp_path):
    """Readers join a manifest's paths to the folder of the manifest as named; for an --out that is a link into
    another folder, the paths were written relative to the target's folder, and named no image."""
    root = tgfr_tree(tmp_path / "tree")
    (tmp_path / "store").mkdir()
    link = tmp_path / "work" / "deep" / "m.jsonl"
    link.parent.mkdir(parents=True)
    link.symlink_to("../../store/m.jsonl")
    assert main(["data", "convert", "mmcelebA", "--root", str(root), "--out", str(link)]) == 0
    records = read_manifest(link)
    assert link.is_symlink() and len(records) == 6
    for record in records:
        image = root / "images" / record.split / record.identity / os.path.basename(record.path)
        assert os.path.samefile(link.parent / record.path, image)


def test_symlinked_image_folders_stay_under_the_root(tmp_path, capsys):
    # Datasets are often laid out with the images linked in from a bigger disk: the manifest
    # keeps the link's path (it moves with the folder), and an image folder linked into the root
    # lies inside it.
    tree = tgfr_tree(tmp_path / "store")
    root = tmp_path / "tree"
    root.mkdir()
    os.symlink(tree / "images", root / "images")
    os.symlink(tree / "text", root / "text")
    assert main(["data", "convert", "mmcelebA", "--root", str(root)]) == 0
    expected = sorted(os.path.relpath(p, root) for p in (root / "images").glob("*/*/*.jpg"))
    assert sorted(r.path for r in read_manifest(root / "manifest.jsonl")) == expected

    dialog, images = celeba_dialog(tmp_path / "dialog_store")
    root = tmp_path / "dialog"
    root.mkdir()
    os.symlink(images, root / "hq")
    assert main(["data", "convert", "celeba-dialog", "--root", str(root), "--images", str(root / "hq"),
                 "--captions", str(dialog / "captions_hq.json"), "--hq-mapping", str(dialog / "mapping.txt"),
                 "--identity-file", str(dialog / "identity_CelebA.txt")]) == 0, capsys.readouterr().err
    records = read_manifest(root / "manifest.jsonl")
    assert sorted(r.path for r in records) == sorted(os.path.relpath(p, root) for p in (root / "hq").glob("*.jpg"))


def test_upper_case_suffixes_are_found(tmp_path):
    root = tgfr_tree(tmp_path)
    (root / "images/train/7/7_1.jpg").rename(root / "images/train/7/7_1.JPG")
    (root / "images/test/12/12_2.jpg").rename(root / "images/test/12/12_2.Png")
    records, skipped, unused = convert_tgfr_tree(root)
    assert not skipped and not unused
    paths = [r.path for r in records]
    assert "images/train/7/7_1.JPG" in paths and "images/test/12/12_2.Png" in paths and len(paths) == 6
    (root / "train").mkdir()  # entries from a split list are looked up the same way
    (root / "train" / "filenames.json").write_text(json.dumps(["7/7_1"]))
    assert [r.path for r in convert_tgfr_tree(root)[0] if r.split == "train"] == ["images/train/7/7_1.JPG"]


def test_truncated_jpeg_is_skipped_by_convert(tmp_path, capsys):
    root = tgfr_tree(tmp_path)
    image = root / "images/train/4/4_2.jpg"
    Image.fromarray((np.random.default_rng(0).random((112, 112, 3)) * 255).astype(np.uint8)).save(image)
    image.write_bytes(image.read_bytes()[:image.stat().st_size // 2])
    assert main(["data", "convert", "mmcelebA", "--root", str(root), "--skip-bad"]) == 0
    assert "5 images; skipped 1" in capsys.readouterr().out
    assert "images/train/4/4_2.jpg" not in [r.path for r in read_manifest(root / "manifest.jsonl")]


def test_bad_split_lists_are_named(tmp_path, capsys):
    root = tgfr_tree(tmp_path)
    (root / "train").mkdir()
    (root / "train" / "filenames.pickle").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"split list .*filenames.pickle is not a readable pickle"):
        convert_tgfr_tree(root, trust_pickle=True)
    assert main(["data", "convert", "mmcelebA", "--root", str(root), "--trust-pickle"]) == 2
    assert "filenames.pickle is not a readable pickle" in capsys.readouterr().err
    (root / "train" / "filenames.pickle").unlink()
    (root / "train" / "filenames.csv").write_bytes(b"7/7_\xe9\n")
    with pytest.raises(ValueError, match=r"split list .*filenames.csv is not valid UTF-8"):
        convert_tgfr_tree(root)
    # A byte-order mark (as spreadsheet programs write) is not part of the first entry.
    (root / "train" / "filenames.csv").write_bytes("\ufefffilename\n7/7_1\n".encode("utf-8"))
    assert read_split_list(root / "train" / "filenames.csv") == ["7/7_1"]
    (root / "train" / "filenames.json").write_bytes('\ufeff["7/7_1"]'.encode("utf-8"))
    assert read_split_list(root / "train" / "filenames.json") == ["7/7_1"]


@pytest.mark.parametrize("content", [{"4/4_1": "train"}, [["4/4_1"]], ["4/4_1", None], [1.5]])
def test_a_json_split_list_that_is_not_a_list_of_strings_is_refused(tmp_path, content):
    """An object was read as its keys, and a null or a float as the entry "None" or "1.5"."""
    path = tmp_path / "filenames.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=f"^split list {re.escape(str(path))} must hold a list of strings$"):
        read_split_list(path)


def test_celeba_dialog_with_every_image_skipped_is_an_error(tmp_path, capsys):
    root, images = celeba_dialog(tmp_path)
    for image in images.iterdir():
        image.write_bytes(b"not an image")
    args = (root / "captions_hq.json", root / "identity_CelebA.txt", images, root)
    with pytest.raises(ValueError, match=r"no images found: every one of the 6 image\(s\) of .*captions_hq.json was "
                                         r"skipped, the first because: image file .*0.jpg is corrupt"):
        convert_celeba_dialog(*args, hq_mapping=root / "mapping.txt", bad_files="skip")
    assert main(["data", "convert", "celeba-dialog", "--root", str(root), "--captions", str(args[0]),
                 "--identity-file", str(args[1]), "--images", str(images), "--hq-mapping",
                 str(root / "mapping.txt"), "--skip-bad"]) == 2
    assert "no images found" in capsys.readouterr().err
    assert not (root / "manifest.jsonl").exists()


def test_a_tree_whose_every_image_is_skipped_says_why(tmp_path):
    write_image(tmp_path / "images/train/7/7_1.jpg")
    (tmp_path / "images/train/7/7_1.jpg").write_bytes(b"not an image")
    (tmp_path / "text/7").mkdir(parents=True)
    (tmp_path / "text/7/7_1.txt").write_text("a face\n")
    with pytest.raises(ValueError, match=r"no images found under .*images \(1 skipped, the first because: image "
                                         r"file .*7_1.jpg is corrupt"):
        convert_tgfr_tree(tmp_path, bad_files="skip")



@pytest.mark.parametrize("split_name, marked", [
    ("splits.json", "captions_hq.json"), ("splits.json", "identity_CelebA.txt"), ("splits.json", "mapping.txt"),
    ("splits.json", "splits.json"), ("splits.csv", "splits.csv"),
])
def test_celeba_dialog_files_with_a_byte_order_mark_are_read(tmp_path, split_name, marked):
    root, images = celeba_dialog(tmp_path)
    if split_name.endswith(".json"):
        (root / split_name).write_text(json.dumps({"train": [f"{i}.jpg" for i in range(4)], "test": ["4.jpg", "5.jpg"]}))
    else:
        (root / split_name).write_text("".join(f"{i}.jpg,{'train' if i < 4 else 'test'}\n" for i in range(6)))
    mapping = (root / "mapping.txt").read_text()
    (root / "mapping.txt").write_text(mapping[mapping.index("\n") + 1:])  # without its header, the mark is on a row
    args = (root / "captions_hq.json", root / "identity_CelebA.txt", images, root)
    options = {"hq_mapping": root / "mapping.txt", "split_file": root / split_name}
    expected, _ = convert_celeba_dialog(*args, **options)
    (root / marked).write_bytes(b"\xef\xbb\xbf" + (root / marked).read_bytes())  # as Windows editors save UTF-8
    records, skipped = convert_celeba_dialog(*args, **options)
    assert not skipped and records == expected
    assert [r.split for r in records] == ["train"] * 4 + ["test"] * 2


def test_seeded_identity_split_follows_the_fractions_and_the_seed():
    identities = [f"{i:06d}" for i in range(20000)]
    for seed, fractions in ((0, (0.8, 0.1, 0.1)), (7, (0.5, 0.2, 0.3))):
        splits = [seeded_identity_split(i, seed, fractions) for i in identities]
        assert splits[:50] == [hashed_split(i, seed, fractions) for i in identities[:50]]
        for name, fraction in zip(("train", "val", "test"), fractions):
            assert abs(splits.count(name) / len(splits) - fraction) < 0.015  # binomial std < 0.004
    assert [seeded_identity_split(i, 0) for i in identities[:50]] != [seeded_identity_split(i, 1) for i in identities[:50]]


def many_identity_dialog(root, identities=40):
    images, table = root / "imgs", {}
    for i in range(2 * identities):
        write_image(images / f"{i}.jpg", i % 250)
        table[f"{i}.jpg"] = f"caption {i}"
    (root / "captions.json").write_text(json.dumps(table))
    (root / "ids.txt").write_text("".join(f"{i}.jpg {i // 2}\n" for i in range(2 * identities)))
    return (root / "captions.json", root / "ids.txt", images, root)


@pytest.mark.parametrize("fractions", [(1.2, -0.1, -0.1), (0.5, 0.3, 0.1), (0.5, 0.5)])
def test_fractions_that_are_not_three_non_negative_numbers_summing_to_1_are_refused(tmp_path, fractions):
    """(1.2, -0.1, -0.1) put every identity into train."""
    root, images = celeba_dialog(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"fractions must be three non-negative numbers (train, val, test) "
                                                   f"summing to 1, got {fractions}")):
        convert_celeba_dialog(root / "captions_hq.json", root / "identity_CelebA.txt", images, root,
                              hq_mapping=root / "mapping.txt", fractions=fractions)


def test_removing_identities_moves_no_other_identity_between_splits(tmp_path):
    args = many_identity_dialog(tmp_path)
    before = {r.identity: r.split for r in convert_celeba_dialog(*args, seed=3)[0]}
    assert set(before.values()) == {"train", "val", "test"}
    removed = {identity for identity, split in before.items() if split == "train"}
    removed = {sorted(removed)[0], sorted(removed)[-1], next(i for i, s in sorted(before.items()) if s == "val")}
    (tmp_path / "ids.txt").write_text("".join(f"{i}.jpg {i // 2}\n" for i in range(80) if str(i // 2) not in removed))
    records, skipped = convert_celeba_dialog(*args, seed=3, bad_files="skip")
    after = {r.identity: r.split for r in records}
    assert len(skipped) == 6 and set(after) == set(before) - removed
    assert after == {identity: before[identity] for identity in after}


def test_a_split_file_that_puts_an_identity_in_two_splits_is_refused(tmp_path):
    args = many_identity_dialog(tmp_path, identities=3)
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["0.jpg", "1.jpg", "2.jpg", "4.jpg"],
                                                      "test": ["3.jpg", "5.jpg"]}))
    with pytest.raises(ValueError, match=r"splits.json puts identity 1 in two splits: image 2.jpg in 'train' and "
                                         r"image 3.jpg in 'test'"):
        convert_celeba_dialog(*args, split_file=tmp_path / "splits.json")


def test_split_list_entries_may_name_the_image_file(tmp_path):
    root = tgfr_tree(tmp_path)
    write_image(root / "images/train/4/4_2.png", 7)  # beside 4_2.jpg: the entry's suffix chooses
    (root / "train").mkdir()
    (root / "train" / "filenames.json").write_text(json.dumps(["4/4_1.jpg", "4/4_2.png", "7/7_1"]))
    records, skipped, unused = convert_tgfr_tree(root)
    assert not skipped and not unused
    train = [r for r in records if r.split == "train"]
    assert [r.path for r in train] == ["images/train/4/4_1.jpg", "images/train/4/4_2.png", "images/train/7/7_1.jpg"]
    assert train[1].captions == ("The man 4 has brown hair.", "This person 2 is smiling.")  # text/4/4_2.txt
    (root / "train" / "filenames.json").write_text(json.dumps(["4/4_1.png"]))
    with pytest.raises(ValueError, match=r"image file .*4_1.png does not exist"):
        convert_tgfr_tree(root)
    (root / "train" / "filenames.json").write_text(json.dumps(["4/4_1", "4/4_1.jpg"]))
    with pytest.raises(ValueError, match=r"entry '4/4_1.jpg' is listed twice"):
        convert_tgfr_tree(root)


def test_a_seeded_split_that_leaves_a_split_empty_warns(tmp_path):
    args = many_identity_dialog(tmp_path, identities=3)
    # 3 identities: with seed 0 at least one of the three splits takes none (checked against the formula).
    expected = {seeded_identity_split(str(i), 0) for i in range(3)}
    assert expected != {"train", "val", "test"}
    missing = sorted({"train", "val", "test"} - expected, key=["train", "val", "test"].index)
    with pytest.warns(UserWarning, match=re.escape(f"leaves split(s) {', '.join(missing)} empty")):
        convert_celeba_dialog(*args, seed=0)


def test_a_split_asked_to_be_empty_does_not_warn(tmp_path):
    """fractions (0.9, 0.1, 0): no test split is wanted, so its absence is no news; train and val take
    two or more identities each (checked against the formula), so no split warns."""
    args = many_identity_dialog(tmp_path, identities=40)
    fractions = (0.9, 0.1, 0)
    assert Counter(hashed_split(str(i), 0, fractions) for i in range(40)) == {"train": 38, "val": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records, _ = convert_celeba_dialog(*args, seed=0, fractions=fractions)
    assert {r.split for r in records} == {"train", "val"}


def seed_with_single_identity_splits(identities: int) -> tuple[int, list[str]]:
    """The first seed whose documented split (hashed_split) of identities 0..identities-1 gives some split
    exactly one identity and none fewer, and those splits, sorted."""
    for seed in range(1000):
        counts = Counter(hashed_split(str(i), seed, (0.8, 0.1, 0.1)) for i in range(identities))
        if len(counts) == 3 and 1 in counts.values():
            return seed, sorted(split for split, count in counts.items() if count == 1)
    raise AssertionError("no such seed")


def test_a_seeded_split_of_one_identity_warns_naming_it(tmp_path, capsys):
    """--seed 9 of 30 identities drew a test split of one identity, which `tgfr evaluate` refuses: convert wrote it
    without a word, and the refusal came only after training."""
    args = many_identity_dialog(tmp_path, identities=10)
    seed, alone = seed_with_single_identity_splits(10)
    expected = (f"the seeded split (--seed {seed}) of 10 identities puts a single identity in split(s) "
                f"{', '.join(alone)}, which tgfr evaluate refuses to evaluate (verification needs 2 or more "
                "identities, one of them with 2 or more images): convert more identities, try another --seed, or give "
                "--split-file")
    with pytest.warns(UserWarning, match=re.escape(expected)):
        records, _ = convert_celeba_dialog(*args, seed=seed)
    for split in alone:
        assert len({r.identity for r in records if r.split == split}) == 1
    # The command says it as a warning line, and still writes the manifest.
    captions, identity_file, images, root = args
    assert main(["data", "convert", "celeba-dialog", "--root", str(root), "--captions", str(captions),
                 "--identity-file", str(identity_file), "--images", str(images), "--seed", str(seed)]) == 0
    assert capsys.readouterr().err == f"tgfr data convert: warning: {expected}\n"
    assert len(read_manifest(root / "manifest.jsonl")) == 20


def test_splits_of_two_or_more_identities_each_do_not_warn(tmp_path):
    args = many_identity_dialog(tmp_path, identities=40)
    seed = next(seed for seed in range(1000) if min(Counter(hashed_split(str(i), seed, (0.8, 0.1, 0.1))
                                                            for i in range(40)).values()) >= 2
                and len({hashed_split(str(i), seed, (0.8, 0.1, 0.1)) for i in range(40)}) == 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_celeba_dialog(*args, seed=seed)
    (tmp_path / "splits.csv").write_text("".join(f"{i}.jpg,{'train' if i < 76 else 'test'}\n" for i in range(80)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_celeba_dialog(*args, split_file=tmp_path / "splits.csv")


def test_a_split_file_or_tree_split_of_one_identity_warns_naming_it(tmp_path):
    args = many_identity_dialog(tmp_path / "dialog", identities=4)
    split_file = tmp_path / "splits.csv"
    # Identities 0 and 1 (images 0-3) train, 2 is val, 3 (images 6, 7) test.
    split_file.write_text("".join(f"{i}.jpg,{['train', 'train', 'val', 'test'][i // 2]}\n" for i in range(8)))
    with pytest.warns(UserWarning, match=re.escape(
            f"split file {split_file} puts a single identity in split(s) test, val, which tgfr evaluate refuses to "
            "evaluate (verification needs 2 or more identities, one of them with 2 or more images): move more "
            "identities into each")):
        convert_celeba_dialog(*args, split_file=split_file)
    # tgfr_tree's test split holds identity 12 alone, its train split 4 and 7.
    root = tgfr_tree(tmp_path / "tree")
    with pytest.warns(UserWarning, match=re.escape(
            f"{root / 'images'} puts a single identity in split(s) test, which tgfr evaluate refuses to evaluate "
            "(verification needs 2 or more identities, one of them with 2 or more images): give each more identities "
            "or images, or evaluate another split")):
        convert_tgfr_tree(root)
    write_image(root / "images/test/13/13_1.jpg")
    (root / "text/13").mkdir()
    (root / "text/13/13_1.txt").write_text("a face\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records, _, _ = convert_tgfr_tree(root)
    assert {r.identity for r in records if r.split == "test"} == {"12", "13"}
    # Two identities of one image each: no genuine pair, no probe, which evaluate refuses too.
    for image in ("images/test/12/12_2.jpg", "text/12/12_2.txt"):
        (root / image).unlink()
    with pytest.warns(UserWarning, match=re.escape(
            f"{root / 'images'} puts a single image per identity in split(s) test, which tgfr evaluate refuses")):
        convert_tgfr_tree(root)


@pytest.mark.parametrize("line_break", ["\u2028", "\x0c", "\x85", "\x1c"])
def test_caption_identity_and_mapping_files_end_lines_at_newlines_only(tmp_path, line_break):
    root = tgfr_tree(tmp_path / "tree")
    (root / "text/4/4_1.txt").write_bytes(f"a man with glasses{line_break}and a beard\r\nsecond{line_break}one\n"
                                          .encode("utf-8"))
    captions = {r.path: r.captions for r in convert_tgfr_tree(root)[0]}["images/train/4/4_1.jpg"]
    assert captions == (f"a man with glasses{line_break}and a beard", f"second{line_break}one")

    dialog, images = celeba_dialog(tmp_path / "dialog")
    args = (dialog / "captions_hq.json", dialog / "identity_CelebA.txt", images, dialog)
    # The third line is wrong: the error names line 3, not a line further down.
    identities = (dialog / "identity_CelebA.txt").read_text()
    lines = identities.split("\n")
    lines[0] += line_break
    lines[2] = "000503.jpg"
    (dialog / "identity_CelebA.txt").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match=r"identity_CelebA.txt:3: expected '<image> <identity>', got '000503.jpg'"):
        convert_celeba_dialog(*args, hq_mapping=dialog / "mapping.txt")
    (dialog / "identity_CelebA.txt").write_text(identities)
    mapping = (dialog / "mapping.txt").read_text().split("\n")
    mapping[1] += line_break
    mapping[3] = "2 502"
    (dialog / "mapping.txt").write_text("\n".join(mapping), encoding="utf-8")
    with pytest.raises(ValueError, match=r"mapping.txt:4: expected 'idx orig_idx orig_file', got '2 502'"):
        convert_celeba_dialog(*args, hq_mapping=dialog / "mapping.txt")


def test_split_list_csv_entries_end_at_newlines_only(tmp_path):
    (tmp_path / "list.csv").write_bytes("filename\r\n4/4_1\r\n4/4\u2028_2\n".encode("utf-8"))
    assert read_split_list(tmp_path / "list.csv") == ["4/4_1", "4/4\u2028_2"]


@pytest.mark.parametrize("repeats", [3, 30000])
def test_a_split_list_csv_with_a_stray_quote_is_refused_naming_the_list_and_line(tmp_path, repeats):
    """The quote made the rest of the list one entry, "4/4_1\n4/4_2\n...": a bare csv.Error past the csv module's
    field limit, and below it one missing image (with --skip-bad, one skipped file for every image after it)."""
    (tmp_path / "list.csv").write_text('filename\n4/4_0\n"4/4_1\n' + "4/4_2\n" * repeats)
    with pytest.raises(ValueError, match=f"^split list {re.escape(str(tmp_path / 'list.csv'))}:3: not valid CSV "
                                         r"\(a quote opened on this line or after it never closes\)$"):
        read_split_list(tmp_path / "list.csv")


def test_celeba_dialog_split_csv_fields_are_stripped(tmp_path):
    root, images = celeba_dialog(tmp_path)
    # A trailing comma (an empty third cell, as spreadsheets export) is not a third value.
    (root / "splits.csv").write_text("image, split\n" + "".join(f" {i}.jpg , {'train' if i < 4 else 'test'} , \n"
                                                                for i in range(6)))
    records, _ = convert_celeba_dialog(root / "captions_hq.json", root / "identity_CelebA.txt", images, root,
                                       hq_mapping=root / "mapping.txt", split_file=root / "splits.csv")
    assert [r.split for r in records] == ["train"] * 4 + ["test"] * 2


def test_every_image_type_the_loader_reads_is_converted_and_every_other_file_is_named(tmp_path, capsys):
    root = tmp_path
    pixels = {}
    for k, (name, options) in enumerate([("1_0.webp", {"lossless": True}), ("1_1.BMP", {}), ("1_2.tif", {}),
                                         ("1_3.TIFF", {}), ("1_4.Jpeg", {})]):
        pixels[name] = np.random.default_rng(k).integers(0, 256, (12, 10, 3), dtype=np.uint8)
        (root / "images/train/1").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[name]).save(root / "images/train/1" / name, **options)
    write_image(root / "images/train/1/1_5.jpg", 10)
    write_image(root / "images/train/1/1_5.png", 20)     # passed over: .jpg comes first
    write_image(root / "images/train/1/1_5.jpeg", 30)    # passed over too
    write_image(root / "images/train/1/1_6.gif", 40)     # a type convert does not take
    (root / "images/train/1/notes.txt").write_text("where these came from")
    (root / "images/train/1/aligned").mkdir()
    (root / "images/train/README").write_text("one folder per identity")
    (root / "images/index.csv").write_text("")
    (root / "text/1").mkdir(parents=True)
    for k in range(7):
        (root / f"text/1/1_{k}.txt").write_text(f"caption {k}\n")
    records, skipped, unused = convert_tgfr_tree(root)
    assert not skipped
    assert [r.path for r in records] == ["images/train/1/" + name for name in (*pixels, "1_5.jpg")]
    for record, name in zip(records, ("1_0.webp", "1_1.BMP", "1_2.tif", "1_3.TIFF")):  # lossless: bit-exact
        assert np.array_equal(np.asarray(load_image(root / record.path)), pixels[name]), name
    folder = root / "images/train/1"
    suffixes = "not one of the image suffixes (jpg|jpeg|png|webp|bmp|tif|tiff)"
    assert unused == [f"{root / 'images/index.csv'}: not inside a split folder",
                      f"{folder / '1_6.gif'}: {suffixes}",
                      f"{folder / 'aligned'}: a folder inside an identity folder",
                      f"{folder / 'notes.txt'}: {suffixes}",
                      f"{root / 'images/train/README'}: not inside an identity folder",
                      f"{folder / '1_5.jpeg'}: another image of the entry 1/1_5, which uses 1_5.jpg",
                      f"{folder / '1_5.png'}: another image of the entry 1/1_5, which uses 1_5.jpg"]
    assert main(["data", "convert", "mmcelebA", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "6 images; skipped 0; 7 other file(s) in the image folders not used" in out
    assert [line for line in out.splitlines() if line.startswith("  not used: ")] == \
        [f"  not used: {line}" for line in unused]


def test_a_folder_named_like_an_image_is_not_used_not_taken_for_an_image(tmp_path):
    root = tgfr_tree(tmp_path)
    folder = root / "images" / "train" / "4" / "4_3.jpg"
    folder.mkdir()
    (root / "text" / "4" / "4_3.txt").write_text("a face\n")  # an image of that stem would have its captions
    records, skipped, unused = convert_tgfr_tree(root)
    assert not skipped and "images/train/4/4_3.jpg" not in [r.path for r in records]
    assert unused == [f"{folder}: a folder inside an identity folder"]


def test_a_missing_stem_names_the_suffixes_tried_and_each_is_tried(tmp_path):
    root = tgfr_tree(tmp_path)
    (root / "train").mkdir()
    (root / "train" / "filenames.json").write_text(json.dumps(["7/7_2"]))
    write_image(root / "images/train/7/7_2.gif")
    (root / "text/7/7_2.txt").write_text("a face\n")
    with pytest.raises(ValueError, match=r"7_2\.\(([a-z|]+)\) does not exist, in any letter case \(7_2.gif: not an "
                                         r"image suffix\)") as error:
        convert_tgfr_tree(root)
    tried = re.search(r"7_2\.\(([a-z|]+)\)", str(error.value))[1].split("|")
    assert len(tried) == 7 and "webp" in tried and "tif" in tried
    for suffix in tried:  # every suffix the message names is found, in any letter case
        image = root / f"images/train/7/7_2.{suffix.upper()}"
        write_image(image)
        train = [r.path for r in convert_tgfr_tree(root)[0] if r.split == "train"]
        assert train == [image.relative_to(root).as_posix()]
        image.unlink()


def test_an_entry_naming_a_file_matches_its_suffix_in_any_letter_case(tmp_path):
    root = tgfr_tree(tmp_path)
    (root / "images/train/4/4_1.jpg").rename(root / "images/train/4/4_1.JPG")
    (root / "train").mkdir()
    (root / "train" / "filenames.json").write_text(json.dumps(["4/4_1.jpg", "7/7_1.Jpg"]))
    records, skipped, unused = convert_tgfr_tree(root)
    assert not skipped and not unused
    assert [r.path for r in records if r.split == "train"] == ["images/train/4/4_1.JPG", "images/train/7/7_1.jpg"]
    write_image(root / "images/train/4/4_1.jpg")  # both spellings on a case-sensitive file system: the exact one
    if not (root / "images/train/4/4_1.JPG").samefile(root / "images/train/4/4_1.jpg"):
        (root / "train" / "filenames.json").write_text(json.dumps(["4/4_1.JPG"]))
        assert [r.path for r in convert_tgfr_tree(root)[0] if r.split == "train"] == ["images/train/4/4_1.JPG"]
        (root / "train" / "filenames.json").write_text(json.dumps(["4/4_1.jpg"]))
        assert [r.path for r in convert_tgfr_tree(root)[0] if r.split == "train"] == ["images/train/4/4_1.jpg"]


@pytest.mark.parametrize("split_list", [False, True])
def test_an_identity_in_two_splits_is_refused(tmp_path, capsys, split_list):
    # A test identity that is also trained on is recognised by what training learnt of it: open-set
    # results would look better than they are.
    root = tgfr_tree(tmp_path)
    write_image(root / "images/test/7/7_2.jpg")
    (root / "text/7/7_2.txt").write_text("a face\n")
    if split_list:
        (root / "test").mkdir()
        (root / "test" / "filenames.json").write_text(json.dumps(["12/12_1", "7/7_2.jpg"]))
    for bad_files in ("error", "skip"):
        with pytest.raises(ValueError, match=re.escape(f"{root / 'images'} puts identity '7' in two splits: image "
                                                       "images/test/7/7_2.jpg in 'test' and image "
                                                       "images/train/7/7_1.jpg in 'train'")):
            convert_tgfr_tree(root, bad_files=bad_files)
    assert main(["data", "convert", "mmcelebA", "--root", str(root)]) == 2
    assert "puts identity '7' in two splits" in capsys.readouterr().err
    assert not (root / "manifest.jsonl").exists()


def test_an_image_reached_through_a_link_from_another_record_is_refused(tmp_path, capsys):
    root = tgfr_tree(tmp_path)
    os.symlink("../../test/12/12_1.jpg", root / "images/train/4/4_3.jpg")
    (root / "text/4/4_3.txt").write_text("a face\n")
    assert main(["data", "convert", "mmcelebA", "--root", str(root)]) == 2
    assert ("records 0 and 4 both list image 'images/train/4/4_3.jpg' (record 0 as 'images/test/12/12_1.jpg')"
            in capsys.readouterr().err)
    assert not (root / "manifest.jsonl").exists()


def test_attribute_wise_captions_that_are_not_an_object_are_named(tmp_path):
    root, images = celeba_dialog(tmp_path)
    args = (root / "captions_hq.json", root / "identity_CelebA.txt", images, root)
    for attribute_wise in (["No bangs."], "No bangs."):
        table = json.loads((root / "captions_hq.json").read_text())
        table["4.jpg"]["attribute_wise_captions"] = attribute_wise
        (root / "captions_hq.json").write_text(json.dumps(table))
        for bad_files in ("error", "skip"):
            with pytest.raises(ValueError, match=r"captions_hq.json: entry '4.jpg': 'attribute_wise_captions' must be "
                                                 rf"an object \{{attribute: caption\}}, got {type(attribute_wise).__name__}"):
                convert_celeba_dialog(*args, hq_mapping=root / "mapping.txt", bad_files=bad_files)


@pytest.mark.parametrize("entry, named", [
    (["a good caption", 5, None], "caption 1 must be a string, got 5"),
    ({"overall_caption": 7, "attribute_wise_captions": {"Bangs": "No bangs."}}, "'overall_caption' must be a string, "
                                                                                "got 7"),
    ({"overall_caption": "A face.", "attribute_wise_captions": {"Bangs": None}},
     "the attribute-wise caption 'Bangs' must be a string, got None"),
])
def test_a_caption_that_is_not_a_string_is_refused_naming_the_entry(tmp_path, entry, named):
    """Such captions were dropped: the image kept fewer captions, or only its attribute-wise ones."""
    root, images = celeba_dialog(tmp_path)
    table = json.loads((root / "captions_hq.json").read_text())
    table["4.jpg"] = entry
    (root / "captions_hq.json").write_text(json.dumps(table))
    for bad_files in ("error", "skip"):  # not a blank caption to skip: the file is not in the format read
        with pytest.raises(ValueError, match=f"^{re.escape(str(root / 'captions_hq.json'))}: entry '4.jpg': "
                                             f"{re.escape(named)}$"):
            convert_celeba_dialog(root / "captions_hq.json", root / "identity_CelebA.txt", images, root,
                                  hq_mapping=root / "mapping.txt", bad_files=bad_files)


def test_an_image_given_two_identities_or_two_sources_is_refused(tmp_path):
    root, images = celeba_dialog(tmp_path)
    args = (root / "captions_hq.json", root / "identity_CelebA.txt", images, root)
    identities = (root / "identity_CelebA.txt").read_text()
    # Repeating a line says nothing new: the identity stays, as a reference dict of the rows gives it.
    (root / "identity_CelebA.txt").write_text(identities + "000502.jpg 900\n")
    records, _ = convert_celeba_dialog(*args, hq_mapping=root / "mapping.txt")
    assert [r.identity for r in records] == ["900", "900", "901", "901", "902", "902"]
    (root / "identity_CelebA.txt").write_text(identities + "000502.jpg 901\n")
    with pytest.raises(ValueError, match=r"identity_CelebA.txt:7: 000502.jpg is given '901', but line 2 gave it '900'"):
        convert_celeba_dialog(*args, hq_mapping=root / "mapping.txt")
    (root / "identity_CelebA.txt").write_text(identities)
    (root / "mapping.txt").write_text((root / "mapping.txt").read_text() + "3 503 000505.jpg\n")
    with pytest.raises(ValueError, match=r"mapping.txt:8: 3 is given '000505.jpg', but line 5 gave it '000504.jpg'"):
        convert_celeba_dialog(*args, hq_mapping=root / "mapping.txt")


def test_celeba_dialog_caption_utf8_cannot_encode_is_named(tmp_path):
    root, images = celeba_dialog(tmp_path)
    table = json.loads((root / "captions_hq.json").read_text())
    table["4.jpg"]["attribute_wise_captions"]["Young"] = "Young \ud800."
    (root / "captions_hq.json").write_text(json.dumps(table))  # ASCII JSON: the escape "\ud800"
    with pytest.raises(ValueError, match=re.escape(f"{root / 'captions_hq.json'}: entry '4.jpg': a caption must be "
                                                   "encodable as UTF-8")):
        convert_celeba_dialog(root / "captions_hq.json", root / "identity_CelebA.txt", images, root,
                              hq_mapping=root / "mapping.txt")


def test_celeba_dialog_split_file_names_images_by_their_caption_file_key(tmp_path):
    """The split file was looked up by the image's base name: "a/0.jpg,train" was "does not list image 0.jpg",
    and a row "0.jpg,test" put b/0.jpg, another identity's image it does not name, into test too."""
    images = tmp_path / "imgs"
    write_image(images / "a" / "0.jpg", 10)
    write_image(images / "b" / "0.jpg", 200)
    (tmp_path / "captions.json").write_text(json.dumps({"a/0.jpg": "Face a.", "b/0.jpg": "Face b."}))
    (tmp_path / "ids.txt").write_text("a/0.jpg 1\nb/0.jpg 2\n")
    args = (tmp_path / "captions.json", tmp_path / "ids.txt", images, tmp_path)
    (tmp_path / "split.csv").write_text("a/0.jpg,train\nb/0.jpg,test\n")
    records, _ = convert_celeba_dialog(*args, split_file=tmp_path / "split.csv")
    assert [(r.path, r.identity, r.split) for r in records] == [("imgs/a/0.jpg", "1", "train"),
                                                                ("imgs/b/0.jpg", "2", "test")]
    (tmp_path / "split.json").write_text(json.dumps({"test": ["b/0.jpg"], "train": ["a/0.jpg"]}))
    assert convert_celeba_dialog(*args, split_file=tmp_path / "split.json")[0] == records
    (tmp_path / "base_names.csv").write_text("0.jpg,test\n")
    with pytest.raises(ValueError, match=re.escape(f"split file {tmp_path / 'base_names.csv'} does not list image "
                                                   "a/0.jpg")):
        convert_celeba_dialog(*args, split_file=tmp_path / "base_names.csv")


@pytest.mark.parametrize("name, content, message", [
    ("gone.json", None, r"split file .*gone.json does not exist"),
    ("splits.json", '{"train": ["0.jpg"],}', r"split file .*splits.json is not valid JSON"),
    ("splits.pkl", "", r"split file .*splits.pkl must be .json or .csv"),
    ("splits.json", json.dumps({"train": [f"{i}.jpg" for i in range(4)], "test": ["4.jpg"]}),
     r"split file .*splits.json does not list image 5.jpg"),
    (None, None, r"fractions must be three non-negative numbers"),
])
def test_celeba_dialog_split_file_and_fractions_are_checked_before_any_image_is_decoded(tmp_path, monkeypatch, name,
                                                                                        content, message):
    """They were read only once every image was decoded: 30,000 HQ images took minutes before "does not exist".
    An image the file does not list (5.jpg, the last one here) was refused once every earlier image was decoded."""
    root, images = celeba_dialog(tmp_path)
    if content is not None:
        (root / name).write_text(content)
    decoded = []
    monkeypatch.setattr(convert_module, "check_image", decoded.append)
    options = {"split_file": root / name} if name else {"fractions": (0.5, 0.5)}
    for bad_files in ("error", "skip"):
        with pytest.raises(ValueError, match=message):
            convert_celeba_dialog(root / "captions_hq.json", root / "identity_CelebA.txt", images, root,
                                  hq_mapping=root / "mapping.txt", bad_files=bad_files, **options)
    assert decoded == []


def test_celeba_dialog_identity_in_two_splits_is_refused_before_any_image_is_decoded(tmp_path, monkeypatch):
    """The split file, identity file and mapping say it, but it was found once every image was decoded (minutes
    for 30,000 HQ images). An image whose file is missing still counts: the split file is wrong either way."""
    root, images = celeba_dialog(tmp_path)
    # Identity 900 is HQ images 0 and 1 (celeba_dialog's identity file and mapping).
    (root / "splits.json").write_text(json.dumps({"train": ["0.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg"],
                                                  "test": ["1.jpg"]}))
    decoded = []
    check_image = convert_module.check_image
    monkeypatch.setattr(convert_module, "check_image", lambda path: (decoded.append(path.name), check_image(path)))
    message = re.escape(f"split file {root / 'splits.json'} puts identity 900 in two splits: image 0.jpg in 'train' "
                        "and image 1.jpg in 'test'")
    args = (root / "captions_hq.json", root / "identity_CelebA.txt", images, root)
    for bad_files in ("error", "skip"):
        with pytest.raises(ValueError, match=f"^{message}$"):
            convert_celeba_dialog(*args, hq_mapping=root / "mapping.txt", split_file=root / "splits.json",
                                  bad_files=bad_files)
    (images / "1.jpg").unlink()  # skipped as a missing file, it no longer put identity 900 into test
    with pytest.raises(ValueError, match=f"^{message}$"):
        convert_celeba_dialog(*args, hq_mapping=root / "mapping.txt", split_file=root / "splits.json",
                              bad_files="skip")
    assert decoded == []


def test_celeba_dialog_entry_the_files_say_is_bad_is_found_before_any_image_is_decoded(tmp_path, monkeypatch):
    """An image without an identity was refused once every image before it was decoded; skipped, its reason
    still comes in the images' order among those of corrupt images."""
    root, images = celeba_dialog(tmp_path)
    identity_file = root / "identity_CelebA.txt"
    identity_file.write_text(identity_file.read_text().replace("000506.jpg 902\n", ""))  # HQ image 5's row
    decoded = []
    check_image = convert_module.check_image
    monkeypatch.setattr(convert_module, "check_image", lambda path: (decoded.append(path.name), check_image(path)))
    args = (root / "captions_hq.json", identity_file, images, root)
    problem = f"image 5.jpg (CelebA 000506.jpg) has no identity in {identity_file}"
    with pytest.raises(ValueError, match=f"^{re.escape(problem)} \\(pass bad_files='skip'"):
        convert_celeba_dialog(*args, hq_mapping=root / "mapping.txt")
    assert decoded == []
    (images / "2.jpg").write_bytes(b"not an image")
    records, skipped = convert_celeba_dialog(*args, hq_mapping=root / "mapping.txt", bad_files="skip")
    assert [r.path for r in records] == [f"CelebA-HQ-img/{i}.jpg" for i in (0, 1, 3, 4)]
    assert len(skipped) == 2 and "2.jpg is corrupt" in skipped[0] and skipped[1] == problem
    assert decoded == [f"{i}.jpg" for i in range(5)]  # 5.jpg, refused by the identity file, is never decoded


@pytest.mark.parametrize("argument, option", [("captions_json", "--captions"), ("identity_file", "--identity-file"),
                                              ("images_dir", "--images"), ("hq_mapping", "--hq-mapping"),
                                              ("split_file", "--split-file")])
def test_celeba_dialog_empty_file_or_folder_is_refused_naming_it(tmp_path, monkeypatch, capsys, argument, option):
    """Path("") is ".": an empty --hq-mapping was dropped (every image then "has no identity"), and the others read
    the current folder ("caption file . is a folder")."""
    root, images = celeba_dialog(tmp_path)
    monkeypatch.chdir(root)  # "" taken as "." then reads the dataset's own folder, and nothing may be written there
    given = {"captions_json": str(root / "captions_hq.json"), "identity_file": str(root / "identity_CelebA.txt"),
             "images_dir": str(images), "hq_mapping": str(root / "mapping.txt"), argument: ""}
    message = f"{argument} / {option} is empty: name the "
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        convert_celeba_dialog(given["captions_json"], given["identity_file"], given["images_dir"], root,
                              hq_mapping=given["hq_mapping"], split_file=given.get("split_file"), bad_files="skip")
    options = {"captions_json": "--captions", "identity_file": "--identity-file", "images_dir": "--images",
               "hq_mapping": "--hq-mapping", "split_file": "--split-file"}
    command = ["data", "convert", "celeba-dialog", "--root", str(root), "--skip-bad"]
    for key, value in given.items():
        command += [options[key], value]
    before = sorted(root.rglob("*"))
    assert main(command) == 2
    assert f"{option} is empty" in capsys.readouterr().err
    assert sorted(root.rglob("*")) == before


@pytest.mark.parametrize("split_list, content, message", [
    ("filenames.pickle", pickle.dumps(["12/12_1"]), r"refusing to unpickle split list .*valid/filenames.pickle"),
    ("filenames.json", b'["12/12_1", "12/../4/4_1"]', r"valid/filenames.json: entry '12/../4/4_1' is not of the form"),
    ("filenames.json", b'["12/12_1", "12/12_1.jpg"]', r"valid/filenames.json: entry '12/12_1.jpg' is listed twice"),
], ids=["pickle", "malformed entry", "entry listed twice"])
def test_every_split_list_is_read_and_checked_before_any_image_is_decoded(tmp_path, monkeypatch, split_list, content,
                                                                          message):
    """A list of the split valid/ (sorted after test/ and train/) was read only once their images were decoded."""
    root = tgfr_tree(tmp_path)
    (root / "images/test").rename(root / "images/valid")  # identity 12's images
    write_image(root / "images/test/5/5_1.jpg")
    (root / "text/5").mkdir()
    (root / "text/5/5_1.txt").write_text("a face\n")
    (root / "valid").mkdir()
    (root / "valid" / split_list).write_bytes(content)
    decoded = []
    monkeypatch.setattr(convert_module, "check_image", decoded.append)
    with pytest.raises(ValueError, match=message):
        convert_tgfr_tree(root)
    assert decoded == []


def test_a_caption_file_key_given_twice_is_placed_at_its_second_occurrence(tmp_path, capsys):
    """It was placed at "line 1 column 1 (char 0)" whatever its line."""
    root, images = celeba_dialog(tmp_path)
    (root / "captions_hq.json").write_text('{"0.jpg": "Face 0.",\n "1.jpg": "Face 1.",\n "2.jpg": "Face 2.",\n'
                                           ' "0.jpg": "Face 0 again."}\n')
    assert main(["data", "convert", "celeba-dialog", "--root", str(root), "--captions", str(root / "captions_hq.json"),
                 "--identity-file", str(root / "identity_CelebA.txt"), "--images", str(images),
                 "--hq-mapping", str(root / "mapping.txt")]) == 2
    assert (f"caption file {root / 'captions_hq.json'} is not readable UTF-8 JSON (key '0.jpg' appears twice in one "
            "object: line 4 column 2 (char 64))") in capsys.readouterr().err


def test_a_split_file_that_names_a_split_twice_is_refused(tmp_path):
    """Two lists pasted together: json.loads kept the second "train" list, and the first list's images seemed
    unlisted ("does not list image 0.jpg", which it does)."""
    root, images = celeba_dialog(tmp_path)
    (root / "splits.json").write_text('{"train": ["0.jpg", "1.jpg"],\n "test": ["4.jpg", "5.jpg"],\n'
                                      ' "train": ["2.jpg", "3.jpg"]}')
    with pytest.raises(ValueError, match=re.escape(f"split file {root / 'splits.json'} is not valid JSON (key 'train' "
                                                   "appears twice in one object: line 3 column 2 (char 60))")):
        convert_celeba_dialog(root / "captions_hq.json", root / "identity_CelebA.txt", images, root,
                              hq_mapping=root / "mapping.txt", split_file=root / "splits.json")


def test_a_scanned_image_is_not_parsed_as_a_split_list_entry(tmp_path):
    """Without a split list, an identity folder AC\\DC was split at its backslash (identity "AC", its image missing),
    an image ..jpg stopped the conversion, --skip-bad or not, as "None: entry '7/.' ...", and 4_1.jpg.png was
    taken for an entry naming the file 4_1.jpg ("None: entry '4/4_1.jpg' is listed twice")."""
    root = tgfr_tree(tmp_path)
    write_image(root / "images/train/AC\\DC/AC\\DC_1.jpg")
    (root / "text/AC\\DC").mkdir()
    (root / "text/AC\\DC/AC\\DC_1.txt").write_text("a band\n")
    write_image(root / "images/train/4/4_1.jpg.png", 50)
    (root / "text/4/4_1.jpg.txt").write_text("a second face\n")
    shutil.copy(root / "images/train/7/7_1.jpg", root / "images/train/7/..jpg")  # Pillow takes no suffix from it
    shutil.copy(root / "images/train/7/7_1.jpg", root / "images/train/7/...png")
    for bad_files in ("error", "skip"):
        records, skipped, unused = convert_tgfr_tree(root, bad_files=bad_files)
        assert not skipped
        train = [(r.path, r.identity, r.captions) for r in records if r.split == "train"]
        assert train == [("images/train/4/4_1.jpg", "4", ("The man 4 has brown hair.", "This person 1 is smiling.")),
                         ("images/train/4/4_2.jpg", "4", ("The man 4 has brown hair.", "This person 2 is smiling.")),
                         ("images/train/4/4_10.jpg", "4", ("The man 4 has brown hair.", "This person 10 is smiling.")),
                         ("images/train/4/4_1.jpg.png", "4", ("a second face",)),  # "1.jpg" is a name: after numbers
                         ("images/train/7/7_1.jpg", "7", ("The man 7 has brown hair.", "This person 1 is smiling.")),
                         ("images/train/AC\\DC/AC\\DC_1.jpg", "AC\\DC", ("a band",))]
        folder = root / "images/train/7"
        assert unused == [f"{folder / '...png'}: its stem '..' names a folder in a path, not an image: rename the file",
                          f"{folder / '..jpg'}: its stem '.' names a folder in a path, not an image: rename the file"]


def test_a_split_name_with_outer_white_space_is_refused_naming_its_folder_or_file_before_any_decoding(tmp_path,
                                                                                                      monkeypatch):
    """The manifest refused the split "test " once its first image (for celeba-dialog: every image) was decoded,
    naming neither the folder nor the split file."""
    decoded = []
    monkeypatch.setattr(convert_module, "check_image", decoded.append)
    tree = tgfr_tree(tmp_path / "tree")
    (tree / "images/test").rename(tree / "images/test ")
    with pytest.raises(ValueError, match=re.escape(f"split folder 'test ' of {tree / 'images'} begins or ends with "
                                                   "white space")):
        convert_tgfr_tree(tree)
    root, images = celeba_dialog(tmp_path / "dialog")
    (root / "splits.json").write_text(json.dumps({"train": [f"{i}.jpg" for i in range(4)],
                                                  "test ": ["4.jpg", "5.jpg"]}))
    with pytest.raises(ValueError, match=re.escape(f"split file {root / 'splits.json'} gives image 4.jpg the split "
                                                   "'test ', which begins or ends with white space")):
        convert_celeba_dialog(root / "captions_hq.json", root / "identity_CelebA.txt", images, root,
                              hq_mapping=root / "mapping.txt", split_file=root / "splits.json")
    assert decoded == []
