"""A run stopped midway (inside the fr stage, whose dropout views use the RNG, then inside the
align stage) and resumed ends with exactly the weights, loss states and optimizer state of an
uninterrupted run (CPU, deterministic)."""

import safetensors.torch
import torch

from tgfr.train.checkpoint import load_checkpoint
from tgfr.train.config import load_config
from tgfr.train.run import CHECKPOINT, build_model, seed_everything, train


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


def test_stop_and_resume_equals_uninterrupted(tmp_path, tiny_overrides):
    config = load_config("quick", tiny_overrides)
    train(config, tmp_path / "straight")

    train(config, tmp_path / "resumed", stop_after=2)
    stopped = load_checkpoint(tmp_path / "resumed" / CHECKPOINT)
    assert (stopped["stage"], stopped["step"]) == ("fr", 2)
    train(config, tmp_path / "resumed", resume=True, stop_after=4)  # fr has 4 steps: 2 more, then 2 of align
    stopped = load_checkpoint(tmp_path / "resumed" / CHECKPOINT)
    assert (stopped["stage"], stopped["step"]) == ("align", 2)
    assert not (tmp_path / "resumed" / "model").exists()
    train(config, tmp_path / "resumed", resume=True)

    straight = safetensors.torch.load_file(tmp_path / "straight" / "model" / "model.safetensors")
    resumed = safetensors.torch.load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert_same_tree(straight, resumed, "model")
    a, b = (load_checkpoint(tmp_path / run / CHECKPOINT) for run in ("straight", "resumed"))
    assert (a["stage"], a["step"]) == ("fuse", 4)
    for part in ("model", "losses", "optimizer", "scheduler"):
        assert_same_tree(a[part], b[part], part)
    # The stages did train: backbone and fusion moved away from a freshly built model's.
    seed_everything(config.seed)
    fresh = build_model(config).state_dict()
    for name in ("backbone.conv1.weight", "fusion.fine.project.weight"):
        assert not torch.equal(fresh[name], straight[name]), name
