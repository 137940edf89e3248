"""A run stopped midway (inside the fr stage, whose dropout views use the RNG, then inside the
align stage) and resumed ends with exactly the weights, loss states and optimizer state of an
uninterrupted run (CPU, deterministic), with one thread and with two (where the text encoder's
output depends on how captions are batched); its train_summary.json counts every call's steps.
A run that crashed after its last checkpoint logs each step once when resumed."""

import dataclasses
import json
import os
import re
import shutil
import tomllib

import pytest
import safetensors.torch
import torch

import tgfr
import tgfr.train.run as run_module
from tgfr.cli import main
from tgfr.data.manifest import ManifestRecord, read_manifest, write_manifest
from tgfr.output_paths import write_atomically
from tgfr.train.batches import resolve_manifest
from tgfr.train.checkpoint import load_checkpoint, save_checkpoint
from tgfr.train.config import config_from_dict, load_config, parse_override, read_run_config, set_key, to_toml
from tgfr.train.loop import lr_factor
from tgfr.train.run import CHECKPOINT, build_model, train
from tgfr.train.seeds import seed_everything
from tgfr.train.stage_align import AlignStage
from tgfr.train.stage_fr import FRStage
from tgfr.train.training_log import read_log


def assert_same_tree(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def files_of(folder) -> dict:
    """Every file under `folder` and its bytes: a refused resume must leave the run folder as it was."""
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def resume_refusal(run) -> str:
    """The message with which `tgfr train --resume --out run` stops."""
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--resume", "--out", str(run)])
    return exit_info.value.code


def summary(run):
    return json.loads((run / "train_summary.json").read_text())


def test_training_gives_a_trainable_text_encoder_its_own_group_that_a_resume_keeps(tmp_path, tiny_overrides):
    """The optimizer `tgfr train` builds (not only AlignStage.parameter_groups) holds the heads at align.optim.lr
    and the encoder at align.text_encoder_lr_scale times it, the heads first (the rate metrics.jsonl logs), and a
    resume continues them."""
    config = load_config("quick", tiny_overrides + ["model.freeze_text_encoder=false",
                                                    "align.text_encoder_lr_scale=0.05"])
    run = tmp_path / "run"
    train(config, run, stop_after=config.fr.steps + 1)  # one align step
    for call in range(2):
        state = load_checkpoint(run / CHECKPOINT)
        assert (state["stage"], state["step"]) == ("align", 1 + call)
        heads, encoder = state["optimizer"]["param_groups"]
        assert heads["initial_lr"] == config.align.optim.lr
        assert encoder["initial_lr"] == pytest.approx(config.align.optim.lr * 0.05)
        assert len(encoder["params"]) == sum(p.requires_grad for p in build_model(config).text_encoder.parameters())
        (logged,) = [record for record in read_log(run / "metrics.jsonl")
                     if record.get("stage") == "align" and record.get("step") == 1 + call]
        assert logged["lr"] == pytest.approx(config.align.optim.lr * lr_factor(call, config.align.steps,
                                                                               config.align.optim))
        train(config, run, resume=True, stop_after=1)


@pytest.mark.parametrize("threads", [1, 2])
def test_stop_and_resume_equals_uninterrupted(tmp_path, tiny_overrides, threads, keep_threads):
    config = load_config("quick", tiny_overrides + [f"threads={threads}"])
    (tmp_path / "straight").mkdir()  # an existing empty folder is a new run's folder too
    train(config, tmp_path / "straight")

    resumed = tmp_path / "resumed"
    train(config, resumed, stop_after=2)
    stopped = load_checkpoint(resumed / CHECKPOINT)
    assert (stopped["stage"], stopped["step"]) == ("fr", 2)
    first = summary(resumed)
    train(config, resumed, resume=True, stop_after=4)  # fr has 4 steps: 2 more, then 2 of align
    stopped = load_checkpoint(resumed / CHECKPOINT)
    assert (stopped["stage"], stopped["step"]) == ("align", 2)
    assert not (resumed / "model").exists()
    second = summary(resumed)
    train(config, resumed, resume=True)

    straight = safetensors.torch.load_file(tmp_path / "straight" / "model" / "model.safetensors")
    resumed_weights = safetensors.torch.load_file(resumed / "model" / "model.safetensors")
    assert_same_tree(straight, resumed_weights, "model")
    a, b = (load_checkpoint(tmp_path / run / CHECKPOINT) for run in ("straight", "resumed"))
    assert (a["stage"], a["step"]) == ("fuse", 4)
    for part in ("model", "losses", "optimizer", "scheduler"):
        assert_same_tree(a[part], b[part], part)
    # The stages did train: backbone and fusion moved away from a freshly built model's.
    seed_everything(config.seed)
    fresh = build_model(config).state_dict()
    for name in ("backbone.conv1.weight", "fusion.fine.project.weight"):
        assert not torch.equal(fresh[name], straight[name]), name

    # Steps and seconds add up over the three calls; the rate is that of the totals.
    assert first["fr"]["steps_taken"] == 2 and "align" not in first
    assert second["fr"]["steps_taken"] == 4 and second["fr"]["seconds"] > first["fr"]["seconds"]
    final = summary(resumed)
    batch = config.data.identities_per_batch * config.data.images_per_identity
    for name in ("fr", "align", "fuse"):
        values = final[name]
        assert values["steps_taken"] == 4 and values["global_batch"] == batch, name
        assert values["samples_per_s"] == pytest.approx(4 * batch / values["seconds"]), name
    assert final["align"]["seconds"] > second["align"]["seconds"]


@pytest.mark.parametrize("resumed_stages", [["fr", "align"], ["fr"]], ids=["same stages", "align dropped"])
def test_resume_after_a_crash_logs_each_step_once(tmp_path, tiny_overrides, monkeypatch, keep_threads,
                                                  resumed_stages):
    """Steps logged after the last checkpoint (here: align steps after fr's final checkpoint) are lost in
    a crash and taken again on resume; metrics.jsonl keeps one record per step, as an uninterrupted run. A
    resume whose config.toml dropped align (a stage still to come) keeps none of the dead call's align steps."""
    config = load_config("quick", tiny_overrides + ['stages=["fr", "align"]', "checkpoint_every=3"])
    forward, calls = AlignStage.forward, []

    def crash_on_the_third_align_step(self, batch):
        calls.append(batch)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return forward(self, batch)

    monkeypatch.setattr(AlignStage, "forward", crash_on_the_third_align_step)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path)
    assert (load_checkpoint(tmp_path / CHECKPOINT)["stage"], len(read_log(tmp_path / "metrics.jsonl"))) == ("fr", 6)
    monkeypatch.setattr(AlignStage, "forward", forward)
    config = dataclasses.replace(config, stages=resumed_stages)
    (tmp_path / "config.toml").write_text(to_toml(config), encoding="utf-8")
    assert main(["train", "--resume", "--out", str(tmp_path)]) == 0
    logged = [(record["stage"], record["step"]) for record in read_log(tmp_path / "metrics.jsonl")]
    assert logged == [(stage, step) for stage in config.stages
                      for step in range(1, getattr(config, stage).steps + 1)]


def logged_steps(run):
    steps = {}
    for record in read_log(run / "metrics.jsonl"):
        steps[record["stage"]] = steps.get(record["stage"], 0) + 1
    return steps


