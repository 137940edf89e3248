import errno
import json
import os
import re
import resource
import shutil
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

import tgfr.data.cli as data_cli
from tgfr.cli import main
from tgfr.data.grid import manifest_rows
from tgfr.data.manifest import ManifestRecord, read_manifest, write_manifest
from tgfr.data.synthetic import DEFAULT_DEGRADATION


def test_synth_degrade_grid(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--identities", "6", "--images-per-identity", "3",
                 "--seed", "1", "--workers", "1", "--test-fraction", "0.34"]) == 0
    records = read_manifest(out / "manifest.jsonl")
    assert {r.split for r in records} == {"train", "val", "test", "test_degraded", "val_degraded"}
    assert len([r for r in records if r.split == "test"]) == 6
    assert len([r for r in records if r.split == "val_degraded"]) == len([r for r in records if r.split == "val"])

    assert main(["data", "degrade", "--manifest", str(out / "manifest.jsonl"), "--split", "val",
                 "--recipe", "down16+jpeg40", "--seed", "2", "--name", "val_jpeg"]) == 0
    degraded = [r for r in read_manifest(out / "manifest_val_jpeg.jsonl") if r.split == "val_jpeg"]
    assert len(degraded) == 3 and all(r.meta["recipe"] == "down16+jpeg40" for r in degraded)

    png = tmp_path / "grid.png"
    assert main(["data", "grid", "--out", str(png), "--rows", "3"]) == 0
    assert Image.open(png).size == (4 * 112 + 420, 22 + 3 * 112)
    assert main(["data", "grid", "--out", str(png), "--rows", "2", "--manifest", str(out / "manifest.jsonl")]) == 0
    assert Image.open(png).size == (4 * 112 + 420, 22 + 2 * 112)
    # The same faces of the manifest degraded with --seed's draws.
    grids = []
    for seed in ("1", "2", "1"):
        assert main(["data", "grid", "--out", str(png), "--rows", "2", "--manifest", str(out / "manifest.jsonl"),
                     "--seed", seed]) == 0
        grids.append(png.read_bytes())
    assert grids[0] != grids[1] and grids[0] == grids[2]

    assert main(["data", "degrade", "--manifest", str(out / "manifest.jsonl"), "--recipe", "sharpen"]) == 2
    assert "unknown recipe step 'sharpen'" in capsys.readouterr().err


def test_output_paths_of_the_wrong_kind_are_named(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.jsonl", [ManifestRecord(f"{s}_{k}.png", str(s), "test", ("c",))
                                                     for s in range(3) for k in range(2)])
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    for command in (["grid", "--out", str(tmp_path / "folder"), "--rows", "1"],
                    ["protocol", "--manifest", str(manifest), "--out", str(tmp_path / "file")],
                    ["synth", "--out", str(tmp_path / "file"), "--identities", "6", "--images-per-identity", "1",
                     "--workers", "1"],
                    ["convert", "mmcelebA", "--root", str(tmp_path), "--out", str(tmp_path / "folder")],
                    # under a file: found out only when written, after the work, without the check
                    ["grid", "--out", str(tmp_path / "file" / "grid.png"), "--rows", "1"],
                    ["protocol", "--manifest", str(manifest), "--out", str(tmp_path / "file" / "protocol")],
                    ["convert", "mmcelebA", "--root", str(tmp_path), "--out", str(tmp_path / "file" / "m.jsonl")]):
        assert main(["data", *command]) == 2
        error = capsys.readouterr().err
        assert f"tgfr data {command[0]}: error: --out " in error and ("is a folder" in error or "is a file" in error)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder", "m.jsonl"]  # nothing written
    # An output that cannot be written for another reason is an error naming it, not a traceback.
    assert main(["data", "grid", "--out", str(tmp_path / "file" / "g.png"), "--rows", "1"]) == 2
    assert f"{tmp_path / 'file'}" in capsys.readouterr().err


