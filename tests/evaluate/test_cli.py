"""`tgfr evaluate` checks its settings and device up front, with errors naming them."""

import dataclasses
import errno
import os
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import tgfr.evaluation.run as run_module
from tgfr.cli import main
from tgfr.data.manifest import ManifestRecord, write_manifest
from tgfr.output_paths import write_atomically
from tgfr.train.batches import synthetic_config
from tgfr.train.config import EvaluationConfig, load_config, to_toml

# tests/models' tiny transformers on disk, for a text encoder whose tokenizer is not WordPiece.


def make_run(tmp_path, overrides=(), stages=None):
    """A run folder that passes the --run checks; its manifest does not exist, so evaluating fails
    at once if settings are not checked first. `stages` is set past load_config's recipe checks, as a
    run trained by an older tgfr may hold stages that a fresh training refuses."""
    config = load_config("quick", [f'data.manifest="{tmp_path / "absent.jsonl"}"', *overrides])
    config.stages = stages or config.stages
    folder = tmp_path / "run"
    (folder / "model").mkdir(parents=True)
    (folder / "config.toml").write_text(to_toml(config), encoding="utf-8")
    return folder


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path)


def evaluate_error(*arguments):
    """The message with which `tgfr evaluate` stops."""
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", *arguments])
    return str(exit_.value.code)


@pytest.mark.parametrize("setting, message", [
    ("evaluation.max_rank=0", "evaluation.max_rank must be an integer in [1, 1048576), got 0"),
    ("evaluation.bootstrap_resamples=-1", "evaluation.bootstrap_resamples must be an integer in [0, 1000001), got -1"),
    ("evaluation.batch_size=0", "evaluation.batch_size must be an integer in [1, 1048576), got 0"),
    ("evaluation.gallery_per_subject=0", "evaluation.gallery_per_subject must be an integer in [1, 1048576), got 0"),
    ("evaluation.impostor_subjects=-2", "evaluation.impostor_subjects must be an integer in [0, 1048576), got -2"),
    ("evaluation.splits={}", "evaluation.splits must map report names to non-empty split names"),
    ("evaluation.max_rank=2.5", "evaluation.max_rank must be of type int"),
    ('evaluation.splits={"a/b"="test"}', "evaluation.splits: report names name the report's files"),
    ('evaluation.splits={""="test"}', "evaluation.splits: report names name the report's files"),
    ('evaluation.splits={"a\\nb"="test"}', "hold no '/', '\\', NUL, line break or lone surrogate"),
    ('evaluation.splits={"a\\rb"="test"}', "hold no '/', '\\', NUL, line break or lone surrogate"),
    (f'evaluation.splits={{"{"a" * 228}"="test"}}', "the longest attention_<name>.png, which is written under a "
                                                   "temporary name 14 bytes longer that must fit a file name "
                                                   "(255 bytes), so a name takes at most 227 bytes in UTF-8; got "
                                                   "'aaaaaaaaaaaaaaaa'... (228 bytes)"),
])
def test_bad_settings_are_named(run, setting, message):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--run", str(run), "--set", setting])
    assert message in str(exit_.value.code)
    assert not (run / "report").exists()


@pytest.mark.parametrize("name, value, message", [
    ("bootstrap_resamples", -1, "evaluation.bootstrap_resamples must be an integer in [0, 1000001), got -1"),
    ("heatmap_captions", 1.5, "evaluation.heatmap_captions must be an integer"),
    ("controls", "no", "evaluation.controls must be true or false, got 'no'")])
def test_evaluate_checks_settings_a_script_changed_after_reading_the_config(run, monkeypatch, name, value, message):
    """README's API example reads the run's config and passes it to evaluate(): a value set in between was
    refused only once the first split was embedded, naming no setting (a raw TypeError for 1.5), or, for controls,
    taken as true."""
    from tgfr.evaluation import evaluate
    from tgfr.train.config import read_run_config

    monkeypatch.setattr(run_module, "embed_split", lambda *arguments, **keywords: pytest.fail("embedded"))
    config = read_run_config(run)
    setattr(config.evaluation, name, value)
    with pytest.raises(ValueError) as error:
        evaluate(run, config)
    assert message in str(error.value)


def test_settings_are_checked_wherever_a_config_is_made():
    with pytest.raises(ValueError, match=r"evaluation\.max_rank must be an integer in \[1, "):
        load_config("quick", ["evaluation.max_rank=0"])
    with pytest.raises(ValueError, match=r"evaluation\.batch_size must be an integer in \[1, "):
        EvaluationConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"evaluation\.heatmap_captions must be an integer in \[0, "):
        EvaluationConfig(heatmap_captions=-1)
    with pytest.raises(ValueError, match="hold no '/', '.*', NUL, line break or lone surrogate"):
        EvaluationConfig(splits={"a\ud800": "test"})  # no UTF-8 bytes, so no file name (TOML cannot write it)


@pytest.mark.parametrize("name", ["a" * 227, "é" * 113, "a" * 228, "é" * 114, "a" * 241])
def test_report_names_are_refused_exactly_when_a_report_file_would_not_fit(tmp_path, name):
    """The file system is the reference: the report's longest file, attention_<name>.png, can be
    written the way the report writes its pictures (write_atomically, through a longer temporary
    name) exactly for the names that the setting takes."""
    try:
        with write_atomically(tmp_path / f"attention_{name}.png", "plot", binary=True) as stream:
            stream.write(b"png")
        fits = True
    except OSError as error:
        assert error.errno == errno.ENAMETOOLONG
        fits = False
    if fits:
        EvaluationConfig(splits={name: "test"}).check_report_names_fit()
    else:
        with pytest.raises(ValueError, match="so a name takes at most 227 bytes in UTF-8"):
            EvaluationConfig(splits={name: "test"}).check_report_names_fit()
        with pytest.raises(ValueError, match="so a name takes at most 227 bytes in UTF-8"):
            load_config("quick", [f'evaluation.splits={{"{name}" = "test"}}'])


