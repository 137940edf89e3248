"""What `tgfr evaluate` reads and leaves in the report folder, mostly on a run of an untrained tiny
model: the manifest it names (never one that a relative path of an older run's config.toml happens
to name in the current directory), a training split changed since the run, and only the pictures of
its own report."""

import dataclasses
import errno
import inspect
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

import tgfr.data.image_cache as image_cache_module
import tgfr.evaluation.plots as plots_module
import tgfr.evaluation.run as run_module
from tgfr.cli import main
from tgfr.data.degrade import degrade_manifest
from tgfr.data.manifest import ManifestRecord, read_manifest, records_digest, write_manifest
from tgfr.evaluation import evaluate
from tgfr.evaluation.report import _split_lines
from tgfr.models import load_tgfr_model, save_tgfr_model
from tgfr.train.batches import resolve_manifest
from tgfr.train.config import EvaluationConfig, load_config, to_toml
from tgfr.train.run import build_model, train

ROOT = Path(__file__).resolve().parents[2]
# A 16-identity synthetic set at 32 x 32 and a tiny backbone: the report's files, not its figures, matter here.
TINY = ["data.synthetic_identities=16", "data.synthetic_images_per_identity=4", "data.synthetic_captions_per_image=1",
        "data.image_size=32", "model.width=4", "model.num_features=16", "model.dim=8", "model.fine_dim=4",
        "threads=1", "evaluation.bootstrap_resamples=0", "evaluation.heatmap_captions=1", "evaluation.max_rank=3"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(run folder with config.toml and model/, its config, the synthetic manifest it evaluates)."""
    folder = tmp_path_factory.mktemp("tiny")
    config = load_config("quick", [*TINY, f'data.cache_dir="{folder / "cache"}"'])
    run = folder / "run"
    # build_model draws the weights from torch's global generator, unseeded under pytest: seeded, the
    # heatmap test's untrained inputs are the same on every run (some draws barely tell gammas apart).
    torch.manual_seed(0)
    save_tgfr_model(build_model(config), run / "model")
    (run / "config.toml").write_text(to_toml(config), encoding="utf-8")
    return run, config, resolve_manifest(config.data)


def test_a_run_reached_through_a_link_with_a_non_utf8_name_evaluates(tiny_run, tmp_path):
    """`tgfr train --out` takes a link whose own name is not UTF-8 when the folder it leads to has a UTF-8 path;
    evaluating through that link gives the run's figures (safetensors and tokenizers refuse the link's path)."""
    run, config, _ = tiny_run
    link = tmp_path / os.fsdecode(b"run\xfe")
    link.symlink_to(run, target_is_directory=True)
    evaluate(link, config, tmp_path / "through_link", device="cpu")
    evaluate(run, config, tmp_path / "direct", device="cpu")
    metrics = [json.loads((tmp_path / out / "metrics.json").read_text()) for out in ("through_link", "direct")]
    assert metrics[0] == metrics[1]


def test_the_report_says_which_synthetic_set_it_evaluated(tiny_run, tmp_path):
    """The cache folder's name does not say it: the report names the synthetic generator version of the run's
    data, and nothing of the kind for a manifest given to the evaluation."""
    run, config, manifest = tiny_run
    text = evaluate(run, config, tmp_path / "synthetic", device="cpu").read_text(encoding="utf-8")
    assert (f"; manifest: `{manifest}` (the embedded synthetic set, generator version "
            f"{config.data.synthetic_version}); protocol: ") in text
    text = evaluate(run, config, tmp_path / "named", manifest=manifest, device="cpu").read_text(encoding="utf-8")
    assert f"; manifest: `{manifest}`; protocol: " in text


def test_readmes_validation_report_compares_on_val_and_its_degraded_copy(tiny_run, tmp_path, capsys):
    """README's command for choosing settings away from the test split: the embedded set of generator version 4
    degrades val as it degrades test, and the report evaluates those two splits, unseen in training."""
    run, config, manifest = tiny_run
    records = read_manifest(manifest)
    val = {r.identity for r in records if r.split == "val"}
    assert val and not val & {r.identity for r in records if r.split in ("train", "test")}
    command = re.search(r"`tgfr evaluate --run DIR --out DIR/report_val --set '(evaluation\.splits=[^']*)'`",
                        " ".join((ROOT / "README.md").read_text(encoding="utf-8").split()))
    assert command, "README shows the command that evaluates on val"
    assert main(["evaluate", "--run", str(run), "--out", str(run / "report_val"), "--set", command[1]]) == 0
    info = json.loads((run / "report_val" / "report_info.json").read_text())
    degraded = [r for r in records if r.split == "val_degraded"]
    assert [r.meta["source"] for r in degraded] == [r.path for r in records if r.split == "val"]
    # The synthetic captions, which a degraded copy keeps: each image's own, told apart within the presets' cut.
    first_captions = info["split_contents"]["clean"]["first_captions"]
    assert first_captions["distinct"] == first_captions["distinct_after_cut"] == len(degraded)
    assert info["split_contents"] == {
        "clean": {"split": "val", "degradations": {"none": len(degraded)}, "identities": len(val),
                  "identities_in_training": 0, "other_captions_repeated": 0, "first_captions": first_captions},
        "degraded": {"split": "val_degraded", "degradations": {config.data.degradation: len(degraded)},
                     "identities": len(val), "identities_in_training": 0, "other_captions_repeated": 0,
                     "first_captions": first_captions}}


def test_the_report_names_the_run_absolute_as_it_names_the_manifest(tiny_run, tmp_path, monkeypatch):
    """A report read from another directory, or written elsewhere with --out, still names its run."""
    run, _, _ = tiny_run
    monkeypatch.chdir(run.parent)
    assert main(["evaluate", "--run", run.name, "--out", str(tmp_path / "report")]) == 0
    info = json.loads((tmp_path / "report" / "report_info.json").read_text())
    assert info["run"] == str(run) and Path(info["manifest"]).is_absolute()
    assert (tmp_path / "report" / "report.md").read_text(encoding="utf-8").startswith(
        f"# TGFR evaluation report\n\nRun: `{run}`;")


def test_each_splits_pictures_show_that_splits_curves(tiny_run, tmp_path, monkeypatch):
    """roc_<name>.png and cmc_<name>.png draw split <name>'s curves, not another split's: the CMC as metrics.json
    holds it, and a ROC curve whose area is the AUC metrics.json gives that split."""
    run, config, _ = tiny_run
    drawn = {}

    def recording(plot, kind):
        def draw(data, path, title):
            drawn[kind, title.split(", ")[1]] = data
            return plot(data, path, title)
        return draw

    monkeypatch.setattr(run_module, "plot_roc", recording(run_module.plot_roc, "roc"))
    monkeypatch.setattr(run_module, "plot_cmc", recording(run_module.plot_cmc, "cmc"))
    evaluate(run, config, tmp_path / "report", device="cpu")
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(drawn) == {(kind, name) for kind in ("roc", "cmc") for name in config.evaluation.splits}
    for name in config.evaluation.splits:
        assert drawn["cmc", name] == {method: figures["cmc"] for method, figures in metrics[name].items()}
        for method, curve in drawn["roc", name].items():
            area = float(np.sum(np.diff(curve.far) * (curve.tar[1:] + curve.tar[:-1]) / 2))
            assert area == pytest.approx(metrics[name][method]["auc"], abs=1e-9), (name, method)
    aucs = [metrics[name]["image_only"]["auc"] for name in config.evaluation.splits]
    assert len(set(aucs)) == len(aucs)  # the splits' curves tell them apart
    # test_degraded is test's degraded copy: each method's change from clean, paired, in metrics.json.
    for method, figures in metrics["degraded"].items():
        assert figures["vs_clean"]["rank1"] == pytest.approx(figures["rank1"] - metrics["clean"][method]["rank1"])
    assert "vs_clean" not in metrics["clean"]["tgfr"]


def section(report: str, heading: str) -> str:
    """The text of report.md's section `## heading (...`, up to the next section."""
    return report.split(f"\n## {heading} (")[1].split("\n## ")[0]