def test_the_summary_counts_the_steps_a_crashed_call_checkpointed(tmp_path, tiny_overrides, monkeypatch,
                                                                  keep_threads):
    """A call killed after fr's checkpoint at step 4 (of 6) wrote no summary; the resumed run's summary still
    counts every step metrics.jsonl holds (one record per step), and the seconds of both calls."""
    config = load_config("quick", tiny_overrides + ["fr.steps=6", "align.steps=2", "fuse.steps=2",
                                                    "align.optim.warmup_steps=1", "fuse.optim.warmup_steps=1",
                                                    "checkpoint_every=2"])
    forward, calls = FRStage.forward, []

    def crash_on_the_fifth_fr_step(self, batch):
        calls.append(batch)
        if len(calls) == 6:  # step 5 was taken and logged, its checkpoint is due at step 6
            raise KeyboardInterrupt("killed")
        return forward(self, batch)

    monkeypatch.setattr(FRStage, "forward", crash_on_the_fifth_fr_step)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path)
    assert not (tmp_path / "train_summary.json").exists()
    crashed = load_checkpoint(tmp_path / CHECKPOINT)
    assert (crashed["stage"], crashed["step"]) == ("fr", 4)
    monkeypatch.setattr(FRStage, "forward", forward)
    train(config, tmp_path, resume=True)
    final = summary(tmp_path)
    assert {name: values["steps_taken"] for name, values in final.items()} == logged_steps(tmp_path) == {
        "fr": 6, "align": 2, "fuse": 2}
    assert final["fr"]["seconds"] > crashed["summary"]["fr"]["seconds"] > 0


def test_the_checkpoint_of_a_resumed_call_counts_the_steps_of_every_call(tmp_path, tiny_overrides, keep_threads):
    """A call resumed at fr's step 2 and stopped at step 3 counts in its checkpoint the 2 steps before it and its
    own 1, not step 3 as its own steps (then 5 with the first call's); the resume from there goes on from that
    count, so that the final summary counts each step metrics.jsonl holds once."""
    config = load_config("quick", tiny_overrides + ['stages=["fr"]'])
    train(config, tmp_path, stop_after=2)
    train(config, tmp_path, resume=True, stop_after=1)
    assert load_checkpoint(tmp_path / CHECKPOINT)["summary"]["fr"]["steps_taken"] == logged_steps(tmp_path)["fr"] == 3
    train(config, tmp_path, resume=True)
    assert summary(tmp_path)["fr"]["steps_taken"] == logged_steps(tmp_path)["fr"] == config.fr.steps


@pytest.mark.parametrize("first_call_steps", [3, None], ids=["stage boundary", "finished run"])
def test_a_call_that_takes_no_step_in_a_stage_adds_no_seconds_to_it(tmp_path, tiny_overrides, keep_threads,
                                                                   first_call_steps):
    """A resume of a checkpoint at fr's last step, or of a finished run, takes no fr step: fr's seconds stay those
    its checkpoint counted (the setup of a call that trained nothing there would lower its samples/s)."""
    config = load_config("quick", tiny_overrides + ["fr.steps=3", 'stages=["fr", "align"]'])
    train(config, tmp_path, stop_after=first_call_steps)
    checkpointed = load_checkpoint(tmp_path / CHECKPOINT)["summary"]
    train(config, tmp_path, resume=True)
    final = summary(tmp_path)
    assert final["fr"]["seconds"] == checkpointed["fr"]["seconds"] > 0
    assert final["fr"]["steps_taken"] == 3
    if first_call_steps is None:
        assert final["align"]["seconds"] == checkpointed["align"]["seconds"] > 0


def test_run_info_records_each_call_and_where_it_resumed(tmp_path, tiny_overrides, keep_threads, capsys):
    """run_info.json: per call, the software, device, precision and threads it trained with, and the
    stage and step it resumed at; an unreadable file is named and written anew, training goes on."""
    config = load_config("quick", tiny_overrides + ["threads=1", 'stages=["fr"]', "fr.steps=4"])
    train(config, tmp_path, stop_after=2)
    train(config, tmp_path, resume=True, stop_after=1)
    calls = json.loads((tmp_path / "run_info.json").read_text())["calls"]
    assert [call["resumed_at"] for call in calls] == [None, {"stage": "fr", "step": 2}]
    for call in calls:
        assert (call["tgfr"], call["torch"], call["device"], call["precision"], call["threads"], call["world_size"]) \
            == (tgfr.__version__, torch.__version__, "cpu", "fp32", 1, 1)
        assert set(call) >= {"date", "commit", "python"}
    (tmp_path / "run_info.json").write_text("{not json")
    capsys.readouterr()
    train(config, tmp_path, resume=True)
    assert f"tgfr train: warning: {tmp_path / 'run_info.json'} cannot be read" in capsys.readouterr().err
    calls = json.loads((tmp_path / "run_info.json").read_text())["calls"]
    assert [call["resumed_at"] for call in calls] == [{"stage": "fr", "step": 3}]
    assert (tmp_path / "model").is_dir()


def test_a_checkpoint_of_an_older_tgfr_without_counts_resumes(tmp_path, tiny_overrides, keep_threads):
    """Checkpoints written before they carried the steps and seconds fall back to train_summary.json (the
    counts of the calls that ended normally); written before they carried the optimizer settings and the
    training data's digest, they resume."""
    config = load_config("quick", tiny_overrides)
    train(config, tmp_path, stop_after=2)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    del state["summary"], state["optim"], state["data"]
    save_checkpoint(tmp_path / CHECKPOINT, state)
    train(config, tmp_path, resume=True)
    assert {name: values["steps_taken"] for name, values in summary(tmp_path).items()} == logged_steps(tmp_path)


@pytest.mark.parametrize("older", [False, True], ids=["checkpoint", "older checkpoint"])
@pytest.mark.parametrize("optimizer, edits", [("adamw", {"lr": 0.01}), ("adamw", {"weight_decay": 0.1, "lr": 0.01}),
                                              ("adamw", {"optimizer": "sgd"}), ("adamw", {"warmup_steps": 1}),
                                              ("sgd", {"momentum": 0.5})])
def test_a_resume_with_other_optimizer_settings_is_refused_before_anything_changes(tmp_path, tiny_overrides,
                                                                                  keep_threads, optimizer, edits,
                                                                                  older):
    """The optimizer and scheduler state a resume loads hold the lr and weight decay (and SGD's momentum) the
    stage trained with: an edit of them in config.toml was silently ignored (while a steps edit applied), and
    another optimizer failed with a KeyError after metrics.jsonl was cut back. The resume is refused, naming the
    keys, with the run folder untouched. A checkpoint of an older tgfr, without the settings, is compared on
    what its optimizer state holds (not warmup_steps)."""
    config = load_config("quick", tiny_overrides + [f'fr.optim.optimizer="{optimizer}"'])
    train(config, tmp_path, stop_after=3)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["stage"] == "fr"
    if older:
        save_checkpoint(tmp_path / CHECKPOINT, {key: value for key, value in state.items() if key != "optim"})
    else:
        assert state["optim"] == dataclasses.asdict(config.fr.optim)
    edited = dataclasses.replace(config, fr=dataclasses.replace(config.fr, optim=dataclasses.replace(config.fr.optim,
                                                                                                     **edits)))
    (tmp_path / "config.toml").write_text(to_toml(edited), encoding="utf-8")
    before = files_of(tmp_path)
    if older and "warmup_steps" in edits:  # an older checkpoint does not say what it was trained with
        assert main(["train", "--resume", "--out", str(tmp_path), "--stop-after", "1"]) == 0
        return
    old_values = dataclasses.asdict(config.fr.optim)
    changed = [key for key in old_values if key in edits]
    assert resume_refusal(tmp_path) == (
        f"tgfr train: error: checkpoint file {tmp_path / CHECKPOINT} was trained with "
        + ", ".join(f"fr.optim.{key} = {json.dumps(old_values[key])}" for key in changed)
        + ", but the run's config.toml now has " + ", ".join(f"fr.optim.{key} = {json.dumps(edits[key])}"
                                                            for key in changed)
        + ": the optimizer settings of the stage a resume continues cannot change (set them back in config.toml)")
    assert files_of(tmp_path) == before