def test_a_run_with_a_report_name_an_earlier_tgfr_allowed_resumes_but_does_not_evaluate(tmp_path, capsys):
    """An earlier tgfr took report names up to 241 bytes: such a run's config.toml is read by
    `tgfr train --resume` (README: it does not re-judge the recipe), while `tgfr evaluate`, which
    could not write the report's files, refuses it before any work."""
    name = "a" * 241
    run = make_run(tmp_path)
    path = run / "config.toml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('splits = { clean = "test",', f'splits = {{ {name} = "test",'), encoding="utf-8")
    assert main(["train", "--out", str(run), "--resume", "--print-config"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["evaluation"]["splits"] == {name: "test",
                                                                              "degraded": "test_degraded"}
    assert evaluate_error("--run", str(run)).startswith(
        "tgfr evaluate: error: evaluation.splits: report names name the report's files, the longest "
        "attention_<name>.png")


def test_unknown_device_is_named(run, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--run", str(run), "--device", "gpu"])
    assert exit_.value.code == 2
    assert "argument --device: invalid choice: 'gpu'" in capsys.readouterr().err


def test_cuda_without_a_cuda_device(run, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--run", str(run), "--device", "cuda"])
    assert "device 'cuda' was asked for" in str(exit_.value.code)
    assert not (run / "report").exists()


def test_bad_data_is_a_clean_error(run):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--run", str(run)])
    assert "absent.jsonl does not exist" in str(exit_.value.code)


def test_a_split_to_evaluate_that_the_manifest_lacks_or_holds_one_identity_of_is_named_before_any_work(run, tmp_path):
    """Training on manifest.jsonl after `tgfr data degrade` wrote manifest_test_degraded.jsonl stopped with
    "split ['test_degraded'] has no records" after the clean split was embedded, naming no manifest."""
    manifest = tmp_path / "absent.jsonl"  # the run's data.manifest
    write_manifest(manifest, [ManifestRecord(f"{split}/{i}.png", f"{split}{i % 2}", split, ("a face",))
                              for split in ("train", "test") for i in range(4)])
    message = evaluate_error("--run", str(run))
    assert message == (f"tgfr evaluate: error: evaluation.splits.degraded = 'test_degraded': manifest {manifest} has "
                       f"no such split (its splits: ['test', 'train']); evaluate with --manifest FILE, a manifest "
                       f"holding every split evaluated, or set evaluation.splits")
    degraded = tmp_path / "absent_test_degraded.jsonl"
    degraded.write_text("")
    assert f"`tgfr data degrade` wrote it into {degraded}: evaluate with --manifest {degraded}" in evaluate_error(
        "--run", str(run))
    # A manifest given on purpose gets the hint too: the copy is beside it all the same.
    assert f"`tgfr data degrade` wrote it into {degraded}: evaluate with --manifest {degraded}" in evaluate_error(
        "--run", str(run), "--manifest", str(manifest))
    write_manifest(manifest, [ManifestRecord(f"{split}/{i}.png", "one", split, ("a face",)) for split in
                              ("train", "test", "test_degraded") for i in range(4)])
    assert evaluate_error("--run", str(run)) == (
        f"tgfr evaluate: error: evaluation.splits.clean = 'test': split 'test' of manifest {manifest} holds images "
        f"of one identity; verification needs 2 or more")
    # Every identity with no more images than the gallery takes: found only after the split was embedded.
    write_manifest(manifest, [ManifestRecord(f"{split}/{i}.png", f"{i}", split, ("a face",)) for split in
                              ("train", "test", "test_degraded") for i in range(4)])
    assert evaluate_error("--run", str(run)) == (
        f"tgfr evaluate: error: evaluation.splits.clean = 'test': no identity of split 'test' of manifest {manifest} "
        "has more than evaluation.gallery_per_subject = 1 image(s) (the most: 1), so identification would have no "
        "probe image")
    assert not (run / "report").exists()


def test_pairs_without_impostor_subjects_is_named(run):
    message = evaluate_error("--run", str(run), "--set", "evaluation.protocol=pairs", "--set",
                             "evaluation.impostor_subjects=0")
    assert 'evaluation.impostor_subjects must be >= 1 with evaluation.protocol = "pairs", got 0' in message
    assert not (run / "report").exists()


@pytest.mark.parametrize("stages, missing", [
    (["fr"], "the TGFR embedding needs the align and fuse stages, missing ['align', 'fuse']"),
    (["fr", "align"], "the TGFR embedding needs the align and fuse stages, missing ['fuse']"),
    (["align", "fuse"], "the image-only baseline needs the fr stage or model.backbone_weights"),
])
def test_partly_trained_runs_are_refused(tmp_path, stages, missing):
    """A stage that did not run left its parts untrained: a report would compare untrained parts."""
    run = make_run(tmp_path, stages=stages)
    message = evaluate_error("--run", str(run))
    assert f"run {run} trained only the stages {stages}" in message and missing in message
    assert not (run / "report").exists()


def test_released_backbone_weights_stand_in_for_the_fr_stage(tmp_path):
    # build_model loads model.backbone_weights whatever the stages: the baseline is a trained backbone.
    run = make_run(tmp_path, ['stages=["align", "fuse"]', 'model.backbone_weights="backbone.safetensors"'])
    assert "absent.jsonl does not exist" in evaluate_error("--run", str(run))


@pytest.mark.parametrize("text, message", [
    ('{"fr": \n', "is not valid JSON: Expecting value: line 2 column 1"),
    ("[" * 100000 + "]" * 100000, "is not valid JSON: arrays or objects nested too deeply"),
    ("[1, 2]", "must be a JSON object (stage -> figures), got list"),
    ('{"fr": 3}', "stage 'fr' must be a JSON object of figures, got 3"),
    ('{"fr": {"steps_taken": 3, "global_batch": 64}}', "stage 'fr' needs seconds (int or float), got None"),
    ('{"fr": {"steps_taken": 3, "seconds": "2", "global_batch": 64}}', "stage 'fr' needs seconds (int or float), "
                                                                       "got '2'"),
    ('{"fr": {"steps_taken": 3, "seconds": 2.0, "global_batch": 64, "seconds_per_step": null}}',
     "stage 'fr' needs seconds_per_step (int or float), got None"),
])
def test_corrupt_training_summary_is_named_before_any_work(run, text, message):
    (run / "train_summary.json").write_text(text, encoding="utf-8")
    error = evaluate_error("--run", str(run))
    assert f"training summary {run / 'train_summary.json'}" in error and message in error
    assert not (run / "report").exists()


def test_training_summary_that_is_a_folder_is_named_before_any_work(run):
    (run / "train_summary.json").mkdir()
    error = evaluate_error("--run", str(run))
    assert f"training summary {run / 'train_summary.json'} is a folder, not a file" in error
    assert not (run / "report").exists()


def test_training_summary_as_training_writes_it_is_read(run):
    """The summary of a stage that took no step has no seconds_per_step (tgfr.train.run)."""
    (run / "train_summary.json").write_text('{"fr": {"steps_taken": 0, "seconds": 0.5, "global_batch": 64}}',
                                            encoding="utf-8")
    assert "absent.jsonl does not exist" in evaluate_error("--run", str(run))


@pytest.mark.parametrize("content", [b"seed = [\n", b"seed = \xff\n", b"seed = " + b"[" * 100000 + b"]" * 100000])
def test_corrupt_config_is_named(run, content):
    (run / "config.toml").write_bytes(content)
    assert f"--run: {run / 'config.toml'} is not valid TOML: " in evaluate_error("--run", str(run))


def test_config_errors_name_the_file(run):
    path = run / "config.toml"
    path.write_text(path.read_text(encoding="utf-8").replace("seed = 0", 'seed = "zero"'), encoding="utf-8")
    assert f"{path}: seed must be of type int" in evaluate_error("--run", str(run))
    assert f"{path} with --set: seed must be of type int" in evaluate_error("--run", str(run), "--set",
                                                                            "evaluation.max_rank=3")


def test_an_evaluation_that_is_not_a_table_is_named_with_or_without_set(run):
    """`evaluation = 3`: the error of the file without --set is the reference."""
    path = run / "config.toml"
    text = path.read_text(encoding="utf-8")
    table = re.search(r"^\[evaluation\]\n(?:[^\[\n].*\n)*", text, re.MULTILINE)
    path.write_text("evaluation = 3\n" + text[:table.start()] + text[table.end():], encoding="utf-8")
    assert evaluate_error("--run", str(run)) == f"tgfr evaluate: error: {path}: evaluation must be a table, got 3"
    assert evaluate_error("--run", str(run), "--set", "evaluation.max_rank=3") == (
        f"tgfr evaluate: error: {path} with --set: evaluation must be a table, got 3")


def test_set_takes_every_evaluation_setting_whatever_keys_the_file_holds(run):
    """The setting's fields, not the file's keys, are the reference: a key the file lacks can be set
    (here the one it is missing), and an unknown key is refused naming every setting."""
    path = run / "config.toml"
    path.write_text(re.sub(r"^heatmap_captions = .*\n", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE),
                    encoding="utf-8")
    assert "missing key(s) ['evaluation.heatmap_captions']" in evaluate_error("--run", str(run))
    # The settings pass; the evaluation then stops at the run's absent manifest.
    assert "absent.jsonl does not exist" in evaluate_error("--run", str(run), "--set", "evaluation.heatmap_captions=1")
    settings = ", ".join(sorted(field.name for field in dataclasses.fields(EvaluationConfig)))
    assert evaluate_error("--run", str(run), "--set", "evaluation.bogus=1") == (
        f"tgfr evaluate: error: --set 'evaluation.bogus=1': unknown key evaluation.bogus; known: {settings}")


def test_out_that_is_a_file_is_named(run):
    out = run / "taken"
    out.write_text("not a folder", encoding="utf-8")
    assert f"report folder {out} is a file, not a folder" in evaluate_error("--run", str(run), "--out", str(out))


def test_out_under_a_file_is_named_before_any_work(run):
    taken = run / "taken"
    taken.write_text("not a folder", encoding="utf-8")
    out = taken / "sub" / "report"
    assert f"report folder {out}: {taken} is a file, not a folder" in evaluate_error("--run", str(run), "--out",
                                                                                      str(out))


def test_out_in_a_folder_that_cannot_be_written_is_named_before_any_work(run, monkeypatch):
    locked = run / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # root writes whatever the mode bits say: answer as the OS does for other users
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode, **options: Path(path) != locked
                            and access(path, mode, **options))
    try:
        error = evaluate_error("--run", str(run), "--out", str(locked / "report"))
    finally:
        locked.chmod(0o755)
    assert f"report folder {locked / 'report'}: {locked} is not writable" in error


def test_a_report_file_that_cannot_be_written_is_one_line(run, monkeypatch):
    """A write that fails during the evaluation (say a full disk) ends with the CLI's one-line error."""
    def evaluate(*args, **keywords):
        raise OSError(errno.ENOSPC, "No space left on device", str(run / "report" / "metrics.json"))

    monkeypatch.setattr(run_module, "evaluate", evaluate)
    assert evaluate_error("--run", str(run)) == ("tgfr evaluate: error: [Errno 28] No space left on device: "
                                                 f"'{run / 'report' / 'metrics.json'}'")


def test_report_folder_waits_for_the_figures(run):
    # The manifest is missing: evaluation stops before any figure, with no report folder made.
    out = run / "deep" / "report"
    assert "absent.jsonl does not exist" in evaluate_error("--run", str(run), "--out", str(out))
    assert not (run / "deep").exists()


@pytest.mark.parametrize("threads", [0, 1])
def test_run_threads_hold_during_the_evaluation_only(run, threads_seen_by, threads):
    """config.threads fixes torch's CPU threads while evaluating, as in training, so that the figures
    do not depend on the machine; the caller's count comes back afterwards."""
    config = load_config("quick", [f'data.manifest="{run / "absent.jsonl"}"', f"threads={threads}"])
    # read_manifest: the first step of the work
    seen = threads_seen_by(run_module, "read_manifest", lambda: run_module.evaluate(run, config, device="cpu"))
    assert seen == [threads or 2]


@pytest.mark.parametrize("evaluate_part", ["embeddings", "heatmaps"])
def test_a_missing_test_image_is_named_with_a_remedy_evaluate_users_have(tmp_path, evaluate_part):
    """`tgfr evaluate` has no bad_images option: the error says to fix the manifest instead."""
    from tgfr.data.manifest import ManifestRecord, write_manifest
    from tgfr.evaluation.embeddings import embed_split
    from tgfr.models import IResNetConfig, TGFRConfig, TGFRModel

    manifest = write_manifest(tmp_path / "m.jsonl", [ManifestRecord("absent.png", "0", "test", ("a face",))])
    model = TGFRModel(TGFRConfig(backbone=IResNetConfig(layers=(1, 1, 1, 1), input_size=32, width=4, num_features=16)))
    message = re.escape(f"absent.png does not exist (fix or remove that image's record in manifest {manifest})")
    with pytest.raises(ValueError, match=message):
        if evaluate_part == "embeddings":
            embed_split(model, None, manifest, "test", 4, torch.device("cpu"))
        else:
            run_module._attention_maps(model, None, manifest, "test", 1, 4.0, True, torch.device("cpu"))


def test_a_test_caption_without_words_is_named(tmp_path):
    from PIL import Image

    from tgfr.data.manifest import ManifestRecord, write_manifest
    from tgfr.evaluation.embeddings import embed_split
    from tgfr.models import IResNetConfig, TGFRConfig, TGFRModel

    Image.new("RGB", (32, 32)).save(tmp_path / "face.png")
    manifest = write_manifest(tmp_path / "m.jsonl", [ManifestRecord("face.png", "0", "test", ("\u200b\u200b",)),
                                                     ManifestRecord("face2.png", "0", "test", ("a face", "\u200b"))])
    Image.new("RGB", (32, 32)).save(tmp_path / "face2.png")  # its unused second caption is not checked
    model = TGFRModel(TGFRConfig(backbone=IResNetConfig(layers=(1, 1, 1, 1), input_size=32, width=4, num_features=16)))
    with pytest.raises(ValueError, match=re.escape(f"image {tmp_path / 'face.png'} has caption '\\u200b\\u200b', "
                                                   "which the tokenizer reduces to no word")):
        embed_split(model, None, manifest, "test", 4, torch.device("cpu"))


def test_evaluation_pairs_each_test_image_with_its_first_caption(tmp_path):
    """The embeddings and the heatmaps take each image's first caption, not the second (the same for every
    image here), and the heatmap's word labels are that caption's word pieces, [CLS] and [SEP] left out."""
    from PIL import Image

    from tgfr.data.manifest import ManifestRecord, write_manifest
    from tgfr.evaluation.embeddings import embed_split
    from tgfr.models import IResNetConfig, TGFRConfig, TGFRModel
    from tgfr.train.caption_features import CaptionFeatures

    firsts = ["She has green eyes and freckles.", "A bearded man in round glasses."]
    for i in range(2):
        Image.new("RGB", (32, 32), (100 * i, 90, 160)).save(tmp_path / f"face{i}.png")
    manifest = write_manifest(tmp_path / "m.jsonl", [ManifestRecord(f"face{i}.png", str(i), "test",
                                                                    (first, "zebra stripes everywhere"))
                                                     for i, first in enumerate(firsts)])
    model = TGFRModel(TGFRConfig(backbone=IResNetConfig(layers=(1, 1, 1, 1), input_size=32, width=4, num_features=16)))
    captions = CaptionFeatures(model.text_encoder, torch.device("cpu"))
    assert embed_split(model, captions, manifest, "test", 4, torch.device("cpu")).captions == firsts
    _, _, tokens = run_module._attention_maps(model, captions, manifest, "test", 2, 4.0, True, torch.device("cpu"))
    assert tokens == [model.text_encoder.tokenizer.tokenize(first) for first in firsts]
    assert tokens[0][:2] == ["she", "has"]


def test_heatmap_words_are_the_tokens_as_text_whatever_the_tokenizer(tmp_path, tiny_roberta_dir, monkeypatch):
    """A byte-level BPE (RoBERTa's) marks a word's leading space in its token, "\u0120small": the heatmaps took
    the raw tokens, so the marked function words passed as content words and the titles carried the mark.
    tiny_roberta_dir's tokenizer has no merges, one token per character and "\u0120" for a space: decoded, a
    caption's words are its characters, a space an empty word, shown nowhere."""
    from PIL import Image

    from tgfr.evaluation import plots
    from tgfr.models import IResNetConfig, TGFRConfig, TGFRModel
    from tgfr.train.caption_features import CaptionFeatures

    texts = ["green eyes", "a big mole"]
    for i in range(2):
        Image.new("RGB", (32, 32), (100 * i, 90, 160)).save(tmp_path / f"face{i}.png")
    manifest = write_manifest(tmp_path / "m.jsonl", [ManifestRecord(f"face{i}.png", str(i), "test", (text,))
                                                     for i, text in enumerate(texts)])
    torch.manual_seed(0)
    model = TGFRModel(TGFRConfig(backbone=IResNetConfig(layers=(1, 1, 1, 1), input_size=32, width=4, num_features=16),
                                 text_encoder=str(tiny_roberta_dir), max_length=18, dim=16, fine_dim=8))
    assert model.text_encoder.tokenizer.tokenize(texts[1])[:3] == ["a", "\u0120", "b"]
    captions = CaptionFeatures(model.text_encoder, torch.device("cpu"))
    images, attention, words = run_module._attention_maps(model, captions, manifest, "test", 2, 4.0, True,
                                                          torch.device("cpu"))
    assert words == [[character.strip() for character in text] for text in texts]
    titles = []
    monkeypatch.setattr(plots, "_save", lambda figure, path, layout=True: titles.extend(
        axis.get_title() for axis in figure.axes if len(axis.get_images()) == 2))
    plots.plot_attention(images, attention, words, tmp_path / "attention.png", words_per_caption=20)
    # Every letter but the function word "a": no space, and no title with the space's mark.
    assert sorted(titles) == sorted(character for character in "".join(texts) if character not in " a")


def test_embeddings_run_the_backbone_once_per_batch_and_match_the_model_s_own(tmp_path):
    """image_only is the normalized embed_image, tgfr the normalized fuse(align(...)), with one backbone pass
    per batch for both (embed_image on top of align ran it twice)."""
    from PIL import Image

    from tgfr.data import EvalTransform
    from tgfr.data.manifest import ManifestRecord, write_manifest
    from tgfr.evaluation.embeddings import embed_split
    from tgfr.models import IResNetConfig, TGFRConfig, TGFRModel
    from tgfr.train.caption_features import CaptionFeatures

    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"face{i}.png")
    texts = ["She has green eyes.", "A man in round glasses.", "Freckles and red hair.", "A grey beard.", "Bald."]
    manifest = write_manifest(tmp_path / "m.jsonl", [ManifestRecord(f"face{i}.png", str(i % 2), "test", (text,))
                                                     for i, text in enumerate(texts)])
    torch.manual_seed(0)
    model = TGFRModel(TGFRConfig(backbone=IResNetConfig(layers=(1, 1, 1, 1), input_size=32, width=4, num_features=16),
                                 freeze_text_encoder=True)).eval()
    passes = []
    model.backbone.register_forward_hook(lambda module, args, output: passes.append(args[0].shape[0]))
    embeddings = embed_split(model, CaptionFeatures(model.text_encoder, torch.device("cpu")), manifest, "test", 2,
                             torch.device("cpu"))
    assert passes == [2, 2, 1]
    images = torch.stack([EvalTransform(32)(Image.open(tmp_path / f"face{i}.png")) for i in range(5)])
    with torch.no_grad():
        image_only = torch.nn.functional.normalize(model.embed_image(images), dim=1)
        fused = torch.nn.functional.normalize(model.fuse(model.align(images, **model.tokenize(texts))), dim=1)
    torch.testing.assert_close(torch.from_numpy(embeddings.image_only), image_only, rtol=0, atol=1e-5)
    # the cache rounds the caption features to float16
    torch.testing.assert_close(torch.from_numpy(embeddings.tgfr), fused, rtol=0, atol=2e-3)


@pytest.mark.parametrize("case, message", [
    ("no run", "--run: RUN/config.toml does not exist (not a folder written by `tgfr train`)"),
    ("no model", "--run: RUN/model does not exist (training has not finished"),
    # A file, say a model saved by hand, is no model folder: --run is named, not the manifest read next.
    ("model is a file", "--run: RUN/model is not a folder (`tgfr train` saves the model as one)"),
    ("bad toml", "--run: RUN/config.toml is not valid TOML: "),
    ("train key", "--set 'fr.steps=3': only evaluation.<key> can be set here"),
    # The whole table: it would drop every setting the override does not name.
    ("whole table", "--set 'evaluation={max_rank=2}': only evaluation.<key> can be set here"),
    ("unknown key", "--set 'evaluation.bogus=3': unknown key evaluation.bogus; known: batch_size, "),
])
def test_run_and_set_refusals_are_one_error_line(run, case, message):
    arguments = ["--run", str(run)]
    if case == "no run":
        arguments = ["--run", str(run / "absent")]
        run = run / "absent"
    elif case == "no model":
        (run / "model").rmdir()
    elif case == "model is a file":
        (run / "model").rmdir()
        (run / "model").write_text("not a model folder", encoding="utf-8")
    elif case == "bad toml":
        (run / "config.toml").write_text("seed = [\n")
    else:
        arguments += ["--set", message.split("'")[1]]
    assert evaluate_error(*arguments).startswith("tgfr evaluate: error: " + message.replace("RUN", str(run)))


def test_set_changes_one_entry_of_the_evaluation_splits_table(run, monkeypatch):
    """`tgfr evaluate --set evaluation.splits.<name>` changes that entry of the run's table; a name the
    table does not hold is refused, naming the ones it does."""
    evaluated = []
    monkeypatch.setattr(run_module, "evaluate",
                        lambda run, config, *_, **__: evaluated.append(config) or run / "report")
    assert main(["evaluate", "--run", str(run), "--set", "evaluation.splits.degraded=test_blur"]) == 0
    assert evaluated[0].evaluation.splits == {"clean": "test", "degraded": "test_blur"}
    assert evaluate_error("--run", str(run), "--set", "evaluation.splits.blur=test_blur") == (
        "tgfr evaluate: error: --set 'evaluation.splits.blur=test_blur': unknown key evaluation.splits.blur; "
        "known: clean, degraded; to add an entry, give the whole table: "
        "--set 'evaluation.splits={clean = \"test\", degraded = \"test_degraded\", blur = \"test_blur\"}'")


def test_a_run_written_before_the_synthetic_version_was_recorded_reads_version_1(tmp_path, monkeypatch, capsys):
    """A run on the embedded synthetic set whose config.toml predates data.synthetic_version trained on
    version 1 (as with every tgfr before the key, but the reverted commits 3db1e1f to 3874a79): `tgfr
    evaluate` and `tgfr train --resume` read that version's data, not the newest's."""
    config = load_config("quick")
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "config.toml").write_text(re.sub(r"(?m)^synthetic_version = .*\n", "", to_toml(config)), encoding="utf-8")
    evaluated = []
    monkeypatch.setattr(run_module, "evaluate",
                        lambda run, config, *_, **__: evaluated.append(config) or run / "report")
    assert main(["evaluate", "--run", str(run)]) == 0
    assert config.data.synthetic_version != 1
    assert synthetic_config(evaluated[0].data) == synthetic_config(dataclasses.replace(config.data,
                                                                                       synthetic_version=1))
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--print-config"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["data"]["synthetic_version"] == 1


@pytest.mark.parametrize("run_manifest", ["absolute", "relative"])
def test_manifest_and_device_options_reach_the_evaluation(tmp_path, monkeypatch, capsys, run_manifest):
    """--manifest, here a copy of the data in another folder than the run's, is the manifest evaluated,
    whether the run's data.manifest is absolute or (older tgfr) relative; without --device the
    evaluation gets "auto" (README, --help), with it the device named."""
    overrides = ['data.manifest="data/manifest.jsonl"'] if run_manifest == "relative" else []
    run = make_run(tmp_path, overrides)
    copy = tmp_path / "elsewhere" / "manifest.jsonl"
    calls = []
    monkeypatch.setattr(run_module, "evaluate",
                        lambda *arguments, **keywords: calls.append((arguments, keywords)) or run / "report")
    assert main(["evaluate", "--run", str(run), "--manifest", str(copy)]) == 0
    assert main(["evaluate", "--run", str(run), "--manifest", str(copy), "--device", "cpu",
                 "--image-cache-mib", "3"]) == 0
    assert [(called_run, out, manifest, device, keywords) for (called_run, _, out, manifest, device), keywords
            in calls] == [(run, None, copy, "auto", {"image_cache_bytes": 1 << 30}),
                          (run, None, copy, "cpu", {"image_cache_bytes": 3 << 20})]
    assert capsys.readouterr().out == f"report: {run / 'report'}\n" * 2


@pytest.mark.parametrize("value", ["-1", "1.5", "lots"])
def test_image_cache_mib_below_0_or_not_an_integer_is_a_usage_error(run, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--run", str(run), "--image-cache-mib", value])
    assert exit_info.value.code == 2
    assert f"argument --image-cache-mib: must be an integer >= 0, got '{value}'" in capsys.readouterr().err


def captions_of_the_next_identity(labels, captions, paths):
    """The control's rule, image by image: an image of label i whose first caption is the k-th distinct one of label
    i's images (by path) takes the (k mod P)-th caption of label (i + 1) mod K's pool, which lists the distinct
    captions among that label's images' first captions by path, then their second captions, and so on (P captions;
    labels 0..K-1; paths that sort as strings as tgfr.data.protocol.path_order sorts them; captions: each image's
    tuple of captions)."""
    count = int(max(labels)) + 1

    def by_path(label):
        return [m for _, m in sorted((path, m) for m, (path, other) in enumerate(zip(paths, labels)) if other == label)]

    rotated = []
    for m, label in enumerate(labels):
        distinct_own = []
        for own in by_path(label):
            if captions[own][0] not in distinct_own:
                distinct_own.append(captions[own][0])
        donors = by_path((label + 1) % count)
        pool = []
        for rank in range(max(len(captions[d]) for d in donors)):
            for d in donors:
                if rank < len(captions[d]) and captions[d][rank] not in pool:
                    pool.append(captions[d][rank])
        rotated.append(pool[distinct_own.index(captions[m][0]) % len(pool)])
    return rotated


def repeats(labels, captions):
    """Images whose caption an earlier image (in list order) of their label carries."""
    return len(captions) - len(set(zip(labels.tolist(), captions)))


def test_other_identity_captions_give_each_identity_the_captions_of_the_next_label():
    """Labels in no order, identities of 2, 4, 3 and 1 images of one caption each, paths in another order than the
    list: identity 1's fourth image wraps around identity 2's three, identity 2's all take identity 3's one caption,
    and identity 3 wraps around to identity 0."""
    from tgfr.evaluation.embeddings import other_identity_captions, repeated_within_identity

    labels = np.array([1, 3, 2, 1, 0, 2, 1, 0, 2, 1])
    paths = [f"img/{label}/{name}.png" for label, name in zip(labels, "dbcacabdbe")]
    captions = [f"caption of image {m}" for m in range(len(labels))]
    rotated = other_identity_captions(labels, [(caption,) for caption in captions], paths)
    assert rotated == captions_of_the_next_identity(labels.tolist(), [(caption,) for caption in captions], paths)
    # Every image of an identity carries a caption of the same other identity.
    donor_labels = {label: {int(labels[captions.index(caption)]) for caption, own in zip(rotated, labels)
                            if own == label} for label in range(4)}
    assert donor_labels == {0: {1}, 1: {2}, 2: {3}, 3: {0}}
    # Identity 1 repeats 1 of identity 2's 3 captions, identity 2 repeats identity 3's one caption twice, where
    # the images' own captions all differ.
    assert repeated_within_identity(labels, rotated, captions) == repeats(labels, rotated) == 3


def test_an_identity_of_more_images_than_the_next_one_takes_its_later_captions_before_repeating_one():
    """Images 6, 6, 2 and 2 with 3 captions each (MMCelebA has 10): identity 1 takes identity 2's two images' 6
    captions and identity 3's takes identity 0's first captions. Taking only first captions gave identity 1 two
    distinct captions for 6 images, each on 3 of them: shared by an identity's images, a caption is an identity cue
    that the images' own distinct captions are not, and the control scored far above TGFR on such a split."""
    from tgfr.evaluation.embeddings import other_identity_captions, repeated_within_identity

    labels = np.array([0] * 6 + [1] * 6 + [2] * 2 + [3] * 2)
    paths = [f"img/{label}/{j}.png" for label, j in zip(labels, [*range(6), *range(6), 0, 1, 0, 1])]
    captions = [tuple(f"image {m} caption {rank}" for rank in range(3)) for m in range(len(labels))]
    rotated = other_identity_captions(labels, captions, paths)
    assert rotated == captions_of_the_next_identity(labels.tolist(), captions, paths)
    assert rotated[6:12] == ["image 12 caption 0", "image 13 caption 0", "image 12 caption 1", "image 13 caption 1",
                             "image 12 caption 2", "image 13 caption 2"]
    assert rotated[14:] == ["image 0 caption 0", "image 1 caption 0"]
    for label in range(4):
        own = [first for (first, *_), other in zip(captions, labels) if other == label]
        assert len({caption for caption, other in zip(rotated, labels) if other == label}) == len(own)
    firsts = [first for first, *_ in captions]
    assert repeated_within_identity(labels, rotated, firsts) == 0
    # One caption per record: identity 1 takes identity 2's 2 captions for its 6 images, 4 of them repeated.
    assert repeated_within_identity(labels, other_identity_captions(labels, [c[:1] for c in captions], paths),
                                    firsts) == 4


def test_images_share_a_replacement_exactly_where_they_share_their_own_first_caption():
    """A pool of the next identity's captions as listed repeated "he wears glasses" (two images' first caption)
    and gave it to both images of identity 0, whose own captions differ, while distinct ones were left unused;
    identity 1's two images sharing "a grey beard" took two different replacements. Now the control repeats a
    caption within an identity as its own first captions do, and the count of further repeats is 0."""
    from tgfr.evaluation.embeddings import other_identity_captions, repeated_within_identity

    labels = np.array([0, 0, 1, 1, 1])
    paths = ["a/0.png", "a/1.png", "b/0.png", "b/1.png", "b/2.png"]
    captions = [("x",), ("y",), ("he wears glasses", "grey beard"), ("he wears glasses", "round face"), ("bald",)]
    rotated = other_identity_captions(labels, captions, paths)
    assert rotated == captions_of_the_next_identity(labels.tolist(), captions, paths)
    assert rotated[:2] == ["he wears glasses", "bald"]  # the pool: glasses, bald, grey beard, round face
    shared = [("a grey beard",), ("a grey beard",), ("p",), ("q",), ("r",)]
    rotated = other_identity_captions(labels, shared, paths)
    assert rotated[0] == rotated[1] and len(set(rotated[2:])) == 1  # b's three from a's one distinct caption
    own = [first for first, *_ in shared]
    assert repeated_within_identity(labels, rotated, own) == 2  # identity 1's captions differ, its control's not
    assert repeats(labels, rotated) == 3





@pytest.fixture(scope="module")
def minilm_collator():
    """The packaged text encoder's tokenizer at the presets' model.max_length (24), as evaluate's collator."""
    from transformers import AutoTokenizer

    from tgfr.data import CaptionCollator
    from tgfr.models import packaged_minilm_path

    return CaptionCollator(AutoTokenizer.from_pretrained(packaged_minilm_path()), max_length=24)


def test_first_caption_cuts_count_what_the_tokenizer_keeps_and_the_cut_merges(minilm_collator):
    """Case and spaces are no difference to the uncased tokenizer: counted as distinct strings, they were reported
    as merged by the cut, with nothing cut. A caption of exactly max_length tokens is not cut; one more is."""
    from tgfr.evaluation.embeddings import first_caption_cuts

    assert first_caption_cuts(minilm_collator, ["He wears glasses.", "he wears glasses.", "he wears glasses. "]) == {
        "distinct": 1, "cut": 0, "distinct_after_cut": 1}
    fits = " ".join(["face"] * 22)  # 22 word pieces and the two special tokens: max_length exactly
    prefix = " ".join(["eyes"] * 30)
    assert first_caption_cuts(minilm_collator, [fits, fits + " face", f"{prefix} red", f"{prefix} blue", "x"]) == {
        "distinct": 5, "cut": 3, "distinct_after_cut": 3}  # fits (and its cut longer self), 22 eyes, "x"


def test_one_long_first_caption_costs_its_own_tokens_only(minilm_collator):
    """Tokenized uncut and padded to the longest of its chunk, one pasted paragraph made every caption that long: a
    reviewer measured 11 GB and 78 s for a 20000-word caption among 4095 short ones."""
    from tgfr.data import CaptionCollator
    from tgfr.evaluation.embeddings import first_caption_cuts

    returned = []

    def counting(captions, **keywords):
        encoded = minilm_collator.tokenizer(captions, **keywords)
        returned.append(sum(len(row) for row in encoded["input_ids"]))
        return encoded

    captions = [f"a face number {i}" for i in range(200)] + [" ".join(["eyes"] * 3000)]
    assert first_caption_cuts(CaptionCollator(counting, max_length=24), captions) == {
        "distinct": 201, "cut": 1, "distinct_after_cut": 201}
    assert max(returned) < 200 * 8 + 3002 + 100  # each caption's own tokens (about 6 each, and 3002)


def test_the_control_takes_captions_the_model_sees_alike_as_one(minilm_collator):
    """Keyed by string, an identity's own first captions that differ only in case (one caption to the model) took
    two replacements, and a donor's captions that differ only past the cut gave two images the same text to the
    model, counted as no repeat."""
    from tgfr.evaluation.embeddings import model_view, other_identity_captions, repeated_within_identity

    labels = np.array([0, 0, 1, 1])
    paths = ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]
    captions = [("A grey beard.", "x1"), ("a grey beard. ", "x2"), ("red hair",), ("blue eyes",)]
    own = [record[0] for record in captions]
    seen = model_view(minilm_collator, (caption for record in captions for caption in record)).__getitem__
    rotated = other_identity_captions(labels, captions, paths, seen)
    # a's two first captions are one to the model: one replacement; b's differ: replacements that differ to it.
    assert rotated == ["red hair", "red hair", "A grey beard.", "x1"]
    assert repeated_within_identity(labels, rotated, own, seen) == 0
    by_string = other_identity_captions(labels, captions, paths)
    assert by_string == ["red hair", "blue eyes", "A grey beard.", "a grey beard. "]
    assert repeated_within_identity(labels, by_string, own, seen) == 1


def test_other_identity_captions_give_a_degraded_copy_its_clean_images_captions_in_any_listed_order():
    """The degraded split's paired difference to the clean one compares each image with its copy: the copy must
    carry the same replacement caption, though its manifest lists the images in another order (a converted or
    hand-made manifest) and its names are `tgfr data degrade`'s (.png)."""
    from tgfr.data.degrade import degraded_path
    from tgfr.evaluation.embeddings import other_identity_captions

    labels = np.array([0, 0, 0, 1, 1])
    clean_paths = ["img/a/x.jpg", "img/a/y.jpg", "img/a/z.jpg", "img/b/p.jpg", "img/b/q.jpg"]
    captions = [(f"caption {m}", f"second caption {m}") for m in range(5)]
    clean = dict(zip(clean_paths, other_identity_captions(labels, captions, clean_paths)))
    listed = [2, 0, 1, 4, 3]  # the copy's manifest order
    copies = [degraded_path("deg", clean_paths[m]) for m in listed]
    degraded = other_identity_captions(labels[listed], [captions[m] for m in listed], copies)
    assert degraded == [clean[clean_paths[m]] for m in listed]
    assert "second caption 3" in degraded  # identity a's third image takes identity b's pool past its first captions


def test_the_controls_are_the_sentence_feature_and_tgfr_with_the_next_identitys_captions(tmp_path, monkeypatch):
    """text_only is the normalized sentence feature of each image's own first caption (align_features), and
    tgfr_other_captions the normalized fuse(align_features(...)) with the captions captions_of_the_next_identity
    gives, from the backbone pass of the batch; image_only and tgfr do not change, and without controls neither
    control nor its second align and fusion is computed. Batches of 2 split identities, so a mapping made batch by
    batch would show."""
    from PIL import Image

    import tgfr.evaluation.embeddings as embeddings_module
    from tgfr.data import EvalTransform
    from tgfr.evaluation.embeddings import embed_split
    from tgfr.models import IResNetConfig, TGFRConfig, TGFRModel
    from tgfr.train.caption_features import CaptionFeatures
    from tgfr.train.stage_align import align_features

    rng = np.random.default_rng(0)
    identities = ["2", "0", "1", "2", "0", "2", "1"]
    texts = ["She has green eyes.", "A man in round glasses.", "Freckles and red hair.", "A grey beard.", "Bald.",
             "Thin eyebrows and a wide smile.", "Dark curly hair."]
    for i in range(len(texts)):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"face{i}.png")
    manifest = write_manifest(tmp_path / "m.jsonl", [ManifestRecord(f"face{i}.png", identity, "test", (text,))
                                                     for i, (identity, text) in enumerate(zip(identities, texts))])
    torch.manual_seed(0)
    model = TGFRModel(TGFRConfig(backbone=IResNetConfig(layers=(1, 1, 1, 1), input_size=32, width=4, num_features=16),
                                 freeze_text_encoder=True)).eval()
    captions = CaptionFeatures(model.text_encoder, torch.device("cpu"))
    passes, aligned_batches = [], []
    model.backbone.register_forward_hook(lambda module, args, output: passes.append(args[0].shape[0]))
    monkeypatch.setattr(embeddings_module, "align_features", lambda *arguments, **keywords: aligned_batches.append(
        len(arguments[1])) or align_features(*arguments, **keywords))
    embeddings = embed_split(model, captions, manifest, "test", 2, torch.device("cpu"), controls=True)
    assert passes == [2, 2, 2, 1] and aligned_batches == [2, 2, 2, 2, 2, 2, 1, 1]
    passes.clear()
    aligned_batches.clear()
    plain = embed_split(model, captions, manifest, "test", 2, torch.device("cpu"))
    assert passes == [2, 2, 2, 1] and aligned_batches == [2, 2, 2, 1]
    assert plain.methods() == ("image_only", "tgfr") and plain.text_only is plain.tgfr_other_captions is None
    assert embeddings.methods() == ("image_only", "tgfr", "text_only", "tgfr_other_captions")
    np.testing.assert_array_equal(embeddings.image_only, plain.image_only)
    np.testing.assert_array_equal(embeddings.tgfr, plain.tgfr)

    labels = [int(identity) for identity in identities]  # identity_labels: "0", "1", "2" are labels 0, 1, 2
    np.testing.assert_array_equal(embeddings.labels, labels)
    images = torch.stack([EvalTransform(32)(Image.open(tmp_path / f"face{i}.png")) for i in range(len(texts))])
    with torch.no_grad():
        own, _ = align_features(model, images, captions(texts))
        other, _ = align_features(model, images, captions(captions_of_the_next_identity(
            labels, [(text,) for text in texts], [f"face{i}.png" for i in range(len(texts))])))
        sentence = torch.nn.functional.normalize(own.sentence, dim=1)
        fused_other = torch.nn.functional.normalize(model.fuse(other), dim=1)
    torch.testing.assert_close(torch.from_numpy(embeddings.text_only), sentence, rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(embeddings.tgfr_other_captions), fused_other, rtol=0, atol=1e-5)
    assert embeddings.text_only.dtype == embeddings.tgfr_other_captions.dtype == np.float32
    # The captions differ, so the control differs from TGFR.
    assert not np.allclose(embeddings.tgfr_other_captions, embeddings.tgfr, atol=1e-3)