def test_a_split_degraded_twice_is_reported_with_both_recipes(tmp_path):
    """A celeba copy degraded again with jpeg30 was reported as "all degraded with `jpeg30`": `tgfr data degrade`
    recorded the last recipe only."""
    records = []
    for i in range(3):
        pixels = np.random.default_rng(i).integers(0, 256, (112, 112, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        records.append(ManifestRecord(f"{i}.png", str(i), "test", ("a face",)))
    manifest = write_manifest(tmp_path / "m.jsonl", records)
    degrade_manifest(manifest, "test", "celeba", out_manifest=manifest)
    degrade_manifest(manifest, "test_degraded", "jpeg30", name="twice", out_manifest=manifest)
    splits = {"clean": "test", "once": "test_degraded", "twice": "twice"}
    contents = run_module._split_contents(EvaluationConfig(splits=splits), read_manifest(manifest), None)
    assert {name: content["degradations"] for name, content in contents.items()} == {
        "clean": {"none": 3}, "once": {"celeba": 3}, "twice": {"celeba+jpeg30": 3}}
    assert _split_lines(contents["twice"], "train")[0].startswith("Images: all degraded with `celeba+jpeg30`.")


def test_the_report_says_what_each_split_holds_and_how_training_degraded(tiny_run, tmp_path, capsys):
    """Which degradation each evaluated split's images have (meta.recipe, as `tgfr data degrade` writes it),
    whether its identities were trained on, and how training degraded its images: without these a reader
    cannot tell what "degraded" means or whether the figures are of unseen identities."""
    run, config, manifest = tiny_run
    records = read_manifest(manifest)
    identities = {split: {r.identity for r in records if r.split == split} for split in ("train", "test")}
    assert identities["train"] and not identities["train"] & identities["test"]
    capsys.readouterr()
    text = evaluate(run, config, tmp_path / "report", device="cpu").read_text(encoding="utf-8")
    assert capsys.readouterr().err == ""
    assert (f"Training degraded each image with `{config.data.train_degradation}` with probability "
            f"{config.data.train_degrade_p:g} (data.train_degradation, data.train_degrade_p).") in text
    assert ("Images: none records a degradation (clean, or degraded without a `meta.recipe`). Identities also in "
            f"the training split `train`: none of {len(identities['test'])}.") in section(text, "clean")
    assert f"Images: all degraded with `{config.data.degradation}`." in section(text, "degraded")
    info = json.loads((tmp_path / "report" / "report_info.json").read_text())
    degraded = [r for r in records if r.split == "test_degraded"]
    assert info["split_contents"]["degraded"] == {
        "split": "test_degraded", "degradations": {config.data.degradation: len(degraded)},
        "identities": len({r.identity for r in degraded}), "identities_in_training": 0,
        "other_captions_repeated": 0, "first_captions": info["split_contents"]["degraded"]["first_captions"]}
    assert info["train_degradation"] == {"recipe": config.data.train_degradation, "p": config.data.train_degrade_p}

    # The training split itself, evaluated as a test split: said on stderr and in the report.
    on_train = dataclasses.replace(config, evaluation=dataclasses.replace(config.evaluation, splits={"clean": "train"}))
    text = evaluate(run, on_train, tmp_path / "on_train", device="cpu").read_text(encoding="utf-8")
    count = len(identities["train"])
    assert capsys.readouterr().err == (
        f"tgfr evaluate: warning: evaluation.splits.clean = 'train': {count} of its {count} identities are in the "
        f"training split 'train' of manifest {manifest}, so its figures are not those of identities unseen in "
        "training\n")
    assert (f"**Warning:** {count} of its {count} identities are in the training split `train`: these are not "
            "figures of identities unseen in training.") in section(text, "clean")


def test_a_given_manifest_is_checked_for_training_identities_when_it_holds_the_runs_training_split(tiny_run,
                                                                                                tmp_path, capsys):
    """A split of copies of two training identities' images beside two test identities': a manifest given with
    --manifest whose training split is the one the run's checkpoint trained on (its records_digest) gets the
    overlap counted; without a checkpoint to compare with, the report says it was not checked."""
    run, config, manifest = tiny_run
    records = read_manifest(manifest)
    seen, unseen = (sorted({r.identity for r in records if r.split == split})[:2] for split in ("train", "test"))
    data = tmp_path / "data"
    shutil.copytree(manifest.parent, data)
    copies = []
    for record in records:
        if (record.split, record.identity) in {*(("train", i) for i in seen), *(("test", i) for i in unseen)}:
            copy = f"seen/{record.split}_{os.path.basename(record.path)}"
            (data / copy).parent.mkdir(exist_ok=True)
            shutil.copyfile(data / record.path, data / copy)
            copies.append(dataclasses.replace(record, path=copy, split="seen"))
    write_manifest(data / "manifest.jsonl", [*records, *copies])
    evaluated = dataclasses.replace(config, evaluation=dataclasses.replace(config.evaluation, splits={"mixed": "seen"}))
    checked_run = tmp_path / "run"
    shutil.copytree(run, checked_run)
    (checked_run / "checkpoints").mkdir()
    torch.save({"data": records_digest([r for r in records if r.split == "train"])},
               checked_run / "checkpoints" / "last.pt")
    capsys.readouterr()
    text = evaluate(checked_run, evaluated, tmp_path / "checked", manifest=data / "manifest.jsonl",
                    device="cpu").read_text(encoding="utf-8")
    assert "2 of its 4 identities are in the training split 'train'" in capsys.readouterr().err
    assert "**Warning:** 2 of its 4 identities are in the training split `train`" in section(text, "mixed")
    unchecked = ("Identities also in the training split: not checked (this manifest's `train` split is not known "
                 "to be the one the run trained on).")
    text = evaluate(run, evaluated, tmp_path / "unchecked", manifest=data / "manifest.jsonl",
                    device="cpu").read_text(encoding="utf-8")
    assert capsys.readouterr().err == "" and unchecked in section(text, "mixed")
    # A manifest whose training split is another than the checkpoint's (one record fewer) is not counted against.
    first_train = next(i for i, record in enumerate(records) if record.split == "train")
    write_manifest(data / "other.jsonl", [*records[:first_train], *records[first_train + 1:], *copies])
    text = evaluate(checked_run, evaluated, tmp_path / "other", manifest=data / "other.jsonl",
                    device="cpu").read_text(encoding="utf-8")
    assert capsys.readouterr().err == "" and unchecked in section(text, "mixed")


def test_a_training_split_changed_since_the_run_is_a_warning_in_the_report_and_on_stderr(tmp_path, capsys):
    """The run's last checkpoint records the training split it trained on: evaluated on its own manifest after
    that split changed (a caption edited here, then the split renamed), the report and stderr say so; given
    with --manifest, or as trained, it is evaluated without a word."""
    data = tmp_path / "data"
    base = load_config("quick", [*TINY, f'data.cache_dir="{tmp_path / "cache"}"'])
    shutil.copytree(resolve_manifest(base.data).parent, data)
    manifest = data / "manifest.jsonl"
    config = load_config("quick", [*TINY, f'data.manifest="{manifest}"', "data.identities_per_batch=4",
                                   "data.images_per_identity=2", "checkpoint_every=1",
                                   *(f"{stage}.{key}" for stage in ("fr", "align", "fuse")
                                     for key in ("steps=1", "optim.warmup_steps=0"))])
    train(config, tmp_path / "run")
    warning = "**Warning:** this manifest's training split is not the one the run's last checkpoint trained on"
    text = evaluate(tmp_path / "run", config, tmp_path / "as_trained", device="cpu").read_text()
    assert warning not in text and "Identities also in the training split `train`: none of" in section(text, "clean")
    records = read_manifest(manifest)
    first = next(i for i, record in enumerate(records) if record.split == "train")
    records[first] = dataclasses.replace(records[first], captions=("A caption written since.",))
    write_manifest(manifest, records)
    capsys.readouterr()
    text = evaluate(tmp_path / "run", config, tmp_path / "changed", device="cpu").read_text()
    # The overlap is not counted against a training split that is not the run's.
    assert warning in text and "Identities also in the training split: not checked" in section(text, "clean")
    assert capsys.readouterr().err == (
        f"tgfr evaluate: warning: the 'train' split of manifest {manifest} is not the one the run's last checkpoint "
        "trained on (its paths, identities, captions or their order changed since): the test splits evaluated may "
        "not be those the run was trained beside\n")
    report = evaluate(tmp_path / "run", config, tmp_path / "given", manifest=manifest, device="cpu")
    assert warning not in report.read_text() and capsys.readouterr().err == ""
    # The training split renamed: its images are evaluated as test images now, the worst case of all.
    write_manifest(manifest, [dataclasses.replace(record, split="test" if record.split == "train" else record.split)
                              for record in records])
    assert warning in evaluate(tmp_path / "run", config, tmp_path / "renamed", device="cpu").read_text()


def test_each_image_is_decoded_once_and_the_figures_do_not_depend_on_the_image_cache(tiny_run, tmp_path,
                                                                                       monkeypatch):
    """The dataset's check of every image, the embeddings and the heatmap faces take one decoding of each
    image of an evaluated split from the split's image cache; with a budget of 0 the images are read again
    for the embeddings and heatmaps, with the same figures."""
    run, config, manifest = tiny_run
    checked, loaded = Counter(), Counter()

    def counting(counter, decode):
        return lambda path: counter.update([path]) or decode(path)

    monkeypatch.setattr(image_cache_module, "check_image", counting(checked, image_cache_module.check_image))
    monkeypatch.setattr(image_cache_module, "load_image", counting(loaded, image_cache_module.load_image))
    evaluate(run, config, tmp_path / "cached", device="cpu")
    evaluated = {manifest.parent / record.path for record in read_manifest(manifest)
                 if record.split in config.evaluation.splits.values()}
    assert set(checked) == evaluated and set(checked.values()) == {1}
    assert not loaded
    checked.clear()
    evaluate(run, config, tmp_path / "uncached", device="cpu", image_cache_bytes=0)
    # without a cache, the heatmaps' datasets check their split again
    assert set(checked) == evaluated and set(checked.values()) == {2}
    assert set(loaded) == evaluated
    assert (tmp_path / "cached" / "metrics.json").read_bytes() == (tmp_path / "uncached" / "metrics.json").read_bytes()
    with pytest.raises(ValueError, match="the image cache's budget must be an integer number of bytes >= 0, got -1"):
        evaluate(run, config, tmp_path / "refused", device="cpu", image_cache_bytes=-1)
    assert not (tmp_path / "refused").exists()


def linked_images(report):
    """The files that report.md's image links point to."""
    return {unquote(target) for target in re.findall(r"!\[[^\]]*\]\(([^)]*)\)", report.read_text(encoding="utf-8"))}


def test_re_evaluating_removes_the_earlier_reports_pictures_and_temporary_files_only(tiny_run, tmp_path):
    run, config, _ = tiny_run
    out = tmp_path / "report"
    evaluate(run, config, out, device="cpu")
    pictures = {f"{kind}_{name}.png" for kind in ("roc", "cmc", "attention") for name in ("clean", "degraded")}
    assert {p.name for p in out.iterdir()} == pictures | {"report.md", "metrics.json", "report_info.json"}
    others = {"notes.png", "roc_clean.txt", "plot_roc_clean.png", "cmc_degraded.png.bak", ".notes.png.2c4548e4.tmp",
              ".metrics.json.2c45.tmp"}
    for name in others:
        (out / name).write_bytes(b"not the report's")
    # What an evaluation killed while writing leaves (write_atomically's temporary files), of this
    # evaluation's report names and of others.
    for name in (".attention_degraded.png.2c4548e4.tmp", ".roc_lowq.png.0a1b2c3d.tmp", ".metrics.json.abcdef12.tmp",
                 ".report.md.a_b_c_d_.tmp", ".report_info.json.12345678.tmp"):
        (out / name).write_bytes(b"cut short")
    (out / "roc_folder.png").mkdir()

    lowq = dataclasses.replace(config, evaluation=EvaluationConfig(splits={"lowq": "test_degraded"},
                                                                   heatmap_captions=0, bootstrap_resamples=0))
    report = evaluate(run, lowq, out, device="cpu")
    assert {p.name for p in out.iterdir()} == {"roc_lowq.png", "cmc_lowq.png", "report.md", "metrics.json",
                                               "report_info.json", "roc_folder.png", *others}
    assert linked_images(report) == {"roc_lowq.png", "cmc_lowq.png"}
    assert all((out / name).read_bytes() == b"not the report's" for name in others)


def test_an_evaluation_that_fails_to_write_keeps_the_earlier_reports_pictures(tiny_run, tmp_path, monkeypatch):
    """The earlier report.md stays when a picture cannot be written (say on a full disk), and so do
    the pictures it shows, the earlier report names' included."""
    run, config, _ = tiny_run
    out = tmp_path / "report"
    earlier = evaluate(run, config, out, device="cpu")
    shown = linked_images(earlier)
    assert shown == {f"{kind}_{name}.png" for kind in ("roc", "cmc", "attention") for name in ("clean", "degraded")}

    def plot_attention_on_a_full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_module, "plot_attention", plot_attention_on_a_full_disk)
    lowq = dataclasses.replace(config, evaluation=dataclasses.replace(config.evaluation,
                                                                      splits={"lowq": "test_degraded"}))
    with pytest.raises(OSError, match="No space left on device"):
        evaluate(run, lowq, out, device="cpu")
    assert linked_images(out / "report.md") == shown
    assert all((out / name).is_file() for name in shown)


def test_an_evaluation_that_fails_to_write_leaves_every_file_of_the_earlier_report(tiny_run, tmp_path, monkeypatch):
    """Each picture was put in place as soon as it was written: a failure at the attention picture left the new
    ROC and CMC pictures beside the earlier report.md, metrics.json and report_info.json."""
    run, config, _ = tiny_run
    out = tmp_path / "report"
    evaluate(run, config, out, device="cpu")
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    def plot_attention_on_a_full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_module, "plot_attention", plot_attention_on_a_full_disk)
    swapped = {"clean": "test_degraded", "degraded": "test"}  # the same pictures' names, other curves in them
    other = dataclasses.replace(config, evaluation=dataclasses.replace(config.evaluation, splits=swapped))
    with pytest.raises(OSError, match="No space left on device"):
        evaluate(run, other, out, device="cpu")
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before

    # A staging folder that an evaluation killed while writing left is removed by the next one.
    killed = out / ".staging.0123abcd.tmp"
    killed.mkdir()
    (killed / "roc_clean.png").write_bytes(b"cut short")
    monkeypatch.undo()
    evaluate(run, config, out, device="cpu")
    assert not killed.exists() and not [path for path in out.iterdir() if path.name.startswith(".")]