def test_converts_default_out_is_checked_before_the_work(tmp_path, capsys, monkeypatch):
    """Without --out the manifest goes to ROOT/manifest.jsonl: a folder there failed at the write, after every
    image of the tree had been decoded."""
    import tgfr.data.convert as convert_module

    (tmp_path / "manifest.jsonl").mkdir()
    monkeypatch.setattr(convert_module, "check_image", lambda path: pytest.fail(f"{path} decoded"))
    assert main(["data", "convert", "mmcelebA", "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"tgfr data convert: error: --out's default {tmp_path / 'manifest.jsonl'} is "
                                       "a folder, not a file\n")


def test_an_out_file_linked_into_a_missing_folder_is_refused_before_the_work(tmp_path, capsys):
    """`--out` linked into a disk that is not mounted: the picture was drawn, the disk's folders made under
    its mount point and the picture written there."""
    target = tmp_path / "unmounted" / "disk" / "g.png"
    link = tmp_path / "g.png"
    link.symlink_to(target)
    assert main(["data", "grid", "--out", str(link), "--rows", "1"]) == 2
    assert capsys.readouterr().err == (f"tgfr data grid: error: --out {link} is a broken symbolic link (to {target}): "
                                       f"the folder {target.parent} does not exist\n")
    assert not (tmp_path / "unmounted").exists()


@pytest.mark.parametrize("command", [["synth", "--out", "s"], ["degrade", "--manifest", "m.jsonl"],
                                     ["protocol", "--manifest", "m.jsonl", "--out", "p"],
                                     ["convert", "mmcelebA", "--root", "r"], ["grid", "--out", "g.png"]])
def test_a_negative_seed_names_the_option(tmp_path, monkeypatch, command, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["data", *command, "--seed", "-1"])
    assert exit_.value.code == 2
    assert "argument --seed: must be an integer >= 0, got '-1'" in capsys.readouterr().err


@pytest.mark.parametrize("rows", ["0", "-1"])
def test_grid_rows_must_be_positive(tmp_path, rows, capsys):
    with pytest.raises(SystemExit):
        main(["data", "grid", "--out", str(tmp_path / "g.png"), "--rows", rows])
    assert "argument --rows: must be an integer >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"rows must be a positive integer, got {rows}"):
        manifest_rows(tmp_path / "m.jsonl", int(rows))
    assert not (tmp_path / "g.png").exists()


def test_grid_rows_of_a_manifest_are_its_identities_with_two_images(tmp_path):
    """An identity with one image is passed over; each row holds the first two images of an identity
    in manifest order and the first image's first caption."""
    pictures = [("a0", "A", ("lonely A",)), ("b0", "B", ("first of B", "another of B")),
                ("b1", "B", ("second of B",)), ("c0", "C", ()), ("c1", "C", ("second of C",)),
                ("c2", "C", ("third of C",))]
    records = []
    for shade, (name, identity, captions) in enumerate(pictures):
        Image.new("RGB", (8, 8), (40 * shade, 0, 0)).save(tmp_path / f"{name}.png")
        records.append(ManifestRecord(f"{name}.png", identity, "test", captions))
    manifest = write_manifest(tmp_path / "m.jsonl", records)

    rows = manifest_rows(manifest, 5)
    red_of_first_pixels = [[image.getpixel((0, 0))[0] for image in images] for images, _ in rows]
    assert red_of_first_pixels == [[40, 80], [120, 160]]  # b0 b1, c0 c1
    assert [caption for _, caption in rows] == ["first of B", ""]  # c0 has no caption
    assert len(manifest_rows(manifest, 1)) == 1


def test_grid_says_when_the_split_has_fewer_rows_than_asked_and_writes_png_names_only(tmp_path, capsys):
    records = []
    for identity in "AB":
        for k in range(2):
            Image.new("RGB", (32, 32)).save(tmp_path / f"{identity}{k}.png")  # the default recipe's down24 fits
            records.append(ManifestRecord(f"{identity}{k}.png", identity, "test", ("c",)))
    manifest = write_manifest(tmp_path / "m.jsonl", records)
    grid = ["data", "grid", "--manifest", str(manifest), "--out"]
    assert main([*grid, str(tmp_path / "g.png"), "--rows", "5"]) == 0
    assert capsys.readouterr().out == (f"wrote {tmp_path / 'g.png'} (2 of the 5 rows asked: split 'test' of {manifest} "
                                       "has no more identities with two images)\n")
    assert main([*grid, str(tmp_path / "g.png"), "--rows", "2"]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'g.png'}\n"
    assert main([*grid, str(tmp_path / "g.jpg")]) == 2
    assert capsys.readouterr().err == (f"tgfr data grid: error: --out: the picture is written as PNG, so name a .png "
                                       f"file, got {str(tmp_path / 'g.jpg')!r}\n")
    assert not (tmp_path / "g.jpg").exists()
    assert main([*grid, str(tmp_path / "G.PNG")]) == 0


def test_synth_checks_the_degradation_recipe_before_rendering(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--identities", "2", "--images-per-identity", "1",
                 "--workers", "1", "--degradation", "bogus"]) == 2
    assert "degradation recipe of split 'test_degraded': unknown recipe step 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_protocol_writes_nothing_when_the_identification_split_fails(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.jsonl", [ManifestRecord(f"{s}.png", str(s), "test", ("c",))
                                                     for s in range(3)])  # one image each: no probes
    assert main(["data", "protocol", "--manifest", str(manifest), "--out", str(tmp_path / "p")]) == 2
    assert "no probe images" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("blocked", ["test_pairs.csv", "test_identification.json"])