def test_a_resume_with_other_optimizer_settings_of_a_later_stage_goes_on(tmp_path, tiny_overrides, keep_threads):
    """Only the stage the checkpoint continues is bound to its settings: a stage that has not started yet
    trains with the edited ones."""
    config = load_config("quick", tiny_overrides + ['stages=["fr", "align"]'])
    train(config, tmp_path, stop_after=2)
    edited = load_config(str(tmp_path / "config.toml"), ["align.optim.lr=0.01"])
    (tmp_path / "config.toml").write_text(to_toml(edited), encoding="utf-8")
    train(edited, tmp_path, resume=True)
    assert [record["lr"] for record in read_log(tmp_path / "metrics.jsonl") if record["stage"] == "align"][1] == 0.01


@pytest.mark.parametrize("stop_after, edits", [
    (2, {"seed": 1}),
    (2, {"data": {"images_per_identity": 4}, "fr": {"ce_weight": 0.7}}),
    (2, {"model": {"dropout": 0.5}, "data": {"train_degrade_p": 0.0}}),
    (6, {"fr": {"arcface_margin": 0.2}}),  # a finished stage (fr, 4 steps) is part of the run as trained
    (6, {"stages": ["align", "fuse"]}),
], ids=["seed", "batch and loss weight", "model and augmentation", "finished stage", "stages before"])
def test_a_resume_whose_config_changed_what_the_run_trained_with_is_refused(tmp_path, tiny_overrides, keep_threads,
                                                                            stop_after, edits):
    """An edit of config.toml between calls (another seed, batch, loss weight or augmentation) applied from
    midway without a word, so the run then trained otherwise than its config.toml says. The resume is refused,
    naming each key with the value trained with and the new one, with the run folder untouched."""
    config = load_config("quick", tiny_overrides)
    train(config, tmp_path, stop_after=stop_after)
    values = tomllib.loads(to_toml(config))
    trained = {}
    for table, value in edits.items():
        if isinstance(value, dict):
            for key, new in value.items():
                trained[f"{table}.{key}"], values[table][key] = values[table][key], new
        else:
            trained[table], values[table] = values[table], value
    if "stages" in edits:  # compared up to the checkpoint's stage (align), the edit drops fr
        trained["stages"], edits["stages"] = ["fr", "align"], ["align"]
    (tmp_path / "config.toml").write_text(to_toml(config_from_dict(values)), encoding="utf-8")
    new = {key: edits[key] if key in edits else edits[key.split(".")[0]][key.split(".")[1]] for key in trained}
    keys = sorted(trained)
    before = files_of(tmp_path)
    assert resume_refusal(tmp_path) == (
        f"tgfr train: error: checkpoint file {tmp_path / CHECKPOINT} was trained with "
        + ", ".join(f"{key} = {json.dumps(trained[key])}" for key in keys) + ", but the run's config.toml now has "
        + ", ".join(f"{key} = {json.dumps(new[key])}" for key in keys) + ": the rest of the run would train "
        "otherwise than config.toml says it did (set them back in config.toml, or train a new run)")
    assert files_of(tmp_path) == before


def test_a_resume_goes_on_after_edits_that_leave_the_run_as_trained(tmp_path, tiny_overrides, keep_threads):
    """Where and how fast it runs, how often it logs and checkpoints, what evaluate reads, a longer current
    stage and the settings of stages still to come may change; the next checkpoint records the new config.
    A checkpoint of an older tgfr, without its config, is not compared (its seed edit goes through)."""
    config = load_config("quick", tiny_overrides)
    train(config, tmp_path, stop_after=2)
    edited = load_config(str(tmp_path / "config.toml"), [
        "threads=2", "precision=fp32", "device=cpu", "log_every=2", "checkpoint_every=2", "data.loader_workers=1",
        'data.degradation="down16"', "evaluation.max_rank=3", 'evaluation.splits={clean = "test"}',
        "align.cicl_weight=3.0", "fuse.arcface_margin=0.2", "fuse.optim.lr=0.01"])
    (tmp_path / "config.toml").write_text(to_toml(edited), encoding="utf-8")
    assert main(["train", "--resume", "--out", str(tmp_path), "--stop-after", "3"]) == 0
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert (state["stage"], state["step"]) == ("align", 1)
    assert config_from_dict(state["config"]) == edited
    save_checkpoint(tmp_path / CHECKPOINT, {key: value for key, value in state.items() if key != "config"})
    older_edit = load_config(str(tmp_path / "config.toml"), ["seed=3"])
    (tmp_path / "config.toml").write_text(to_toml(older_edit), encoding="utf-8")
    assert main(["train", "--resume", "--out", str(tmp_path), "--stop-after", "1"]) == 0
    assert config_from_dict(load_checkpoint(tmp_path / CHECKPOINT)["config"]).seed == 3


def test_a_longer_stage_is_refused_under_a_cosine_schedule_and_goes_on_under_a_constant_one(tmp_path, tiny_overrides,
                                                                                         keep_threads):
    """A cosine schedule decays to the stage's last step: a steps edit midway stretched it from the resume on (the
    lr jumped), a run trained with neither schedule. A constant schedule does not depend on steps."""
    for schedule in ("cosine", "constant"):
        run = tmp_path / schedule
        config = load_config("quick", tiny_overrides + [f'fr.optim.schedule="{schedule}"'])
        train(config, run, stop_after=2)
        longer = load_config(str(run / "config.toml"), ["fr.steps=6"])
        (run / "config.toml").write_text(to_toml(longer), encoding="utf-8")
        if schedule == "cosine":
            assert resume_refusal(run) == (
                f"tgfr train: error: checkpoint file {run / CHECKPOINT} was trained with fr.steps = 4, but the run's "
                "config.toml now has fr.steps = 6: the rest of the run would train otherwise than config.toml says it "
                "did (set them back in config.toml, or train a new run)")
        else:
            assert main(["train", "--resume", "--out", str(run), "--stop-after", "4"]) == 0
            assert logged_steps(run) == {"fr": 6}


