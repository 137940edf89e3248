"""tgfr.metrics against independent computations: brute-force pair counts, threshold sweeps,
closed-form uniform distributions and a hand-made similarity matrix."""

import re

import numpy as np
import pytest

from tgfr.metrics import (bootstrap_interval, cmc_curve, equal_error_rate, far_label, identification_metrics,
                          match_ranks, roc_auc, roc_curve, tar_at_far, thin_roc_curve, verification_metrics)


def brute_force_auc(scores, same):
    genuine, impostor = scores[same == 1], scores[same == 0]
    wins = (genuine[:, None] > impostor[None, :]).sum() + 0.5 * (genuine[:, None] == impostor[None, :]).sum()
    return wins / (genuine.size * impostor.size)


def brute_force_tar_at_far(scores, same, far):
    """Sweep every candidate threshold; best TAR among those with FAR <= far."""
    genuine, impostor = scores[same == 1], scores[same == 0]
    best = 0.0
    for threshold in np.r_[np.unique(scores), np.inf]:
        if (impostor >= threshold).mean() <= far:
            best = max(best, (genuine >= threshold).mean())
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_pair_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    same = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(same * 0.8, 1.0), 1)  # rounding makes many ties
    assert roc_auc(roc_curve(scores, same)) == pytest.approx(brute_force_auc(scores, same), abs=1e-12)


@pytest.mark.parametrize("far", [0.0, 0.01, 0.05, 0.3])
def test_tar_at_far_equals_threshold_sweep(far):
    rng = np.random.default_rng(5)
    same = rng.integers(0, 2, 400)
    scores = np.round(rng.normal(same * 1.5, 1.0), 2)
    assert tar_at_far(roc_curve(scores, same), far) == pytest.approx(brute_force_tar_at_far(scores, same, far))


def test_constructed_scores():
    # Genuine 0.55..0.95, impostors 0.00..0.99 (100 evenly spaced): exact rates by counting.
    genuine = np.linspace(0.55, 0.95, 5)
    impostor = np.arange(100) / 100
    scores, same = np.r_[genuine, impostor], np.r_[np.ones(5), np.zeros(100)]
    curve = roc_curve(scores, same)
    # Threshold 0.95 accepts 1 genuine and the 5 impostors 0.95..0.99 (the tie counts): FAR 0.05, TAR 0.2.
    assert tar_at_far(curve, 0.05) == pytest.approx(0.2)
    assert tar_at_far(curve, 0.049) == pytest.approx(0.0)
    assert tar_at_far(curve, 0.45) == pytest.approx(1.0)


def test_eer_of_shifted_uniforms():
    # Genuine U(0.2, 1.2), impostors U(0, 1): FAR(t) = 1 - t, FRR(t) = t - 0.2, equal at t = 0.6: EER 0.4.
    n = 20001
    genuine, impostor = 0.2 + (np.arange(n) + 0.5) / n, (np.arange(n) + 0.5) / n
    curve = roc_curve(np.r_[genuine, impostor], np.r_[np.ones(n), np.zeros(n)])
    assert equal_error_rate(curve) == pytest.approx(0.4, abs=1e-4)
    assert roc_auc(curve) == pytest.approx(1 - 0.8**2 / 2, abs=1e-4)  # P(G > I) for the shift 0.2


def test_perfect_separation():
    curve = roc_curve(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0]))
    assert roc_auc(curve) == 1.0 and equal_error_rate(curve) == 0.0 and tar_at_far(curve, 0.0) == 1.0