def test_a_folder_named_like_a_report_file_is_refused_and_kept(tiny_run, tmp_path):
    """Staged report files replace their entries, folders too: a user's folder named roc_clean.png was removed
    with what it held."""
    run, config, _ = tiny_run
    out = tmp_path / "report"
    (out / "roc_clean.png").mkdir(parents=True)
    (out / "roc_clean.png" / "mine.txt").write_text("precious")
    with pytest.raises(ValueError, match=r"^report file .*roc_clean\.png is a folder, not a file$"):
        evaluate(run, config, out, device="cpu")
    assert (out / "roc_clean.png" / "mine.txt").read_text() == "precious"


def test_a_relative_manifest_of_an_older_run_is_refused_and_manifest_is_named_absolute(tiny_run, tmp_path,
                                                                                       monkeypatch):
    """An older tgfr wrote data.manifest as given, relative to a directory config.toml does not record:
    evaluate asks for --manifest rather than read whatever that path names in the current directory."""
    run, config, manifest = tiny_run
    project = tmp_path / "project"
    project.mkdir()
    (project / "data").symlink_to(manifest.parent)
    old_run = tmp_path / "old_run"
    old_run.mkdir()
    (old_run / "model").symlink_to(run / "model")
    relative = f"data/{manifest.name}"
    old = dataclasses.replace(config, data=dataclasses.replace(config.data, manifest=relative))
    (old_run / "config.toml").write_text(to_toml(old), encoding="utf-8")
    monkeypatch.chdir(project)  # where the relative path names a manifest: still refused
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--run", str(old_run)])
    assert exit_.value.code == (f"tgfr evaluate: error: --run: {old_run / 'config.toml'} holds data.manifest = "
                                f"'{relative}', a path relative to the directory the run was trained in, which it "
                                "does not record; name the manifest with --manifest")
    assert not (old_run / "report").exists()

    assert main(["evaluate", "--run", str(old_run), "--manifest", relative]) == 0
    named = re.search(r"; manifest: `([^`]*)`;", (old_run / "report" / "report.md").read_text(encoding="utf-8"))[1]
    assert os.path.isabs(named) and os.path.realpath(named) == os.path.realpath(manifest)