def tiny_text_encoder(folder, seed):
    """A one-layer BERT with a few words, its weights drawn from `seed`, saved in `folder`."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir()
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "green", "eyes", "hair"]) + "\n")
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    BertTokenizer(str(vocab)).save_pretrained(folder)
    return folder


def test_a_resume_follows_a_moved_text_encoder_but_refuses_another(tmp_path, tiny_overrides, keep_threads):
    """model.text_encoder (a frozen one is rebuilt from its folder, not the checkpoint) may point at the same
    encoder moved elsewhere; one with other weights is refused, as it would train the rest of the run."""
    first, other = tiny_text_encoder(tmp_path / "encoder", 0), tiny_text_encoder(tmp_path / "other", 1)
    run = tmp_path / "run"
    train(load_config("quick", tiny_overrides + [f'model.text_encoder="{first}"']), run, stop_after=5)  # 1 into align
    moved = first.rename(tmp_path / "moved")
    for folder in (other, moved):
        edited = load_config(str(run / "config.toml"), [f'model.text_encoder="{folder}"'])
        (run / "config.toml").write_text(to_toml(edited), encoding="utf-8")
        if folder == other:
            assert resume_refusal(run) == (
                f"tgfr train: error: checkpoint file {run / CHECKPOINT} trained with another text encoder than "
                f"model.text_encoder ({other}) now holds (its vocabulary, or its weights while frozen, differ), and "
                "resuming would train the rest of the run with it: point model.text_encoder in config.toml at the "
                "folder the run trained with")
    assert main(["train", "--resume", "--out", str(run), "--stop-after", "1"]) == 0
    assert load_checkpoint(run / CHECKPOINT)["step"] == 2


def test_a_resume_follows_moved_backbone_weights_but_not_weights_set_or_dropped(tmp_path, tiny_overrides,
                                                                               keep_threads):
    """model.backbone_weights may move (the checkpoint's backbone replaces what it loads), and the settings of
    an fr stage that only loads them are no training's; but set or emptied midway it decides whether fr trains:
    set during fr, the half-trained fr was skipped for align without a word."""
    weights = tmp_path / "backbone.safetensors"
    safetensors.torch.save_file(build_model(load_config("quick", tiny_overrides)).backbone.state_dict(), weights)
    training = tmp_path / "training"
    train(load_config("quick", tiny_overrides), training, stop_after=2)
    edited = load_config(str(training / "config.toml"), [f'model.backbone_weights="{weights}"'])
    (training / "config.toml").write_text(to_toml(edited), encoding="utf-8")
    assert resume_refusal(training) == (
        f"tgfr train: error: checkpoint file {training / CHECKPOINT} was trained with model.backbone_weights = \"\", "
        f"but the run's config.toml now has model.backbone_weights = {json.dumps(str(weights))}: the rest of the run "
        "would train otherwise than config.toml says it did (set them back in config.toml, or train a new run)")

    loading = tmp_path / "loading"
    train(load_config("quick", tiny_overrides + [f'model.backbone_weights="{weights}"']), loading, stop_after=1)
    moved = weights.rename(tmp_path / "moved.safetensors")
    edited = load_config(str(loading / "config.toml"), [f'model.backbone_weights="{moved}"', "fr.arcface_margin=0.1"])
    (loading / "config.toml").write_text(to_toml(edited), encoding="utf-8")
    assert main(["train", "--resume", "--out", str(loading), "--stop-after", "1"]) == 0
    assert (load_checkpoint(loading / CHECKPOINT)["stage"], load_checkpoint(loading / CHECKPOINT)["step"]) == (
        "align", 2)


def test_a_checkpoint_without_a_text_encoder_digest_keeps_the_text_encoder_path(tmp_path, tiny_overrides,
                                                                               keep_threads):
    """A checkpoint that records the config but no digest of the text encoder (written by a tgfr between the two)
    cannot tell a moved encoder from another one: its path is compared as a setting."""
    first, copy = tiny_text_encoder(tmp_path / "encoder", 0), tiny_text_encoder(tmp_path / "copy", 0)
    run = tmp_path / "run"
    train(load_config("quick", tiny_overrides + [f'model.text_encoder="{first}"']), run, stop_after=2)
    state = load_checkpoint(run / CHECKPOINT)
    del state["text_encoder"]
    save_checkpoint(run / CHECKPOINT, state)
    edited = load_config(str(run / "config.toml"), [f'model.text_encoder="{copy}"'])
    (run / "config.toml").write_text(to_toml(edited), encoding="utf-8")
    assert resume_refusal(run).startswith(
        f"tgfr train: error: checkpoint file {run / CHECKPOINT} was trained with model.text_encoder = "
        f"{json.dumps(str(first))}, but the run's config.toml now has model.text_encoder = {json.dumps(str(copy))}:")


def test_settings_that_a_later_tgfr_adds_or_drops_do_not_stop_a_resume(tmp_path, tiny_overrides, keep_threads):
    """A checkpoint's config lacking a setting this tgfr has (or holding one it dropped) cannot be set back in
    config.toml: such settings are not compared, the others still are."""
    config = load_config("quick", tiny_overrides)
    train(config, tmp_path, stop_after=2)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    del state["config"]["data"]["train_degrade_p"]
    state["config"]["fr"]["dropped_setting"] = 1
    save_checkpoint(tmp_path / CHECKPOINT, state)
    edited = load_config(str(tmp_path / "config.toml"), ["seed=1"])
    (tmp_path / "config.toml").write_text(to_toml(edited), encoding="utf-8")
    assert resume_refusal(tmp_path).startswith(f"tgfr train: error: checkpoint file {tmp_path / CHECKPOINT} was "
                                               "trained with seed = 0, but the run's config.toml now has seed = 1:")
    (tmp_path / "config.toml").write_text(to_toml(config), encoding="utf-8")
    assert main(["train", "--resume", "--out", str(tmp_path), "--stop-after", "1"]) == 0


def test_optimizer_edits_that_cannot_change_training_are_accepted(tmp_path, tiny_overrides, keep_threads):
    """AdamW has no momentum, and a stage the checkpoint finished trains no more: editing either is no
    reason to refuse the resume."""
    config = load_config("quick", tiny_overrides + ['stages=["fr", "align"]'])
    assert config.fr.optim.optimizer == "adamw" and config.fr.steps > 1

    def with_fr_optim(**edits):  # written into config.toml, as a resume trains the run it describes
        edited = dataclasses.replace(config, fr=dataclasses.replace(
            config.fr, optim=dataclasses.replace(config.fr.optim, **edits)))
        (tmp_path / "config.toml").write_text(to_toml(edited), encoding="utf-8")
        return edited

    train(config, tmp_path, stop_after=1)
    train(with_fr_optim(momentum=0.5), tmp_path, resume=True, stop_after=config.fr.steps - 1)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert (state["stage"], state["step"]) == ("fr", config.fr.steps)
    train(with_fr_optim(lr=0.5), tmp_path, resume=True)
    assert logged_steps(tmp_path) == {"fr": config.fr.steps, "align": config.align.steps}


@pytest.mark.parametrize("stop_after", [2, 6], ids=["stage continued", "finished stage"])
@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_min_lr_ratio_is_compared_under_a_cosine_schedule_alone(tmp_path, tiny_overrides, keep_threads, stop_after,
                                                                schedule):
    """Only the cosine schedule decays to lr * min_lr_ratio: under a constant one (trained and now) the setting
    is never read, and an edit of it refused the resume, of the stage continued (fr at step 2) as of one finished
    (fr, 4 steps, with the checkpoint in align). AdamW's momentum, edited too, is never read either."""
    config = load_config("quick", tiny_overrides + [f'fr.optim.schedule="{schedule}"'])
    assert config.fr.optim.optimizer == "adamw"
    train(config, tmp_path, stop_after=stop_after)
    edited = load_config(str(tmp_path / "config.toml"), ["fr.optim.min_lr_ratio=0.5", "fr.optim.momentum=0.5"])
    (tmp_path / "config.toml").write_text(to_toml(edited), encoding="utf-8")
    if schedule == "constant":
        resumed_at = load_checkpoint(tmp_path / CHECKPOINT)
        assert main(["train", "--resume", "--out", str(tmp_path), "--stop-after", "1"]) == 0
        state = load_checkpoint(tmp_path / CHECKPOINT)
        assert (state["stage"], state["step"]) == (resumed_at["stage"], resumed_at["step"] + 1)
        return
    trained, now = json.dumps(config.fr.optim.min_lr_ratio), json.dumps(edited.fr.optim.min_lr_ratio)
    why = ("the optimizer settings of the stage a resume continues cannot change (set them back in config.toml)"
           if stop_after < config.fr.steps else "the rest of the run would train otherwise than config.toml says it "
           "did (set them back in config.toml, or train a new run)")
    before = files_of(tmp_path)
    assert resume_refusal(tmp_path) == (
        f"tgfr train: error: checkpoint file {tmp_path / CHECKPOINT} was trained with fr.optim.min_lr_ratio = "
        f"{trained}, but the run's config.toml now has fr.optim.min_lr_ratio = {now}: {why}")
    assert files_of(tmp_path) == before


def test_resume_after_a_half_written_log_line(tmp_path, tiny_overrides, keep_threads):
    config = load_config("quick", tiny_overrides)
    train(config, tmp_path, stop_after=2)
    with (tmp_path / "metrics.jsonl").open("a") as stream:
        stream.write('{"stage": "fr", "step": 3, "ti')  # killed while appending
    train(config, tmp_path, resume=True)
    logged = [(record["stage"], record["step"]) for record in read_log(tmp_path / "metrics.jsonl")]
    assert logged == [(stage, step) for stage in config.stages for step in range(1, getattr(config, stage).steps + 1)]


def break_losses(state):
    state["losses"] = {name: torch.zeros(7) for name in state["losses"]}


def break_optimizer(state):
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"] * 2


def cut_the_torch_rng_state(state):
    state["rng"][0]["torch"] = state["rng"][0]["torch"][:100]


def widen_conv1(state):
    state["model"]["backbone.conv1.weight"] = torch.zeros(8, 3, 3, 3)


MODEL_MISMATCH = "does not fit the model the run's config builds"


@pytest.mark.parametrize("damage, message", [
    (lambda state: state.pop("optimizer"), "is not a tgfr training checkpoint (no 'optimizer')"),
    (lambda state: state.update(model=[]), "'model' must be a state dict"),
    (widen_conv1, f"{MODEL_MISMATCH} (a checkpoint of another run, or model.* settings or data.image_size of the "
                  "run's config.toml changed since it was written?): size mismatch for backbone.conv1.weight"),
    (lambda state: state["model"].pop("fusion.fine.project.weight"),
     f"{MODEL_MISMATCH} (a checkpoint of another run, or model.* settings or data.image_size of the run's config.toml "
     "changed since it was written?): missing ['fusion.fine.project.weight'], unexpected []"),
    (break_losses, "does not match stage fr's losses: size mismatch for "),
    (break_optimizer, ": the state of stage fr does not fit its optimizer, schedule or RNGs: ValueError("),
    (cut_the_torch_rng_state, ": the state of stage fr does not fit its optimizer, schedule or RNGs: RuntimeError("),
    (lambda state: state.update(data="0" * 63), "'data' must be a sha256 digest in hex (the training split's)"),
    (lambda state: state.update(config=[1]), "'config' must be a dict of setting name -> value (the run's)"),
    (lambda state: state.update(config={1: 2}), "'config' must be a dict of setting name -> value (the run's)"),
    (lambda state: state.update(config={"stages": 5}), "its 'stages' a list of stage names"),
    (lambda state: state.update(text_encoder="x"), "'text_encoder' must be a sha256 digest in hex"),
])
def test_a_malformed_checkpoint_stops_the_resume_before_the_log_is_cut(tmp_path, tiny_overrides, keep_threads,
                                                                      damage, message):
    config = load_config("quick", tiny_overrides)
    train(config, tmp_path, stop_after=3)
    state = load_checkpoint(tmp_path / CHECKPOINT)
    state["step"] = 1  # a resume would drop the records of steps 2 and 3
    damage(state)
    save_checkpoint(tmp_path / CHECKPOINT, state)
    log = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        train(config, tmp_path, resume=True)
    assert "\n" not in str(error.value)  # `tgfr train` prints it as one `tgfr train: error: ...` line
    assert str(error.value).startswith(f"checkpoint file {tmp_path / CHECKPOINT}")
    assert "pooler" not in str(error.value)  # an fr checkpoint: the text encoder's pooler trained only in align
    assert (tmp_path / "metrics.jsonl").read_text() == log


def test_a_resume_over_other_training_data_is_refused_before_anything_changes(tmp_path, tiny_overrides, keep_threads):
    """A run whose training split has changed since its checkpoint (here one caption edited) would train its
    remaining steps on other data: the resume is refused, naming the checkpoint, the split and the manifest,
    with the run folder untouched. Records of other splits may change; the data restored, the run goes on."""
    data = tmp_path / "data"
    shutil.copytree(resolve_manifest(load_config("quick", tiny_overrides).data).parent, data)
    manifest = data / "manifest.jsonl"
    config = load_config("quick", tiny_overrides + [f'data.manifest="{manifest}"'])
    run = tmp_path / "run"
    train(config, run, stop_after=2)
    records = read_manifest(manifest)
    edited = [dataclasses.replace(record, captions=("A caption written since.", *record.captions[1:]))
              if record.path == next(r.path for r in records if r.split == "train") else record for record in records]
    write_manifest(manifest, edited)
    before = files_of(run)
    assert resume_refusal(run) == (
        f"tgfr train: error: checkpoint file {run / CHECKPOINT} trained on split 'train' of manifest {manifest} as it "
        f"was then; its images' paths, identities or captions, or their order, have changed since, and resuming would "
        f"train the rest of the run on other data: restore the data the run started with, or train a new run")
    assert files_of(run) == before
    write_manifest(manifest, [*records, ManifestRecord("images/added.png", "new", "val", ("An added image.",))])
    train(config, run, resume=True)
    assert (run / "model").is_dir()


def test_a_resume_with_other_synthetic_settings_names_them(tmp_path, tiny_overrides, keep_threads):
    """On the embedded synthetic set the data changes only with config.toml's settings: the refusal says so,
    instead of naming a cache manifest the run never trained on."""
    config = load_config("quick", tiny_overrides)
    train(config, tmp_path, stop_after=2)
    edited = dataclasses.replace(config, data=dataclasses.replace(config.data, synthetic_seed=1))
    (tmp_path / "config.toml").write_text(to_toml(edited), encoding="utf-8")
    assert resume_refusal(tmp_path) == (
        f"tgfr train: error: checkpoint file {tmp_path / CHECKPOINT} trained on another synthetic set than the run's "
        f"config.toml now generates (its data.synthetic_* or data.train_split settings changed since), and resuming "
        f"would train the rest of the run on other data: set them back in config.toml")


def test_a_checkpoint_of_a_stage_dropped_from_config_toml_is_refused_naming_the_file(tmp_path, tiny_overrides,
                                                                                    keep_threads):
    """config.toml's stages lost the stage the checkpoint continues: the one error line names the checkpoint
    file and config.toml's stages, and the run folder stays as it was."""
    train(load_config("quick", tiny_overrides), tmp_path, stop_after=1)
    config_file = tmp_path / "config.toml"
    assert '\nstages = ["fr", "align", "fuse"]\n' in config_file.read_text()
    config_file.write_text(config_file.read_text().replace('\nstages = ["fr", "align", "fuse"]\n',
                                                           '\nstages = ["align", "fuse"]\n'))
    before = files_of(tmp_path)
    assert resume_refusal(tmp_path) == (
        f"tgfr train: error: checkpoint file {tmp_path / CHECKPOINT} continues stage 'fr', but the run's config.toml "
        'now has stages = ["align", "fuse"], without it: the stages a resume continues cannot be dropped (put it '
        "back in config.toml)")
    assert files_of(tmp_path) == before


def test_a_checkpoint_of_another_model_width_is_one_error_line(tmp_path, tiny_overrides, keep_threads):
    """config.toml's model.width changed after the checkpoint was written: `tgfr train --resume` ends with
    one line naming the checkpoint file and the model settings, not a traceback, and leaves the log."""
    train(load_config("quick", tiny_overrides), tmp_path, stop_after=1)
    config_file = tmp_path / "config.toml"
    assert "\nwidth = 4\n" in config_file.read_text()
    config_file.write_text(config_file.read_text().replace("\nwidth = 4\n", "\nwidth = 8\n"))
    log = (tmp_path / "metrics.jsonl").read_text()
    message = resume_refusal(tmp_path)
    assert message.startswith(f"tgfr train: error: checkpoint file {tmp_path / CHECKPOINT} {MODEL_MISMATCH} ")
    assert "model.* settings" in message and "size mismatch for backbone.conv1.weight" in message
    assert "\n" not in message and "; size mismatch for backbone.bn1.weight" in message and ".;" not in message
    assert (tmp_path / "metrics.jsonl").read_text() == log


def test_resume_removes_the_temporary_file_of_a_checkpoint_write_that_was_killed(tmp_path, tiny_overrides,
                                                                               keep_threads, kill_while_writing):
    config = load_config("quick", tiny_overrides)
    train(config, tmp_path, stop_after=2)
    leftover = kill_while_writing(tmp_path / CHECKPOINT)
    notes = tmp_path / "checkpoints" / "notes.tmp"  # not a name save_checkpoint makes
    notes.write_text("mine")
    log_leftover = tmp_path / ".metrics.jsonl.0a1b2c3d.tmp"  # what a rewrite of the log killed alike leaves
    log_leftover.write_text("half a log")
    train(config, tmp_path, resume=True)
    assert not leftover.exists() and not log_leftover.exists() and notes.read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt", "notes.tmp"]


def nan_at_the_second_step(monkeypatch):
    """fr's loss is NaN at step 2 (before checkpoint_every = 3): the run logs step 1 and stops."""
    forward, calls = FRStage.forward, []

    def forward_nan_at_step_2(self, batch):
        calls.append(batch)
        loss, components = forward(self, batch)
        return (loss * float("nan") if len(calls) == 2 else loss), components

    monkeypatch.setattr(FRStage, "forward", forward_nan_at_step_2)
    return FloatingPointError, "stage fr: loss is not finite at step 2", 1


def killed_writing_the_first_checkpoint(monkeypatch):
    """Interrupted inside the write of the checkpoint of step checkpoint_every = 3: the run has logged
    steps 1 to 3 (each record goes before its step's checkpoint)."""
    def interrupted_save(path, state):
        with write_atomically(path, "checkpoint", binary=True) as stream:
            stream.write(b"half a checkpoint")
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(run_module, "save_checkpoint", interrupted_save)
    return KeyboardInterrupt, "killed", 3


@pytest.mark.parametrize("stop", [nan_at_the_second_step, killed_writing_the_first_checkpoint])
def test_a_run_that_stopped_before_its_first_checkpoint_resumes_from_its_start(tmp_path, tiny_overrides, monkeypatch,
                                                                              capsys, keep_threads,
                                                                              kill_while_writing, stop):
    """A run stopped before its first checkpoint was written (a non-finite loss at fr's step 2, or a kill while
    the checkpoint of step checkpoint_every = 3 was written) leaves config.toml and the steps it logged but no
    checkpoint; `tgfr train --resume` trains the run from its first step with its config.toml, removes what
    a killed checkpoint write left, and ends with the uninterrupted run's weights and log."""
    config = load_config("quick", tiny_overrides)
    assert config.checkpoint_every == 3 < config.fr.steps
    train(config, tmp_path / "straight")
    run = tmp_path / "died"
    with monkeypatch.context() as patch:
        error, message, logged = stop(patch)
        with pytest.raises(error, match=re.escape(message)):
            train(config, run)
    leftover = kill_while_writing(run / CHECKPOINT)  # as a SIGKILL inside the write leaves it
    assert sorted(p.name for p in run.iterdir() if p.name != "tensorboard") == ["checkpoints", "config.toml",
                                                                               "metrics.jsonl", "run_info.json"]
    assert [record["step"] for record in read_log(run / "metrics.jsonl")] == list(range(1, logged + 1))
    with pytest.raises(ValueError, match=re.escape(f"run folder {run} is not empty: continue its run with --resume")):
        train(config, run)
    capsys.readouterr()

    assert main(["train", "--resume", "--out", str(run)]) == 0
    assert f"{run} holds no checkpoint yet" in capsys.readouterr().err
    assert not leftover.exists() and [p.name for p in (run / "checkpoints").iterdir()] == ["last.pt"]
    straight = safetensors.torch.load_file(tmp_path / "straight" / "model" / "model.safetensors")
    assert_same_tree(straight, safetensors.torch.load_file(run / "model" / "model.safetensors"), "model")
    a, b = (load_checkpoint(folder / CHECKPOINT) for folder in (tmp_path / "straight", run))
    for part in ("model", "losses", "optimizer", "scheduler"):
        assert_same_tree(a[part], b[part], part)
    assert ([(r["stage"], r["step"]) for r in read_log(run / "metrics.jsonl")]
            == [(r["stage"], r["step"]) for r in read_log(tmp_path / "straight" / "metrics.jsonl")])
    assert {name: values["steps_taken"] for name, values in summary(run).items()} == {"fr": 4, "align": 4, "fuse": 4}


def test_a_folder_without_config_toml_is_still_no_run_to_resume(tmp_path, tiny_overrides):
    (tmp_path / "metrics.jsonl").write_text('{"stage": "fr", "step": 1}\n')
    with pytest.raises(ValueError, match=re.escape(f"checkpoint file {tmp_path / CHECKPOINT} does not exist")):
        train(load_config("quick", tiny_overrides), tmp_path, resume=True)
    with pytest.raises(SystemExit, match=re.escape(f"--resume: {tmp_path / 'config.toml'} does not exist")):
        main(["train", "--resume", "--out", str(tmp_path)])
    assert (tmp_path / "metrics.jsonl").read_text() == '{"stage": "fr", "step": 1}\n'


@pytest.mark.parametrize("case", ["stopped after a checkpoint", "logged past the first checkpoint"])
def test_a_run_whose_checkpoint_went_missing_is_not_trained_again(tmp_path, tiny_overrides, case):
    """Only a run that never wrote a checkpoint starts again: one whose checkpoint was deleted or
    moved later keeps its log and model, and --resume says the checkpoint is missing."""
    config = load_config("quick", tiny_overrides)
    run = tmp_path / "run"
    if case == "stopped after a checkpoint":
        train(config, run, stop_after=config.checkpoint_every + 1)
    else:  # logged the step after checkpoint_every, so the checkpoint of step checkpoint_every was written
        run.mkdir()
        (run / "config.toml").write_text(to_toml(config), encoding="utf-8")
        (run / "metrics.jsonl").write_text("".join(json.dumps({"stage": "fr", "step": step}) + "\n"
                                                   for step in range(1, config.checkpoint_every + 2)))
    (run / CHECKPOINT).unlink(missing_ok=True)
    log = (run / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match=re.escape(f"checkpoint file {run / CHECKPOINT} does not exist")):
        train(config, run, resume=True)
    assert (run / "metrics.jsonl").read_text() == log


def test_a_run_stopped_before_its_first_checkpoint_with_checkpoint_every_edited_since_is_told_so(
        tmp_path, tiny_overrides, monkeypatch, capsys, keep_threads):
    """Killed at fr step 3 with checkpoint_every = 3, the run logged steps 1 and 2 and wrote no checkpoint.
    config.toml then takes checkpoint_every = 1 (free on resume): the log now reaches past the first checkpoint,
    as if a checkpoint had been written and lost, and the refusal names checkpoint_every, not only the missing
    file; set back, the run trains again from its first step."""
    config = load_config("quick", tiny_overrides)
    assert config.checkpoint_every == 3 < config.fr.steps
    forward, calls = FRStage.forward, []

    def killed_at_the_third_step(self, batch):
        calls.append(batch)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return forward(self, batch)

    with monkeypatch.context() as patch:
        patch.setattr(FRStage, "forward", killed_at_the_third_step)
        with pytest.raises(KeyboardInterrupt):
            train(config, tmp_path)
    assert not (tmp_path / CHECKPOINT).exists()
    assert [record["step"] for record in read_log(tmp_path / "metrics.jsonl")] == [1, 2]
    (tmp_path / "config.toml").write_text(to_toml(dataclasses.replace(config, checkpoint_every=1)), encoding="utf-8")
    before = files_of(tmp_path)
    assert resume_refusal(tmp_path) == (
        f"tgfr train: error: checkpoint file {tmp_path / CHECKPOINT} does not exist, but {tmp_path / 'metrics.jsonl'} "
        f"logs step 2 of stage fr, past the run's first checkpoint (step 1: checkpoint_every = 1, fr.steps = 4 in "
        f"config.toml): put the checkpoint back, or, if the run stopped before its first checkpoint and "
        f"checkpoint_every was edited since, set it back to train the run again from its first step")
    assert files_of(tmp_path) == before
    (tmp_path / "config.toml").write_text(to_toml(config), encoding="utf-8")
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(tmp_path), "--stop-after", "1"]) == 0
    assert f"{tmp_path} holds no checkpoint yet" in capsys.readouterr().err
    assert [record["step"] for record in read_log(tmp_path / "metrics.jsonl")] == [1]


