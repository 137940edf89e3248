"""Verification and identification figures of one split's embeddings (cosine similarity).

Verification protocols: "all_pairs" scores every unordered pair of images of the split;
"pairs" uses TGFR's list (tgfr.data.make_verification_pairs: per subject one genuine pair and
impostors against `impostor_subjects` other subjects). Identification: tgfr.data's
gallery/probe split (the first `gallery_per_subject` images of each subject form the gallery).
"""

from collections.abc import Sequence

import numpy as np

from tgfr.data import ManifestRecord, make_identification_split, make_verification_pairs
from tgfr.evaluation.embeddings import SplitEmbeddings
from tgfr.metrics import identification_metrics, verification_metrics
from tgfr.train.config import EvaluationConfig


def verification_scores(embeddings: SplitEmbeddings, method: str, records: Sequence[ManifestRecord], split: str,
                        config: EvaluationConfig) -> tuple[np.ndarray, np.ndarray]:
    """(scores (P,), same (P,)) of the protocol's pairs."""
    x = embeddings.method(method).astype(np.float64)
    if config.protocol == "all_pairs":
        rows, columns = np.triu_indices(len(x), k=1)
        similarity = x @ x.T
        return similarity[rows, columns], (embeddings.labels[rows] == embeddings.labels[columns]).astype(np.int64)
    index = {path: i for i, path in enumerate(embeddings.paths)}
    pairs = make_verification_pairs(records, split, config.impostor_subjects, seed=0)
    a = np.array([index[p.path_a] for p in pairs])
    b = np.array([index[p.path_b] for p in pairs])
    return (x[a] * x[b]).sum(axis=1), np.array([p.same for p in pairs])


def identification_indices(embeddings: SplitEmbeddings, records: Sequence[ManifestRecord], split: str,
                           config: EvaluationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the gallery and of the probes among the split's embeddings."""
    index = {path: i for i, path in enumerate(embeddings.paths)}
    protocol = make_identification_split(records, split, config.gallery_per_subject)
    return (np.array([index[e["path"]] for e in protocol["gallery"]]),
            np.array([index[e["path"]] for e in protocol["probes"]]))


def split_figures(embeddings: SplitEmbeddings, records: Sequence[ManifestRecord], split: str,
                  config: EvaluationConfig, methods: Sequence[str] = ("image_only", "tgfr")) -> dict:
    """method -> verification and identification figures with 95% bootstrap intervals."""
    gallery, probes = identification_indices(embeddings, records, split, config)
    result = {}
    for method in methods:
        scores, same = verification_scores(embeddings, method, records, split, config)
        figures = verification_metrics(scores, same, resamples=config.bootstrap_resamples, seed=0)
        x = embeddings.method(method).astype(np.float64)
        figures.update(identification_metrics(x[probes] @ x[gallery].T, embeddings.labels[probes],
                                              embeddings.labels[gallery], config.max_rank,
                                              config.bootstrap_resamples, seed=0))
        result[method] = figures
    return result