def test_a_manifest_under_a_non_utf8_folder_is_named_escaped_in_the_report(tiny_run, tmp_path, monkeypatch):
    """report.md is UTF-8; the absolute manifest path of a relative --manifest started in a folder whose
    name is not UTF-8 (Python's lone surrogate for the byte) is shown escaped instead of failing the
    report's write after all the work."""
    run, config, manifest = tiny_run
    project = tmp_path / os.fsdecode(b"project\xff")
    project.mkdir()
    (project / "data").symlink_to(manifest.parent)
    monkeypatch.chdir(project)
    report = evaluate(run, config, tmp_path / "report", manifest=f"data/{manifest.name}", device="cpu")
    named = re.search(r"; manifest: `([^`]*)`;", report.read_text(encoding="utf-8"))[1]
    assert named == f"{tmp_path}/project\\udcff/data/{manifest.name}"


def attnagan_attention(words, lengths, regions, gamma1):
    """AttnGAN's word-region attention of each caption on its own image (N, T, R): dot products of words and
    regions, softmax over the caption's words, then softmax over regions of gamma1 times that."""
    rows = []
    for i in range(words.shape[0]):
        attn = (words[i, :lengths[i]].double() @ regions[i].double().T).softmax(dim=0)
        alpha = (gamma1 * attn).softmax(dim=1)
        rows.append(torch.cat([alpha, alpha.new_zeros(words.shape[1] - lengths[i], alpha.shape[1])]))
    return torch.stack(rows)