@pytest.mark.parametrize("finished", [True, False], ids=["finished run", "run without a checkpoint yet"])
def test_a_file_in_place_of_the_checkpoint_folder_is_named_as_one(tmp_path, tiny_overrides, finished):
    """Through a file `checkpoints`, last.pt "does not exist": a finished run's resume said so, and a run that
    stopped before its first checkpoint was taken for one to train again, which failed with a bare "File exists"."""
    (tmp_path / "config.toml").write_text(to_toml(load_config("quick", tiny_overrides)), encoding="utf-8")
    if finished:
        (tmp_path / "model").mkdir()
    (tmp_path / "checkpoints").write_text("not a folder")
    before = files_of(tmp_path)
    assert resume_refusal(tmp_path) == (
        f"tgfr train: error: checkpoint folder {tmp_path / 'checkpoints'} is a file, not a folder")
    assert files_of(tmp_path) == before


def test_a_checkpoint_file_behind_a_broken_link_is_named_not_trained_again(tmp_path, tiny_overrides, keep_threads):
    """Through the broken link (its disk not mounted) last.pt looked absent: a run killed after its first
    checkpoint, before it logged a step past it, was taken for one that stopped before it, trained again from
    step 0 with its metrics.jsonl emptied, and its new checkpoint written through the link."""
    config = load_config("quick", tiny_overrides)
    run = tmp_path / "run"
    train(config, run, stop_after=config.checkpoint_every)
    (run / "train_summary.json").unlink()  # killed right after the checkpoint, before the summary
    target = tmp_path / "gone" / "last.pt"
    (run / CHECKPOINT).unlink()
    (run / CHECKPOINT).symlink_to(target)
    before = files_of(run)
    assert resume_refusal(run) == (
        f"tgfr train: error: checkpoint file {run / CHECKPOINT} is a broken symbolic link (to {target})")
    assert files_of(run) == before and not (tmp_path / "gone").exists() and (run / CHECKPOINT).is_symlink()


