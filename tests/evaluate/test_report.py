"""report.md states the evaluation's real settings."""

import json

import numpy as np
import pytest

from tgfr.evaluation.report import write_report
from tgfr.metrics import identification_metrics, verification_metrics


def figures():
    rng = np.random.default_rng(0)
    same = np.r_[np.ones(20), np.zeros(200)]
    result = verification_metrics(rng.normal(same, 1.0), same, resamples=10)
    labels = np.arange(4)
    result.update(identification_metrics(rng.normal(size=(8, 4)), np.r_[labels, labels], labels, resamples=10))
    return result


@pytest.mark.parametrize("per_subject, wording", [(1, "the first image (by path) of each subject as gallery"),
                                                  (2, "the first 2 images (by path) of each subject as gallery")])
def test_report_states_the_gallery_setting(tmp_path, per_subject, wording):
    metrics = {"clean": {"image_only": figures()}}
    context = {"run": "run", "manifest": "m.jsonl", "protocol": "all_pairs", "gallery_per_subject": per_subject,
               "resamples": 10, "splits": {"clean": "test"}, "training": None}
    text = write_report(tmp_path, metrics, {}, [], context).read_text(encoding="utf-8")
    assert wording in text
    assert ("first image" in text) == (per_subject == 1)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