def test_heatmaps_use_the_gamma1_the_run_trained_with(tiny_run, tmp_path, monkeypatch):
    """The heatmaps were drawn with the op's default gamma1 = 4 whatever align.gamma1 the run trained WRCL with."""
    run, config, _ = tiny_run
    sharp_run = tmp_path / "sharp_run"
    model = load_tgfr_model(run / "model")
    # Untrained, the region map is small against the BatchNorm's initial running variance of 1 and the region
    # self-attention averages the tokens almost evenly: the regions come out nearly equal and every gamma's
    # attention uniform. A running variance of the map's scale and sharper queries and keys make regions that
    # tell gammas apart.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.image_head.norm_map.running_var.fill_(1e-3)
        for layer in (model.image_head.attention.query, model.image_head.attention.key):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator))
    save_tgfr_model(model, sharp_run / "model")
    sharp = dataclasses.replace(config, align=dataclasses.replace(config.align, gamma1=20.0))
    (sharp_run / "config.toml").write_text(to_toml(sharp), encoding="utf-8")
    inputs, drawn = [], []
    attention = run_module.word_region_attention
    plot_attention = run_module.plot_attention

    def recording_attention(words, lengths, regions, *args, **kwargs):
        inputs.append((words, lengths, regions))
        return attention(words, lengths, regions, *args, **kwargs)

    def recording_plot(images, maps, tokens, path):
        drawn.append(maps)
        return plot_attention(images, maps, tokens, path)

    monkeypatch.setattr(run_module, "word_region_attention", recording_attention)
    monkeypatch.setattr(run_module, "plot_attention", recording_plot)
    assert main(["evaluate", "--run", str(sharp_run), "--out", str(tmp_path / "report"), "--device", "cpu"]) == 0
    assert len(drawn) == len(inputs) == len(config.evaluation.splits)
    for (words, lengths, regions), maps in zip(inputs, drawn):
        expected = attnagan_attention(words, lengths, regions, 20.0)
        # The inputs tell the two gammas apart by far more than the tolerance below, so the comparison is
        # not one that any gamma passes.
        assert (expected - attnagan_attention(words, lengths, regions, 4.0)).abs().max() > 100 * 1e-6
        torch.testing.assert_close(maps.double(), expected, rtol=1e-5, atol=1e-6)


