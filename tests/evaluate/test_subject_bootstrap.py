"""The verification bootstrap resamples subjects: every replicate equals the figures of the pair
list the drawn subjects make, materialized by duplicating pairs and scored by the unweighted
functions; the draws depend only on the subjects and the seed, so methods are compared on the
same resamples. Identification resamples the probes' subjects the same way: every replicate
equals the rank-k of the probe list the drawn subjects make."""

import numpy as np
import pytest

from tgfr.data import ManifestRecord, make_verification_pairs
from tgfr.evaluation import protocols
from tgfr.evaluation.embeddings import SplitEmbeddings
from tgfr.evaluation.protocols import degradation_difference, paired_difference, split_figures, verification_scores
from tgfr.evaluation.report import MAIN_FAR
from tgfr.metrics import (bootstrap_interval, equal_error_rate, far_label, identification_metrics, roc_auc,
                          roc_curve, tar_at_far, verification_metrics)
from tgfr.train.config import EvaluationConfig


def all_pairs(images_per_subject):
    """Every unordered pair of images: (subjects_a, subjects_b, same), each (P,)."""
    subjects = np.repeat(np.arange(len(images_per_subject)), images_per_subject)
    rows, columns = np.triu_indices(subjects.size, k=1)
    return subjects[rows], subjects[columns], (subjects[rows] == subjects[columns]).astype(np.int64)


def drawn_counts(subjects_a, subjects_b, resamples, seed):
    """(resamples, S): the documented draw, S subjects (sorted ids) with replacement, counted row by row."""
    ids = np.unique(np.r_[subjects_a, subjects_b])
    drawn = np.random.default_rng(seed).integers(0, ids.size, (resamples, ids.size))
    return ids, np.array([np.bincount(row, minlength=ids.size) for row in drawn])


def materialized_figures(scores, same, subjects_a, subjects_b, counts, ids, far_targets):
    """[auc, eer, tar at each far] of the resampled pair list: a genuine pair of subject a copied
    c_a times, an impostor pair of subjects a, b c_a * c_b times; NaN where it cannot be measured."""
    c_a, c_b = counts[np.searchsorted(ids, subjects_a)], counts[np.searchsorted(ids, subjects_b)]
    copies = np.where(same == 1, c_a, c_a * c_b)
    kept = np.repeat(np.arange(scores.size), copies)
    s, y = scores[kept], same[kept]
    if y.all() or not y.any():
        return np.full(2 + len(far_targets), np.nan)
    curve = roc_curve(s, y)
    impostors = (y == 0).sum()
    return np.array([roc_auc(curve), equal_error_rate(curve),
                     *(tar_at_far(curve, f) if f * impostors >= 1 else np.nan for f in far_targets)])


def replicate_matrix(result, far_targets):
    r = result["replicates"]
    return np.column_stack([r["auc"], r["eer"], *(r["tar_at_far"][far_label(f)] for f in far_targets)])


def brute_force_replicates(scores, same, subjects_a, subjects_b, resamples, seed, far_targets):
    """(resamples, 2 + F) materialized figures; a TAR the point estimate (every subject once)
    cannot measure is NaN in every replicate."""
    ids, counts = drawn_counts(subjects_a, subjects_b, resamples, seed)
    point = materialized_figures(scores, same, subjects_a, subjects_b, np.ones(ids.size, np.int64), ids, far_targets)
    replicates = np.array([materialized_figures(scores, same, subjects_a, subjects_b, c, ids, far_targets)
                           for c in counts])
    replicates[:, np.isnan(point)] = np.nan
    return replicates


# Subject ids as a caller may number them: 0 .. S - 1, negative and int32, spaced out in uint16, in int8
# from -100 to 100 (id - lowest id overflows int8), and spread far wider than the pairs' number (counted by
# np.unique instead of a table).
SUBJECT_IDS = {"contiguous": lambda s: s, "negative_int32": lambda s: (s - 3).astype(np.int32),
               "spaced_uint16": lambda s: (s * 7).astype(np.uint16),
               "int8_full_range": lambda s: (s * 40 - 100).astype(np.int8), "sparse": lambda s: s * 10**12 - 5}


