"""`tgfr train` refuses bad inputs before it trains or writes anything, naming the argument, folder,
file or config key: a fresh run into a used folder, --stop-after below 1, a corrupt config.toml
under --resume, a checkpoint written by another number of processes, backbone weights that do
not fit the configured backbone."""

import re

import pytest
import safetensors.torch
import torch

from tgfr.cli import main
from tgfr.models import IResNet, IResNetConfig
from tgfr.train.checkpoint import rng_state, save_checkpoint
from tgfr.train.config import load_config
from tgfr.train.run import CHECKPOINT, build_model, train


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


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_stop_after_must_take_a_step(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "quick", "--out", str(tmp_path / "run"), "--stop-after", value])
    assert exit_info.value.code == 2
    assert "argument --stop-after: must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_refuses_stop_after_zero(tmp_path, tiny_overrides):
    with pytest.raises(ValueError, match="stop_after must be an integer >= 1"):
        train(load_config("quick", tiny_overrides), tmp_path / "run", stop_after=0)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content", [b"seed = [unclosed\n", b"\xff\xfe not utf-8", b"seed = 0\n"])
def test_resume_names_a_corrupt_config_file(tmp_path, content):
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    with pytest.raises(SystemExit, match=re.escape(f"--resume: {path} is not a valid run config")):
        main(["train", "--resume", "--out", str(tmp_path)])


def test_resume_needs_one_rng_state_per_process(tmp_path, tiny_overrides):
    """Each process continues its own RNG stream, so a checkpoint resumes with as many processes as wrote it."""
    config = load_config("quick", tiny_overrides)
    for rng, message in (([rng_state(), rng_state()], "holds the RNG states of 2 process(es); resume it with as many "
                                                      "(this run has 1)"),
                         (rng_state(), "has no list of per-process RNG states")):
        save_checkpoint(tmp_path / CHECKPOINT, {"stage": "fr", "step": 1, "rng": rng})
        with pytest.raises(ValueError, match=re.escape(f"checkpoint file {tmp_path / CHECKPOINT} {message}")):
            train(config, tmp_path, resume=True)


def test_backbone_weights_that_do_not_fit_name_the_file_and_the_key(tmp_path, tiny_overrides):
    config = load_config("quick", tiny_overrides)
    other = IResNet(IResNetConfig.preset("iresnet_small", width=8, input_size=config.data.image_size,
                                         num_features=config.model.num_features))
    weights = tmp_path / "backbone.safetensors"
    safetensors.torch.save_file(other.state_dict(), weights)
    config.model.backbone_weights = str(weights)
    with pytest.raises(ValueError, match=r"(?s)model\.backbone_weights: weights file '.*backbone\.safetensors' "
                                         r"does not fit .*size mismatch for conv1\.weight"):
        build_model(config)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "partial.pth")
    config.model.backbone_weights = str(tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"(?s)model\.backbone_weights: .*partial\.pth.*Missing key"):
        build_model(config)
    config.model.backbone_weights = str(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"model\.backbone_weights: weights file '.*missing\.pth' does not exist"):
        build_model(config)
