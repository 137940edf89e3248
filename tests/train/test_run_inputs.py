"""`tgfr train` refuses bad inputs before it trains or writes anything, naming the argument, folder,
file or config key: a fresh run into a used folder, --stop-after below 1, a corrupt config.toml
under --resume, a checkpoint written by another number of processes, backbone weights that do
not fit the configured backbone, a batch of more identities than the split has, an unknown
split, a missing training image."""

import dataclasses
import json
import os
import re
import shutil
import tomllib
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import torch
from torch import nn

from tgfr.cli import main
from tgfr.data import CaptionCollator
from tgfr.data.manifest import read_manifest, write_manifest
from tgfr.distributed import CollectiveCheckError
from tgfr.models import IResNet, IResNetConfig, TextEncoder, save_tgfr_model
from tgfr.train.checkpoint import load_checkpoint, rng_state, save_checkpoint
from tgfr.train.config import OptimConfig, config_to_dict, load_config
from tgfr.train.loop import LoopSettings, run_stage
from tgfr.train.batches import resolve_manifest
from tgfr.train import run as run_module
from tgfr.train.run import CHECKPOINT, build_model, stage_batches, train
from tgfr.train.stage import Stage
from tgfr.train.stage_fr import FRStage
from tgfr.train.training_log import TrainingLog


def test_a_fresh_run_refuses_a_used_folder(tmp_path, tiny_overrides):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"stage": "fr", "step": 1}\n')
    with pytest.raises(ValueError, match=re.escape(f"run folder {run} is not empty: continue its run with --resume")):
        train(load_config("quick", tiny_overrides), run)
    overrides = [arg for o in tiny_overrides for arg in ("--set", o)]
    with pytest.raises(SystemExit, match=re.escape(f"tgfr train: error: run folder {run} is not empty")):
        main(["train", "--preset", "quick", "--out", str(run), *overrides])
    assert [p.name for p in run.iterdir()] == ["metrics.jsonl"]  # nothing written, nothing appended
    assert (run / "metrics.jsonl").read_text() == '{"stage": "fr", "step": 1}\n'


def test_a_failed_start_leaves_the_run_folder_empty(tmp_path, tiny_overrides):
    """Bad data (here a missing manifest) or a bad --out stops before anything is written, so the
    corrected command can train into the same folder."""
    run, manifest = tmp_path / "run", tmp_path / "missing.jsonl"
    config = load_config("quick", tiny_overrides + [f'data.manifest="{manifest}"'])
    with pytest.raises(ValueError, match=re.escape(f"manifest {manifest} does not exist")):
        train(config, run)
    assert not run.exists()
    run.mkdir()
    with pytest.raises(ValueError, match=re.escape(f"manifest {manifest} does not exist")):
        train(config, run)
    assert list(run.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=re.escape(f"run folder {tmp_path / 'file'} is a file, not a folder")):
        train(config, tmp_path / "file")


@pytest.mark.parametrize("arguments, message", [
    (["--set", "fr.stepz=3", "--print-config"], "override 'fr.stepz=3': unknown key fr.stepz"),
    (["--preset", "missing.toml", "--print-config"], "preset 'missing.toml': no file missing.toml"),
    (["--set", "data.manifest=MISSING"], "manifest MISSING does not exist"),
])
def test_user_errors_exit_with_a_message_and_no_traceback(tmp_path, arguments, message):
    """A user error ends `tgfr train` with a non-zero exit and a one-line message naming the culprit
    (SystemExit with a message: exit status 1, the message on stderr, no traceback)."""
    arguments = [a.replace("MISSING", str(tmp_path / "missing.jsonl")) for a in arguments]
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "quick", "--out", str(tmp_path / "run"), *arguments])
    assert isinstance(exit_info.value.code, str)
    assert exit_info.value.code.startswith("tgfr train: error: ")
    assert message.replace("MISSING", str(tmp_path / "missing.jsonl")) in exit_info.value.code
    assert not (tmp_path / "run").exists()