def test_a_run_with_a_trainable_text_encoder_resumed_inside_fuse_equals_uninterrupted(tmp_path, tiny_overrides,
                                                                                       keep_threads):
    """The fuse stage caches caption features: encoded with the dropout the align stage left on, they were one
    random draw per caption, and another in a resumed process, whose model is built in eval mode."""
    config = load_config("quick", tiny_overrides + ["threads=1", "model.freeze_text_encoder=false"])
    train(config, tmp_path / "straight")
    resumed = tmp_path / "resumed"
    train(config, resumed, stop_after=9)  # fr and align take 4 steps each: one step into fuse
    assert (load_checkpoint(resumed / CHECKPOINT)["stage"], load_checkpoint(resumed / CHECKPOINT)["step"]) == (
        "fuse", 1)
    train(config, resumed, resume=True)
    assert_same_tree(safetensors.torch.load_file(tmp_path / "straight" / "model" / "model.safetensors"),
                     safetensors.torch.load_file(resumed / "model" / "model.safetensors"), "model")


def test_a_resume_whose_config_cuts_the_stage_below_its_checkpoint_is_refused(tmp_path, tiny_overrides, keep_threads):
    """fr.steps edited from 4 to 2 after 3 steps: the stage ended silently at step 3, counted as done."""
    config = load_config("quick", tiny_overrides)
    train(config, tmp_path, stop_after=3)
    edited = dataclasses.replace(config, fr=dataclasses.replace(config.fr, steps=2, optim=dataclasses.replace(
        config.fr.optim, warmup_steps=min(config.fr.optim.warmup_steps, 1))))
    (tmp_path / "config.toml").write_text(to_toml(edited), encoding="utf-8")
    before = files_of(tmp_path)
    assert resume_refusal(tmp_path) == (
        f"tgfr train: error: checkpoint file {tmp_path / CHECKPOINT} is at step 3 of stage fr, past fr.steps = 2 in "
        "the run's config: a stage cannot be cut shorter than it has trained (set it back to at least 3 in "
        "config.toml)")
    assert files_of(tmp_path) == before