def test_verification_bootstrap_covers_point_and_is_seeded():
    rng = np.random.default_rng(0)
    # 100 subjects with 2 genuine pairs each; 5000 impostor pairs of distinct subjects.
    genuine = np.repeat(np.arange(100), 2)
    impostor_a = rng.integers(0, 100, 5000)
    impostor_b = (impostor_a + rng.integers(1, 100, 5000)) % 100
    subjects = {"subjects_a": np.r_[genuine, impostor_a], "subjects_b": np.r_[genuine, impostor_b]}
    same = np.r_[np.ones(200), np.zeros(5000)]
    scores = rng.normal(same * 2.0, 1.0)
    first = verification_metrics(scores, same, **subjects, resamples=100, seed=3)
    again = verification_metrics(scores, same, **subjects, resamples=100, seed=3)
    other = verification_metrics(scores, same, **subjects, resamples=100, seed=4)
    assert first == again and first["auc_ci"] != other["auc_ci"]
    assert (first["genuine_pairs"], first["impostor_pairs"]) == (int((same == 1).sum()), int((same == 0).sum()))
    assert first["subjects"] == np.unique(np.r_[subjects["subjects_a"], subjects["subjects_b"]]).size
    low, high = first["auc_ci"]
    assert low <= first["auc"] <= high and high - low < 0.1
    low, high = first["tar_at_far_ci"]["1e-2"]
    assert low <= first["tar_at_far"]["1e-2"] <= high
    # 5000 impostors cannot resolve FAR 1e-4 and below.
    assert first["tar_at_far"]["1e-4"] is None and first["unresolved_far"] == ["1e-6", "1e-5", "1e-4"]
    assert first["tar_at_far"]["1e-3"] == pytest.approx(brute_force_tar_at_far(scores, same, 1e-3))


def test_hand_made_identification():
    gallery = np.array([10, 11, 12])
    probes = np.array([10, 11, 12, 10])
    similarity = np.array([
        [0.9, 0.1, 0.2],   # rank 1
        [0.5, 0.4, 0.3],   # rank 2
        [0.8, 0.7, 0.6],   # rank 3
        [0.3, 0.3, 0.1],   # tie with an impostor: rank 2 (pessimistic)
    ])
    ranks = match_ranks(similarity, probes, gallery)
    assert ranks.tolist() == [1, 2, 3, 2]
    assert cmc_curve(ranks, 3).tolist() == [0.25, 0.75, 1.0]
    result = identification_metrics(similarity, probes, gallery, resamples=50)
    assert result["rank1"] == 0.25 and result["cmc"] == [0.25, 0.75, 1.0]
    assert result["rank1_ci"][0] <= 0.25 <= result["rank1_ci"][1]
    assert result["rank5"] is None and result["rank5_ci"] is None  # 3 identities: every probe is within rank 5


def similarity_with_ranks(ranks, subjects=8):
    """Probe i (subject i % subjects) scores 0.5 with its gallery image, 0.9 with ranks[i] - 1 impostors."""
    similarity = np.full((len(ranks), subjects), 0.1)
    for i, rank in enumerate(ranks):
        similarity[i, i % subjects] = 0.5
        impostors = [s for s in range(subjects) if s != i % subjects][:rank - 1]
        similarity[i, impostors] = 0.9
    return similarity, np.arange(len(ranks)) % subjects, np.arange(subjects)


@pytest.mark.parametrize("max_rank", [1, 2, 4, 5, 20])
def test_rank1_and_rank5_do_not_depend_on_max_rank(max_rank):
    ranks = [1, 3, 5, 6, 8, 2]
    similarity, probes, gallery = similarity_with_ranks(ranks)
    assert match_ranks(similarity, probes, gallery).tolist() == ranks
    result = identification_metrics(similarity, probes, gallery, max_rank=max_rank, resamples=200)
    assert result["rank1"] == pytest.approx(1 / 6)
    assert result["rank5"] == pytest.approx(4 / 6)  # ranks 1, 3, 5 and 2
    expected_cmc = [sum(r <= k for r in ranks) / 6 for k in range(1, min(max_rank, 8) + 1)]
    assert result["cmc"] == pytest.approx(expected_cmc)
    for name in ("rank1", "rank5"):
        low, high = result[f"{name}_ci"]
        assert low <= result[name] <= high


@pytest.mark.parametrize("identities", [1, 2, 4, 5, 6, 8])
def test_rank_k_of_a_gallery_of_k_identities_or_fewer_is_not_measured(identities):
    """With k gallery identities or fewer every probe is within rank k whatever the scores: a certain 100%,
    reported as None with its interval (its replicates NaN), as other figures that cannot be measured are."""
    ranks = [min(rank, identities) for rank in (1, 3, 5, 6, 2, 1, 4, 2)]
    similarity, probes, gallery = similarity_with_ranks(ranks, subjects=identities)
    gallery = np.repeat(gallery, 2)  # two images an identity: the rule counts identities, not images
    similarity = np.repeat(similarity, 2, axis=1)
    assert match_ranks(similarity, probes, gallery).tolist() == ranks
    result = identification_metrics(similarity, probes, gallery, resamples=20, keep_replicates=True)
    for name, k in (("rank1", 1), ("rank5", 5)):
        if identities <= k:
            assert result[name] is None and result[f"{name}_ci"] is None
            assert np.isnan(result["replicates"][name]).all()
        else:
            assert result[name] == pytest.approx(np.mean([rank <= k for rank in ranks]))
            assert result[name] < 1 and result[f"{name}_ci"] is not None
    assert result["cmc"] == pytest.approx([np.mean([rank <= k for rank in ranks]) for k in range(1, identities + 1)])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("gallery_order", ["grouped", "shuffled"])