@pytest.mark.parametrize("ids", sorted(SUBJECT_IDS))
@pytest.mark.parametrize("seed", [0, 1])
def test_replicates_equal_materialized_pair_lists(seed, ids):
    # 6 subjects of 4 images (the last has 1: no genuine pair), rounded scores (ties across
    # genuine and impostor pairs). Of the 180 impostor pairs, 2e-3 needs 500: unresolved;
    # 6e-3 needs 167: resolved by the point estimate but not by every replicate.
    subjects_a, subjects_b, same = all_pairs([4, 4, 4, 4, 4, 1])
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(same * 1.0 + 0.3 * rng.normal(size=6)[subjects_a], 1.0), 1)
    subjects_a, subjects_b = SUBJECT_IDS[ids](subjects_a), SUBJECT_IDS[ids](subjects_b)
    far_targets = (2e-3, 6e-3, 0.05, 0.3)
    result = verification_metrics(scores, same, subjects_a=subjects_a, subjects_b=subjects_b,
                                  far_targets=far_targets, resamples=40, seed=seed, keep_replicates=True)
    expected = brute_force_replicates(scores, same, subjects_a, subjects_b, 40, seed, far_targets)
    replicates = replicate_matrix(result, far_targets)
    np.testing.assert_allclose(replicates, expected, rtol=0, atol=1e-12)  # NaN where NaN
    assert result["tar_at_far"]["2e-3"] is None and result["tar_at_far_ci"]["2e-3"] is None
    assert result["tar_at_far"]["6e-3"] is not None and np.isnan(expected[:, 3]).any()
    for column, far in enumerate(far_targets, start=2):
        # An interval only where every replicate measures the figure.
        assert (result["tar_at_far_ci"][far_label(far)] is None) == np.isnan(expected[:, column]).any()


@pytest.mark.parametrize("seed", [0, 1])
def test_subjects_on_one_side_of_the_pairs_only_are_counted_and_kept_apart(seed):
    """A sampled protocol's impostor pairs may put a subject on the left only, the smallest id among them: the
    table of ids read only the right-hand ids' range (those subjects merged into others, by a negative offset) or
    counted only the right-hand ids (those subjects dropped, every interval gone)."""
    subjects_a, subjects_b, same = all_pairs([3, 3, 3, 3])
    subjects_a, subjects_b = subjects_a + 10, subjects_b + 10
    rng = np.random.default_rng(seed)
    left_only = np.repeat([0, 1, 2], 4)  # one image each, against 4 images of the subjects 10 .. 13
    right = rng.integers(10, 14, left_only.size)
    subjects_a, subjects_b = np.r_[subjects_a, left_only], np.r_[subjects_b, right]
    same = np.r_[same, np.zeros(left_only.size, np.int64)]
    scores = np.round(rng.normal(same * 1.5, 1.0), 1)
    far_targets = (0.05, 0.3)
    result = verification_metrics(scores, same, subjects_a=subjects_a, subjects_b=subjects_b,
                                  far_targets=far_targets, resamples=30, seed=seed, keep_replicates=True)
    assert result["subjects"] == np.unique(np.r_[subjects_a, subjects_b]).size == 7
    expected = brute_force_replicates(scores, same, subjects_a, subjects_b, 30, seed, far_targets)
    np.testing.assert_allclose(replicate_matrix(result, far_targets), expected, rtol=0, atol=1e-12)