# --stop-after must take a step (to checkpoint one); --image-cache-mib is a size, 0 keeping nothing.
@pytest.mark.parametrize("option, value, minimum", [
    ("--stop-after", "0", 1), ("--stop-after", "-2", 1), ("--stop-after", "two", 1),
    ("--image-cache-mib", "-1", 0), ("--image-cache-mib", "1.5", 0), ("--image-cache-mib", "lots", 0),
])
def test_numeric_options_are_usage_errors_below_their_minimum(tmp_path, capsys, option, value, minimum):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "quick", "--out", str(tmp_path / "run"), option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: must be an integer >= {minimum}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mib", [0, 3])
def test_image_cache_mib_reaches_training_in_bytes(tmp_path, monkeypatch, mib):
    received = {}
    monkeypatch.setattr("tgfr.train.run.train", lambda config, out, **options: received.update(options) or out)
    assert main(["train", "--preset", "quick", "--out", str(tmp_path / "run"), "--image-cache-mib", str(mib)]) == 0
    assert received["image_cache_bytes"] == mib * 1024 * 1024


@pytest.mark.parametrize("stop_after, error, message", [
    (0, ValueError, "stop_after must be an integer >= 1, got 0"),
    (float("nan"), TypeError, "stop_after must be an integer, got float nan"),
    (1.5, TypeError, "stop_after must be an integer, got float 1.5"),
    (True, TypeError, "stop_after must be an integer, got bool True"),
    ("3", TypeError, "stop_after must be an integer, got str '3'")])
def test_train_refuses_a_stop_after_that_is_not_an_integer_of_at_least_1(tmp_path, tiny_overrides, stop_after, error,
                                                                        message):
    """nan passed `stop_after < 1` and then never stopped the loop (the whole run trained and saved model/), "3" failed
    in that comparison with a TypeError naming nothing, and 1.5 and True were taken as 2 and 1 steps."""
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        train(load_config("quick", tiny_overrides), run, stop_after=stop_after)
    assert list(run.iterdir()) == []


@pytest.mark.parametrize("stop_after", [np.int64(1), torch.tensor(1)])
def test_train_takes_a_numpy_or_tensor_integer_as_stop_after(tmp_path, tiny_overrides, stop_after):
    run = train(load_config("quick", [*tiny_overrides, 'stages=["fr"]']), tmp_path / "run", stop_after=stop_after)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not (run / "model").exists()


