import json
import pickle

import numpy as np
import pytest
from PIL import Image

from tgfr.cli import main
from tgfr.data.convert import convert_celeba_dialog, convert_tgfr_tree, read_split_list
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


def test_tgfr_tree_from_folders(tmp_path):
    records, skipped = convert_tgfr_tree(tgfr_tree(tmp_path))
    assert not skipped
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
    records, _ = convert_tgfr_tree(root, trust_pickle=True)
    assert [(r.path, r.split) for r in records] == [("images/test/12/12_2.jpg", "test"),
                                                    ("images/train/7/7_1.jpg", "train"),
                                                    ("images/train/4/4_1.jpg", "train")]
    (root / "x.csv").write_text("filename\n4/4_1\n4/4_2\n")
    assert read_split_list(root / "x.csv") == ["4/4_1", "4/4_2"]


def test_tgfr_tree_bad_files(tmp_path):
    root = tgfr_tree(tmp_path)
    (root / "text" / "4" / "4_2.txt").write_bytes(b"\xff\xfe bad")
    (root / "text" / "7" / "7_1.txt").write_text("\n \n")
    with pytest.raises(ValueError, match=r"4_2.txt is not valid UTF-8"):
        convert_tgfr_tree(root)
    records, skipped = convert_tgfr_tree(root, bad_files="skip")
    assert len(records) == 4 and len(skipped) == 2
    assert any("7_1.txt is empty" in s for s in skipped)
    (root / "test").mkdir()
    (root / "test" / "filenames.json").write_text(json.dumps(["12/12_9"]))
    with pytest.raises(ValueError, match=r"12_9.\(jpg\|png\) does not exist"):
        convert_tgfr_tree(root, bad_files="error")
    with pytest.raises(ValueError, match="expected a folder"):
        convert_tgfr_tree(tmp_path / "nothing")


def celeba_dialog(root):
    images = root / "CelebA-HQ-img"
    table = {}
    for hq in range(6):
        write_image(images / f"{hq}.jpg", hq * 10)
        table[f"{hq}.jpg"] = {"overall_caption": f"Face {hq} smiles.",
                              "attribute_wise_captions": {"Bangs": f"No bangs {hq}.", "Young": ""}}
    (root / "captions_hq.json").write_text(json.dumps(table))
    # CelebA-HQ index -> CelebA file; CelebA file -> identity (pairs of HQ images share one)
    (root / "mapping.txt").write_text("idx orig_idx orig_file\n" +
                                      "".join(f"{hq} {500 + hq} {500 + hq + 1:06d}.jpg\n" for hq in range(6)))
    (root / "identity_CelebA.txt").write_text("".join(f"{500 + hq + 1:06d}.jpg {900 + hq // 2}\n" for hq in range(6)))
    return root, images


def test_celeba_dialog(tmp_path):
    root, images = celeba_dialog(tmp_path)
    records, skipped = convert_celeba_dialog(root / "captions_hq.json", root / "identity_CelebA.txt", images, root,
                                             hq_mapping=root / "mapping.txt", fractions=(0.34, 0.33, 0.33))
    assert not skipped and len(records) == 6
    assert [r.identity for r in records] == ["900", "900", "901", "901", "902", "902"]
    assert records[3].path == "CelebA-HQ-img/3.jpg"
    assert records[3].captions == ("Face 3 smiles.", "No bangs 3.")
    assert sorted(r.split for r in records[::2]) == ["test", "train", "val"]
    assert all(a.split == b.split for a, b in zip(records[::2], records[1::2]))  # identity-disjoint
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
