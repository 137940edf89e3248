"""Verification and identification figures of one split's embeddings (cosine similarity).

Verification protocols: "all_pairs" scores every unordered pair of images of the split;
"pairs" uses TGFR's list (tgfr.data.make_verification_pairs: per subject one genuine pair and
impostors against `impostor_subjects` other subjects). Identification: tgfr.data's
gallery/probe split (the first `gallery_per_subject` images of each subject form the gallery).

Both methods are scored on the same pairs and probes with the same seed, so their bootstrap
replicates come from the same resamples (subjects for verification, probe subjects for identification)
and TGFR minus image-only has a paired interval.
"""

from collections.abc import Sequence

import numpy as np

from tgfr.data import ManifestRecord, make_identification_split, make_verification_pairs
from tgfr.evaluation.embeddings import SplitEmbeddings
from tgfr.evaluation.report import MAIN_FAR
from tgfr.metrics import bootstrap_interval, identification_metrics, verification_metrics
from tgfr.train.config import EvaluationConfig


def verification_scores(embeddings: SplitEmbeddings, method: str, records: Sequence[ManifestRecord], split: str,
                        config: EvaluationConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(scores, same, subjects_a, subjects_b), each (P,), of the protocol's pairs; the subjects are
    the embeddings' identity labels of each pair's two images."""
    x = embeddings.method(method).astype(np.float64)
    labels = embeddings.labels
    if config.protocol == "all_pairs":
        # One subject gives no impostor pair; said here, with the split, as the pairs protocol says it.
        subjects = np.unique(labels).size
        if subjects < 2:
            raise ValueError(f"verification needs at least 2 subjects in split {split!r}, got {subjects}")
        rows, columns = np.triu_indices(len(x), k=1)
        similarity = x @ x.T
        return (similarity[rows, columns], (labels[rows] == labels[columns]).astype(np.int64), labels[rows],
                labels[columns])
    index = {path: i for i, path in enumerate(embeddings.paths)}
    pairs = make_verification_pairs(records, split, config.impostor_subjects, seed=0)
    a = np.array([index[p.path_a] for p in pairs])
    b = np.array([index[p.path_b] for p in pairs])
    return (x[a] * x[b]).sum(axis=1), np.array([p.same for p in pairs]), labels[a], labels[b]


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


def split_figures(embeddings: SplitEmbeddings, records: Sequence[ManifestRecord], split: str,
                  config: EvaluationConfig, methods: Sequence[str] = ("image_only", "tgfr")) -> dict:
    """method -> verification and identification figures with 95% bootstrap intervals; with both
    methods, tgfr's "vs_image_only" holds paired_difference(image_only, tgfr)."""
    gallery, probes = identification_indices(embeddings, records, split, config)
    result, replicates = {}, {}
    for method in methods:
        broken = ~np.isfinite(embeddings.method(method)).all(axis=1)
        if broken.any():  # scores and similarities would be NaN: say where, not only that they are
            raise ValueError(f"the {method} embeddings of split {split!r} are not finite (NaN or Inf) for "
                             f"{int(broken.sum())} of {broken.size} images, e.g. {embeddings.paths[broken.argmax()]}: "
                             "the model's weights or these images are broken")
        scores, same, subjects_a, subjects_b = verification_scores(embeddings, method, records, split, config)
        verification = verification_metrics(scores, same, subjects_a=subjects_a, subjects_b=subjects_b,
                                            resamples=config.bootstrap_resamples, seed=0, keep_replicates=True)
        x = embeddings.method(method).astype(np.float64)
        identification = identification_metrics(x[probes] @ x[gallery].T, embeddings.labels[probes],
                                                embeddings.labels[gallery], config.max_rank,
                                                config.bootstrap_resamples, seed=0, keep_replicates=True)
        replicates[method] = verification.pop("replicates") | identification.pop("replicates")
        result[method] = verification | identification
    if {"image_only", "tgfr"} <= set(result):
        result["tgfr"]["vs_image_only"] = paired_difference(result["image_only"], result["tgfr"],
                                                            replicates["image_only"], replicates["tgfr"])
    return result