def test_ranks_count_identities_with_several_gallery_images(seed, gallery_order):
    """Rank k = the probe's identity is among the k best-scoring gallery identities (each scored by
    its best image), brute-forced identity by identity; rounding makes ties. The gallery lists each
    identity's images together, or shuffled among the others' with labels out of numeric order."""
    rng = np.random.default_rng(seed)
    images_per_identity = np.r_[1, 4, rng.integers(1, 5, 5)]  # 1 to 4 images, one and several among them
    gallery = np.repeat(np.arange(7), images_per_identity)
    probes = rng.integers(0, 7, 40)
    if gallery_order == "shuffled":
        identity_label = np.array([30, -2, 7, 1000, 5, 12, 0])
        gallery, probes = identity_label[rng.permutation(gallery)], identity_label[probes]
    similarity = np.round(rng.normal(size=(40, gallery.size)), 1)
    expected = []
    for p, label in enumerate(probes):
        best = {g: max(similarity[p, j] for j in range(gallery.size) if gallery[j] == g) for g in set(gallery)}
        expected.append(1 + sum(score >= best[label] for g, score in best.items() if g != label))
    assert match_ranks(similarity, probes, gallery).tolist() == expected
    result = identification_metrics(similarity, probes, gallery, max_rank=20, resamples=0)
    assert result["cmc"] == pytest.approx([np.mean([r <= k for r in expected]) for k in range(1, 8)])
    assert result["rank5"] == pytest.approx(np.mean([r <= 5 for r in expected]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_identification_rejects_non_finite_similarity(bad):
    similarity = np.array([[bad, 0.1], [0.2, 0.3]])
    with pytest.raises(ValueError, match="similarity must be finite"):
        identification_metrics(similarity, np.array([0, 1]), np.array([0, 1]), resamples=0)


def test_counts_are_checked():
    similarity, probes, gallery = similarity_with_ranks([1, 2])
    with pytest.raises(ValueError, match="max_rank must be an integer >= 1, got 0"):
        identification_metrics(similarity, probes, gallery, max_rank=0)
    with pytest.raises(ValueError, match="resamples must be an integer >= 0, got -1"):
        identification_metrics(similarity, probes, gallery, resamples=-1)
    with pytest.raises(ValueError, match="resamples must be an integer >= 0, got -1"):
        verification_metrics(np.array([0.9, 0.1]), np.array([1, 0]), subjects_a=np.array([0, 0]),
                             subjects_b=np.array([0, 1]), resamples=-1)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="genuine and impostor"):
        roc_curve(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="same must hold 0"):
        roc_curve(np.array([0.1, 0.2]), np.array([1, 2]))
    with pytest.raises(ValueError, match="similarity must have shape"):
        match_ranks(np.zeros((2, 2)), np.array([1]), np.array([1, 2]))
    with pytest.raises(ValueError, match="gallery"):
        match_ranks(np.zeros((1, 2)), np.array([3]), np.array([1, 2]))


def test_far_label():
    assert [far_label(f) for f in (1e-6, 1e-3, 1e-2)] == ["1e-6", "1e-3", "1e-2"]
    assert [far_label(f) for f in (1.5e-3, 2.5e-3, 5e-4, 0.25, 1.0)] == ["1.5e-3", "2.5e-3", "5e-4", "2.5e-1", "1e0"]
    for far in (1.5e-3, 2.5e-3, 3e-3, 1 / 3, 0.0123456789):
        assert float(far_label(far)) == far  # a label names its target exactly


def test_close_far_targets_keep_their_own_figures():
    # 2.5e-3 and 3e-3 once shared the label "3e-3": one key, holding one of the two TARs.
    rng = np.random.default_rng(0)
    subjects = np.repeat(np.arange(40), 3)
    rows, columns = np.triu_indices(subjects.size, k=1)
    subjects_a, subjects_b = subjects[rows], subjects[columns]
    same = (subjects_a == subjects_b).astype(np.int64)
    scores = np.round(rng.normal(same * 2.0, 1.0), 2)
    far_targets = (1.5e-3, 2.5e-3, 3e-3)
    result = verification_metrics(scores, same, subjects_a=subjects_a, subjects_b=subjects_b,
                                  far_targets=far_targets, resamples=5)
    assert list(result["tar_at_far"]) == list(result["tar_at_far_ci"]) == ["1.5e-3", "2.5e-3", "3e-3"]
    for far in far_targets:
        assert result["tar_at_far"][far_label(far)] == pytest.approx(brute_force_tar_at_far(scores, same, far))


@pytest.mark.parametrize("far_targets, message", [
    ((1e-3, 0.0), r"far_targets must lie in \(0, 1\], got \[0.0\]"),
    ((-1e-3,), r"far_targets must lie in \(0, 1\], got \[-0.001\]"),
    ((1e-2, 1.5), r"far_targets must lie in \(0, 1\], got \[1.5\]"),
    ((float("nan"),), r"far_targets must lie in \(0, 1\], got \[nan\]"),
    ((1e-3, 1e-2, 0.001), r"far_targets must be distinct, got .*\['1e-3'\] more than once"),
])
def test_bad_far_targets_are_named(far_targets, message):
    with pytest.raises(ValueError, match=message):
        verification_metrics(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0]), subjects_a=np.array([0, 0, 1, 0]),
                             subjects_b=np.array([0, 0, 0, 1]), far_targets=far_targets, resamples=0)