def test_heatmaps_show_the_content_words_whose_attention_peaks_highest(tmp_path, monkeypatch):
    """Of the content words (green, eyes, freckles, cheeks), green and freckles each put 0.97 of their
    attention on one region and the others spread theirs evenly (peak 0.25): the two columns show those."""
    tokens = ["a", "woman", "has", "green", "eyes", "and", "freckles", "on", "cheeks"]
    attention = torch.full((1, len(tokens), 4), 0.25)
    attention[0, tokens.index("green")] = torch.tensor([0.97, 0.01, 0.01, 0.01])
    attention[0, tokens.index("freckles")] = torch.tensor([0.01, 0.01, 0.01, 0.97])
    titles = []
    save = plots_module._save

    def recording_save(figure, path, **options):
        titles.extend(axis.get_title() for axis in figure.axes if axis.get_images())
        return save(figure, path, **options)

    monkeypatch.setattr(plots_module, "_save", recording_save)
    plots_module.plot_attention(torch.zeros(1, 3, 8, 8), attention, [tokens], tmp_path / "a.png", words_per_caption=2)
    assert titles == ["face", "green", "freckles"]


def test_heatmaps_share_one_colour_scale_so_an_even_spread_looks_even(tmp_path, monkeypatch):
    """An even spread (each weight 1/16) whose floats differ by rounding must not be stretched into hot and
    cold spots: every overlay shares one scale, reaching the weight farthest from 1/16 (0.97, in the other
    caption; as far below 1/16, though no weight lies below 0, where the colour bar stops), so the rounded map is
    drawn in the even map's colours, and the colour bar says what they mean. A weight d above 1/16 is as far from
    white as one d below."""
    tokens = ["green", "eyes", "freckles", "the"]  # a function word is never shown, nor does it set the scale
    attention = torch.full((2, len(tokens), 16), 1 / 16)
    attention[0, 1] += torch.randn(16, generator=torch.Generator().manual_seed(0)) * 1e-9
    attention[1, 0] = torch.tensor([0.97] + [0.002] * 15)
    attention[:, 3] = torch.tensor([0.99] + [0.01 / 15] * 15)
    figures = []
    monkeypatch.setattr(plots_module, "_save", lambda figure, path, layout=True: figures.append(figure))
    plots_module.plot_attention(torch.zeros(2, 3, 8, 8), attention, [tokens, tokens], tmp_path / "a.png",
                                words_per_caption=3)
    panels = [axis for axis in figures[0].axes if len(axis.get_images()) == 2]
    assert len(panels) == 6
    for panel in panels:
        assert panel.get_images()[1].get_clim() == pytest.approx((2 / 16 - 0.97, 0.97))
    colours = [overlay.to_rgba(overlay.get_array()) for overlay in (panel.get_images()[1] for panel in panels[:3])]
    assert (attention[0, 1] != attention[0, 2]).any()
    assert (colours[1] == colours[2]).all() and (colours[0] == colours[2]).all()
    norm = panels[0].get_images()[1].norm
    assert norm(1 / 16) == pytest.approx(0.5)
    assert norm(1 / 16 + 0.05) - 0.5 == pytest.approx(0.5 - norm(1 / 16 - 0.05)) and norm(1 / 16 + 0.05) > 0.52
    colour_bar = figures[0].axes[-1]
    assert "attention weight" in colour_bar.get_ylabel() and "even spread, 1/16" in colour_bar.get_ylabel()
    assert colour_bar.get_ylim() == pytest.approx((0.0, 0.97))


def test_heatmaps_centre_their_scale_on_the_even_spread_so_a_slight_lean_still_shows(tmp_path, monkeypatch):
    """A trained model's word attention may lean only a little from even (here 1/16 * (1 +- 0.05)): drawn on a
    0 .. highest scale it would be one colour. Centred on 1/16, a region above it is drawn red, one below it
    blue, as far either side as the farthest weight; a map even up to rounding stays in the centre colour, and
    such noise alone never sets the scale's reach (at least ATTENTION_MIN_REACH / 16 either side)."""
    even = 1 / 16
    lean = torch.full((16,), even)
    lean[0], lean[15] = even * 1.05, even * 0.95
    rounded = even + torch.randn(16, generator=torch.Generator().manual_seed(0)) * 1e-9
    figures = []
    monkeypatch.setattr(plots_module, "_save", lambda figure, path, layout=True: figures.append(figure))

    def overlays(maps):
        figures.clear()
        plots_module.plot_attention(torch.zeros(1, 3, 8, 8), torch.stack(maps)[None], [["green"] * len(maps)],
                                    tmp_path / "a.png", words_per_caption=len(maps))
        return [axis.get_images()[1] for axis in figures[0].axes if len(axis.get_images()) == 2]

    leaning, flat = overlays([lean, rounded])
    assert leaning.norm is flat.norm and leaning.get_clim() == pytest.approx((even * 0.95, even * 1.05))
    colours = leaning.to_rgba(leaning.get_array())
    red, blue = colours[0, 0, :3], colours[3, 3, :3]
    assert red[0] > 2 * red[2] and blue[2] > 2 * blue[0]
    centre = colours[0, 1, :3]
    assert (centre > 0.9).all() and (flat.to_rgba(flat.get_array())[..., :3] == centre).all()
    (alone,) = overlays([rounded])
    reach = plots_module.ATTENTION_MIN_REACH * even
    assert alone.get_clim() == pytest.approx((even - reach, even + reach))
    assert (alone.to_rgba(alone.get_array())[..., :3] == centre).all()


