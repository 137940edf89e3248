"""Face-recognition figures: verification (ROC, AUC, EER, TAR at FAR) and identification (CMC,
rank-k), each with a percentile bootstrap interval.

Conventions: a higher score means "more likely the same person"; a pair is accepted when its
score is >= the threshold. The ROC has one point per distinct score (ties move together), plus
(0, 0). TAR at FAR f is the highest TAR of a point with FAR <= f (no interpolation, so it is
never optimistic). AUC is the trapezoid area (= the Mann-Whitney probability that a genuine pair
outscores an impostor pair, ties counted one half). EER is where FAR = 1 - TAR on the ROC's
linear interpolation.

Bootstrap: genuine and impostor scores (verification) or probes (identification) are resampled
with replacement, separately per class, `resamples` times from a seeded generator; the interval
is the (2.5, 97.5) percentile range. Verification resamples reuse one sort: a resample is a
vector of counts over the sorted scores, so each replicate costs O(n) instead of a sort.
"""

from dataclasses import dataclass

import numpy as np

FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


@dataclass(frozen=True)
class RocCurve:
    """far, tar, thresholds (K + 1,): point k accepts scores >= thresholds[k]; point 0 is (0, 0)."""

    far: np.ndarray
    tar: np.ndarray
    thresholds: np.ndarray


def _check_scores(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    same = np.asarray(same).ravel()
    if scores.shape != same.shape:
        raise ValueError(f"scores and same must have one entry per pair, got {scores.size} and {same.size}")
    if not np.isin(same, (0, 1)).all():
        raise ValueError("same must hold 0 (impostor) or 1 (genuine) for every pair")
    same = same.astype(bool)
    if not same.any() or same.all():
        raise ValueError(f"verification needs genuine and impostor pairs, got {int(same.sum())} genuine "
                         f"of {same.size}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return scores, same


class _SortedPairs:
    """Scores sorted once (descending) with the boundaries of tied groups, for fast (re)weighting."""

    def __init__(self, scores: np.ndarray, same: np.ndarray):
        order = np.argsort(-scores, kind="stable")
        self.scores, self.same = scores[order], same[order]
        # Last index of every group of equal scores: the ROC steps there.
        self.group_ends = np.flatnonzero(np.r_[self.scores[1:] != self.scores[:-1], True])
        self.genuine_positions = np.flatnonzero(self.same)
        self.impostor_positions = np.flatnonzero(~self.same)

    def roc(self, weights: np.ndarray | None = None) -> RocCurve:
        """ROC with optional per-(sorted)-pair weights (bootstrap counts)."""
        genuine = self.same.astype(np.float64)
        impostor = 1.0 - genuine
        if weights is not None:
            genuine, impostor = genuine * weights, impostor * weights
        tp = np.cumsum(genuine)[self.group_ends]
        fp = np.cumsum(impostor)[self.group_ends]
        return RocCurve(np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]],
                        np.r_[np.inf, self.scores[self.group_ends]])

    def resample_weights(self, rng: np.random.Generator) -> np.ndarray:
        weights = np.zeros(self.scores.size)
        for positions in (self.genuine_positions, self.impostor_positions):
            drawn = rng.integers(0, positions.size, positions.size)
            weights[positions] = np.bincount(drawn, minlength=positions.size)
        return weights


def roc_curve(scores: np.ndarray, same: np.ndarray) -> RocCurve:
    """ROC of pair scores (P,) with labels same (P,) in {0, 1}."""
    return _SortedPairs(*_check_scores(scores, same)).roc()


def roc_auc(curve: RocCurve) -> float:
    return float(np.trapezoid(curve.tar, curve.far))


def equal_error_rate(curve: RocCurve) -> float:
    """FAR = FRR crossing, linear between ROC points."""
    gap = (1.0 - curve.tar) - curve.far  # decreases from 1 to -1 along the curve
    k = int(np.flatnonzero(gap <= 0)[0])
    if gap[k] == 0 or k == 0:
        return float(curve.far[k])
    t = gap[k - 1] / (gap[k - 1] - gap[k])
    return float(curve.far[k - 1] + t * (curve.far[k] - curve.far[k - 1]))