@pytest.mark.parametrize("far_targets", [1e-3, "1e-3", b"1e-3", ("1e-3",), (1e-3, None), (True,), np.array(1e-3),
                                         np.array([[1e-3, 1e-2]]), {1e-3: "a"}])
def test_far_targets_that_are_not_a_sequence_of_numbers_are_named(far_targets):
    """A lone FAR, a string or a row holding a non-number raised "'float' object is not iterable" or "'<' not
    supported between 'int' and 'str'", naming no argument."""
    with pytest.raises(TypeError, match=rf"^far_targets must be a sequence of real numbers \(FARs in \(0, 1\]\), got "
                                        rf"{re.escape(repr(far_targets))} \({type(far_targets).__name__}\)$"):
        verification_metrics(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0]), subjects_a=np.array([0, 0, 1, 0]),
                             subjects_b=np.array([0, 0, 0, 1]), far_targets=far_targets, resamples=0)


def test_far_targets_may_be_any_sequence_of_numbers():
    """A list, a 1-D array or numpy scalars give the figures a tuple of floats gives."""
    scores, same, subjects_a, subjects_b = pairs_of_four_subjects(np.arange(100) / 100, [0.999, 0.995, 0.975, 0.5])
    expected = verification_metrics(scores, same, subjects_a=subjects_a, subjects_b=subjects_b,
                                    far_targets=(1e-2, 0.1), resamples=5)
    for far_targets in ([1e-2, 0.1], np.array([1e-2, 0.1]), (np.float64(1e-2), 0.1)):
        assert verification_metrics(scores, same, subjects_a=subjects_a, subjects_b=subjects_b,
                                    far_targets=far_targets, resamples=5) == expected


@pytest.mark.parametrize("argument", ["probe_labels", "gallery_labels"])
def test_labels_must_be_one_dimensional(argument):
    """A column of labels (2, 1) has the size of the similarity's side and failed on a boolean index."""
    labels = {"probe_labels": np.array([1, 2]), "gallery_labels": np.array([1, 2])}
    labels[argument] = labels[argument][:, None]
    message = rf"^{argument} must be 1-D, one identity label per image, got shape \(2, 1\)$"
    with pytest.raises(ValueError, match=message):
        match_ranks(np.eye(2), **labels)
    with pytest.raises(ValueError, match=message):
        identification_metrics(np.eye(2), **labels, resamples=5)


def test_a_far_target_of_1_is_measured():
    """(0, 1] holds 1: every pair is then accepted, the TAR is 1 as the threshold sweep gives it."""
    scores, same = np.array([0.9, 0.8, 0.1, 0.2, 0.85]), np.array([1, 1, 0, 0, 0])
    result = verification_metrics(scores, same, subjects_a=np.array([0, 1, 0, 1, 2]),
                                  subjects_b=np.array([0, 1, 1, 2, 0]), far_targets=(0.5, 1.0), resamples=0)
    assert result["tar_at_far"] == {far_label(far): brute_force_tar_at_far(scores, same, far) for far in (0.5, 1.0)}
    assert result["tar_at_far"]["1e0"] == 1.0 and result["unresolved_far"] == []