def test_evaluation_controls_is_a_boolean_that_set_changes_and_an_older_run_without_it_reads_as_true(
        run, monkeypatch):
    """--set evaluation.controls=false reaches the evaluation; a config.toml written before the setting existed
    (no controls key) evaluates with the controls; a value that is not a TOML boolean is named."""
    configs = []
    monkeypatch.setattr(run_module, "evaluate",
                        lambda folder, config, *arguments, **keywords: configs.append(config) or folder / "report")
    assert main(["evaluate", "--run", str(run)]) == 0
    assert main(["evaluate", "--run", str(run), "--set", "evaluation.controls=false"]) == 0
    path = run / "config.toml"
    text = path.read_text(encoding="utf-8")
    assert re.search(r"(?m)^controls = true$", text)
    path.write_text(re.sub(r"(?m)^controls = .*\n", "", text), encoding="utf-8")
    assert main(["evaluate", "--run", str(run)]) == 0
    assert main(["evaluate", "--run", str(run), "--set", "evaluation.controls=false"]) == 0
    assert [config.evaluation.controls for config in configs] == [True, False, True, False]
    assert evaluate_error("--run", str(run), "--set", "evaluation.controls=yes") == (
        f"tgfr evaluate: error: {path} with --set: evaluation.controls must be of type bool, got 'yes' (str); "
        "TOML writes a boolean as true or false (lower case)")


