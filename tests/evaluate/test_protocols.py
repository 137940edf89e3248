"""split_figures' protocols: the identification split it scores (gallery and probes by path) and the
ROC curve it hands back for each method."""

import re

import numpy as np
import pytest

from test_subject_bootstrap import embeddings_and_records, nearest_gallery_hits
from tgfr.evaluation.embeddings import SplitEmbeddings
from tgfr.evaluation.protocols import (degradation_difference, identification_indices, split_figures,
                                      verification_scores)
from tgfr.evaluation.report import MAIN_FAR
from tgfr.metrics import bootstrap_interval, far_label, roc_curve, tar_at_far
from tgfr.train.config import EvaluationConfig, load_config


def test_identification_gallery_is_each_subjects_first_images_by_path():
    # 12 images a subject: by path "10.png" and "11.png" come before "2.png", so the gallery of 3
    # is 0, 1 and 10; the embeddings are shuffled, so their order says nothing of the paths'.
    subjects, images, gallery_per_subject = 8, 12, 3
    x, labels, paths, records = embeddings_and_records(2, subjects=subjects, images=images)
    other = embeddings_and_records(3, subjects=subjects, images=images)[0]
    order = np.random.default_rng(0).permutation(len(paths))
    x, other, labels = x[order], other[order], labels[order]
    paths, records = [paths[i] for i in order], [records[i] for i in order]
    embeddings = SplitEmbeddings(paths, labels, [""] * len(paths), x, other)
    config = EvaluationConfig(gallery_per_subject=gallery_per_subject, bootstrap_resamples=5)

    first_by_path = {path for subject in np.unique(labels)
                     for path in sorted(p for p, label in zip(paths, labels) if label == subject)[:gallery_per_subject]}
    expected_gallery = np.flatnonzero([path in first_by_path for path in paths])
    expected_probes = np.flatnonzero([path not in first_by_path for path in paths])
    assert expected_gallery.size == subjects * gallery_per_subject
    assert expected_probes.size == subjects * (images - gallery_per_subject)
    gallery, probes = identification_indices(embeddings, records, "test", config)
    assert sorted(gallery.tolist()) == expected_gallery.tolist()
    assert sorted(probes.tolist()) == expected_probes.tolist()

    figures = split_figures(embeddings, records, "test", config).figures
    for method in ("image_only", "tgfr"):
        hits = nearest_gallery_hits(embeddings.method(method), labels, expected_gallery, expected_probes)
        assert 0 < hits.mean() < 1  # neither all nor none found: a wrong gallery would show
        assert figures[method]["rank1"] == pytest.approx(hits.mean(), abs=1e-12)
        assert figures[method]["gallery"] == expected_gallery.size
        assert figures[method]["probes"] == expected_probes.size


@pytest.mark.parametrize("methods", [("image_only",), ("tgfr",), ("image_only", "tgfr")])
def test_each_method_gets_its_own_roc_curve(methods):
    """A curve per method scored, its ROC (3160 pairs, too few to be thinned), whose TAR at FAR 1e-2
    is the method's figure; the two methods' TARs differ, so a curve under the wrong name would show."""
    x, labels, paths, records = embeddings_and_records(0)
    other = embeddings_and_records(1)[0]
    embeddings = SplitEmbeddings(paths, labels, [""] * len(paths), x, other)
    config = EvaluationConfig(bootstrap_resamples=5)
    figures, curves, _, _ = split_figures(embeddings, records, "test", config, methods=methods)
    assert set(curves) == set(methods)
    tars = {}
    for method in methods:
        scores, same, _, _ = verification_scores(embeddings, method, records, "test", config)
        expected = roc_curve(scores, same)
        np.testing.assert_array_equal(curves[method].far, expected.far)
        np.testing.assert_array_equal(curves[method].tar, expected.tar)
        tars[method] = tar_at_far(curves[method], 1e-2)
        assert tars[method] == figures[method]["tar_at_far"][far_label(1e-2)]
    assert len(set(tars.values())) == len(methods)


@pytest.mark.parametrize("protocol", ["allpairs", "all-pairs", "ALL_PAIRS", "pair", ""])
def test_an_unknown_protocol_is_refused_not_scored_as_pairs(protocol):
    """A typo of evaluation.protocol ran TGFR's pairs list under the typo's name: refused when an
    EvaluationConfig is built (directly or from a preset's override), and by verification_scores for a
    config changed after it was built."""
    message = rf"^evaluation.protocol must be one of \('all_pairs', 'pairs'\), got {re.escape(repr(protocol))}$"
    with pytest.raises(ValueError, match=message):
        EvaluationConfig(protocol=protocol)
    with pytest.raises(ValueError, match=message):
        load_config("quick", [f'evaluation.protocol="{protocol}"'])
    x, labels, paths, records = embeddings_and_records(0, subjects=5, images=3)
    embeddings = SplitEmbeddings(paths, labels, [""] * len(paths), x, x)
    config = EvaluationConfig(protocol="pairs", impostor_subjects=2)
    config.protocol = protocol
    with pytest.raises(ValueError, match=message):
        verification_scores(embeddings, "tgfr", records, "test", config)


