"""Verification and identification figures of one split's embeddings (cosine similarity).

Verification protocols: "all_pairs" scores every unordered pair of images of the split;
"pairs" uses TGFR's list (tgfr.data.make_verification_pairs: per subject one genuine pair and
impostors against `impostor_subjects` other subjects). Identification: tgfr.data's
gallery/probe split (the first `gallery_per_subject` images of each subject form the gallery).

Every method (image-only, TGFR and, with evaluation.controls, text only and TGFR with another identity's
captions) is scored on the same pairs and probes with the same seed, so their bootstrap replicates come from
the same resamples (subjects for verification, probe subjects for identification), and TGFR minus image-only
and TGFR minus TGFR with another identity's captions have paired intervals. Two splits of the same subjects and
probe subjects (a split and its degraded copy) are resampled alike too: degraded minus clean has a paired
interval.
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from tgfr.data import ManifestRecord, make_identification_split, make_verification_pairs
from tgfr.evaluation.embeddings import SplitEmbeddings
from tgfr.evaluation.report import MAIN_FAR
from tgfr.metrics import (RocCurve, bootstrap_interval, identification_metrics, thin_roc_curve,
                          verification_metrics)
from tgfr.train.config import EVALUATION_PROTOCOLS, EvaluationConfig
from tgfr.validation import check_choice


def verification_scores(embeddings: SplitEmbeddings, method: str, records: Sequence[ManifestRecord], split: str,
                        config: EvaluationConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scores, same, subjects_a, subjects_b), each (P,), of the protocol's pairs; the subjects are
    the embeddings' identity labels of each pair's two images."""
    # EvaluationConfig checks it when built, not when a caller changes it after: an unknown name ran the pairs.
    check_choice("evaluation.protocol", config.protocol, EVALUATION_PROTOCOLS)
    x = embeddings.method(method).astype(np.float64)
    labels = embeddings.labels
    if config.protocol == "all_pairs":
        # One subject gives no impostor pair; said here, with the split, as the pairs protocol says it.
        subjects = np.unique(labels).size
        if subjects < 2:
            raise ValueError(f"verification needs at least 2 subjects in split {split!r}, got {subjects}")
        return _all_pair_scores(x, labels)
    index = {path: i for i, path in enumerate(embeddings.paths)}
    pairs = make_verification_pairs(records, split, config.impostor_subjects, seed=0)
    a = np.array([index[p.path_a] for p in pairs])
    b = np.array([index[p.path_b] for p in pairs])
    return (x[a] * x[b]).sum(axis=1), np.array([p.same for p in pairs]), labels[a], labels[b]


SIMILARITIES_PER_BLOCK = 2**22  # all_pairs scores this many similarities (32 MiB) at a time