def test_train_refuses_a_negative_image_cache_budget(tmp_path, tiny_overrides):
    with pytest.raises(ValueError, match="image cache's budget must be an integer number of bytes >= 0, got -1"):
        train(load_config("quick", tiny_overrides), tmp_path / "run", image_cache_bytes=-1)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", [b"seed = [unclosed\n", b"\xff\xfe not utf-8", b"seed = 0\n"])
def test_resume_names_a_corrupt_config_file(tmp_path, content):
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    with pytest.raises(SystemExit, match=re.escape(f"--resume: {path} is not a valid run config")):
        main(["train", "--resume", "--out", str(tmp_path)])


def test_resume_needs_one_rng_state_per_process(tmp_path, tiny_overrides, checkpoint_state):
    """Each process continues its own RNG stream, so a checkpoint resumes with as many processes as wrote it."""
    config = load_config("quick", tiny_overrides)
    for rng, message in (([rng_state(), rng_state()], " holds the RNG states of 2 process(es); resume it with as "
                                                      "many (this run has 1)"),
                         ({"torch": torch.ones(1)}, ": 'rng' must be a list of per-process RNG states")):
        save_checkpoint(tmp_path / CHECKPOINT, checkpoint_state(rng=rng))
        with pytest.raises(ValueError, match=re.escape(f"checkpoint file {tmp_path / CHECKPOINT}{message}")):
            train(config, tmp_path, resume=True)


def test_a_checkpoint_of_an_older_tgfr_with_one_rng_state_resumes_as_its_one_process(tmp_path, tiny_overrides):
    """An older tgfr kept one RNG state (not a list per process): read as its one process's, it resumes the
    run as the list form of the same state does."""
    config = load_config("quick", tiny_overrides)
    train(config, tmp_path / "new", stop_after=2)
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    state = load_checkpoint(tmp_path / "old" / CHECKPOINT)
    save_checkpoint(tmp_path / "old" / CHECKPOINT, {**state, "rng": state["rng"][0]})
    for run in ("new", "old"):
        train(config, tmp_path / run, resume=True)
    new, old = (safetensors.torch.load_file(tmp_path / run / "model" / "model.safetensors") for run in ("new", "old"))
    assert new.keys() == old.keys() and all(torch.equal(new[name], old[name]) for name in new)


def test_backbone_weights_that_do_not_fit_name_the_file_and_the_key_in_one_line(tmp_path, tiny_overrides):
    """tgfr train's errors are one line: torch's message listed every key that did not fit, one per line
    (90 lines, 14 kB, for a released backbone of another width)."""
    config = load_config("quick", tiny_overrides)
    other = IResNet(IResNetConfig.preset("iresnet_small", width=8, input_size=config.data.image_size,
                                         num_features=config.model.num_features))
    weights = tmp_path / "backbone.safetensors"
    safetensors.torch.save_file(other.state_dict(), weights)
    torch.save({"conv1.weight": torch.zeros(1), **{f"extra{i}": torch.zeros(1) for i in range(5)}},
               tmp_path / "partial.pth")
    for file, problems in (
        (weights, r"size mismatch for conv1\.weight: .*; size mismatch for .*; size mismatch for .* \(and \d+ more\)$"),
        (tmp_path / "partial.pth", r'Missing key\(s\): "bn1\.\w+", "[\w.]+", "[\w.]+" \(and \d+ more\); '
                                   r'Unexpected key\(s\): "extra0", "extra1", "extra2" \(and 2 more\); '
                                   r"size mismatch for conv1\.weight"),
    ):
        config.model.backbone_weights = str(file)
        with pytest.raises(ValueError) as refused:
            build_model(config)
        message = str(refused.value)
        assert re.match(rf"model\.backbone_weights: weights file '{re.escape(str(file))}' does not fit the configured "
                        rf"backbone \(model\.backbone='iresnet_small', model\.width=\d+, .*\): ", message)
        assert re.search(problems, message), message
        assert "\n" not in message and len(message) < 1000
    config.model.backbone_weights = str(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"model\.backbone_weights: weights file '.*missing\.pth' does not exist"):
        build_model(config)


def test_a_saved_tgfr_models_weights_file_gives_its_backbone(tmp_path, tiny_overrides):
    """A run's model/model.safetensors holds the backbone under 'backbone.' beside the other parts: as
    model.backbone_weights it loads that backbone (and refuses it in one line when the widths differ)."""
    config = load_config("quick", tiny_overrides)
    saved = build_model(config)
    with torch.no_grad():
        for parameter in saved.parameters():
            parameter.normal_()
    save_tgfr_model(saved, tmp_path / "model")
    config.model.backbone_weights = str(tmp_path / "model" / "model.safetensors")
    loaded = build_model(config)
    for name, tensor in saved.backbone.state_dict().items():
        assert torch.equal(loaded.backbone.state_dict()[name], tensor), name
    fresh = dict(loaded.named_parameters())  # the rest of the model is built as without the file
    others = [(name, parameter) for name, parameter in saved.named_parameters() if not name.startswith("backbone.")]
    assert others and not any(torch.equal(fresh[name], parameter) for name, parameter in others)
    wider = load_config("quick", tiny_overrides + [f"model.width={config.model.width * 2}"])
    wider.model.backbone_weights = config.model.backbone_weights
    with pytest.raises(ValueError, match=r"does not fit the configured backbone .*: size mismatch for conv1\.weight"):
        build_model(wider)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_backbone_weights_of_another_dtype_kind_are_refused_naming_the_file_and_the_key(tmp_path, tiny_overrides,
                                                                                        dtype):
    config = load_config("quick", tiny_overrides)
    released = IResNet(IResNetConfig.preset(config.model.backbone, width=config.model.width,
                                            input_size=config.data.image_size,
                                            num_features=config.model.num_features)).state_dict()
    released["conv1.weight"] = released["conv1.weight"].to(dtype)  # would load as zeros, ones or real parts
    weights = tmp_path / "backbone.pth"
    torch.save(released, weights)
    config.model.backbone_weights = str(weights)
    with pytest.raises(ValueError, match=r"model\.backbone_weights: weights file '.*backbone\.pth' holds tensors of "
                                         r"another kind than the model's: conv1\.weight \(model: floating, file: "):
        build_model(config)


def test_max_length_beyond_the_text_encoders_positions_is_refused_before_writing(tmp_path, tiny_overrides):
    limit = TextEncoder().model.config.max_position_embeddings
    config = load_config("quick", tiny_overrides + [f"model.max_length={limit + 1}"])
    with pytest.raises(ValueError, match=rf"model\.max_length = {limit + 1}: max_length must be at most {limit}\b"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("setting, message", [
    ("--out=FILE/run", "run folder FILE/run: FILE is a file, not a folder"),
    ("data.cache_dir=FILE", "data.cache_dir FILE is a file, not a folder"),
    ("data.cache_dir=FILE/cache", "data.cache_dir FILE/cache: FILE is a file, not a folder"),
    ("device=cuda", 'device = "cuda", but this torch sees no CUDA device'),
])
def test_unusable_folders_and_devices_are_named_before_writing(tmp_path, tiny_overrides, setting, message):
    if setting == "device=cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    file = tmp_path / "file"
    file.write_text("")
    out = tmp_path / "run"
    arguments = [arg for o in tiny_overrides for arg in ("--set", o)]
    if setting.startswith("--out="):
        out = setting.removeprefix("--out=").replace("FILE", str(file))
    else:
        arguments += ["--set", setting.replace("FILE", str(file))]
    with pytest.raises(SystemExit, match=re.escape(f"tgfr train: error: {message.replace('FILE', str(file))}")):
        main(["train", "--preset", "quick", "--out", str(out), *arguments])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and file.read_text() == ""


def test_the_largest_seed_draws_batches(tiny_overrides):
    """seed < 2**32 is accepted by the config and works in every stage's batch stream."""
    config = load_config("quick", tiny_overrides + [f"seed={2**32 - 1}"])
    collate = CaptionCollator(TextEncoder().tokenizer, max_length=config.model.max_length)
    manifest = resolve_manifest(config.data)
    for name in config.stages:
        batch = next(stage_batches(config, name, manifest, collate).from_step(0))
        assert len(batch["labels"]) == config.data.identities_per_batch * config.data.images_per_identity


def test_a_caption_without_words_is_refused_before_writing(tmp_path, tiny_overrides):
    """The text encoder refuses a caption that tokenizes to no word (zero-width spaces pass the
    manifest's non-empty check): found before the fr stage, not when the align stage draws it."""
    source = resolve_manifest(load_config("quick", tiny_overrides).data)
    records = read_manifest(source)
    index = next(i for i, r in enumerate(records) if r.split == "train")
    records[index] = dataclasses.replace(records[index], captions=("\u200b\u200b",) + records[index].captions[1:])
    relocated = [dataclasses.replace(r, path=os.path.relpath(source.parent / r.path, tmp_path)) for r in records]
    manifest = write_manifest(tmp_path / "manifest.jsonl", relocated)
    config = load_config("quick", tiny_overrides + [f'data.manifest="{manifest}"'])
    with pytest.raises(ValueError, match=re.escape("has caption '\\u200b\\u200b', which the tokenizer reduces to no word")):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_training_says_how_many_captions_lose_words(tmp_path, tiny_overrides, capsys):
    """With model.max_length 20 the text encoder sees 18 word pieces of a caption: training says once
    how many distinct training captions are longer, counted here with the tokenizer uncut."""
    config = load_config("quick", tiny_overrides + ["model.max_length=20"])
    tokenizer = TextEncoder(max_length=20).tokenizer
    captions = {c for r in read_manifest(resolve_manifest(config.data)) if r.split == "train" for c in r.captions}
    longer = sum(len(tokenizer(caption)["input_ids"]) > 20 for caption in captions)
    assert 0 < longer < len(captions)
    train(config, tmp_path / "run", stop_after=1)
    message = (f"tgfr train: {longer} distinct training captions have more than model.max_length - 2 = 18 "
               "word-piece tokens; the text encoder sees only their first 18\n")
    assert capsys.readouterr().err.count(message) == 1


def train_error(tmp_path, overrides):
    """The one-line error of `tgfr train` with the tiny overrides and `overrides`; nothing was written."""
    arguments = [arg for o in overrides for arg in ("--set", o)]
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "quick", "--out", str(tmp_path / "run"), *arguments])
    assert not (tmp_path / "run").exists()
    message = exit_info.value.code
    assert message.startswith("tgfr train: error: ") and "\n" not in message
    return message