@pytest.mark.parametrize("option", ["--run", "--out", "--manifest"])
def test_an_empty_path_option_is_a_usage_error_naming_it_before_any_work(run, tmp_path, monkeypatch, capsys, option):
    """An unset shell variable (`--out "$REPORT"`) was the current folder: the report written into it, or "manifest
    ... is a folder" naming neither the option nor what was given."""
    monkeypatch.chdir(run)
    monkeypatch.setattr(run_module, "evaluate", lambda *arguments, **keywords: pytest.fail("evaluated"))
    before = sorted(tmp_path.rglob("*"))
    given = {"--run": str(run), option: ""}
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", *(word for pair in given.items() for word in pair)])
    assert exit_info.value.code == 2
    assert f"tgfr evaluate: error: argument {option}: must be a non-empty path, got ''" in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("keyword", ["run", "out", "manifest"])
def test_evaluate_refuses_an_empty_path_given_in_python(run, monkeypatch, keyword):
    """As a Path, "" is the current folder: evaluate(run, config, out="") wrote the report into it."""
    from tgfr.evaluation import evaluate
    from tgfr.train.config import read_run_config

    monkeypatch.setattr(run_module, "embed_split", lambda *arguments, **keywords: pytest.fail("embedded"))
    given = {"run": run, keyword: ""}
    with pytest.raises(ValueError, match=f"^{keyword} is empty: name the "):
        evaluate(given.pop("run"), read_run_config(run), **given)
