"""`tgfr evaluate` checks its settings and device up front, with errors naming them."""

import pytest
import torch

from tgfr.cli import main
from tgfr.train.config import EvaluationConfig, load_config, to_toml


@pytest.fixture
def run(tmp_path):
    """A run folder that passes the --run checks; its manifest does not exist, so evaluating fails
    at once if settings are not checked first."""
    config = load_config("quick", [f'data.manifest="{tmp_path / "absent.jsonl"}"'])
    folder = tmp_path / "run"
    (folder / "model").mkdir(parents=True)
    (folder / "config.toml").write_text(to_toml(config), encoding="utf-8")
    return folder


@pytest.mark.parametrize("setting, message", [
    ("evaluation.max_rank=0", "evaluation.max_rank must be an integer >= 1, got 0"),
    ("evaluation.bootstrap_resamples=-1", "evaluation.bootstrap_resamples must be an integer >= 0, got -1"),
    ("evaluation.batch_size=0", "evaluation.batch_size must be an integer >= 1, got 0"),
    ("evaluation.gallery_per_subject=0", "evaluation.gallery_per_subject must be an integer >= 1, got 0"),
    ("evaluation.impostor_subjects=-2", "evaluation.impostor_subjects must be an integer >= 0, got -2"),
    ("evaluation.splits={}", "evaluation.splits must map report names to non-empty split names"),
    ("evaluation.max_rank=2.5", "evaluation.max_rank must be of type int"),
])
def test_bad_settings_are_named(run, setting, message):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--run", str(run), "--set", setting])
    assert message in str(exit_.value.code)
    assert not (run / "report").exists()


def test_settings_are_checked_wherever_a_config_is_made():
    with pytest.raises(ValueError, match="evaluation.max_rank must be an integer >= 1"):
        load_config("quick", ["evaluation.max_rank=0"])
    with pytest.raises(ValueError, match="evaluation.batch_size must be an integer >= 1"):
        EvaluationConfig(batch_size=0)
    with pytest.raises(ValueError, match="evaluation.heatmap_captions must be an integer >= 0"):
        EvaluationConfig(heatmap_captions=-1)


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