def test_protocol_writes_neither_file_when_one_path_is_a_folder(tmp_path, capsys, blocked):
    manifest = write_manifest(tmp_path / "m.jsonl", [ManifestRecord(f"{i}.png", str(i // 2), "test", ("c",))
                                                     for i in range(6)])
    (tmp_path / "p" / blocked).mkdir(parents=True)
    assert main(["data", "protocol", "--manifest", str(manifest), "--out", str(tmp_path / "p")]) == 2
    assert f"{blocked} is a folder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "p").iterdir()] == [blocked]


def test_protocol_names_the_csv_file_it_cannot_write_not_its_staged_copy(tmp_path, capsys):
    """A Latin-1 file name cannot go into a CSV pairs file: the error named the hidden staging folder's copy."""
    latin1 = "0" + os.fsdecode(b"\xe9") + ".png"
    manifest = tmp_path / "m.jsonl"  # as json.dumps escapes the name; write_manifest refuses to write it
    manifest.write_text("".join(json.dumps({"path": latin1 if i == 0 else f"{i}.png", "identity": str(i // 2),
                                            "split": "test", "captions": ["c"]}) + "\n" for i in range(6)))
    assert main(["data", "protocol", "--manifest", str(manifest), "--out", str(tmp_path / "p")]) == 2
    error = capsys.readouterr().err
    assert f"cannot write pairs file {tmp_path / 'p' / 'test_pairs.csv'}: path_a of pair 0 must be encodable" in error
    assert "staging" not in error and not (tmp_path / "p").exists()
    assert main(["data", "protocol", "--manifest", str(manifest), "--out", str(tmp_path / "p"), "--format",
                 "json"]) == 0


@pytest.mark.parametrize("command", [["synth", "--out", "s", "--identities", "2", "--images-per-identity", "1"],
                                     ["degrade", "--manifest", "m.jsonl"]])
@pytest.mark.parametrize("workers", ["0", "-1"])
def test_workers_below_one_is_a_usage_error(tmp_path, monkeypatch, command, workers, capsys):
    monkeypatch.chdir(tmp_path)
    write_manifest(tmp_path / "m.jsonl", [ManifestRecord("0.png", "0", "test", ("c",))])
    Image.new("RGB", (8, 8)).save(tmp_path / "0.png")
    with pytest.raises(SystemExit) as exit_:
        main(["data", *command, "--workers", workers])
    assert exit_.value.code == 2
    assert f"argument --workers: must be an integer >= 1, got '{workers}'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png", "m.jsonl"]  # nothing written


def test_degrade_refuses_an_out_manifest_folder_before_writing_any_image(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [ManifestRecord(f"{i}.png", str(i), "test", ("c",)) for i in range(3)])
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    (tmp_path / "out").mkdir()
    assert main(["data", "degrade", "--manifest", str(manifest), "--recipe", "down4",
                 "--out-manifest", str(tmp_path / "out")]) == 2
    assert f"tgfr data degrade: error: out_manifest (--out-manifest) {tmp_path / 'out'} is a folder" in \
        capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png", "1.png", "2.png", "m.jsonl", "out"]
    assert not any((tmp_path / "out").iterdir())
    # The corrected command is not blocked by anything the refused one left.
    assert main(["data", "degrade", "--manifest", str(manifest), "--recipe", "down4",
                 "--out-manifest", str(tmp_path / "out.jsonl")]) == 0


def test_synth_refuses_a_folder_of_other_files_and_rewrites_its_own(tmp_path, capsys):
    def synth(out, *options):
        return main(["data", "synth", "--out", str(out), "--identities", "4", "--images-per-identity", "1",
                     "--captions-per-image", "1", "--val-fraction", "0", "--workers", "1", "--no-degraded", *options])

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    mine = '{"path": "mine.jpg", "identity": "a", "split": "train", "captions": ["my data"]}\n'
    (theirs / "manifest.jsonl").write_text(mine)
    assert synth(theirs) == 2
    assert capsys.readouterr().err == (f"tgfr data synth: error: output folder (--out) {theirs} already holds files "
                                       "(e.g. manifest.jsonl) but no synthetic.json of an earlier synthetic dataset; "
                                       "not writing over them: choose an empty or new folder\n")
    assert [p.name for p in theirs.iterdir()] == ["manifest.jsonl"] and (theirs / "manifest.jsonl").read_text() == mine
    (theirs / "synthetic.json").write_text('{"tool": "another generator", "key": "theirs"}')  # not this synth's
    assert synth(theirs) == 2
    assert "already holds files (e.g. manifest.jsonl) but no synthetic.json" in capsys.readouterr().err
    assert (theirs / "manifest.jsonl").read_text() == mine

    own = tmp_path / "own"
    own.mkdir()  # empty: written into
    assert synth(own, "--seed", "1") == 0
    first = read_manifest(own / "manifest.jsonl")
    assert synth(own, "--seed", "2") == 0  # an earlier synth output is rewritten
    assert json.loads((own / "synthetic.json").read_text())["seed"] == 2
    assert [r.captions for r in read_manifest(own / "manifest.jsonl")] != [r.captions for r in first]


def test_protocol_options_reach_the_files(tmp_path):
    """--gallery-per-subject sizes each subject's gallery; --seed draws the impostor pairs (the same seed
    the same pairs, another seed others)."""
    manifest = write_manifest(tmp_path / "m.jsonl", [ManifestRecord(f"{i}.png", str(i // 4), "test", ("c",))
                                                     for i in range(80)])

    def protocol(out, *options):
        assert main(["data", "protocol", "--manifest", str(manifest), "--impostors", "3", "--out",
                     str(tmp_path / out), *options]) == 0
        return tmp_path / out

    split = json.loads((protocol("g2", "--gallery-per-subject", "2") / "test_identification.json").read_text())
    assert (len(split["gallery"]), len(split["probes"])) == (2 * 20, 2 * 20)
    pairs = {seed: (protocol(f"s{seed}", "--seed", seed) / "test_pairs.csv").read_text() for seed in ("1", "2")}
    assert pairs["1"] != pairs["2"]
    assert (protocol("s1again", "--seed", "1") / "test_pairs.csv").read_text() == pairs["1"]


@pytest.mark.parametrize("split", ["../escaped", "a/b", "a\\b", "..", "."])
def test_protocol_refuses_a_split_that_would_name_files_outside_out(tmp_path, capsys, split):
    # The manifest holds that split, so only the check on the name stops files being written.
    manifest = write_manifest(tmp_path / "m.jsonl", [ManifestRecord(f"{i}.png", str(i // 2), split, ("c",))
                                                     for i in range(6)])
    assert main(["data", "protocol", "--manifest", str(manifest), "--split", split, "--out", str(tmp_path / "p")]) == 2
    assert f"split (--split) must be one plain name (no '/', '\\', '.' or '..'), got {split!r}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["m.jsonl"]


def test_synth_over_its_earlier_output_leaves_only_what_the_new_manifest_lists(tmp_path, capsys):
    out = tmp_path / "s"

    def synth(*options):
        return main(["data", "synth", "--out", str(out), "--identities", "6", "--images-per-identity", "2",
                     "--captions-per-image", "1", "--workers", "1", *options])

    def degrade():
        return main(["data", "degrade", "--manifest", str(out / "manifest.jsonl"), "--recipe", "jpeg20",
                     "--name", "test_degraded", "--out-manifest", str(out / "manifest.jsonl")])

    def images_on_disk():
        return {p.relative_to(out).as_posix() for p in out.rglob("*.png")}

    assert synth() == 0 and degrade() == 0
    (out / "images" / "notes.txt").write_text("mine")  # the user's, which no run wrote
    assert synth("--seed", "5") == 0
    assert images_on_disk() == {r.path for r in read_manifest(out / "manifest.jsonl")}
    assert degrade() == 0  # no stale images left in test_degraded/ to refuse it for
    assert synth("--seed", "6", "--images-per-identity", "1", "--no-degraded") == 0
    assert images_on_disk() == {r.path for r in read_manifest(out / "manifest.jsonl")}
    assert not (out / "test_degraded").exists()  # emptied, so removed
    assert (out / "images" / "notes.txt").read_text() == "mine"


def test_protocol_format_impostors_and_split_reach_the_files(tmp_path):
    """--format json writes <split>_pairs.json; --impostors 2 gives each of 10 subjects (2 images each,
    so no draw is passed over) 2 impostor pairs; --split val takes the pairs and the identification
    split from val only, though test holds subjects too."""
    records = [ManifestRecord(f"{split}{i}.png", f"{split}{i // 2}", split, ("c",))
               for split in ("val", "test") for i in range(20)]
    manifest = write_manifest(tmp_path / "m.jsonl", records)
    out = tmp_path / "p"
    assert main(["data", "protocol", "--manifest", str(manifest), "--out", str(out), "--split", "val",
                 "--format", "json", "--impostors", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["val_identification.json", "val_pairs.json"]
    pairs = json.loads((out / "val_pairs.json").read_text())["pairs"]
    impostors = [pair for pair in pairs if pair["same"] == 0]
    assert len(impostors) == 10 * 2 and len(pairs) == 10 + 10 * 2
    identification = json.loads((out / "val_identification.json").read_text())
    val_paths = {r.path for r in records if r.split == "val"}
    assert {entry["path"] for part in ("gallery", "probes") for entry in identification[part]} == val_paths
    assert {pair[end] for pair in pairs for end in ("path_a", "path_b")} <= val_paths


@pytest.mark.parametrize("source", ["synthetic", "manifest"])
def test_grid_options_reach_the_rows_and_the_picture(tmp_path, monkeypatch, source):
    """--split picks the manifest's faces, --seed draws the synthetic faces (not only their degraded
    copies) and seeds the degradation, --recipe degrades them."""
    calls = {}
    monkeypatch.setattr(data_cli, "manifest_rows", lambda *arguments: calls.setdefault("manifest_rows", arguments))
    monkeypatch.setattr(data_cli, "synthetic_rows", lambda *arguments: calls.setdefault("synthetic_rows", arguments))
    monkeypatch.setattr(data_cli, "render_grid", lambda *arguments: calls.setdefault("render_grid", arguments)[1])
    out, manifest = tmp_path / "grid.png", str(tmp_path / "m.jsonl")
    faces = ["--manifest", manifest, "--split", "val"] if source == "manifest" else []
    assert main(["data", "grid", "--out", str(out), "--rows", "3", "--recipe", "down4", "--seed", "7", *faces]) == 0
    rows = calls.pop(f"{source}_rows")
    assert rows == ((manifest, 3, "val", "down4") if source == "manifest" else (3, 7))
    assert calls == {"render_grid": (rows, out, "down4", 7)}


def test_synth_takes_captions_per_image(tmp_path, monkeypatch):
    """--captions-per-image reaches the dataset's settings (not the default 5)."""
    configs = []
    monkeypatch.setattr(data_cli, "generate_synthetic_dataset",
                        lambda out, config, workers: configs.append(config) or out / "manifest.jsonl")
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--identities", "10", "--captions-per-image", "2"]) == 0
    assert [config.captions_per_image for config in configs] == [2]


def celeba_dialog_convert(tmp_path, *options):
    """`tgfr data convert celeba-dialog` with its required files named (convert_celeba_dialog is
    patched by the caller, so they need not exist)."""
    return main(["data", "convert", "celeba-dialog", "--root", str(tmp_path), "--out", str(tmp_path / "m.jsonl"),
                 "--captions", "captions.json", "--identity-file", "identity.txt", "--images", str(tmp_path),
                 *options])


def test_convert_celeba_dialog_takes_the_seed(tmp_path, monkeypatch):
    """--seed draws the identity split of celeba-dialog (without --split-file)."""
    seeds = []
    monkeypatch.setattr(data_cli, "convert_celeba_dialog",
                        lambda *arguments, seed, **options: seeds.append(seed) or ([], []))
    assert celeba_dialog_convert(tmp_path, "--seed", "3") == 0
    assert seeds == [3]


def test_convert_celeba_dialog_defaults_its_seed_to_0(tmp_path, monkeypatch):
    seeds = []
    monkeypatch.setattr(data_cli, "convert_celeba_dialog",
                        lambda *arguments, seed, **options: seeds.append(seed) or ([], []))
    assert celeba_dialog_convert(tmp_path) == 0
    assert seeds == [0]


def test_convert_celeba_dialog_prints_its_warnings_as_warning_lines(tmp_path, monkeypatch, capsys):
    """A seeded split that leaves a split empty warns (test_convert): the command shows one line, not a
    Python warning naming a source line."""
    def convert(*arguments, **options):
        warnings.warn("the seeded split leaves split(s) test empty", stacklevel=2)
        return [], []
    monkeypatch.setattr(data_cli, "convert_celeba_dialog", convert)
    assert celeba_dialog_convert(tmp_path) == 0
    assert capsys.readouterr().err == "tgfr data convert: warning: the seeded split leaves split(s) test empty\n"


def test_convert_celeba_dialog_refuses_trust_pickle(tmp_path, monkeypatch, capsys):
    """Accepted and passed over, it seemed to let a pickled --split-file be read."""
    monkeypatch.setattr(data_cli, "convert_celeba_dialog", lambda *arguments, **options: pytest.fail("converted"))
    assert celeba_dialog_convert(tmp_path, "--trust-pickle", "--split-file", "split.pickle") == 2
    assert capsys.readouterr().err == ("tgfr data convert: error: --trust-pickle: an option of mmcelebA and face2text "
                                       "(their pickled split lists), which celeba-dialog does not read (its "
                                       "--split-file is JSON or CSV, never a pickle)\n")
    assert not (tmp_path / "m.jsonl").exists()



@pytest.mark.parametrize("seed", ["0", "7"])
def test_convert_celeba_dialog_refuses_a_seed_with_a_split_file(tmp_path, monkeypatch, capsys, seed):
    """The split file gives the splits: --seed 0 and --seed 7 wrote the same manifest, the seed passed over. A
    split file alone is converted (the seed it is passed is not read)."""
    split_files = []
    monkeypatch.setattr(data_cli, "convert_celeba_dialog",
                        lambda *arguments, split_file, **options: split_files.append(split_file) or ([], []))
    assert celeba_dialog_convert(tmp_path, "--split-file", "split.json", "--seed", seed) == 2
    assert capsys.readouterr().err == ("tgfr data convert: error: --seed, --split-file: --seed draws the identity "
                                       "split that --split-file gives instead; give one of them\n")
    assert split_files == [] and not (tmp_path / "m.jsonl").exists()
    assert celeba_dialog_convert(tmp_path, "--split-file", "split.json") == 0
    assert split_files == ["split.json"]
@pytest.mark.parametrize("layout", ["mmcelebA", "face2text"])
@pytest.mark.parametrize("options, named", [
    (["--split-file", "split.json"], "--split-file"), (["--seed", "0"], "--seed"),
    (["--hq-mapping", "none.txt", "--captions", "c.json"], "--captions, --hq-mapping"),
    (["--identity-file", "i.txt", "--images", "img"], "--identity-file, --images")])
def test_convert_of_a_tree_refuses_the_options_only_celeba_dialog_reads(tmp_path, monkeypatch, capsys, layout, options,
                                                                        named):
    """A split file given to a TGFR tree's layout was passed over, the splits taken from the tree."""
    monkeypatch.setattr(data_cli, "convert_tgfr_tree", lambda *arguments, **options: pytest.fail("converted"))
    assert main(["data", "convert", layout, "--root", str(tmp_path), *options]) == 2
    assert capsys.readouterr().err == (f"tgfr data convert: error: {named}: celeba-dialog options, which {layout} "
                                       "does not read (its splits come from the tree under --root: images/<split>/ "
                                       "and <split>/filenames.*)\n")
    assert not (tmp_path / "manifest.jsonl").exists()


def test_synth_refuses_a_degradation_recipe_with_no_degraded_split(tmp_path, monkeypatch, capsys):
    configs = []
    monkeypatch.setattr(data_cli, "generate_synthetic_dataset",
                        lambda out, config, workers: configs.append(config) or out / "manifest.jsonl")
    synth = ["data", "synth", "--out", str(tmp_path / "s"), "--identities", "10"]
    assert main([*synth, "--no-degraded", "--degradation", "down16"]) == 2
    assert "error: --degradation: the recipe of the degraded splits, which --no-degraded leaves out" in (
        capsys.readouterr().err)
    assert main([*synth, "--no-degraded"]) == 0 and main(synth) == 0 and main([*synth, "--degradation", "down16"]) == 0
    assert main([*synth, "--degradation", "down16", "--generator-version", "3"]) == 0
    assert [config.degradations for config in configs] == [
        {}, {"test_degraded": DEFAULT_DEGRADATION, "val_degraded": DEFAULT_DEGRADATION},
        {"test_degraded": "down16", "val_degraded": "down16"}, {"test_degraded": "down16"}]


def test_grid_refuses_a_split_without_a_manifest_and_takes_test_by_default(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(data_cli, "manifest_rows", lambda *arguments: calls.append(arguments) or [])
    monkeypatch.setattr(data_cli, "render_grid", lambda rows, out, *arguments: out)
    assert main(["data", "grid", "--out", str(tmp_path / "g.png"), "--split", "val"]) == 2
    assert ("error: --split: a split of --manifest; without it the faces are synthetic and have no split"
            in capsys.readouterr().err)
    assert main(["data", "grid", "--out", str(tmp_path / "g.png"), "--manifest", "m.jsonl"]) == 0
    assert calls == [("m.jsonl", 8, "test", DEFAULT_DEGRADATION)]


@pytest.mark.parametrize("count", [20, 21])
def test_convert_lists_the_first_20_skipped_files_and_the_rest_in_a_file_it_names(tmp_path, monkeypatch, capsys, count):
    """Exactly 20 skipped files are all listed with no "... and 0 more"; from a 21st on, the summary counts the rest,
    which were named nowhere: every one is written to <out>.skipped.txt, which the summary names. A later run that
    lists them all removes that file, which would otherwise pass for its list."""
    skipped = [f"image {i}.jpg is missing" for i in range(count)]
    listing = tmp_path / "m.jsonl.skipped.txt"
    listing.write_text("skipped: image old.jpg of an earlier run\n")
    monkeypatch.setattr(data_cli, "convert_celeba_dialog", lambda *arguments, **options: ([], skipped))
    assert celeba_dialog_convert(tmp_path) == 0
    lines = capsys.readouterr().out.splitlines()
    more = [f"  ... and 1 more skipped; all 21 are listed in {listing}"] if count > 20 else []
    assert lines[1:] == [f"  skipped: {problem}" for problem in skipped[:20]] + more
    if count > 20:
        assert listing.read_text().splitlines() == [f"skipped: {problem}" for problem in skipped]
    else:
        assert not listing.exists()


def test_convert_lists_every_file_left_out_of_a_tree_beside_the_manifest(tmp_path, capsys):
    """25 images without captions, skipped, and 22 files no record uses: the summary names 20 of each; the list beside
    the manifest names all of them, each as often as the conversion found it."""
    for i in range(25):
        (tmp_path / f"images/train/{i}").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / f"images/train/{i}/{i}_1.png")
        if i < 22:
            (tmp_path / f"images/train/{i}/notes.txt").write_text("x")
    one_image_tree(tmp_path / "kept")
    shutil.move(tmp_path / "kept/images/train/1", tmp_path / "images/train/kept")
    shutil.move(tmp_path / "kept/text/1", tmp_path / "text/kept")
    for path in (tmp_path / "images/train/kept/1_1.png", tmp_path / "text/kept/1_1.txt"):
        path.rename(path.with_name(f"kept_1{path.suffix}"))
    shutil.rmtree(tmp_path / "kept")
    assert main(["data", "convert", "mmcelebA", "--root", str(tmp_path), "--skip-bad"]) == 0
    printed = capsys.readouterr().out.splitlines()
    listing = (tmp_path / "manifest.jsonl.skipped.txt").read_text().splitlines()
    skipped = sorted(str(tmp_path / f"text/{i}/{i}_1.txt") for i in range(25))
    unused = sorted(str(tmp_path / f"images/train/{i}/notes.txt") for i in range(22))
    assert sorted(re.search(r" (/\S+\.txt) ", line).group(1) for line in listing if line.startswith("skipped: ")) == (
        skipped)
    assert sorted(next(path for path in unused if path in line) for line in listing
                  if line.startswith("not used: ")) == unused
    assert len(listing) == 25 + 22
    assert printed[21] == f"  ... and 5 more skipped; all 25 are listed in {tmp_path / 'manifest.jsonl.skipped.txt'}"
    assert printed[-1] == f"  ... and 2 more not used; all 22 are listed in {tmp_path / 'manifest.jsonl.skipped.txt'}"


@pytest.mark.parametrize("command", ["convert", "degrade", "degrade by default"])
def test_an_output_whose_list_of_files_left_out_would_not_fit_its_name_is_refused_before_the_work(tmp_path, capsys,
                                                                                                   command):
    """<out>.skipped.txt is 12 bytes longer than <out>, and is first written under a name 14 bytes longer still: an
    --out name that left room for its own temporary name but not for the list's had the manifest written, then the
    command fail ("File name too long") with none of the skipped files printed."""
    name = "m" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 14 - len(".jsonl")) + ".jsonl"  # fits, the list does not
    out = tmp_path / name
    if command == "convert":  # 21 images without captions, skipped, and one converted
        for k in range(22):
            (tmp_path / "images/train/1").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (k, 0, 0)).save(tmp_path / f"images/train/1/1_{k}.png")
        (tmp_path / "text/1").mkdir(parents=True)
        (tmp_path / "text/1/1_0.txt").write_text("A face.\n")
        arguments = ["convert", "mmcelebA", "--root", str(tmp_path), "--out", str(out), "--skip-bad"]
        option = "--out"
    else:  # 21 corrupt images of 22, skipped
        # By default the output is <stem>_test_degraded.jsonl: a stem that leaves it the length of `name`.
        source = tmp_path / ("m.jsonl" if command == "degrade" else name[:-len("_test_degraded.jsonl")] + ".jsonl")
        write_manifest(source, [ManifestRecord(f"{k}.png", str(k), "test", ("c",)) for k in range(22)])
        Image.new("RGB", (32, 32)).save(tmp_path / "0.png")
        for k in range(1, 22):
            (tmp_path / f"{k}.png").write_bytes(b"not an image")
        arguments = ["degrade", "--manifest", str(source), "--recipe", "down16", "--skip-bad"]
        if command == "degrade":
            arguments += ["--out-manifest", str(out)]
            option = "--out-manifest"
        else:
            out, option = source.with_name(f"{source.stem}_test_degraded.jsonl"), "--out-manifest's default"
            assert len(out.name) == len(name)
    before = sorted(tmp_path.rglob("*"))
    assert main(["data", *arguments]) == 2
    listing = f"{out}.skipped.txt"
    assert capsys.readouterr().err.startswith(f"tgfr data {command.split()[0]}: error: list of the files left out "
                                              f"beside {option} {listing}: its name is {len(name) + 12} bytes long")
    assert sorted(tmp_path.rglob("*")) == before


IMAGE_WRITE_LIMIT = 1024  # bytes: RLIMIT_FSIZE fails a write past it with EFBIG, as a full disk fails with ENOSPC


def run_with_file_size_limit(*arguments):
    """`tgfr data ...` in a process whose files cannot grow past IMAGE_WRITE_LIMIT (Python ignores
    SIGXFSZ, so such a write raises instead of killing it); a synthetic face's PNG is larger."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (IMAGE_WRITE_LIMIT, resource.RLIM_INFINITY))

    return subprocess.run([sys.executable, "-m", "tgfr.cli", "data", *arguments], capture_output=True, text=True,
                          preexec_fn=limit, timeout=300)


def test_an_image_that_cannot_be_written_is_named(tmp_path):
    """A full disk's error, raised by PIL's write, names no file: synth and degrade name the image."""
    out = tmp_path / "synth"
    result = run_with_file_size_limit("synth", "--out", str(out), "--identities", "10", "--images-per-identity", "1",
                                      "--workers", "1")
    assert result.returncode == 2
    assert re.fullmatch(rf"tgfr data synth: error: \[Errno {errno.EFBIG}\] cannot write image "
                        rf"{re.escape(str(out))}/images/\w+/\d+/\d+_0\.png: File too large\n", result.stderr)
    assert main(["data", "synth", "--out", str(out), "--identities", "10", "--images-per-identity", "2",
                 "--workers", "1", "--no-degraded"]) == 0
    result = run_with_file_size_limit("degrade", "--manifest", str(out / "manifest.jsonl"), "--split", "train",
                                      "--recipe", "jpeg90")
    assert result.returncode == 2
    assert re.fullmatch(rf"tgfr data degrade: error: \[Errno {errno.EFBIG}\] cannot write image "
                        rf"{re.escape(str(out))}/train_degraded/images/train/\d+/\d+_\d\.png: "
                        rf"File too large\n", result.stderr)
    assert not (out / "train_degraded").exists()


def test_protocol_files_are_replaced_together_or_not_at_all(tmp_path, capsys, monkeypatch):
    """A full disk while the identification split was written left the new pairs file beside the earlier split."""
    import tgfr.data.cli as data_cli

    manifest = write_manifest(tmp_path / "m.jsonl", [ManifestRecord(f"{i}.png", str(i // 2), "test", ("c",))
                                                     for i in range(6)])
    assert main(["data", "protocol", "--manifest", str(manifest), "--out", str(tmp_path / "p")]) == 0
    before = {path.name: path.read_bytes() for path in (tmp_path / "p").iterdir()}

    def full_disk(*arguments):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data_cli, "write_identification_split", full_disk)
    assert main(["data", "protocol", "--manifest", str(manifest), "--out", str(tmp_path / "p"), "--seed", "7"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in (tmp_path / "p").iterdir()} == before


def test_grid_cells_are_degraded_with_their_own_seeded_draws(tmp_path):
    """Each degraded cell is its image degraded with the generator of (seed, "row/column") (celeba's 112 x 112 is
    the cell's size): shared draws would give two cells of a row the same flip, blur and noise."""
    from tgfr.data.degrade import degrade_image, image_rng
    from tgfr.data.grid import render_grid
    from tgfr.data.synthetic_faces import OUTPUT_SIZE

    faces = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)) for i in range(4)]
    picture = np.asarray(Image.open(render_grid([(faces[:2], "a"), (faces[2:], "b")], tmp_path / "g.png", "celeba",
                                                seed=3)).convert("RGB"))
    size, header = OUTPUT_SIZE, 22
    for row in range(2):
        for column in range(2):
            expected = degrade_image(faces[2 * row + column], "celeba", image_rng(3, f"{row}/{column}"))
            y, x = header + row * size, (2 + column) * size
            assert np.array_equal(picture[y:y + size, x:x + size], np.asarray(expected))


def test_grid_degrades_a_manifests_image_at_its_own_size_then_resizes_it_for_its_cell(tmp_path):
    """As `tgfr data degrade` degrades it: down128 suits a 256 x 256 image, but the 112 x 112 resize that was
    degraded refused it (and showed a milder down<S> than the copy's)."""
    from tgfr.data.degrade import degrade_image, image_rng
    from tgfr.data.synthetic_faces import OUTPUT_SIZE

    records = []
    for i in range(4):
        pixels = np.random.default_rng(i).integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        records.append(ManifestRecord(f"{i}.png", str(i // 2), "test", (f"caption {i}",)))
    manifest = write_manifest(tmp_path / "m.jsonl", records)
    assert main(["data", "degrade", "--manifest", str(manifest), "--recipe", "down128"]) == 0
    assert main(["data", "grid", "--manifest", str(manifest), "--recipe", "down128", "--seed", "5", "--rows", "2",
                 "--out", str(tmp_path / "g.png")]) == 0
    picture = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
    size, header = OUTPUT_SIZE, 22
    for row in range(2):
        for column in range(2):
            image = Image.open(tmp_path / f"{2 * row + column}.png")
            expected = degrade_image(image, "down128", image_rng(5, f"{row}/{column}")).resize((size, size))
            y, x = header + row * size, (2 + column) * size
            assert np.array_equal(picture[y:y + size, x:x + size], np.asarray(expected))


def test_grid_names_a_manifest_image_that_the_recipe_does_not_suit(tmp_path, capsys):
    """down64 does not suit a 48 x 48 image: the grid's error named no image (tgfr data degrade's names it)."""
    records = []
    for i in range(4):
        Image.new("RGB", (48, 48) if i == 3 else (96, 96)).save(tmp_path / f"{i}.png")
        records.append(ManifestRecord(f"{i}.png", str(i // 2), "test", (f"caption {i}",)))
    manifest = write_manifest(tmp_path / "m.jsonl", records)
    assert main(["data", "grid", "--manifest", str(manifest), "--recipe", "down64", "--rows", "2",
                 "--out", str(tmp_path / "g.png")]) == 2
    assert (f"tgfr data grid: error: image {tmp_path / '3.png'}: recipe step 'down64': 64 must be below both sides "
            "of the image, 48 x 48") in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("option, value, minimum", [("--impostors", "-1", 0), ("--gallery-per-subject", "0", 1)])
def test_protocol_counts_are_usage_errors_naming_the_option(tmp_path, capsys, option, value, minimum):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "protocol", "--manifest", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "p"),
              option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: must be an integer >= {minimum}, got '{value}'" in capsys.readouterr().err


def refusing_writes_to(monkeypatch, folder):
    """os.access answering for `folder` as a read-only mount would (the tests run as root, whom a file mode does
    not stop)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **options: (
        not (mode & os.W_OK and str(path) == str(folder)) and real(path, mode, **options)))


def one_image_tree(root):
    (root / "images/train/1").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images/train/1/1_1.png")
    (root / "text/1").mkdir(parents=True)
    (root / "text/1/1_1.txt").write_text("A face.\n")


@pytest.mark.parametrize("out", ["default", "long"])
def test_a_convert_out_that_cannot_be_written_is_refused_before_any_image_is_decoded(tmp_path, capsys, monkeypatch,
                                                                                      out):
    """A dataset on a read-only mount (where the default ROOT/manifest.jsonl lands), or an --out name that the file
    system takes but not with write_atomically's 14 more bytes: the write failed after every image was decoded."""
    import tgfr.data.convert as convert_module

    one_image_tree(tmp_path)
    monkeypatch.setattr(convert_module, "check_image", lambda path: pytest.fail(f"{path} decoded"))
    if out == "default":
        refusing_writes_to(monkeypatch, tmp_path)
        assert main(["data", "convert", "mmcelebA", "--root", str(tmp_path)]) == 2
        assert capsys.readouterr().err == (f"tgfr data convert: error: --out's default {tmp_path / 'manifest.jsonl'}: "
                                           f"{tmp_path} is not writable\n")
    else:
        name = "m" * (os.pathconf(tmp_path, "PC_NAME_MAX") - 14 - 5) + ".jsonl"  # one byte too long with 14 more
        assert main(["data", "convert", "mmcelebA", "--root", str(tmp_path), "--out", str(tmp_path / name)]) == 2
        assert capsys.readouterr().err.startswith(f"tgfr data convert: error: --out {tmp_path / name}: its name is "
                                                  f"{len(name)} bytes long")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "text"]


def test_a_convert_out_ending_in_a_slash_is_refused_not_written_as_a_file_named_like_the_folder(tmp_path, capsys):
    """`--out DIR/` wrote a file DIR, its paths relative to DIR's parent."""
    one_image_tree(tmp_path)
    out = f"{tmp_path / 'manifests'}/"
    assert main(["data", "convert", "mmcelebA", "--root", str(tmp_path), "--out", out]) == 2
    assert capsys.readouterr().err == (f"tgfr data convert: error: --out {out} ends in '/', as a folder does: name "
                                       "the file itself\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "text"]


@pytest.mark.parametrize("command, option", [
    (["synth", "--out", "s", "--degradation", ""], "--degradation"),
    (["synth", "--out", ""], "--out"),
    (["grid", "--out", "g.png", "--manifest", ""], "--manifest"),
    (["grid", "--out", "", "--manifest", "m.jsonl"], "--out"),
    (["degrade", "--manifest", "", "--recipe", "down24"], "--manifest"),
    (["degrade", "--manifest", "m.jsonl", "--recipe", ""], "--recipe"),
    (["protocol", "--manifest", "", "--out", "p.csv"], "--manifest"),
    (["protocol", "--manifest", "m.jsonl", "--out", ""], "--out"),
    (["protocol", "--manifest", "m.jsonl", "--out", "p", "--split", ""], "--split"),
    (["grid", "--out", "g.png", "--manifest", "m.jsonl", "--split", ""], "--split"),
    (["convert", "mmcelebA", "--root", "tree", "--out", ""], "--out"),
    (["convert", "mmcelebA", "--root", ""], "--root"),
    (["convert", "celeba-dialog", "--root", "tree", "--captions", "", "--identity-file", "i.txt", "--images", "tree"],
     "--captions"),
    (["degrade", "--manifest", "m.jsonl", "--name", ""], "--name"),
    (["degrade", "--manifest", "m.jsonl", "--out-manifest", ""], "--out-manifest")])
def test_an_option_given_an_empty_value_is_refused_not_taken_as_not_given(tmp_path, monkeypatch, capsys, command,
                                                                           option):
    """An unset shell variable (`--degradation "$RECIPE"`) ran with the default: the default recipe, synthetic faces
    instead of the manifest's, the test split, ROOT/manifest.jsonl, <split>_degraded; as a path, "" was the current
    folder, which synth and protocol wrote into and convert converted. Each is refused in one message naming the
    option."""
    monkeypatch.chdir(tmp_path)
    write_manifest(tmp_path / "m.jsonl", [ManifestRecord(f"{s}_{k}.png", str(s), "test", ("c",))
                                          for s in range(2) for k in range(2)])
    for s in range(2):
        for k in range(2):
            Image.new("RGB", (32, 32)).save(tmp_path / f"{s}_{k}.png")
    one_image_tree(tmp_path / "tree")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["data", *command]) == 2
    assert capsys.readouterr().err == (f"tgfr data {command[0]}: error: {option} is empty (an unset shell "
                                       "variable?): give it a value\n")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_synth_with_an_empty_out_writes_nothing_into_the_current_folder(tmp_path, monkeypatch, capsys):
    """`--out "$DATA"` with DATA unset generated the dataset into the current folder, when it was empty."""
    monkeypatch.chdir(tmp_path)
    assert main(["data", "synth", "--out", "", "--identities", "6", "--images-per-identity", "1",
                 "--no-degraded"]) == 2
    assert capsys.readouterr().err == ("tgfr data synth: error: --out is empty (an unset shell variable?): give it a "
                                       "value\n")
    assert list(tmp_path.iterdir()) == []


def test_convert_names_the_image_of_each_pillow_warning_once(tmp_path, capsys):
    """A corrupt EXIF block makes Pillow warn "Tag data larger than file" naming no file, once per opening: twice
    per image, as Python warnings naming Pillow's source line."""
    tiff = (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHII", 0x010E, 2, 100, 26)
            + struct.pack("<I", 0))  # ImageDescription, 100 bytes at an offset past the block's end
    for i in range(3):
        (tmp_path / f"images/train/{i}").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / f"images/train/{i}/{i}_1.jpg", exif=b"Exif\x00\x00" + tiff)
        (tmp_path / f"text/{i}").mkdir(parents=True)
        (tmp_path / f"text/{i}/{i}_1.txt").write_text("A face.\n")
    assert main(["data", "convert", "mmcelebA", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"tgfr data convert: warning: image file {tmp_path / f'images/train/{i}/{i}_1.jpg'}: Tag data larger than "
        "file. Skipping tag 270" for i in range(3)]


def test_a_path_option_given_with_an_equals_sign_and_a_tilde_is_in_the_home_folder(tmp_path, monkeypatch, capsys):
    """The shell expands `--out ~/g.png` but not `--out=~/g.png`: the picture went into a folder named `~`."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["data", "grid", "--out=~/g.png", "--rows", "1"]) == 0
    assert (tmp_path / "home" / "g.png").is_file() and not (tmp_path / "~").exists()


def test_a_tilde_in_an_option_that_names_no_path_is_kept(tmp_path, monkeypatch):
    """Only path options expand a leading ~: --split '~' (a split of that name) became the home folder's path."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_manifest(tmp_path / "m.jsonl", [ManifestRecord(f"{s}_{k}.png", str(s), "~", ("c",))
                                          for s in range(3) for k in range(2)])
    assert main(["data", "protocol", "--manifest", str(tmp_path / "m.jsonl"), "--split", "~", "--out",
                 str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "~_pairs.csv").is_file()

