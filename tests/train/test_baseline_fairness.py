"""The evaluation compares the image-only baseline (the fr stage's backbone) with the fused TGFR
embedding on degraded probes. That measures what captions add only when both were trained on the
same data with the same degradation augmentation and the same face-recognition steps: checked here."""

import json

import pytest
import torch

from tgfr.data import CaptionCollator
from tgfr.models import load_tgfr_model
from tgfr.train.batches import resolve_manifest
from tgfr.train.config import load_config, preset_names
from tgfr.train.run import build_model, stage_batches, train


@pytest.mark.parametrize("preset", preset_names())
def test_every_stage_sees_the_same_data_and_degradation(preset, tiny_overrides):
    config = load_config(preset, tiny_overrides)
    assert config.data.train_degrade_p > 0, "the presets train every stage with degraded images"
    manifest = resolve_manifest(config.data)
    collate = CaptionCollator(build_model(config).text_encoder.tokenizer, max_length=config.model.max_length)
    datasets = {name: stage_batches(config, name, manifest, collate).dataset for name in config.stages}
    assert set(datasets) == {"fr", "align", "fuse"}
    fr_paths = [record.path for record in datasets["fr"].records]
    for name, dataset in datasets.items():
        assert [record.path for record in dataset.records] == fr_paths, name
        assert dataset.transform.recipe == config.data.train_degradation, name
        assert dataset.transform.p == config.data.train_degrade_p, name


def test_image_only_baseline_is_the_backbone_inside_tgfr(tmp_path, tiny_overrides):
    """A run of the fr stage alone and a full run end with bit-identical backbones (align and fuse
    neither train it nor move its BatchNorm statistics), trained for fr.steps steps in both."""
    config = load_config("quick", tiny_overrides)
    train(config, tmp_path / "full")
    config.stages = ["fr"]
    train(config, tmp_path / "fr_only")
    backbones = [load_tgfr_model(tmp_path / run / "model").backbone.state_dict() for run in ("full", "fr_only")]
    assert backbones[0].keys() == backbones[1].keys()
    for key in backbones[0]:
        assert torch.equal(backbones[0][key], backbones[1][key]), key
    for run in ("full", "fr_only"):
        summary = json.loads((tmp_path / run / "train_summary.json").read_text())
        assert summary["fr"]["steps_taken"] == config.fr.steps