def test_a_python_resume_of_a_run_without_a_checkpoint_yet_is_refused_another_config(tmp_path, tiny_overrides):
    """The run trains again from its first step (no checkpoint to compare with): with another config than its
    config.toml, that config.toml would describe another run than the one trained."""
    config = load_config("quick", tiny_overrides)
    (tmp_path / "config.toml").write_text(to_toml(config.with_absolute_paths()), encoding="utf-8")
    # Step 2 logged, before the first checkpoint (checkpoint_every = 3): judged with the passed fr.steps = 1, it
    # was past the first checkpoint, and that error quoted fr.steps = 1 as config.toml's.
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"stage": "fr", "step": 2, "time": 0.0, "total": 1.0}) + "\n")
    for steps in (config.fr.steps + 1, 1):
        edited = dataclasses.replace(config, fr=dataclasses.replace(config.fr, steps=steps))
        before = files_of(tmp_path)
        with pytest.raises(ValueError, match=re.escape(f"run config {tmp_path / 'config.toml'} has fr.steps = "
                                                       f"{config.fr.steps}, but the config passed to resume the run "
                                                       f"has fr.steps = {steps}: ")):
            train(edited, tmp_path, resume=True)
        assert files_of(tmp_path) == before


def test_a_python_resume_with_another_config_than_config_toml_is_refused_but_for_the_calls_own_settings(
        tmp_path, tiny_overrides, keep_threads):
    """train(config, out, resume=True) trained with the config passed while config.toml kept the run's: an edit of
    a stage not reached yet (which the checkpoint does not bind) trained unrecorded, and a later `tgfr train
    --resume` stopped in that stage asked to set back a value config.toml never held. The call is refused naming
    config.toml and the keys, the run folder untouched; a config that differs in the call's own settings alone
    (log_every, threads) goes on, with config.toml as written."""
    config = load_config("quick", tiny_overrides + ['stages=["fr", "align"]'])
    train(config, tmp_path, stop_after=1)
    path = tmp_path / "config.toml"
    written = tomllib.loads(path.read_text(encoding="utf-8"))["align"]
    edited = dataclasses.replace(config, align=dataclasses.replace(config.align, steps=2, wrcl_weight=0.0))
    before = files_of(tmp_path)
    with pytest.raises(ValueError) as refusal:
        train(edited, tmp_path, resume=True)
    assert str(refusal.value).startswith(
        f"run config {path} has align.steps = {json.dumps(written['steps'])}, align.wrcl_weight = "
        f"{json.dumps(written['wrcl_weight'])}, but the config passed to resume the run has align.steps = 2, "
        "align.wrcl_weight = 0.0: a resume trains the run as config.toml describes it")
    assert files_of(tmp_path) == before
    path.rename(tmp_path / "elsewhere.toml")
    with pytest.raises(ValueError, match=re.escape(f"{path} does not exist (no run to resume in {tmp_path})")):
        train(config, tmp_path, resume=True)
    (tmp_path / "elsewhere.toml").rename(path)

    train(dataclasses.replace(config, log_every=2, threads=2), tmp_path, resume=True)
    assert path.read_bytes() == before[path]
    # Step 1 logged by the first call (log_every = 1), then every second step and each stage's last.
    assert [(record["stage"], record["step"]) for record in read_log(tmp_path / "metrics.jsonl")] == [("fr", 1)] + [
        (stage, step) for stage in ("fr", "align") for step in range(2, getattr(config, stage).steps + 1)
        if step % 2 == 0 or step == getattr(config, stage).steps]