def test_data_size_errors_name_their_key_and_the_manifest(tmp_path, tiny_overrides):
    manifest = resolve_manifest(load_config("quick", tiny_overrides).data)
    records = read_manifest(manifest)
    identities = len({r.identity for r in records if r.split == "train"})
    splits = sorted({r.split for r in records})
    message = train_error(tmp_path, tiny_overrides + [f"data.identities_per_batch={identities + 1}"])
    assert message == (f"tgfr train: error: data.identities_per_batch = {identities + 1} exceeds the {identities} "
                       f"identities of split 'train' in manifest {manifest} (a batch takes that many identities, "
                       f"data.images_per_identity images each)")
    # As many identities as there are is one batch per epoch, even with more images per identity than any has.
    config = load_config("quick", tiny_overrides + [f"data.identities_per_batch={identities}",
                                                    "data.images_per_identity=9"])
    collate = CaptionCollator(TextEncoder().tokenizer, max_length=config.model.max_length)
    assert len(stage_batches(config, "fr", manifest, collate).sampler) == 1
    message = train_error(tmp_path, tiny_overrides + ["data.train_split=nope"])
    assert message == (f"tgfr train: error: data.train_split = 'nope', manifest {manifest}: split ['nope'] has no "
                       f"records; the manifest has splits {splits}")