def test_int64_and_uint64_ids_above_2_to_the_53_stay_apart():
    """numpy promotes int64 with uint64 to float64, where ids 2**60 + k round together: the six subjects
    merged into one, with a zero-width interval."""
    subjects_a, subjects_b, same = all_pairs([4, 4, 4, 4, 4, 1])
    scores = np.round(np.random.default_rng(5).normal(same * 1.0, 1.0), 1)
    mixed = {"subjects_a": (subjects_a + 2**60).astype(np.int64),
             "subjects_b": subjects_b.astype(np.uint64) + np.uint64(2**60)}
    got = verification_metrics(scores, same, **mixed, resamples=40, keep_replicates=True)
    expected = verification_metrics(scores, same, subjects_a=subjects_a, subjects_b=subjects_b, resamples=40,
                                    keep_replicates=True)
    assert got["subjects"] == 6 and got["auc_ci"] == expected["auc_ci"]
    np.testing.assert_array_equal(got["replicates"]["auc"], expected["replicates"]["auc"])


def test_unit_multiplicities_give_the_point_estimate():
    # 3 subjects: a resample that draws each once weighs every pair 1; one that draws a single
    # subject has no impostor pair and measures nothing.
    subjects_a, subjects_b, same = all_pairs([5, 4, 6])
    scores = np.round(np.random.default_rng(3).normal(same, 1.0), 1)
    result = verification_metrics(scores, same, subjects_a=subjects_a, subjects_b=subjects_b, far_targets=(0.05,),
                                  resamples=60, seed=2, keep_replicates=True)
    curve = roc_curve(scores, same)
    point = [roc_auc(curve), equal_error_rate(curve), tar_at_far(curve, 0.05)]
    assert [result["auc"], result["eer"], result["tar_at_far"]["5e-2"]] == point
    _, counts = drawn_counts(subjects_a, subjects_b, 60, 2)
    replicates = replicate_matrix(result, (0.05,))
    unit, single = (counts == 1).all(axis=1), (counts > 0).sum(axis=1) == 1
    assert unit.any() and single.any()
    assert (replicates[unit] == point).all()
    assert np.isnan(replicates[single]).all() and result["auc_ci"] is None


def test_a_resample_without_genuine_weight_measures_nothing():
    # 40 subjects, of which only 2 have 2 or more images (the only genuine pairs): a resample that draws
    # neither (about 1 in 8) has impostor weight but no genuine weight, and measures nothing, so the split
    # loses its intervals however many subjects it has.
    subjects_a, subjects_b, same = all_pairs([3, 3] + [1] * 38)
    scores = np.round(np.random.default_rng(4).normal(same, 1.0), 1)
    result = verification_metrics(scores, same, subjects_a=subjects_a, subjects_b=subjects_b, far_targets=(0.05,),
                                  resamples=40, seed=1, keep_replicates=True)
    _, counts = drawn_counts(subjects_a, subjects_b, 40, 1)
    without_genuine = counts[:, :2].sum(axis=1) == 0
    assert 0 < without_genuine.sum() < 40 and (counts[without_genuine] > 0).sum(axis=1).min() >= 2
    replicates = replicate_matrix(result, (0.05,))
    assert np.isnan(replicates[without_genuine]).all() and not np.isnan(replicates[~without_genuine]).any()
    expected = brute_force_replicates(scores, same, subjects_a, subjects_b, 40, 1, (0.05,))
    np.testing.assert_allclose(replicates, expected, rtol=0, atol=1e-12)  # NaN where NaN
    assert result["auc_ci"] is None and result["eer_ci"] is None and result["tar_at_far_ci"]["5e-2"] is None


def pair_bootstrap_interval(scores, same, resamples, seed):
    """AUC interval of the former bootstrap: genuine and impostor pairs resampled independently."""
    rng = np.random.default_rng(seed)
    genuine, impostor = scores[same == 1], scores[same == 0]
    aucs = []
    for _ in range(resamples):
        g, i = rng.choice(genuine, genuine.size), rng.choice(impostor, impostor.size)
        aucs.append(roc_auc(roc_curve(np.r_[g, i], np.r_[np.ones(g.size), np.zeros(i.size)])))
    return bootstrap_interval(np.array(aucs))