def test_a_python_resume_compares_path_settings_as_the_run_resolves_them(tmp_path, tiny_overrides, keep_threads,
                                                                          monkeypatch):
    """config.toml holds model.backbone_weights absolute: the same file passed relative to the current directory
    is the run's; another file is refused."""
    weights = tmp_path / "backbone.safetensors"
    config = load_config("quick", tiny_overrides + [f'model.backbone_weights="{weights}"', 'stages=["fr", "align"]'])
    safetensors.torch.save_file(build_model(dataclasses.replace(config, model=dataclasses.replace(
        config.model, backbone_weights=""))).backbone.state_dict(), weights)
    run = tmp_path / "run"
    train(config, run, stop_after=1)
    monkeypatch.chdir(tmp_path)
    shutil.copy(weights, tmp_path / "copy.safetensors")

    def with_weights(path):
        return dataclasses.replace(config, model=dataclasses.replace(config.model, backbone_weights=path))

    with pytest.raises(ValueError, match=re.escape(
            f"run config {run / 'config.toml'} has model.backbone_weights = {json.dumps(str(weights))}, but the "
            f"config passed to resume the run has model.backbone_weights = "
            f"{json.dumps(str(tmp_path / 'copy.safetensors'))}:")):
        train(with_weights("copy.safetensors"), run, resume=True, stop_after=1)
    train(with_weights(weights.name), run, resume=True, stop_after=1)
    assert (load_checkpoint(run / CHECKPOINT)["stage"], load_checkpoint(run / CHECKPOINT)["step"]) == ("align", 2)


def edit_config_toml(run, overrides):
    """Rewrites run/config.toml with `overrides` (KEY=VALUE) applied, as a user editing it between calls would:
    without load_config's recipe checks, which a resume reads config.toml without."""
    values = tomllib.loads((run / "config.toml").read_text(encoding="utf-8"))
    for override in overrides:
        set_key(values, *parse_override(override))
    (run / "config.toml").write_text(to_toml(config_from_dict(values)), encoding="utf-8")


@pytest.mark.parametrize("first_stages, extension, end", [
    (["fr", "align"], ['stages=["fr", "align", "fuse"]'], ("fuse", 4)),
    (["fr", "align", "fuse"], ["fuse.steps=6"], ("fuse", 6)),
], ids=["stage added", "longer constant-schedule stage"])
def test_a_resume_that_trains_past_a_finished_runs_end_removes_its_model_until_it_finishes_again(
        tmp_path, tiny_overrides, keep_threads, capsys, first_stages, extension, end):
    """model/ means "finished as config.toml now describes it": a finished run extended in config.toml and stopped
    early by the resume had kept the model/ of its old end, which `tgfr train` called finished and `tgfr evaluate`
    scored (its fusion module never trained, in the added-stage case)."""
    run = tmp_path / "run"
    config = load_config("quick", tiny_overrides + [f"stages={json.dumps(first_stages)}",
                                                    'fuse.optim.schedule="constant"'])
    train(config, run)
    old_model = (run / "model" / "model.safetensors").read_bytes()
    assert main(["train", "--resume", "--out", str(run)]) == 0  # a finished run resumed as it is stays finished
    assert capsys.readouterr().out == f"run folder: {run} (finished)\n"
    assert (run / "model" / "model.safetensors").read_bytes() == old_model
    edit_config_toml(run, extension)

    assert main(["train", "--resume", "--out", str(run), "--stop-after", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"run folder: {run} (stopped; continue with --resume)\n"
    assert f"tgfr train: {run / 'model'} removed" in captured.err
    assert not os.path.lexists(run / "model")
    assert [entry.name for entry in run.iterdir() if entry.name.startswith(".")] == []  # no model set aside
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--run", str(run), "--out", str(tmp_path / "report")])
    assert exit_info.value.code == (f"tgfr evaluate: error: --run: {run / 'model'} does not exist (training has not "
                                    "finished; use `tgfr train --resume`)")

    assert main(["train", "--resume", "--out", str(run)]) == 0
    assert capsys.readouterr().out == f"run folder: {run} (finished)\n"
    state = load_checkpoint(run / CHECKPOINT)
    assert (state["stage"], state["step"]) == end
    saved = safetensors.torch.load_file(run / "model" / "model.safetensors")
    assert_same_tree({name: saved[name] for name in state["model"]}, state["model"])  # the model of the new end


def test_a_symbolic_link_in_place_of_a_stale_model_is_removed_not_its_target(tmp_path, capsys):
    """A model/ moved to another disk and linked back: the resume that trains past it unlinks the link; the
    folder it points to, maybe another run's, stays."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text("{}")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model").symlink_to(elsewhere)
    run_module._remove_stale_model(run)
    assert not os.path.lexists(run / "model")
    assert (elsewhere / "config.json").read_text() == "{}"
    assert f"{run / 'model'} removed" in capsys.readouterr().err


@pytest.mark.parametrize("first_stages, edits, message", [
    (["fr", "align"], ['stages=["fr", "align", "fuse"]', "fuse.optim.warmup_steps=10"],
     "fuse.optim.warmup_steps = 10 must be less than fuse.steps = 4 (the warm-up would take the whole stage)"),
    (["fr"], ['stages=["fr", "fuse"]'], 'stages = [\'fr\', \'fuse\'] run fuse without align'),
    (["fr"], ['stages=["fr", "align"]', "align.wrcl_weight=0.0", "align.cicl_weight=0.0", "align.intra_weight=0.0",
              "align.identity_weight=0.0"], "align: every loss weight"),
], ids=["warm-up of the whole stage", "fuse without align", "align without a loss"])
def test_a_stage_added_on_resume_is_checked_as_a_fresh_runs_stage(tmp_path, tiny_overrides, keep_threads,
                                                                   first_stages, edits, message):
    """A stage that has not started has no trained state to protect from a newer check: a resume judges it as a
    fresh run would (its settings are free to edit), where it had trained e.g. its whole fuse stage in warm-up."""
    run = tmp_path / "run"
    train(load_config("quick", tiny_overrides + [f"stages={json.dumps(first_stages)}"]), run)
    edit_config_toml(run, edits)
    before = files_of(run)
    with pytest.raises(ValueError, match=re.escape(f"run config {run / 'config.toml'}: ") + ".*" + re.escape(message)):
        train(read_run_config(run), run, resume=True)
    assert files_of(run) == before
    assert message in resume_refusal(run)


def test_a_stage_that_has_begun_is_not_judged_again_on_resume(tmp_path, tiny_overrides, keep_threads):
    """The stages a run already trained keep their recipe, as an older tgfr accepted it: here fr's warm-up, made as
    long as the stage in config.toml (and in the checkpoint of a tgfr that did not record its config)."""
    run = tmp_path / "run"
    train(load_config("quick", tiny_overrides + ['stages=["fr", "align"]']), run, stop_after=5)
    state = load_checkpoint(run / CHECKPOINT)
    assert (state["stage"], state["step"]) == ("align", 1)
    del state["config"]
    save_checkpoint(run / CHECKPOINT, state)
    edit_config_toml(run, ["fr.optim.warmup_steps=4"])
    train(read_run_config(run), run, resume=True)
    assert (run / "model").is_dir()