def tar_at_far(curve: RocCurve, far: float) -> float:
    """Highest TAR among ROC points with FAR <= far."""
    return float(curve.tar[curve.far <= far].max())


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _interval(values: np.ndarray) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def far_label(far: float) -> str:
    """1e-3 -> "1e-3" (the keys of metrics.json)."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def verification_metrics(scores: np.ndarray, same: np.ndarray, far_targets: tuple[float, ...] = FAR_TARGETS,
                         resamples: int = 200, seed: int = 0) -> dict:
    """AUC, EER, TAR at each FAR target, each with a 95% bootstrap interval ("*_ci").

    A FAR target below 1 / (number of impostor pairs) cannot be measured: its TAR is None and it
    is listed under "unresolved_far".
    """
    _check_count("resamples", resamples, 0)
    pairs = _SortedPairs(*_check_scores(scores, same))
    impostors = pairs.impostor_positions.size

    def figures(curve: RocCurve) -> np.ndarray:
        return np.array([roc_auc(curve), equal_error_rate(curve), *(tar_at_far(curve, f) for f in far_targets)])

    point = figures(pairs.roc())
    rng = np.random.default_rng(seed)
    replicates = np.array([figures(pairs.roc(pairs.resample_weights(rng))) for _ in range(resamples)])
    resolved = [f * impostors >= 1 for f in far_targets]
    result = {"auc": float(point[0]), "eer": float(point[1]), "tar_at_far": {}, "tar_at_far_ci": {},
              "genuine_pairs": int(pairs.genuine_positions.size), "impostor_pairs": int(impostors),
              "unresolved_far": [far_label(f) for f, ok in zip(far_targets, resolved) if not ok]}
    if resamples:
        result["auc_ci"], result["eer_ci"] = _interval(replicates[:, 0]), _interval(replicates[:, 1])
    for column, (far, ok) in enumerate(zip(far_targets, resolved), start=2):
        key = far_label(far)
        result["tar_at_far"][key] = float(point[column]) if ok else None
        if resamples:
            result["tar_at_far_ci"][key] = _interval(replicates[:, column]) if ok else None
    return result


def match_ranks(similarity: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """Rank (1-based) of each probe's identity among the gallery identities, ties counted pessimistically.

    similarity (P, G) probes x gallery; every probe's identity must be in the gallery. An identity
    with several gallery images scores its best one (max fusion): rank k means k candidate
    identities, so the ranks run from 1 to the number of gallery identities.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    probe_labels, gallery_labels = np.asarray(probe_labels), np.asarray(gallery_labels)
    if similarity.ndim != 2 or similarity.shape != (probe_labels.size, gallery_labels.size):
        raise ValueError(f"similarity must have shape (probes={probe_labels.size}, gallery={gallery_labels.size}), "
                         f"got {similarity.shape}")
    if not np.isfinite(similarity).all():
        raise ValueError("similarity must be finite")
    identities, column = np.unique(gallery_labels, return_inverse=True)
    per_identity = np.full((probe_labels.size, identities.size), -np.inf)
    np.maximum.at(per_identity.T, column, similarity.T)
    genuine = probe_labels[:, None] == identities[None, :]
    if not genuine.any(axis=1).all():
        missing = probe_labels[~genuine.any(axis=1)][:5].tolist()
        raise ValueError(f"every probe identity must be in the gallery; missing e.g. {missing}")
    best_genuine = per_identity[genuine]  # one gallery identity per probe
    # Impostor identities scoring at least as high as the genuine one come first.
    return 1 + (np.where(genuine, -np.inf, per_identity) >= best_genuine[:, None]).sum(axis=1)


def cmc_curve(ranks: np.ndarray, max_rank: int) -> np.ndarray:
    """(max_rank,) fraction of probes identified within rank k = 1..max_rank."""
    ranks = np.asarray(ranks)
    return (ranks[None, :] <= np.arange(1, max_rank + 1)[:, None]).mean(axis=1)


def identification_metrics(similarity: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray,
                           max_rank: int = 20, resamples: int = 200, seed: int = 0) -> dict:
    """rank1, rank5 (with 95% bootstrap intervals over probes) and the CMC up to max_rank (at most
    the number of gallery identities); similarity (P, G), probe_labels (P,), gallery_labels (G,).

    rank1 and rank5 come from the ranks themselves, as their intervals do, so they do not depend
    on max_rank (which only cuts the CMC).
    """
    _check_count("max_rank", max_rank, 1)
    _check_count("resamples", resamples, 0)
    ranks = match_ranks(similarity, probe_labels, gallery_labels)
    cmc = cmc_curve(ranks, min(max_rank, np.unique(gallery_labels).size))
    result = {"rank1": float((ranks <= 1).mean()), "rank5": float((ranks <= 5).mean()), "cmc": cmc.tolist(),
              "probes": int(ranks.size), "gallery": int(len(gallery_labels))}
    if resamples:
        rng = np.random.default_rng(seed)
        drawn = ranks[rng.integers(0, ranks.size, (resamples, ranks.size))]
        result["rank1_ci"] = _interval((drawn <= 1).mean(axis=1))
        result["rank5_ci"] = _interval((drawn <= 5).mean(axis=1))
    return result
