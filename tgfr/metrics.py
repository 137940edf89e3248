"""Face-recognition figures: verification (ROC, AUC, EER, TAR at FAR) and identification (CMC,
rank-k), each with a percentile bootstrap interval.

Conventions: a higher score means "more likely the same person"; a pair is accepted when its
score is >= the threshold. The ROC has one point per distinct score (ties move together), plus
(0, 0). TAR at FAR f is the highest TAR of a point with FAR <= f (no interpolation, so it is
never optimistic). AUC is the trapezoid area (= the Mann-Whitney probability that a genuine pair
outscores an impostor pair, ties counted one half). EER is where FAR = 1 - TAR on the ROC's
linear interpolation.

Bootstrap, `resamples` times from a generator seeded with `seed`; the interval is the (2.5, 97.5)
percentile range of the replicates.
- Verification resamples subjects, not pairs: pairs that share a subject (and its images) are
  not independent, and a pair bootstrap makes their intervals too narrow. The S distinct subjects
  of the pairs (sorted ids) are drawn S times with replacement, rng.integers(0, S, (resamples,
  S)); a subject drawn c_a times counts each of its genuine pairs c_a times and each impostor pair
  with a subject drawn c_b times c_a * c_b times: the pair list of the resampled subjects, where
  the copies of one subject form no pairs with each other. The draws depend only on the subjects
  and the seed, so two methods scored on the same pairs get the same resamples and
  their replicates can be differenced (a paired comparison). The scores are sorted once: a
  replicate is a vector of pair weights read through cumulative sums, O(pairs) instead of a sort.
- Identification resamples the probes' subjects the same way, for the same reason (the probes
  of one subject share its gallery entry and its looks): the S distinct probe labels (sorted) are
  drawn S times, and a subject drawn c times counts each of its probes c times. The gallery is
  the enrolled set and stays whole. With a single probe subject every resample is the sample
  itself, so there is no interval (None), as for verification with one subject.
A replicate that cannot measure a figure gives NaN, and the figure's interval is then None: no
genuine weight (the resample draws none of the subjects with a genuine pair, likely wherever few
subjects have 2 or more images, however many subjects there are: 2 such subjects among 100 are both
missed in about 13% of the resamples), no impostor weight (the drawn subjects share no impostor pair, as
when one subject is drawn S times), or, for TAR at FAR f, an impostor weight W with f * W < 1, the
rule that makes the point estimate None with W = the number of impostor pairs.
"""

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
RANKS = (("rank1", 1), ("rank5", 5))  # identification's rank-k figures: (name, k)


@dataclass(frozen=True)
class RocCurve:
    """far, tar, thresholds (K + 1,): point k accepts scores >= thresholds[k]; point 0 is (0, 0)."""

    far: np.ndarray
    tar: np.ndarray
    thresholds: np.ndarray