def test_identification_without_probes_is_an_error():
    # rank-1 of no probe was NaN, which metrics.json cannot hold.
    with pytest.raises(ValueError, match="identification needs at least one probe, got probe_labels of size 0"):
        identification_metrics(np.zeros((0, 3)), np.array([], dtype=np.int64), np.array([0, 1, 2]), resamples=5)


def test_bootstrap_interval_is_the_2_5_and_97_5_percentiles():
    # Replicates 0..40 (shuffled): the p-th percentile interpolates at index p / 100 * 40, so 1 and 39.
    replicates = np.random.default_rng(0).permutation(41).astype(np.float64)
    assert bootstrap_interval(replicates) == [1.0, 39.0]
    assert bootstrap_interval(np.r_[replicates, np.nan]) is None


def pairs_of_four_subjects(impostor_scores, genuine_scores):
    """scores, same, subjects_a, subjects_b: one genuine pair per score of genuine_scores (subject
    i % 4) and the impostor pairs cycling through the 6 pairs of the 4 subjects."""
    first, second = np.triu_indices(4, k=1)
    cycle = np.arange(len(impostor_scores)) % 6
    genuine = np.arange(len(genuine_scores)) % 4
    same = np.r_[np.ones(len(genuine_scores), np.int64), np.zeros(len(impostor_scores), np.int64)]
    return np.r_[genuine_scores, impostor_scores], same, np.r_[genuine, first[cycle]], np.r_[genuine, second[cycle]]


@pytest.mark.parametrize("impostors, expected", [(100, 0.5), (99, None)])
def test_tar_at_far_needs_far_times_impostor_pairs_at_least_1(impostors, expected):
    """FAR 1e-2 with 100 impostor pairs (scores 0.00..0.99) allows 1 accepted impostor: threshold
    0.99 accepts genuine 0.999 and 0.995 of 4 (0.975 would accept impostors 0.98 and 0.99 too),
    TAR 0.5. 99 impostor pairs cannot resolve 1e-2."""
    scores, same, subjects_a, subjects_b = pairs_of_four_subjects(np.arange(impostors) / 100,
                                                                  [0.999, 0.995, 0.975, 0.5])
    result = verification_metrics(scores, same, subjects_a=subjects_a, subjects_b=subjects_b, far_targets=(1e-2,),
                                  resamples=0)
    assert result["impostor_pairs"] == impostors and result["tar_at_far"] == {"1e-2": expected}
    assert result["unresolved_far"] == ([] if expected is not None else ["1e-2"])


def test_an_unresolved_far_has_no_interval_whatever_the_resamples_weight():
    """11 subjects, 99 impostor pairs (subject 0 against each other subject 9 times, subject 1
    against 2..10): FAR 1e-2 is unresolved, though the one resample (seed 0) draws subject 0 three
    times and so weighs the impostor pairs c_a * c_b to 100 or more, enough for 1e-2 on its own."""
    subjects = np.arange(11)
    impostor_a = np.r_[np.zeros(90, np.int64), np.ones(9, np.int64)]
    impostor_b = np.r_[np.tile(np.arange(1, 11), 9), np.arange(2, 11)]
    subjects_a, subjects_b = np.r_[subjects, impostor_a], np.r_[subjects, impostor_b]
    same = np.r_[np.ones(11, np.int64), np.zeros(99, np.int64)]
    scores = np.random.default_rng(0).normal(same * 2.0, 1.0)
    counts = np.bincount(np.random.default_rng(0).integers(0, 11, 11), minlength=11)  # the documented draw
    assert counts[0] == 3 and (counts[impostor_a] * counts[impostor_b]).sum() >= 100
    result = verification_metrics(scores, same, subjects_a=subjects_a, subjects_b=subjects_b, far_targets=(1e-2,),
                                  resamples=1, seed=0, keep_replicates=True)
    assert result["impostor_pairs"] == 99 and result["tar_at_far"] == {"1e-2": None}
    assert result["tar_at_far_ci"] == {"1e-2": None} and np.isnan(result["replicates"]["tar_at_far"]["1e-2"]).all()
    assert result["auc_ci"] is not None  # the resample itself measures the other figures