def test_one_bootstrap_resample_gives_the_paired_differences_their_intervals():
    """evaluation.bootstrap_resamples = 1: each method has its intervals, and so do TGFR minus image only and
    degraded minus clean, each the one replicate's difference at both ends (the percentiles of one value)."""
    x, labels, paths, records = embeddings_and_records(0)
    other, degraded_x = embeddings_and_records(1)[0], embeddings_and_records(2)[0]
    config = EvaluationConfig(bootstrap_resamples=1)
    clean = split_figures(SplitEmbeddings(paths, labels, [""] * len(paths), x, other), records, "test", config)
    degraded = split_figures(SplitEmbeddings(paths, labels, [""] * len(paths), degraded_x, x), records, "test",
                             config)

    def assert_one_replicates_difference(difference, baseline_replicates, method_replicates):
        rank1 = method_replicates["rank1"][0] - baseline_replicates["rank1"][0]
        tar = method_replicates["tar_at_far"][MAIN_FAR][0] - baseline_replicates["tar_at_far"][MAIN_FAR][0]
        assert np.isfinite([rank1, tar]).all() and rank1 != 0
        assert difference["rank1_ci"] == [rank1, rank1]
        assert difference["tar_at_far_ci"] == {MAIN_FAR: [tar, tar]}

    for figures in (clean, degraded):
        assert all("rank1_ci" in figures.figures[method] for method in ("image_only", "tgfr"))
        assert_one_replicates_difference(figures.figures["tgfr"]["vs_image_only"], figures.replicates["image_only"],
                                         figures.replicates["tgfr"])
    for method, difference in degradation_difference(clean, degraded).items():
        assert_one_replicates_difference(difference, clean.replicates[method], degraded.replicates[method])


def test_tgfr_is_compared_with_tgfr_on_another_identitys_captions_on_the_same_resamples():
    """With the controls, split_figures scores the four methods on the same pairs and resamples: tgfr's
    "vs_other_captions" is TGFR minus the control, figure by figure and replicate by replicate, and
    degradation_difference pairs every method. Without them (two methods in the embeddings) the figures are the
    two methods' alone, as they were with the controls beside them."""
    x, labels, paths, records = embeddings_and_records(0)
    control, text, degraded_x = (embeddings_and_records(seed)[0] for seed in (1, 2, 3))
    config = EvaluationConfig(bootstrap_resamples=20)
    captions = [""] * len(paths)
    with_controls = split_figures(SplitEmbeddings(paths, labels, captions, control, x, text, control[::-1].copy()),
                                  records, "test", config)
    figures, replicates = with_controls.figures, with_controls.replicates
    assert list(figures) == ["image_only", "tgfr", "text_only", "tgfr_other_captions"]
    difference = figures["tgfr"]["vs_other_captions"]
    tgfr, other = figures["tgfr"], figures["tgfr_other_captions"]
    assert difference["rank1"] == pytest.approx(tgfr["rank1"] - other["rank1"]) and difference["rank1"] > 0
    assert difference["tar_at_far"][MAIN_FAR] == pytest.approx(tgfr["tar_at_far"][MAIN_FAR]
                                                               - other["tar_at_far"][MAIN_FAR])
    assert difference["rank1_ci"] == bootstrap_interval(replicates["tgfr"]["rank1"]
                                                        - replicates["tgfr_other_captions"]["rank1"])
    assert difference["tar_at_far_ci"][MAIN_FAR] == bootstrap_interval(
        replicates["tgfr"]["tar_at_far"][MAIN_FAR] - replicates["tgfr_other_captions"]["tar_at_far"][MAIN_FAR])
    # The control scored alone has the figures it has beside the others: the same pairs and resamples.
    alone = split_figures(SplitEmbeddings(paths, labels, captions, x, control[::-1].copy()), records, "test", config)
    assert alone.figures["tgfr"] | {"vs_image_only": None} == other | {"vs_image_only": None}

    without = split_figures(SplitEmbeddings(paths, labels, captions, control, x), records, "test", config)
    assert list(without.figures) == ["image_only", "tgfr"]
    assert without.figures["image_only"] == figures["image_only"]
    assert without.figures["tgfr"] == {key: value for key, value in tgfr.items() if key != "vs_other_captions"}

    degraded = split_figures(SplitEmbeddings(paths, labels, captions, degraded_x, x, control, text), records,
                             "test", config)
    differences = degradation_difference(with_controls, degraded)
    assert list(differences) == list(figures)
    for method, difference in differences.items():
        assert difference["rank1"] == pytest.approx(degraded.figures[method]["rank1"] - figures[method]["rank1"])