def _all_pair_scores(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """verification_scores of every pair i < j of the rows of x (n, D), in row-major order, built a
    block of rows at a time: the n x n similarity matrix and its triangle's index arrays would take
    about 60 bytes per pair on top of the 8 of a score."""
    n = len(x)
    count = n * (n - 1) // 2
    labels = labels.astype(np.int32 if n < 2**31 else np.int64)
    scores, same = np.empty(count), np.empty(count, dtype=bool)
    subjects_a, subjects_b = np.empty(count, dtype=labels.dtype), np.empty(count, dtype=labels.dtype)
    rows_per_block = max(1, SIMILARITIES_PER_BLOCK // n)
    start = 0
    for first in range(0, n - 1, rows_per_block):
        block = x[first:first + rows_per_block] @ x.T
        for offset, similarities in enumerate(block):
            i = first + offset
            end = start + n - 1 - i
            scores[start:end] = similarities[i + 1:]
            subjects_a[start:end] = labels[i]
            subjects_b[start:end] = labels[i + 1:]
            same[start:end] = subjects_b[start:end] == labels[i]
            start = end
    return scores, same, subjects_a, subjects_b


def identification_indices(embeddings: SplitEmbeddings, records: Sequence[ManifestRecord], split: str,
                           config: EvaluationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the gallery and of the probes among the split's embeddings."""
    index = {path: i for i, path in enumerate(embeddings.paths)}
    protocol = make_identification_split(records, split, config.gallery_per_subject)
    return (np.array([index[e["path"]] for e in protocol["gallery"]]),
            np.array([index[e["path"]] for e in protocol["probes"]]))


def paired_difference(baseline: dict, method: dict, baseline_replicates: dict, method_replicates: dict) -> dict:
    """method minus baseline: "rank1" and "tar_at_far" at MAIN_FAR (None if either is), with
    "*_ci" the 95% interval of the replicates' differences when there are replicates. Each takes
    a method's figures and its "replicates" (from the same resamples as the other's)."""
    tars = baseline["tar_at_far"][MAIN_FAR], method["tar_at_far"][MAIN_FAR]
    difference = {"rank1": method["rank1"] - baseline["rank1"],
                  "tar_at_far": {MAIN_FAR: None if None in tars else tars[1] - tars[0]}}
    if baseline_replicates["rank1"].size:
        difference["rank1_ci"] = bootstrap_interval(method_replicates["rank1"] - baseline_replicates["rank1"])
        difference["tar_at_far_ci"] = {MAIN_FAR: bootstrap_interval(method_replicates["tar_at_far"][MAIN_FAR] -
                                                                    baseline_replicates["tar_at_far"][MAIN_FAR])}
    return difference


class SplitFigures(NamedTuple):
    """figures, method -> verification and identification figures with 95% bootstrap intervals, where with
    image_only scored tgfr's "vs_image_only" holds paired_difference(image_only, tgfr), and with
    tgfr_other_captions scored its "vs_other_captions" paired_difference(tgfr_other_captions, tgfr); curves,
    method -> its ROC thinned for a picture (thin_roc_curve); replicates, method -> its bootstrap replicates
    (paired_difference's); resampled: the identities the bootstrap draws from, sorted, of the pairs and of the
    probes."""

    figures: dict
    curves: dict[str, RocCurve]
    replicates: dict
    resampled: tuple[tuple[str, ...], tuple[str, ...]]


def degradation_difference(clean: SplitFigures, degraded: SplitFigures) -> dict | None:
    """method -> paired_difference(clean, degraded): degraded minus clean on the same resamples (without
    intervals when there are no resamples), or None where the two splits' bootstraps draw other identities, of
    the pairs or of the probes (not a split and its degraded copy, or a copy that lost a subject's probes)."""
    if clean.resampled != degraded.resampled:
        return None
    return {method: paired_difference(clean.figures[method], degraded.figures[method], clean.replicates[method],
                                      degraded.replicates[method])
            for method in clean.figures if method in degraded.figures}


def split_figures(embeddings: SplitEmbeddings, records: Sequence[ManifestRecord], split: str,
                  config: EvaluationConfig, methods: Sequence[str] | None = None) -> SplitFigures:
    """The figures of `methods` (default: every method the embeddings hold) on the split's embeddings
    (SplitFigures)."""
    gallery, probes = identification_indices(embeddings, records, split, config)
    identity = {record.path: record.identity for record in records if record.split == split}
    resampled = (tuple(sorted({identity[path] for path in embeddings.paths})),
                 tuple(sorted({identity[embeddings.paths[i]] for i in probes})))
    result, replicates, curves = {}, {}, {}
    for method in embeddings.methods() if methods is None else methods:
        broken = ~np.isfinite(embeddings.method(method)).all(axis=1)
        if broken.any():  # scores and similarities would be NaN: say where, not only that they are
            raise ValueError(f"the {method} embeddings of split {split!r} are not finite (NaN or Inf) for "
                             f"{int(broken.sum())} of {broken.size} images, e.g. {embeddings.paths[broken.argmax()]}: "
                             "the model's weights or these images are broken")
        scores, same, subjects_a, subjects_b = verification_scores(embeddings, method, records, split, config)
        verification = verification_metrics(scores, same, subjects_a=subjects_a, subjects_b=subjects_b,
                                            resamples=config.bootstrap_resamples, seed=0, keep_replicates=True,
                                            keep_curve=True)
        del scores, same, subjects_a, subjects_b  # a few tens of bytes per pair, not needed for identification
        curves[method] = thin_roc_curve(verification.pop("curve"))
        x = embeddings.method(method).astype(np.float64)
        identification = identification_metrics(x[probes] @ x[gallery].T, embeddings.labels[probes],
                                                embeddings.labels[gallery], config.max_rank,
                                                config.bootstrap_resamples, seed=0, keep_replicates=True)
        replicates[method] = verification.pop("replicates") | identification.pop("replicates")
        result[method] = verification | identification
    if {"image_only", "tgfr"} <= set(result):
        result["tgfr"]["vs_image_only"] = paired_difference(result["image_only"], result["tgfr"],
                                                            replicates["image_only"], replicates["tgfr"])
    if {"tgfr_other_captions", "tgfr"} <= set(result):
        # Near 0: what helps TGFR is not what a caption says of the face (a cue an identity's captions share may be).
        result["tgfr"]["vs_other_captions"] = paired_difference(
            result["tgfr_other_captions"], result["tgfr"], replicates["tgfr_other_captions"], replicates["tgfr"])
    return SplitFigures(result, curves, replicates, resampled)