def test_an_evaluation_writes_its_report_after_another_writing_into_the_same_folder(tiny_run, tmp_path, capsys,
                                                                                   calls_after_release):
    """Two evaluations into one folder at once: the second waits for the first's writes, so the folder
    holds one evaluation's files, never one's metrics.json beside the other's report.md."""
    run, config, _ = tiny_run
    out = tmp_path / "report"
    out.mkdir()
    evaluation = lambda: evaluate(run, config, out, device="cpu")  # noqa: E731
    assert calls_after_release(out, run_module, "write_report", evaluation) == [True]
    assert (out / "report.md").is_file()
    assert f"tgfr evaluate: waiting for another process writing into {out} to end\n" in capsys.readouterr().err


def test_the_report_gives_the_spread_of_the_weights_each_heatmap_shows(tiny_run, tmp_path, monkeypatch):
    """report.md and report_info.json give, per split, the smallest and largest weight of the maps drawn in its
    attention picture and the largest of a map's largest over its smallest weight, read here from the picture's
    overlays: the figures describe the heatmaps shown, not a recomputation. The tiny untrained model's attention
    is even, every weight 1/R, where any choice of maps has the same figures: each word gets a random lean here."""
    run, config, _ = tiny_run
    attention_maps = run_module._attention_maps
    generator = torch.Generator().manual_seed(0)

    def leaning_maps(*args, **kwargs):
        images, attention, words = attention_maps(*args, **kwargs)
        logits = torch.randn(attention.shape, generator=generator)
        return images, logits.softmax(dim=2) * (attention.sum(dim=2, keepdim=True) > 0), words  # padding stays 0

    monkeypatch.setattr(run_module, "_attention_maps", leaning_maps)
    overlays = {}
    save = plots_module._save

    def recording_save(figure, path, **options):
        if path.name.startswith("attention_"):
            overlays[path.name] = [axis.get_images()[1].get_array() for axis in figure.axes
                                   if len(axis.get_images()) == 2]
        return save(figure, path, **options)

    monkeypatch.setattr(plots_module, "_save", recording_save)
    text = evaluate(run, config, tmp_path / "report", device="cpu").read_text(encoding="utf-8")
    info = json.loads((tmp_path / "report" / "report_info.json").read_text())
    assert set(info["attention_spread"]) == set(config.evaluation.splits)
    for name, spread in info["attention_spread"].items():
        maps = np.stack([np.asarray(heat, dtype=np.float64).ravel() for heat in overlays[f"attention_{name}.png"]])
        assert maps.shape[1] == spread["regions"]
        assert (spread["lowest"], spread["highest"]) == (maps.min(), maps.max())
        assert spread["largest_ratio"] == pytest.approx((maps.max(axis=1) / maps.min(axis=1)).max(), rel=1e-12)
        assert (f"- {name}: the weights shown lie between {maps.min():.4g} and {maps.max():.4g}, against an even "
                f"spread of 1/{spread['regions']} = {1 / spread['regions']:.4g} (") in text


def test_the_heatmaps_show_one_face_of_each_subject_its_first(tiny_run, tmp_path, monkeypatch):
    """As many subjects as evaluation.heatmap_captions, each shown by its first face in the split: drawing the split's
    first faces instead (in the embedded set, four faces of one subject) passed every test."""
    run, config, manifest = tiny_run
    config = dataclasses.replace(config, evaluation=dataclasses.replace(config.evaluation, heatmap_captions=3))
    drawn, drawing = [], []
    attention_maps, get_item = run_module._attention_maps, run_module.FaceCaptionDataset.__getitem__

    def recording_maps(*args, **kwargs):
        drawing.append([])
        try:
            return attention_maps(*args, **kwargs)
        finally:
            drawn.append(drawing.pop())

    def recording_get_item(dataset, index):
        if drawing:
            drawing[-1].append(dataset.records[index])
        return get_item(dataset, index)

    monkeypatch.setattr(run_module, "_attention_maps", recording_maps)
    monkeypatch.setattr(run_module.FaceCaptionDataset, "__getitem__", recording_get_item)
    evaluate(run, config, tmp_path / "report", device="cpu")
    records = read_manifest(manifest)
    assert sorted(faces[0].split for faces in drawn) == sorted(config.evaluation.splits.values())
    for faces in drawn:
        split = [record for record in records if record.split == faces[0].split]
        assert len(faces) == 3 and len({face.identity for face in faces}) == 3
        assert all(face == next(record for record in split if record.identity == face.identity) for face in faces)



def test_the_controls_are_evaluated_beside_the_two_methods_unless_evaluation_controls_is_false(tiny_run, tmp_path,
                                                                                               monkeypatch):
    """By default every split is scored with the two controls too, which metrics.json and report.md carry (a table
    row each, a summary line per split of TGFR minus TGFR with another identity's captions); with
    evaluation.controls = false only image only and TGFR are computed, one align and fusion pass per batch
    instead of two, and their figures are those of the evaluation with the controls."""
    import tgfr.evaluation.embeddings as embeddings_module

    run, config, _ = tiny_run
    aligned = []
    align_features = embeddings_module.align_features
    monkeypatch.setattr(embeddings_module, "align_features",
                        lambda *arguments, **keywords: aligned.append(1) or align_features(*arguments, **keywords))
    assert config.evaluation.controls
    report = evaluate(run, config, tmp_path / "controls", device="cpu").read_text(encoding="utf-8")
    with_controls, passes = json.loads((tmp_path / "controls" / "metrics.json").read_text()), len(aligned)
    aligned.clear()
    plain_config = dataclasses.replace(config, evaluation=dataclasses.replace(config.evaluation, controls=False))
    plain_report = evaluate(run, plain_config, tmp_path / "plain", device="cpu").read_text(encoding="utf-8")
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert passes == 2 * len(aligned) > 0
    for name, methods in with_controls.items():
        assert list(methods) == ["image_only", "tgfr", "text_only", "tgfr_other_captions"]
        assert list(plain[name]) == ["image_only", "tgfr"]
        assert plain[name]["image_only"] == methods["image_only"]
        assert plain[name]["tgfr"] == {key: value for key, value in methods["tgfr"].items()
                                       if key != "vs_other_captions"}
        difference = methods["tgfr"]["vs_other_captions"]
        assert difference["rank1"] == pytest.approx(methods["tgfr"]["rank1"] - methods["tgfr_other_captions"]["rank1"])
        assert (f"- {name}: TGFR minus TGFR with another identity's captions (paired, points): TAR@FAR=1e-3 "
                in report)
        assert f"- {name}: TGFR minus TGFR with another identity" not in plain_report
        for method in ("text_only", "tgfr_other_captions"):
            assert section(report, name).count(f"| {plots_module.LABELS[method]} | ") == 1
    assert plots_module.LABELS["text_only"] not in plain_report