def test_correlated_pairs_widen_the_interval():
    # Every pair of a subject scores alike: 40 subjects' 28 genuine pairs all score 1 + d_s, their
    # impostor pairs (d_a + d_b) / 2 plus a little noise. The information is in 40 subjects, not in
    # 1120 genuine pairs, and the subject bootstrap's interval says so.
    subjects_a, subjects_b, same = all_pairs([8] * 40)
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0.0, 1.0, 40)
    scores = np.where(same == 1, 1.0 + difficulty[subjects_a],
                      (difficulty[subjects_a] + difficulty[subjects_b]) / 2 + rng.normal(0, 0.1, same.size))
    result = verification_metrics(scores, same, subjects_a=subjects_a, subjects_b=subjects_b, far_targets=(0.01,),
                                  resamples=200, seed=5)
    expected = brute_force_replicates(scores, same, subjects_a, subjects_b, 200, 5, (0.01,))
    np.testing.assert_allclose(result["auc_ci"], bootstrap_interval(expected[:, 0]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(result["eer_ci"], bootstrap_interval(expected[:, 1]), rtol=0, atol=1e-12)
    pair_low, pair_high = pair_bootstrap_interval(scores, same, 200, 5)
    low, high = result["auc_ci"]
    assert low <= result["auc"] <= high
    assert high - low > 2 * (pair_high - pair_low)


def ranked_probes(ranks_per_subject, gallery_size=8):
    """similarity (P, gallery_size), probe labels (P,), gallery labels: probe p of subject s (label
    10 * s, not in order) ranks ranks_per_subject[s][p], below rank - 1 impostor gallery entries."""
    gallery = 10 * np.arange(gallery_size)
    rows, probe_labels = [], []
    for subject, ranks in enumerate(ranks_per_subject):
        for rank in ranks:
            row = np.full(gallery_size, 0.1)
            row[subject] = 0.5
            row[[s for s in range(gallery_size) if s != subject][:rank - 1]] = 0.9
            rows.append(row)
            probe_labels.append(10 * subject)
    order = np.random.default_rng(0).permutation(len(rows))
    return np.array(rows)[order], np.array(probe_labels)[order], gallery


def materialized_rank_replicates(hits_per_subject, resamples, seed):
    """(resamples,) rank-k of the probe list of the drawn subjects (the documented draw over the
    sorted probe labels), each drawn subject's probes copied once per draw; hits_per_subject[s]
    says which probes of subject s (in sorted label order) have rank <= k."""
    drawn = np.random.default_rng(seed).integers(0, len(hits_per_subject), (resamples, len(hits_per_subject)))
    return np.array([np.mean(np.concatenate([hits_per_subject[s] for s in row])) for row in drawn])


def nearest_gallery_hits(x, labels, gallery, probes):
    """(P,) whether each probe's most similar gallery image (cosine) shows its subject: rank-1 by
    the plain nearest-neighbour rule; x (N, D), labels (N,), gallery (G,) and probes (P,) indices."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    nearest = (unit[probes] @ unit[gallery].T).argmax(axis=1)
    return labels[gallery][nearest] == labels[probes]


@pytest.mark.parametrize("seed", [0, 3])
def test_identification_replicates_equal_materialized_probe_lists(seed):
    ranks_per_subject = [[1, 1, 2], [3], [1, 6, 1, 1], [2, 2], [1, 5, 7, 1, 1]]
    similarity, probe_labels, gallery = ranked_probes(ranks_per_subject)
    result = identification_metrics(similarity, probe_labels, gallery, resamples=30, seed=seed, keep_replicates=True)
    for name, k in (("rank1", 1), ("rank5", 5)):
        expected = materialized_rank_replicates([np.array(r) <= k for r in ranks_per_subject], 30, seed)
        np.testing.assert_allclose(result["replicates"][name], expected, rtol=0, atol=1e-12)
        np.testing.assert_allclose(result[f"{name}_ci"], bootstrap_interval(expected), rtol=0, atol=1e-12)


def test_correlated_probes_widen_the_identification_interval():
    # 8 subjects of 25 probes each, all of a subject's probes alike (half the subjects always
    # found at rank 1, half never): 8 subjects' worth of information, not 200 probes'. A probe
    # bootstrap gives about +-0.07 around 0.5; the subject bootstrap about +-0.35.
    ranks_per_subject = [[1] * 25 if s % 2 else [2] * 25 for s in range(8)]
    similarity, probe_labels, gallery = ranked_probes(ranks_per_subject)
    result = identification_metrics(similarity, probe_labels, gallery, resamples=400, seed=1)
    draws = np.random.default_rng(1).integers(0, 200, (400, 200))
    ranks = np.concatenate(ranks_per_subject)
    probe_low, probe_high = bootstrap_interval((ranks[draws] <= 1).mean(axis=1))
    low, high = result["rank1_ci"]
    assert result["rank1"] == 0.5 and low <= 0.5 <= high
    assert high - low > 3 * (probe_high - probe_low)


def test_one_probe_subject_has_no_identification_interval():
    # Resampling one subject repeats it: the spread of its probes says nothing about other subjects.
    similarity, probe_labels, gallery = ranked_probes([[1, 2, 1, 3, 1, 1, 2, 1]])
    result = identification_metrics(similarity, probe_labels, gallery, resamples=50, keep_replicates=True)
    assert result["rank1"] == 5 / 8 and result["rank1_ci"] is None and result["rank5_ci"] is None
    assert np.isnan(result["replicates"]["rank1"]).all()
    # Two subjects already vary between resamples, and get their interval.
    similarity, probe_labels, gallery = ranked_probes([[1, 2, 1, 3], [1, 1, 1, 1]])
    result = identification_metrics(similarity, probe_labels, gallery, resamples=50)
    low, high = result["rank1_ci"]
    assert result["rank1"] == 6 / 8 and low == 0.5 and high == 1.0


@pytest.mark.parametrize("arguments, error, message", [
    ({"subjects_a": np.zeros(3, dtype=np.int64)}, ValueError, r"subjects_a must have shape \(pairs,\) = \(4,\)"),
    ({"subjects_b": np.zeros((2, 2), dtype=np.int64)}, ValueError, r"subjects_b must have shape .* got \(2, 2\)"),
    ({"subjects_a": np.array([0.0, 0.0, 1.0, 1.0])}, TypeError, "subjects_a must be an integer array .* float64"),
    ({"subjects_b": None}, TypeError, "subjects_b must be an integer array .* object"),
    ({"subjects_b": ["a", "a", "b", "b"]}, TypeError, "subjects_b must be an integer array"),
    ({"subjects_b": np.array([0, 1, 1, 0])}, ValueError, "pair 1 has same=1 with subjects 0 and 1"),
    ({"subjects_b": np.array([0, 0, 1, 1])}, ValueError, "subjects_a and subjects_b must be equal for genuine pairs "
                                                         "and differ for impostor pairs; pair 2 has same=0"),
])
def test_bad_subjects_are_named(arguments, error, message):
    subjects = {"subjects_a": np.array([0, 0, 1, 0]), "subjects_b": np.array([0, 0, 0, 1])} | arguments
    with pytest.raises(error, match=message):
        verification_metrics(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0]), **subjects, resamples=5)


def embeddings_and_records(seed, subjects=20, images=4):
    """Embeddings whose subjects differ in quality (a noisier subject is harder), and their records."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(subjects), images)
    centers, noise = rng.normal(size=(subjects, 16)), rng.uniform(0.5, 2.0, subjects)
    x = centers[labels] + noise[labels, None] * rng.normal(size=(labels.size, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    paths = [f"s{label:02d}/{i}.png" for label, i in zip(labels, np.tile(np.arange(images), subjects))]
    records = [ManifestRecord(path, f"s{label:02d}", "test") for path, label in zip(paths, labels)]
    return x, labels, paths, records


def test_methods_are_compared_on_the_same_resamples():
    x, labels, paths, records = embeddings_and_records(0)
    other = embeddings_and_records(1)[0]
    config = EvaluationConfig(bootstrap_resamples=50)
    same_method = split_figures(SplitEmbeddings(paths, labels, [""] * len(paths), x, x), records, "test",
                                config).figures
    difference = same_method["tgfr"]["vs_image_only"]
    # Identical scores on identical resamples: every replicate's difference is 0 (resamples drawn
    # independently per method would give an interval around 0 instead).
    assert difference["rank1"] == 0 and difference["rank1_ci"] == [0.0, 0.0]
    assert difference["tar_at_far"][MAIN_FAR] == 0 and difference["tar_at_far_ci"][MAIN_FAR] == [0.0, 0.0]

    embeddings = SplitEmbeddings(paths, labels, [""] * len(paths), x, other)
    figures = split_figures(embeddings, records, "test", config).figures
    far = (float(MAIN_FAR),)
    tars = {}
    for method in ("image_only", "tgfr"):
        scores, same, subjects_a, subjects_b = verification_scores(embeddings, method, records, "test", config)
        tars[method] = brute_force_replicates(scores, same, subjects_a, subjects_b, 50, 0, far)[:, 2]
    difference = figures["tgfr"]["vs_image_only"]
    assert difference["tar_at_far"][MAIN_FAR] == pytest.approx(
        figures["tgfr"]["tar_at_far"][MAIN_FAR] - figures["image_only"]["tar_at_far"][MAIN_FAR])
    np.testing.assert_allclose(difference["tar_at_far_ci"][MAIN_FAR],
                               bootstrap_interval(tars["tgfr"] - tars["image_only"]), rtol=0, atol=1e-12)
    assert difference["rank1"] == pytest.approx(figures["tgfr"]["rank1"] - figures["image_only"]["rank1"])
    # rank-1 on the same subject resamples: the gallery is each subject's first image (in tgfr.data.protocol's
    # order), and each resample's rank-1 comes from the probe list of its drawn subjects.
    gallery = np.flatnonzero([path.endswith("/0.png") for path in paths])
    probes = np.setdiff1d(np.arange(len(paths)), gallery)
    rank1 = {}
    for method in ("image_only", "tgfr"):
        hits = nearest_gallery_hits(embeddings.method(method), labels, gallery, probes)
        hits_per_subject = [hits[labels[probes] == subject] for subject in np.unique(labels[probes])]
        rank1[method] = materialized_rank_replicates(hits_per_subject, 50, 0)
    np.testing.assert_allclose(difference["rank1_ci"], bootstrap_interval(rank1["tgfr"] - rank1["image_only"]),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("components", [slice(None), 3], ids=["whole_rows", "one_component"])
@pytest.mark.parametrize("method", ["image_only", "tgfr"])
def test_non_finite_embeddings_name_split_and_method(method, components):
    """An embedding with one NaN component is as broken as one of NaNs only: both are named here, not by
    the metrics' bare "scores must be finite"."""
    x, labels, paths, records = embeddings_and_records(0)
    broken = x.copy()
    broken[[6, 9], components] = np.nan  # two images of subject s01
    embeddings = SplitEmbeddings(paths, labels, [""] * len(paths), *((broken, x) if method == "image_only"
                                                                       else (x, broken)))
    with pytest.raises(ValueError, match=f"the {method} embeddings of split 'test' are not finite \\(NaN or Inf\\) "
                                         f"for 2 of {len(paths)} images, e.g. {paths[6]}"):
        split_figures(embeddings, records, "test", EvaluationConfig(bootstrap_resamples=5))


@pytest.mark.parametrize("protocol", ["all_pairs", "pairs"])
def test_a_split_of_one_subject_is_named_by_both_protocols(protocol):
    """One subject has no impostor pair: both protocols name the split and the subject count."""
    x, labels, paths, records = embeddings_and_records(0, subjects=1, images=5)
    embeddings = SplitEmbeddings(paths, labels, [""] * len(paths), x, x)
    config = EvaluationConfig(protocol=protocol, bootstrap_resamples=5)
    with pytest.raises(ValueError, match="^verification needs at least 2 subjects in split 'test', got 1$"):
        split_figures(embeddings, records, "test", config)


@pytest.mark.parametrize("protocol", ["all_pairs", "pairs"])
@pytest.mark.parametrize("method", ["image_only", "tgfr"])
@pytest.mark.parametrize("block", [None, 1, 31, 100])
def test_verification_scores_are_the_cosines_of_the_protocols_pairs(protocol, method, block, monkeypatch):
    """all_pairs: every unordered pair of two distinct images, n (n - 1) / 2 of them, in row-major
    order (scored a block of rows at a time: all 15 rows, 1, 2 or 6 per block, the last block
    partial); pairs: TGFR's list. Each pair scores the cosine of its two images' embeddings."""
    if block is not None:
        monkeypatch.setattr(protocols, "SIMILARITIES_PER_BLOCK", block)
    x, labels, paths, records = embeddings_and_records(0, subjects=5, images=3)
    other = embeddings_and_records(1, subjects=5, images=3)[0]
    embeddings = SplitEmbeddings(paths, labels, [""] * len(paths), x, other)
    config = EvaluationConfig(protocol=protocol, impostor_subjects=2)
    if protocol == "all_pairs":
        listed = [(i, j) for i in range(len(paths)) for j in range(i + 1, len(paths))]
    else:
        listed = [(paths.index(p.path_a), paths.index(p.path_b)) for p in make_verification_pairs(records, "test", 2)]
    assert all(i != j for i, j in listed)
    vectors = embeddings.method(method)
    cosines = [vectors[i] @ vectors[j] / (np.linalg.norm(vectors[i]) * np.linalg.norm(vectors[j])) for i, j in listed]
    scores, same, subjects_a, subjects_b = verification_scores(embeddings, method, records, "test", config)
    if protocol == "all_pairs":
        assert scores.size == len(paths) * (len(paths) - 1) // 2
    np.testing.assert_allclose(scores, cosines, rtol=0, atol=1e-12)
    assert subjects_a.tolist() == [labels[i] for i, _ in listed]
    assert subjects_b.tolist() == [labels[j] for _, j in listed]
    assert same.tolist() == [labels[i] == labels[j] for i, j in listed]
    assert same.tolist() == [int(labels[i] == labels[j]) for i, j in listed]
    assert 0 < same.sum() < same.size and (scores < 1 - 1e-9).all()  # no image is paired with itself


def test_paired_difference_is_method_minus_baseline():
    """The point differences and the (2.5, 97.5) percentiles of the replicates' differences, here
    np.linspace(0.1, 0.3, 41) (rank-1) and its negation (TAR), whose percentiles are exact."""
    steps = np.linspace(0.0, 1.0, 41)
    order = np.random.default_rng(0).permutation(41)  # the replicates' order says nothing
    baseline = {"rank1": 0.5, "tar_at_far": {MAIN_FAR: 0.6}}
    method = {"rank1": 0.7, "tar_at_far": {MAIN_FAR: 0.4}}
    baseline_replicates = {"rank1": (0.3 + 0.2 * steps)[order], "tar_at_far": {MAIN_FAR: (0.5 + 0.1 * steps)[order]}}
    method_replicates = {"rank1": (0.4 + 0.4 * steps)[order], "tar_at_far": {MAIN_FAR: (0.4 - 0.1 * steps)[order]}}
    difference = paired_difference(baseline, method, baseline_replicates, method_replicates)
    assert difference["rank1"] == pytest.approx(0.2)
    assert difference["tar_at_far"][MAIN_FAR] == pytest.approx(-0.2)
    # rank-1 differences 0.1 + 0.2 * steps: percentiles 0.1 + 0.2 * (0.025, 0.975); TAR: -0.1 - 0.2 * steps.
    assert difference["rank1_ci"] == pytest.approx([0.105, 0.295])
    assert difference["tar_at_far_ci"][MAIN_FAR] == pytest.approx([-0.295, -0.105])
    unresolved = paired_difference({**baseline, "tar_at_far": {MAIN_FAR: None}}, method, baseline_replicates,
                                   method_replicates)
    assert unresolved["tar_at_far"][MAIN_FAR] is None and unresolved["rank1"] == pytest.approx(0.2)


def test_a_degraded_copy_is_compared_with_its_clean_split_on_the_same_resamples():
    """degradation_difference: degraded minus clean of each method, its interval the one of the replicates'
    differences when each replicate draws the same subjects from both splits; None for splits of other subjects."""
    x, labels, paths, records = embeddings_and_records(0)
    noisy = x + 0.8 * np.random.default_rng(5).normal(size=x.shape)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    degraded_paths = [f"degraded/{path}" for path in paths]
    records += [ManifestRecord(path, record.identity, "test_degraded") for path, record in zip(degraded_paths, records)]
    config = EvaluationConfig(bootstrap_resamples=50)
    splits = {"test": SplitEmbeddings(paths, labels, [""] * len(paths), x, x),
              "test_degraded": SplitEmbeddings(degraded_paths, labels, [""] * len(paths), noisy, noisy)}
    scored = {split: split_figures(embeddings, records, split, config) for split, embeddings in splits.items()}
    difference = degradation_difference(scored["test"], scored["test_degraded"])
    assert set(difference) == {"image_only", "tgfr"}
    far = (float(MAIN_FAR),)
    tars = {}
    for split, embeddings in splits.items():
        scores, same, subjects_a, subjects_b = verification_scores(embeddings, "image_only", records, split, config)
        tars[split] = brute_force_replicates(scores, same, subjects_a, subjects_b, 50, 0, far)[:, 2]
    figures = {split: scored[split].figures["image_only"] for split in splits}
    change = difference["image_only"]
    assert change["tar_at_far"][MAIN_FAR] == pytest.approx(
        figures["test_degraded"]["tar_at_far"][MAIN_FAR] - figures["test"]["tar_at_far"][MAIN_FAR])
    np.testing.assert_allclose(change["tar_at_far_ci"][MAIN_FAR],
                               bootstrap_interval(tars["test_degraded"] - tars["test"]), rtol=0, atol=1e-12)
    assert change["rank1"] == pytest.approx(figures["test_degraded"]["rank1"] - figures["test"]["rank1"])
    assert change["rank1"] < 0 and change["rank1_ci"][0] < change["rank1"] < change["rank1_ci"][1]

    # One subject fewer in the copy: its resamples draw other subjects, and nothing is paired.
    kept = labels != labels[-1]
    fewer = SplitEmbeddings([p for p, k in zip(degraded_paths, kept) if k], labels[kept], [""] * int(kept.sum()),
                            noisy[kept], noisy[kept])
    fewer_records = [record for record in records if record.split == "test" or record.path in fewer.paths]
    assert degradation_difference(scored["test"], split_figures(fewer, fewer_records, "test_degraded", config)) is None
    # Every subject kept, but one with its gallery image only (as `tgfr data degrade --skip-bad` can leave): the
    # identification bootstrap draws from other probe subjects.
    kept = labels != labels[-1]
    kept[np.flatnonzero(~kept)[0]] = True  # its first image, the gallery's
    fewer = SplitEmbeddings([p for p, k in zip(degraded_paths, kept) if k], labels[kept], [""] * int(kept.sum()),
                            noisy[kept], noisy[kept])
    fewer_records = [record for record in records if record.split == "test" or record.path in fewer.paths]
    partial = split_figures(fewer, fewer_records, "test_degraded", config)
    assert partial.resampled[0] == scored["test"].resampled[0] != partial.resampled[1]
    assert degradation_difference(scored["test"], partial) is None