def _check_scores(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scores and same of one shape (one entry per pair), flattened: of two shapes of one size (a (probes,
    gallery) score matrix beside its transposed labels), flattened, each score met another pair's label."""
    try:
        scores = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"scores must be numbers (a numpy array, or a CPU tensor of a numpy dtype), got "
                         f"{type(scores).__name__} ({error})") from None
    same = np.asarray(same)
    if scores.shape != same.shape:
        raise ValueError(f"scores and same must have one entry per pair, in the same shape, got shapes "
                         f"{scores.shape} and {same.shape}")
    scores, same = scores.ravel(), same.ravel()
    if not np.isin(same, (0, 1)).all():
        raise ValueError("same must hold 0 (impostor) or 1 (genuine) for every pair")
    same = same.astype(bool)
    if not same.any() or same.all():
        raise ValueError(f"verification needs genuine and impostor pairs, got {int(same.sum())} genuine "
                         f"of {same.size}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return scores, same


def _check_subjects(same: np.ndarray, subjects_a: np.ndarray, subjects_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """subjects_a, subjects_b (P,) integer ids, equal exactly for the genuine pairs of same (P,)."""
    checked = []
    for name, subjects in (("subjects_a", subjects_a), ("subjects_b", subjects_b)):
        subjects = np.asarray(subjects)
        if not np.issubdtype(subjects.dtype, np.integer):
            raise TypeError(f"{name} must be an integer array of subject ids, got dtype {subjects.dtype}")
        if subjects.shape != same.shape:
            raise ValueError(f"{name} must have shape (pairs,) = {same.shape}, one subject per pair, "
                             f"got {subjects.shape}")
        checked.append(subjects)
    wrong = np.flatnonzero(same != (checked[0] == checked[1]))
    if wrong.size:
        k = wrong[0]
        raise ValueError(f"subjects_a and subjects_b must be equal for genuine pairs and differ for impostor pairs; "
                         f"pair {k} has same={int(same[k])} with subjects {checked[0][k]} and {checked[1][k]}")
    return _one_integer_type(*checked)


def _one_integer_type(subjects_a: np.ndarray, subjects_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both id arrays in one integer type that holds them: numpy promotes int64 with uint64 to float64, where
    ids above 2**53 round together and distinct subjects would merge. Python ints where no type holds both
    (ids below 0 and above 2**63)."""
    if np.promote_types(subjects_a.dtype, subjects_b.dtype).kind in "iu":
        return subjects_a, subjects_b
    low = min(int(subjects_a.min()), int(subjects_b.min()))
    high = max(int(subjects_a.max()), int(subjects_b.max()))
    dtype = next((d for d in (np.int64, np.uint64) if np.iinfo(d).min <= low and high <= np.iinfo(d).max), object)
    return subjects_a.astype(dtype), subjects_b.astype(dtype)


class _SortedPairs:
    """Scores sorted once (descending) with the boundaries of tied groups; the ROC is read from
    cumulative (weighted) counts at those boundaries, so reweighting the pairs needs no new sort."""

    def __init__(self, scores: np.ndarray, same: np.ndarray):
        order = np.argsort(-scores, kind="stable")
        scores, same = scores[order], same[order]
        # Last index of every group of equal scores: the ROC steps there.
        group_ends = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
        genuine_positions, impostor_positions = np.flatnonzero(same), np.flatnonzero(~same)
        # Input indices of the genuine (impostor) pairs, by descending score: the order of roc()'s weights.
        self.genuine_pairs, self.impostor_pairs = order[genuine_positions], order[impostor_positions]
        # Genuine (impostor) pairs scoring >= each group's score: where their cumulative weights are read.
        self.genuine_seen = np.searchsorted(genuine_positions, group_ends, side="right")
        self.impostor_seen = np.searchsorted(impostor_positions, group_ends, side="right")
        self.thresholds = np.r_[np.inf, scores[group_ends]]

    def roc(self, genuine_weights: np.ndarray | None = None, impostor_weights: np.ndarray | None = None) -> RocCurve:
        """ROC, all pairs counted once, or with integer weights (G,) and (I,) of the genuine and
        impostor pairs in the order of genuine_pairs and impostor_pairs (a bootstrap replicate)."""
        tp = self.genuine_seen if genuine_weights is None else _cumulative(genuine_weights)[self.genuine_seen]
        fp = self.impostor_seen if impostor_weights is None else _cumulative(impostor_weights)[self.impostor_seen]
        return RocCurve(_rates(fp), _rates(tp), self.thresholds)


def _cumulative(weights: np.ndarray) -> np.ndarray:
    """(K + 1,) int64: 0 and the running sums of weights (K,)."""
    sums = np.empty(weights.size + 1, dtype=np.int64)
    sums[0] = 0
    np.cumsum(weights, out=sums[1:])
    return sums


def _rates(counts: np.ndarray) -> np.ndarray:
    """(K + 1,) float64: 0 and counts (K,) over its last."""
    rates = np.empty(counts.size + 1)
    rates[0] = 0.0
    np.divide(counts, counts[-1], out=rates[1:])
    return rates


def _subject_multiplicities(subjects: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, subjects) int64: how often each subject is drawn when `subjects` subjects are
    drawn with replacement, rng.integers(0, subjects, (resamples, subjects)) with rng seeded by seed."""
    drawn = np.random.default_rng(seed).integers(0, subjects, (resamples, subjects))
    # One bincount for all resamples: resample r counts into bins r * subjects .. (r + 1) * subjects - 1.
    offsets = drawn + subjects * np.arange(resamples)[:, None]
    return np.bincount(offsets.ravel(), minlength=resamples * subjects).reshape(resamples, subjects)


def _subject_indices(subjects_a: np.ndarray, subjects_b: np.ndarray) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
    """(S, (index_a, index_b)): the number S of distinct subjects of the pairs, and each pair's two
    subjects as indices 0 .. S - 1 in sorted id order (int32 where S allows it). Ids in a range of
    a few times the pairs' number are counted in a table, as np.unique over the 2P ids would sort
    them and take about 50 bytes per pair."""
    low = int(min(subjects_a.min(), subjects_b.min()))
    span = int(max(subjects_a.max(), subjects_b.max())) - low + 1
    common = np.promote_types(subjects_a.dtype, subjects_b.dtype)
    if span <= 4 * subjects_a.size + 1024 and common.kind in "iu":
        # id - low can overflow the ids' dtype (int8 ids -100 and 100); it wraps there, and read as the
        # unsigned type of the same width it is the true offset again, which is below 2**bits.
        unsigned = np.dtype(f"u{common.itemsize}")

        def offsets(ids: np.ndarray) -> np.ndarray:
            return (ids.astype(common, copy=False) - common.type(low)).view(unsigned)

        present = np.zeros(span, dtype=bool)
        present[offsets(subjects_a)] = True
        present[offsets(subjects_b)] = True
        index_of = np.cumsum(present, dtype=np.int64) - 1
        subjects = int(index_of[-1]) + 1
        dtype = np.int32 if subjects < 2**31 else np.int64
        return subjects, tuple(index_of.astype(dtype)[offsets(ids)] for ids in (subjects_a, subjects_b))
    ids, index = np.unique(np.r_[subjects_a, subjects_b], return_inverse=True)
    return ids.size, (index[:subjects_a.size], index[subjects_a.size:])


def roc_curve(scores: np.ndarray, same: np.ndarray) -> RocCurve:
    """ROC of pair scores (P,) with labels same (P,) in {0, 1}."""
    return _SortedPairs(*_check_scores(scores, same)).roc()


def thin_roc_curve(curve: RocCurve, points: int = 4096) -> RocCurve:
    """`curve` cut to about `points` of its points, for a picture on a log FAR axis: point 0, and at
    each of `points` FARs spaced evenly in log from the smallest nonzero FAR to 1, the curve's last
    point at or below it. Every kept point is one of the curve's, and the TAR at those FARs is
    exact; all pairs' curve has one point per pair, millions for a few thousand images. points >= 2: the grid
    reaches FAR 1, so the curve's last point, (1, 1), is kept."""
    _check_count("points", points, 2)
    nonzero = curve.far[curve.far > 0]
    if curve.far.size <= points + 1 or nonzero.size == 0:
        return curve
    grid = np.geomspace(nonzero[0], 1.0, points)
    keep = np.unique(np.r_[0, np.searchsorted(curve.far, grid, side="right") - 1])
    return RocCurve(curve.far[keep], curve.tar[keep], curve.thresholds[keep])


def roc_auc(curve: RocCurve) -> float:
    return float(np.trapezoid(curve.tar, curve.far))


def equal_error_rate(curve: RocCurve) -> float:
    """FAR = FRR crossing, linear between ROC points."""
    gap = (1.0 - curve.tar) - curve.far  # decreases from 1 to -1 along the curve
    k = int(np.flatnonzero(gap <= 0)[0])  # at least 1: the curve starts at (0, 0), where the gap is 1
    t = gap[k - 1] / (gap[k - 1] - gap[k])
    return float(curve.far[k - 1] + t * (curve.far[k] - curve.far[k - 1]))


def _is_real(value: object) -> bool:
    """A real number, not a bool (which would pass as FAR 0 or 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def tar_at_far(curve: RocCurve, far: float) -> float:
    """Highest TAR among ROC points with FAR <= far, a FAR in [0, 1] (the curve's point 0 has FAR 0)."""
    if isinstance(far, np.ndarray) and far.ndim == 0:  # np.array(0.1), as numpy reductions give
        far = far.item()
    if not _is_real(far):
        raise TypeError(f"far must be a real number (a FAR in [0, 1]), got {far!r} ({type(far).__name__})")
    # Below 0 (or NaN) no point qualified, and numpy's "zero-size array" error named nothing.
    if not 0 <= far <= 1:
        raise ValueError(f"far must lie in [0, 1], got {far!r}")
    return float(curve.tar[curve.far <= far].max())


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def bootstrap_interval(replicates: np.ndarray) -> list[float] | None:
    """(2.5, 97.5) percentiles of replicates (R,), R >= 1; None if a replicate is NaN (could not
    measure the figure)."""
    if np.size(replicates) == 0:  # np.percentile's IndexError named nothing
        raise ValueError("bootstrap_interval needs at least one replicate, got none")
    if np.isnan(replicates).any():
        return None
    return [float(np.percentile(replicates, 2.5)), float(np.percentile(replicates, 97.5))]


def far_label(far: float) -> str:
    """1e-3 -> "1e-3", 1.5e-3 -> "1.5e-3" (the keys of metrics.json): the shortest mantissa that
    reads back as `far`, so that distinct targets never share a key."""
    mantissa, exponent = np.format_float_scientific(far, unique=True, trim="-").split("e")
    return f"{mantissa}e{int(exponent)}"


def _far_labels(far_targets: Sequence[float]) -> list[str]:
    """far_label of each target; the targets must be a sequence (or 1-D array) of FARs, in (0, 1], with
    distinct labels."""
    # A lone FAR, a string or a row of strings failed while compared or iterated, naming no argument.
    targets = far_targets.tolist() if isinstance(far_targets, np.ndarray) else far_targets
    if isinstance(targets, (str, bytes)) or not isinstance(targets, Sequence) or not all(map(_is_real, targets)):
        raise TypeError(f"far_targets must be a sequence of real numbers (FARs in (0, 1]), got {far_targets!r} "
                        f"({type(far_targets).__name__})")
    outside = [far for far in far_targets if not 0 < far <= 1]  # NaN is outside too
    if outside:
        raise ValueError(f"far_targets must lie in (0, 1], got {outside} in {far_targets}")
    labels = [far_label(far) for far in far_targets]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"far_targets must be distinct, got {far_targets} ({repeated} more than once)")
    return labels


def verification_metrics(scores: np.ndarray, same: np.ndarray, *, subjects_a: np.ndarray, subjects_b: np.ndarray,
                         far_targets: Sequence[float] = FAR_TARGETS, resamples: int = 200, seed: int = 0,
                         keep_replicates: bool = False, keep_curve: bool = False) -> dict:
    """AUC, EER, TAR at each FAR target, each with a 95% subject-bootstrap interval ("*_ci").

    scores, same (P,); subjects_a, subjects_b (P,) integer subject ids of each pair's two images
    (equal exactly for the genuine pairs); far_targets: a sequence of distinct FARs in (0, 1], keyed
    by far_label.
    A FAR target below 1 / (number of impostor pairs) cannot be measured: its TAR is None and it is
    listed under "unresolved_far". An interval is None when some replicate cannot measure its figure
    (see the module's docstring).
    keep_replicates: also return "replicates", the figures' (resamples,) arrays nested like the
    figures ("auc", "eer", "tar_at_far" -> label; NaN where unmeasurable), for paired comparisons
    of methods scored on the same pairs with the same seed.
    keep_curve: also return "curve", the RocCurve of all pairs.
    """
    _check_count("resamples", resamples, 0)
    # None would draw from the OS: two methods scored so would not be on the same resamples, unpaired.
    _check_count("seed", seed, 0)
    labels = _far_labels(far_targets)
    scores, same = _check_scores(scores, same)
    subjects_a, subjects_b = _check_subjects(same, subjects_a, subjects_b)
    pairs = _SortedPairs(scores, same)
    subjects, (index_a, index_b) = _subject_indices(subjects_a, subjects_b)
    genuine = index_a[pairs.genuine_pairs]
    impostor_a, impostor_b = index_a[pairs.impostor_pairs], index_b[pairs.impostor_pairs]
    del index_a, index_b
    # Each replicate's impostor weights are products of two gathers: buffers kept across replicates.
    drawn_a, drawn_b = np.empty(impostor_a.size, dtype=np.int64), np.empty(impostor_a.size, dtype=np.int64)

    def figures(curve: RocCurve, impostor_weight: int) -> np.ndarray:
        tars = [tar_at_far(curve, f) if f * impostor_weight >= 1 else np.nan for f in far_targets]
        return np.array([roc_auc(curve), equal_error_rate(curve), *tars])

    curve = pairs.roc()
    point = figures(curve, impostor_a.size)
    replicates = np.full((resamples, point.size), np.nan)
    for row, counts in zip(replicates, _subject_multiplicities(subjects, resamples, seed)):
        genuine_weights = counts[genuine]
        impostor_weights = np.multiply(np.take(counts, impostor_a, out=drawn_a),
                                       np.take(counts, impostor_b, out=drawn_b), out=drawn_a)
        # Without genuine or impostor weight (see the module's docstring) the ROC is undefined: the row stays NaN.
        if genuine_weights.any() and impostor_weights.any():
            row[:] = figures(pairs.roc(genuine_weights, impostor_weights), impostor_weights.sum())
    # A target the point estimate cannot resolve gets no interval, whatever a replicate's weight.
    replicates[:, 2:][:, np.isnan(point[2:])] = np.nan
    result = {"auc": float(point[0]), "eer": float(point[1]),
              "tar_at_far": {key: None if np.isnan(v) else float(v) for key, v in zip(labels, point[2:])},
              "genuine_pairs": int(genuine.size), "impostor_pairs": int(impostor_a.size), "subjects": subjects,
              "unresolved_far": [key for key, v in zip(labels, point[2:]) if np.isnan(v)]}
    if resamples:
        result["auc_ci"], result["eer_ci"] = bootstrap_interval(replicates[:, 0]), bootstrap_interval(replicates[:, 1])
        result["tar_at_far_ci"] = {key: bootstrap_interval(replicates[:, column])
                                   for column, key in enumerate(labels, start=2)}
    if keep_replicates:
        result["replicates"] = {"auc": replicates[:, 0], "eer": replicates[:, 1],
                                "tar_at_far": {key: replicates[:, column]
                                               for column, key in enumerate(labels, start=2)}}
    if keep_curve:
        result["curve"] = curve
    return result


def match_ranks(similarity: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """Rank (1-based) of each probe's identity among the gallery identities, ties counted pessimistically.

    similarity (P, G) probes x gallery, probe_labels (P,), gallery_labels (G,); every probe's
    identity must be in the gallery. An identity with several gallery images scores its best one
    (max fusion): rank k means k candidate identities, so the ranks run from 1 to the number of
    gallery identities.
    """
    similarity = np.asarray(similarity, dtype=np.float64)
    probe_labels, gallery_labels = np.asarray(probe_labels), np.asarray(gallery_labels)
    # A column of labels, (P, 1), has the right size and failed later on a boolean index, naming nothing.
    for name, labels in (("probe_labels", probe_labels), ("gallery_labels", gallery_labels)):
        if labels.ndim != 1:
            raise ValueError(f"{name} must be 1-D, one identity label per image, got shape {labels.shape}")
    if similarity.ndim != 2 or similarity.shape != (probe_labels.size, gallery_labels.size):
        raise ValueError(f"similarity must have shape (probes={probe_labels.size}, gallery={gallery_labels.size}), "
                         f"got {similarity.shape}")
    if not np.isfinite(similarity).all():
        raise ValueError("similarity must be finite")
    identities, column = np.unique(gallery_labels, return_inverse=True)
    # Gallery columns grouped by identity and each group reduced at once: np.maximum.at, unbuffered and
    # element by element, is several times slower.
    by_identity = np.argsort(column, kind="stable")
    starts = np.searchsorted(column[by_identity], np.arange(identities.size))
    per_identity = np.maximum.reduceat(np.take(similarity, by_identity, axis=1), starts, axis=1)
    genuine = probe_labels[:, None] == identities[None, :]
    if not genuine.any(axis=1).all():
        missing = probe_labels[~genuine.any(axis=1)][:5].tolist()
        raise ValueError(f"every probe identity must be in the gallery; missing e.g. {missing}")
    best_genuine = per_identity[genuine]  # one gallery identity per probe
    # Impostor identities scoring at least as high as the genuine one come first.
    return 1 + (np.where(genuine, -np.inf, per_identity) >= best_genuine[:, None]).sum(axis=1)


def cmc_curve(ranks: np.ndarray, max_rank: int) -> np.ndarray:
    """(max_rank,) fraction of probes identified within rank k = 1..max_rank."""
    _check_count("max_rank", max_rank, 1)  # else an empty curve for 0 or a negative rank
    ranks = np.asarray(ranks)
    return (ranks[None, :] <= np.arange(1, max_rank + 1)[:, None]).mean(axis=1)


def identification_metrics(similarity: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray,
                           max_rank: int = 20, resamples: int = 200, seed: int = 0,
                           keep_replicates: bool = False) -> dict:
    """rank1, rank5 (with 95% bootstrap intervals over the probes' subjects) and the CMC up to
    max_rank (at most the number of gallery identities); similarity (P, G), probe_labels (P,),
    gallery_labels (G,).

    rank1 and rank5 come from the ranks themselves, as their intervals do, so they do not depend
    on max_rank (which only cuts the CMC). Rank-k of a gallery of k identities or fewer is not
    measured: every probe is within rank k by construction, so the figure and its interval are None
    (its replicates NaN). The subject draws depend only on the probe labels and the seed;
    keep_replicates: also return "replicates" {"rank1", "rank5"} (resamples,) arrays, for paired
    comparisons of methods on the same probes with the same seed.
    """
    _check_count("max_rank", max_rank, 1)
    _check_count("resamples", resamples, 0)
    _check_count("seed", seed, 0)
    ranks = match_ranks(similarity, probe_labels, gallery_labels)
    if not ranks.size:  # rank-1 and the CMC would be means of nothing (NaN, which JSON cannot hold)
        raise ValueError(f"identification needs at least one probe, got probe_labels of size 0 and similarity "
                         f"of shape {np.shape(similarity)}")
    identities = np.unique(gallery_labels).size
    cmc = cmc_curve(ranks, min(max_rank, identities))
    measured = {name: k < identities for name, k in RANKS}
    result = {**{name: float((ranks <= k).mean()) if measured[name] else None for name, k in RANKS},
              "cmc": cmc.tolist(), "probes": int(ranks.size), "gallery": int(len(gallery_labels))}
    subjects, subject_of_probe = np.unique(probe_labels, return_inverse=True)
    multiplicities = _subject_multiplicities(subjects.size, resamples, seed)  # (resamples, S)
    # A replicate's rank-k is its weighted hits over its weighted probes, both summed per subject.
    probes_per_subject = np.bincount(subject_of_probe, minlength=subjects.size)
    weighted_probes = multiplicities @ probes_per_subject
    replicates = {}
    for name, k in RANKS:
        if measured[name] and subjects.size >= 2:
            hits_per_subject = np.bincount(subject_of_probe, weights=ranks <= k, minlength=subjects.size)
            replicates[name] = multiplicities @ hits_per_subject / weighted_probes
        else:  # not measured, or every resample repeats the one subject: a zero-width interval would claim certainty
            replicates[name] = np.full(resamples, np.nan)
    if resamples:
        for name, _ in RANKS:
            result[f"{name}_ci"] = bootstrap_interval(replicates[name])
    if keep_replicates:
        result["replicates"] = replicates
    return result