def test_a_degraded_copy_under_any_report_name_gets_its_paired_difference_to_clean(tiny_run, tmp_path):
    """README names splits per degradation (`{clean = "test", blur = "test_blur"}`): only a report name "degraded"
    got its paired degraded - clean figures and its summary line, so "blur" said neither paired nor not paired.
    The control's caption count repeated within an identity is recorded with or without a repeat."""
    run, config, _ = tiny_run
    splits = {"clean": "test", "degraded": "test_degraded"}
    named = {"clean": "test", "blur": "test_degraded"}
    reports = {}
    for name, chosen in (("degraded", splits), ("blur", named)):
        evaluated = dataclasses.replace(config, evaluation=dataclasses.replace(config.evaluation, splits=chosen))
        reports[name] = evaluate(run, evaluated, tmp_path / name, device="cpu").read_text(encoding="utf-8")
    metrics = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in reports}
    assert metrics["blur"]["blur"] == metrics["degraded"]["degraded"]
    assert "vs_clean" in metrics["blur"]["blur"]["tgfr"] and "vs_clean" in metrics["blur"]["blur"]["image_only"]
    assert "- TGFR, clean -> blur: AUC " in reports["blur"] and "; blur minus clean (paired, points): " in reports["blur"]
    info = json.loads((tmp_path / "blur" / "report_info.json").read_text())
    assert [content["other_captions_repeated"] for content in info["split_contents"].values()] == [0, 0]


def test_first_captions_that_the_cut_makes_one_are_said_on_stderr_and_in_the_report(tiny_run, tmp_path, capsys):
    """Captions past model.max_length - 2 word pieces are cut, in evaluation as in training, which said so: a split
    whose first captions differ only past the cut was fused with one caption for every face, and nothing said so."""
    run, config, manifest = tiny_run
    prefix = "a woman with long red hair, green eyes and a small scar over her left brow, " * 3
    records = [dataclasses.replace(record, captions=(f"{prefix}number {i}", *record.captions[1:]))
               if record.split == "test" else record for i, record in enumerate(read_manifest(manifest))]
    tests = sum(record.split == "test" for record in records)
    long = write_manifest(manifest.parent / "long_captions.jsonl", records)
    capsys.readouterr()
    text = evaluate(run, config, tmp_path / "long", manifest=long, device="cpu").read_text(encoding="utf-8")
    assert capsys.readouterr().err == (
        f"tgfr evaluate: warning: evaluation.splits.clean = 'test': {tests} distinct first captions are 1 once cut to "
        f"model.max_length - 2 = {config.model.max_length - 2} word pieces (the text encoder sees no more): the "
        "model cannot tell the others apart\n")
    info = json.loads((tmp_path / "long" / "report_info.json").read_text())
    assert info["split_contents"]["clean"]["first_captions"] == {"distinct": tests, "cut": tests,
                                                                 "distinct_after_cut": 1}
    degraded = info["split_contents"]["degraded"]["first_captions"]
    assert degraded["distinct_after_cut"] == degraded["distinct"] == tests  # its captions are the synthetic ones
    assert (f"First captions: {tests} of its {tests} distinct ones are longer than model.max_length allows and cut "
            "(the text encoder sees their first word pieces only), 1 distinct once cut.") in section(text, "clean")


@pytest.mark.parametrize("written, drawn_with", [("true", True), ("false", False), (None, True)],
                         ids=["on", "off", "older run"])
def test_heatmaps_use_the_word_softmax_the_run_trained_with(tiny_run, tmp_path, monkeypatch, written, drawn_with):
    """The heatmaps were drawn with the op's default word_softmax = true whatever align.word_softmax the run trained
    WRCL with; a run's config.toml without the key (an older tgfr's) trained with the softmax over words."""
    run, config, _ = tiny_run
    own_run = tmp_path / "run"
    shutil.copytree(run / "model", own_run / "model")
    setting = "" if written is None else f"word_softmax = {written}\n"
    text = re.sub(r"(?m)^word_softmax = .*\n", setting, to_toml(config))
    assert text.count("word_softmax = ") == (written is not None)
    (own_run / "config.toml").write_text(text, encoding="utf-8")
    attention = run_module.word_region_attention
    signature, used = inspect.signature(attention), []

    def recording_attention(*args, **kwargs):
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()  # the op's default counts where the call leaves the argument out
        used.append(call.arguments["word_softmax"])
        return attention(*args, **kwargs)

    monkeypatch.setattr(run_module, "word_region_attention", recording_attention)
    assert main(["evaluate", "--run", str(own_run), "--out", str(tmp_path / "report"), "--device", "cpu"]) == 0
    assert used == [drawn_with] * len(config.evaluation.splits)