def test_eer_interpolates_linearly_between_roc_points():
    # Genuine 3, 1, 1; impostors 1, 0: the ROC goes from (0, 1/3) to (1/2, 1) at the tied score 1. On that
    # segment FAR = s/2 and FRR = 1 - (1/3 + 2s/3), equal at s = 4/7: EER 2/7.
    curve = roc_curve(np.array([3.0, 1.0, 1.0, 1.0, 0.0]), np.array([1, 1, 1, 0, 0]))
    assert equal_error_rate(curve) == pytest.approx(2 / 7, rel=1e-12)


def test_eer_at_an_exact_crossing():
    # Genuine 3, 1; impostors 2, 0. Threshold 2 accepts genuine 3 and impostor 2: FAR = FRR = 1/2.
    assert equal_error_rate(roc_curve(np.array([3.0, 1.0, 2.0, 0.0]), np.array([1, 1, 0, 0]))) == 0.5


@pytest.mark.parametrize("scores, same", [(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 0, 0])),
                                          # A (probes, gallery) matrix beside its transposed labels: one size.
                                          (np.array([[0.9, 0.1, 0.2], [0.3, 0.8, 0.4]]), np.array([[1, 0], [0, 1],
                                                                                                   [0, 0]]))])
def test_verification_rejects_labels_of_another_length_or_shape(scores, same):
    with pytest.raises(ValueError, match=re.escape(f"scores and same must have one entry per pair, in the same shape, "
                                                   f"got shapes {scores.shape} and {same.shape}")):
        roc_curve(scores, same)


def test_verification_names_scores_that_are_not_numbers():
    with pytest.raises(ValueError, match="^scores must be numbers .*got list"):
        roc_curve(["a", "b"], np.array([1, 0]))


@pytest.mark.parametrize("max_rank", [0, -3, 2.0])
def test_a_cmc_curve_needs_a_max_rank_of_at_least_1(max_rank):
    with pytest.raises(ValueError, match=re.escape(f"max_rank must be an integer >= 1, got {max_rank!r}")):
        cmc_curve(np.array([1, 2]), max_rank)