def test_a_setting_that_utf8_cannot_encode_is_refused_by_key_before_writing(tmp_path, tiny_overrides):
    """A non-UTF-8 byte of a file name (legal on Linux) comes into Python as a lone surrogate, which config.toml,
    UTF-8 text, cannot hold: writing it failed with an unnamed codec error after the data was built and left a
    0-byte config.toml that blocked both a retry and --resume."""
    manifest = resolve_manifest(load_config("quick", tiny_overrides).data)
    folder = tmp_path / os.fsdecode(b"syn\xff")
    folder.symlink_to(manifest.parent)
    assert (folder / manifest.name).is_file()
    message = train_error(tmp_path, tiny_overrides + ['stages=["fr"]', f"data.manifest={folder / manifest.name}"])
    assert message == (f"tgfr train: error: data.manifest must be encodable as UTF-8, as config.toml is, got "
                       f"{str(folder / manifest.name)!r} (a lone surrogate at position {len(str(folder)) - 1}: a "
                       f"non-UTF-8 byte of a file name? reach the file through a UTF-8 name, e.g. a symlink)")


def test_a_failed_write_of_config_toml_leaves_no_file(tmp_path, tiny_overrides, monkeypatch):
    """config.toml is written atomically: a write that fails midway (here text UTF-8 cannot hold) leaves the run
    folder empty for the corrected run, not a 0-byte config.toml."""
    config = load_config("quick", tiny_overrides + ['stages=["fr"]'])
    with monkeypatch.context() as patch:
        patch.setattr(run_module, "to_toml", lambda config: "seed = 1\n" + os.fsdecode(b"test\xff"))
        with pytest.raises(UnicodeEncodeError):
            train(config, tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []
    train(config, tmp_path / "run", stop_after=1)
    assert load_config(str(tmp_path / "run" / "config.toml")) == config


def test_a_missing_training_image_names_the_manifest_to_fix(tmp_path, tiny_overrides):
    """The dataset's hint (bad_images='skip') is no option of `tgfr train`: its error says what to do instead."""
    source = resolve_manifest(load_config("quick", tiny_overrides).data)
    relocated = [dataclasses.replace(r, path=os.path.relpath(source.parent / r.path, tmp_path))
                 for r in read_manifest(source)]
    index = next(i for i, r in enumerate(relocated) if r.split == "train")
    relocated[index] = dataclasses.replace(relocated[index], path="gone.png")
    manifest = write_manifest(tmp_path / "manifest.jsonl", relocated)
    message = train_error(tmp_path, tiny_overrides + [f'data.manifest="{manifest}"'])
    assert message.startswith(f"tgfr train: error: image file {tmp_path / 'gone.png'} ")
    assert message.endswith(f"(fix or remove that image's record in manifest {manifest})")
    assert "bad_images" not in message


def test_a_loss_that_is_not_finite_ends_tgfr_train_with_one_line(tmp_path, tiny_overrides, monkeypatch, recwarn):
    forward = FRStage.forward

    def nan_loss(self, batch):
        loss, components = forward(self, batch)
        return loss * float("nan"), components

    monkeypatch.setattr(FRStage, "forward", nan_loss)
    arguments = [arg for o in tiny_overrides for arg in ("--set", o)]
    with pytest.raises(SystemExit, match=re.escape("tgfr train: error: stage fr: loss is not finite at step 1 "
                                                   "(loss: nan)")):
        main(["train", "--preset", "quick", "--out", str(tmp_path / "run"), *arguments])
    assert not [w for w in recwarn if "requires_grad" in str(w.message)]  # float() of the loss, not of its graph


def test_a_batch_of_one_image_per_process_is_refused_before_writing(tmp_path, tiny_overrides):
    config = load_config("quick", tiny_overrides + ["data.identities_per_batch=1", "data.images_per_identity=1",
                                                    'align.supervision="weak"'])
    with pytest.raises(ValueError, match=re.escape("data.identities_per_batch x data.images_per_identity = 1 x 1 "
                                                   "gives 1 image(s) per process (world size 1); the fr stage's")):
        train(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # The fuse stage trains no BatchNorm layer (its backbone and heads are frozen, in eval mode): one image will do.
    with_fuse = load_config("quick", tiny_overrides + ["data.identities_per_batch=1", "data.images_per_identity=1",
                                                      'stages=["align", "fuse"]', 'align.supervision="weak"',
                                                      'model.backbone_weights="unread.pth"'])
    assert stage_batches(with_fuse, "fuse", resolve_manifest(with_fuse.data), collate=None).sampler is not None


@pytest.mark.parametrize("rank, expected", [("0", "tgfr train: error: fr.steps must be"), ("1", 1)])
def test_under_torchrun_rank_0_alone_prints_the_error(monkeypatch, rank, expected):
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--preset", "quick", "--set", "fr.steps=0"])
    assert exit_.value.code == expected if rank == "1" else str(exit_.value.code).startswith(expected)


@pytest.mark.parametrize("print_config", [False, True])
def test_a_bad_rank_variable_is_named(monkeypatch, print_config):
    """RANK, read to let rank 0 alone print, failed with int()'s "invalid literal", as a traceback raised while
    the error of --print-config's path was being handled."""
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--preset", "quick", *(["--print-config"] if print_config else [])])
    assert exit_.value.code == ("tgfr train: error: RANK=one in the environment must be an integer >= 0 (torchrun "
                                "sets it; unset it to run without torchrun)")


def test_under_torchrun_rank_0_alone_prints_the_config(monkeypatch, capsys):
    """--print-config under torchrun: rank 0 prints the TOML of the resolved config, the other ranks nothing,
    so the job's output is one TOML document."""
    printed = {}
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert main(["train", "--preset", "quick", "--set", "fr.steps=70", "--print-config"]) == 0
        printed[rank] = capsys.readouterr().out
    assert tomllib.loads(printed["0"]) == config_to_dict(load_config("quick", ["fr.steps=70"]))
    assert printed["1"] == ""


class FailingStage(Stage):
    """A stage whose every training step raises `error`."""

    name = "failing"

    def __init__(self, error: Exception):
        nn.Module.__init__(self)
        self.losses = nn.ModuleDict()
        self.weight = nn.Parameter(torch.zeros(1))
        self.error = error

    def train(self, mode: bool = True) -> "FailingStage":
        return nn.Module.train(self, mode)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise self.error


@pytest.mark.parametrize("error, expected", [
    (ValueError("image file x.png is corrupt or not an image"),
     "tgfr train: error (rank 1): image file x.png is corrupt or not an image"),
    (FloatingPointError("stage failing: loss is not finite on rank 1 at step 1"), 1),
    (CollectiveCheckError("every rank must gather a tensor of the same shape"), 1)])
def test_under_torchrun_another_rank_prints_an_error_met_in_a_training_step_unless_every_rank_meets_it(
        monkeypatch, tmp_path, error, expected):
    """An error of a training step may be this rank's alone (an image of its share): rank 1 says it. A
    non-finite loss and a failed check of every rank's tensors are raised by every rank together, with the
    same message: rank 0 says them once."""
    def training_step_fails(*args, **kwargs):
        batches = SimpleNamespace(from_step=lambda step: iter(lambda: {}, None))
        run_stage(FailingStage(error), batches, OptimConfig(), 1, LoopSettings(torch.device("cpu")),
                  TrainingLog(None), lambda *args: None)

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr("tgfr.train.run.train", training_step_fails)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--preset", "quick", "--out", str(tmp_path / "run")])
    assert exit_.value.code == expected


def test_a_file_in_place_of_the_synthetic_cache_folder_is_one_error_line(tmp_path, tiny_overrides):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "synthetic").write_text("x")
    message = train_error(tmp_path, tiny_overrides + [f'data.cache_dir="{cache}"'])
    assert message == (f"tgfr train: error: cache_dir {cache}: the synthetic dataset's folder {cache / 'synthetic'} "
                       "is a file, not a folder")


@pytest.mark.parametrize("threads", [0, 1])
def test_run_threads_hold_during_the_training_only(tmp_path, tiny_overrides, threads_seen_by, threads):
    """config.threads fixes torch's CPU threads while training; the caller's count comes back afterwards,
    so a script (or a test session) that trains keeps its own."""
    config = load_config("quick", tiny_overrides + [f"threads={threads}"])
    # build_model: a step of the work, after the arguments are checked
    assert threads_seen_by(run_module, "build_model", lambda: train(config, tmp_path / "run")) == [threads or 2]


def test_resume_refuses_set(tmp_path):
    """--resume trains on the run's config.toml: a --set would be dropped without a word."""
    with pytest.raises(SystemExit, match="^tgfr train: error: --resume uses the run's config.toml; --set cannot "
                                         "change a run midway$"):
        main(["train", "--resume", "--out", str(tmp_path / "run"), "--set", "fr.steps=5"])


def test_each_stage_draws_its_dropout_and_augmentation_from_a_stream_of_its_own(tmp_path, tiny_overrides, monkeypatch):
    """Each stage's global RNGs start from stream_seed(seed, STEP_STREAM, stage index, rank): with the index left out,
    fr, align and fuse started from one state, and their dropout and embedding augmentation were correlated, which
    no comparison of a straight run with a resumed one could see (both shift alike)."""
    from tgfr.train.seeds import STEP_STREAM, stream_seed

    started, build = [], run_module._build_stage

    def recording_build(name, *args, **kwargs):
        started.append((name, torch.initial_seed(), np.random.get_state()[1][0]))
        return build(name, *args, **kwargs)

    monkeypatch.setattr(run_module, "_build_stage", recording_build)
    overrides = [*tiny_overrides, "seed=5", *(f"{stage}.{key}" for stage in ("fr", "align", "fuse")
                                             for key in ("steps=1", "optim.warmup_steps=0"))]
    train(load_config("quick", overrides), tmp_path / "run")
    expected = [stream_seed(5, STEP_STREAM, index, 0) for index in range(3)]
    assert [(name, seed) for name, seed, _ in started] == list(zip(("fr", "align", "fuse"), expected))
    # numpy's global generator too: its first state word is the seed's own for MT19937 seeded by an int.
    assert [word for *_, word in started] == [np.random.RandomState(seed).get_state()[1][0] for seed in expected]