def test_a_bootstrap_interval_needs_a_replicate():
    with pytest.raises(ValueError, match="^bootstrap_interval needs at least one replicate, got none$"):
        bootstrap_interval(np.array([]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_verification_rejects_non_finite_scores(bad):
    scores, same = np.array([0.9, bad, 0.1, 0.2]), np.array([1, 1, 0, 0])
    with pytest.raises(ValueError, match="scores must be finite"):
        roc_curve(scores, same)
    with pytest.raises(ValueError, match="scores must be finite"):
        verification_metrics(scores, same, subjects_a=np.array([0, 1, 0, 1]), subjects_b=np.array([0, 1, 1, 2]),
                             resamples=0)


def test_a_thinned_roc_keeps_points_of_the_curve_with_exact_tar_at_its_fars():
    rng = np.random.default_rng(3)
    same = rng.random(200_000) < 0.01
    scores = rng.normal(size=same.size) + 2.0 * same
    curve = roc_curve(scores, same)
    thin = thin_roc_curve(curve, points=500)
    assert curve.far.size > 100_000 and thin.far.size <= 501
    assert (thin.far[0], thin.tar[0]) == (0.0, 0.0) and (thin.far[-1], thin.tar[-1]) == (1.0, 1.0)
    # every kept point is one of the curve's (a threshold picks it out)
    kept = np.searchsorted(-curve.thresholds, -thin.thresholds)
    np.testing.assert_array_equal(curve.far[kept], thin.far)
    np.testing.assert_array_equal(curve.tar[kept], thin.tar)
    # at the 500 FARs spaced evenly in log from the smallest nonzero one, the TAR is the full curve's
    assert thin.far[1] == curve.far[curve.far > 0][0]
    for far in np.geomspace(thin.far[1], 1.0, 500):
        assert tar_at_far(thin, far) == tar_at_far(curve, far)
    small = roc_curve(scores[:300], same[:300] | (np.arange(300) == 0))
    assert thin_roc_curve(small, points=500) is small


@pytest.mark.parametrize("seed", range(5))
def test_roc_thresholds_accept_what_each_point_counts(seed):
    """RocCurve.thresholds[k] is the score at or above which point k accepts a pair: a caller reading an
    operating threshold off the curve gets far[k] and tar[k] with it (scores with ties and without)."""
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 300, 200) / 4.0
    same = rng.random(200) < 0.3
    curve = roc_curve(scores, same)
    for k, threshold in enumerate(curve.thresholds):
        assert (scores[~same] >= threshold).mean() == curve.far[k]
        assert (scores[same] >= threshold).mean() == curve.tar[k]


@pytest.mark.parametrize("seed", [None, True, -1, 1.5])
def test_bootstrap_seed_must_be_an_integer(seed):
    """None drew from the OS: two methods scored so were not on the same resamples, and their difference's
    interval was not paired."""
    scores, same = np.array([0.9, 0.2, 0.8, 0.1]), np.array([1, 0, 1, 0])
    with pytest.raises(ValueError, match=rf"^seed must be an integer >= 0, got {re.escape(repr(seed))}$"):
        verification_metrics(scores, same, subjects_a=np.array([0, 0, 1, 1]), subjects_b=np.array([0, 1, 1, 0]),
                             resamples=2, seed=seed)
    with pytest.raises(ValueError, match=rf"^seed must be an integer >= 0, got {re.escape(repr(seed))}$"):
        identification_metrics(np.eye(2), np.array([0, 1]), np.array([0, 1]), resamples=2, seed=seed)


@pytest.mark.parametrize("far", [-1e-3, -1, 1.5, float("nan"), float("inf"), np.float64(-0.5)])
def test_tar_at_a_far_outside_0_1_is_refused_naming_far(far):
    """Below 0 or NaN no ROC point qualified, and numpy's "zero-size array" error named nothing; above 1 read
    as a FAR of 1. The ends themselves are FARs: 0 (point 0 and the ties above every impostor) and 1."""
    scores, same = np.array([0.9, 0.7, 0.6, 0.5, 0.3, 0.2]), np.array([1, 0, 1, 1, 0, 0])
    curve = roc_curve(scores, same)
    with pytest.raises(ValueError, match=rf"^far must lie in \[0, 1\], got {re.escape(repr(far))}$"):
        tar_at_far(curve, far)
    for end in (0, 0.0, 1, 1.0):
        assert tar_at_far(curve, end) == brute_force_tar_at_far(scores, same, end)
    # A 0-dim array (what a numpy reduction gives) is a FAR as its value is.
    assert tar_at_far(curve, np.array(0.5)) == brute_force_tar_at_far(scores, same, 0.5)


@pytest.mark.parametrize("far", ["1e-3", None, True, [1e-3]])
def test_tar_at_a_far_that_is_not_a_real_number_is_refused_naming_far(far):
    """As verification_metrics refuses such far_targets: a bool passed as FAR 0 or 1, a string failed in numpy."""
    curve = roc_curve(np.array([0.9, 0.1]), np.array([1, 0]))
    with pytest.raises(TypeError, match=rf"^far must be a real number \(a FAR in \[0, 1\]\), got "
                                        rf"{re.escape(repr(far))} \({type(far).__name__}\)$"):
        tar_at_far(curve, far)


@pytest.mark.parametrize("points", [0, 1, -3, 2.0, True])
def test_a_roc_thinned_to_fewer_than_2_points_is_refused_naming_points(points):
    """One point of the log grid is the smallest nonzero FAR alone: the curve's end, (1, 1), was dropped."""
    same = np.arange(50) % 5 == 0
    curve = roc_curve(np.arange(50.0), same)
    with pytest.raises(ValueError, match=rf"^points must be an integer >= 2, got {re.escape(repr(points))}$"):
        thin_roc_curve(curve, points=points)


def test_a_roc_thinned_to_2_points_keeps_both_ends():
    """The grid of 2 FARs is the smallest nonzero one and 1: the thinned curve starts at (0, 0), ends at the
    curve's (1, 1) and keeps the last point at or below the smallest nonzero FAR."""
    same = np.arange(50) % 5 == 0
    curve = roc_curve(np.arange(50.0), same)
    thin = thin_roc_curve(curve, points=2)
    smallest = curve.far[curve.far > 0][0]
    last_at_smallest = np.flatnonzero(curve.far <= smallest)[-1]
    np.testing.assert_array_equal(thin.far, [0.0, curve.far[last_at_smallest], 1.0])
    np.testing.assert_array_equal(thin.tar, [0.0, curve.tar[last_at_smallest], 1.0])
