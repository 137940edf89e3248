"""WRCL, CICL, intra-modal and CoReFace losses against the published formulas, written here."""

import copy
import math

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F

from tgfr.losses import (CaptionImageContrastiveLoss, CoReFaceLoss, DualGranularityAssociationLoss,
                         IntraModalContrastiveLoss, WordRegionContrastiveLoss)

TOL = dict(rtol=1e-5, atol=1e-5)


def damsm_words_loss(words, lengths, regions, labels, gamma1=4.0, gamma2=5.0, gamma3=10.0, class_masking=True,
                     word_softmax=True):
    """AttnGAN's words_loss: a loop over captions, each attending over every image's regions; class_masking=False
    keeps the other pairs of one identity as ordinary negatives (SPEC section 3's "none"); word_softmax=False
    skips the softmax over the caption's words (SPEC section 2)."""
    batch = words.shape[0]
    rows = []
    for i in range(batch):
        word = words[i, : lengths[i]]  # (t, D)
        context_scores = []
        for j in range(batch):
            attn = word @ regions[j].T  # (t, R)
            if word_softmax:
                attn = attn.softmax(dim=0)  # over the caption's words
            attn = (gamma1 * attn).softmax(dim=1)  # over regions
            context = attn @ regions[j]  # (t, D)
            cos = F.cosine_similarity(word, context, dim=1, eps=1e-8)
            context_scores.append(torch.log(torch.exp(gamma2 * cos).sum()))
        rows.append(torch.stack(context_scores))
    similarities = gamma3 * torch.stack(rows)  # (captions, images)
    if class_masking:
        masks = labels[:, None] == labels[None, :]
        masks.fill_diagonal_(False)
        similarities = similarities.masked_fill(masks, float("-inf"))
    target = torch.arange(batch)
    return F.cross_entropy(similarities, target) + F.cross_entropy(similarities.T, target)


def released_contraface(feature1, feature2, label, state):
    """The released CoReFace ContraFace.forward, rewritten with the same steps; state['m'] is its self.m."""
    feature1, feature2 = F.normalize(feature1, dim=1), F.normalize(feature2, dim=1)
    target = torch.arange(feature1.shape[0])
    cos_theta = (feature1 @ feature2.T).clamp(-1, 1)
    same = (label[:, None] == label[None, :]) & ~torch.eye(len(label), dtype=torch.bool)
    cos_theta = cos_theta.masked_fill(same, 0.0)
    clone = cos_theta.clone().detach()
    positive = clone[target, target].clone()
    clone[target, target] = 0
    hardest = clone.sort(1, True)[0][:, 0]
    state["m"] = 0.99 * (positive - hardest).mean().item() + 0.01 * state["m"]
    logits = 64.0 * (cos_theta - state["m"] * torch.eye(len(label), dtype=cos_theta.dtype))
    return F.cross_entropy(logits, target)


def test_wrcl_equals_damsm_words_loss():
    generator = torch.Generator().manual_seed(0)
    words = torch.randn(6, 5, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    regions = torch.randn(6, 9, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 3, 1, 4, 5, 2])
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    for backend in ("cpu", "reference"):
        got = WordRegionContrastiveLoss(backend=backend)(words, lengths, regions, labels)
        expected = damsm_words_loss(words, lengths, regions, labels)
        torch.testing.assert_close(got, expected, **TOL)
        for g, e in zip(torch.autograd.grad(got, (words, regions)), torch.autograd.grad(expected, (words, regions))):
            torch.testing.assert_close(g, e, **TOL)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_wrcl_same_identity_none_keeps_other_pairs_of_an_identity_as_negatives(backend):
    """SPEC section 3: with same_identity="none" the labels change nothing; only "exclude" (the default, checked
    above) drops the other pairs of one identity from the softmax."""
    generator = torch.Generator().manual_seed(3)
    words = torch.randn(6, 5, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    regions = torch.randn(6, 9, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 3, 1, 4, 5, 2])
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    got = WordRegionContrastiveLoss(same_identity="none", backend=backend)(words, lengths, regions, labels)
    expected = damsm_words_loss(words, lengths, regions, labels, class_masking=False)
    torch.testing.assert_close(got, expected, **TOL)
    for g, e in zip(torch.autograd.grad(got, (words, regions)), torch.autograd.grad(expected, (words, regions))):
        torch.testing.assert_close(g, e, **TOL)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_wrcl_without_the_word_softmax_equals_damsm_words_loss_without_it(backend):
    """word_softmax=False changes the loss (the flag was only checked as a bool: forced on, no test failed)."""
    generator = torch.Generator().manual_seed(5)
    words = torch.randn(6, 5, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    regions = torch.randn(6, 9, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 3, 1, 4, 5, 2])
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    got = WordRegionContrastiveLoss(word_softmax=False, backend=backend)(words, lengths, regions, labels)
    expected = damsm_words_loss(words, lengths, regions, labels, word_softmax=False)
    assert not torch.isclose(expected, damsm_words_loss(words, lengths, regions, labels), **TOL)
    torch.testing.assert_close(got, expected, **TOL)
    for g, e in zip(torch.autograd.grad(got, (words, regions)), torch.autograd.grad(expected, (words, regions))):
        torch.testing.assert_close(g, e, **TOL)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_wrcl_under_vmap_with_lengths_batched_with_the_words(backend):
    """vmap over batches of captions, each with its own lengths and labels: the lengths check read the values
    with int(), which vmap refuses ("calling .item() on a Tensor"). Losses and gradients are those of a loop."""
    generator = torch.Generator().manual_seed(9)
    words = torch.randn(3, 4, 5, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    regions = torch.randn(3, 4, 7, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([[5, 3, 1, 4], [2, 5, 5, 1], [4, 4, 2, 3]])
    labels = torch.tensor([[0, 1, 0, 2], [0, 1, 2, 3], [1, 1, 0, 0]])
    loss = WordRegionContrastiveLoss(backend=backend)
    batched = torch.func.vmap(loss)(words, lengths, regions, labels)
    looped = torch.stack([loss(*item) for item in zip(words, lengths, regions, labels)])
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)
    for g, e in zip(torch.autograd.grad(batched.sum(), (words, regions)),
                    torch.autograd.grad(looped.sum(), (words, regions))):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_cicl_equals_clip_loss_summed():
    generator = torch.Generator().manual_seed(1)
    sentence = torch.randn(50, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    image = torch.randn(50, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    logits = 10.0 * F.normalize(sentence, dim=1) @ F.normalize(image, dim=1).T
    target = torch.arange(50)
    expected = F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)
    got = CaptionImageContrastiveLoss()(sentence, image)
    torch.testing.assert_close(got, expected, **TOL)
    for g, e in zip(torch.autograd.grad(got, (sentence, image)), torch.autograd.grad(expected, (sentence, image))):
        torch.testing.assert_close(g, e, **TOL)


def test_cicl_with_labels_excludes_other_pairs_of_an_identity_by_default():
    """SPEC section 3's "exclude" mode, CICL's default: an off-diagonal pair of one identity gets logit -inf in both
    directions; with same_identity="none" it stays an ordinary negative."""
    generator = torch.Generator().manual_seed(4)
    sentence = torch.randn(40, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    image = torch.randn(40, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 8, (40,), generator=generator)
    target = torch.arange(40)
    other_pair_of_identity = (labels[:, None] == labels[None, :]) & ~torch.eye(40, dtype=torch.bool)
    for loss, masked in ((CaptionImageContrastiveLoss(), other_pair_of_identity),
                         (CaptionImageContrastiveLoss(same_identity="none"), torch.zeros_like(other_pair_of_identity))):
        logits = 10.0 * F.normalize(sentence, dim=1) @ F.normalize(image, dim=1).T
        scores = logits.masked_fill(masked, float("-inf"))
        expected = F.cross_entropy(scores, target) + F.cross_entropy(scores.T, target)
        got = loss(sentence, image, labels)
        torch.testing.assert_close(got, expected, **TOL)
        for g, e in zip(torch.autograd.grad(got, (sentence, image)),
                        torch.autograd.grad(expected, (sentence, image))):
            torch.testing.assert_close(g, e, **TOL)


@pytest.mark.parametrize("settings, scale", [({"scale": 5.0}, 5.0), ({}, 10.0)], ids=["scale-5", "default-scale"])
def test_intra_modal_is_supervised_contrastive_both_ways(settings, scale):
    generator = torch.Generator().manual_seed(2)
    view1 = torch.randn(30, 8, generator=generator, dtype=torch.float64)
    view2 = torch.randn(30, 8, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 6, (30,), generator=generator)
    positives = (labels[:, None] == labels[None, :]).double()
    logits = scale * F.normalize(view1, dim=1) @ F.normalize(view2, dim=1).T

    def supcon(scores):
        return (-(scores.log_softmax(1) * positives).sum(1) / positives.sum(1)).mean()

    got = IntraModalContrastiveLoss(**settings)(view1, view2, labels)
    torch.testing.assert_close(got, supcon(logits) + supcon(logits.T), **TOL)


def test_coreface_equals_released_loss_over_several_batches():
    generator = torch.Generator().manual_seed(3)
    loss, state = CoReFaceLoss(), {"m": 0.0}
    for step in range(4):
        view1 = torch.randn(40, 16, generator=generator, dtype=torch.float64, requires_grad=True)
        view2 = (view1.detach() + 0.3 * torch.randn(40, 16, generator=generator, dtype=torch.float64)).requires_grad_()
        labels = torch.randint(0, 12, (40,), generator=generator)
        got = loss(view1, view2, labels)
        expected = released_contraface(view1, view2, labels, state)
        torch.testing.assert_close(got, expected, **TOL)
        assert loss.margin.item() == pytest.approx(state["m"], abs=1e-12)
        # A margin updated under autograd would chain each step's graph to the last through the buffer.
        assert not loss.margin.requires_grad and loss.margin.grad_fn is None
        for g, e in zip(torch.autograd.grad(got, (view1, view2)), torch.autograd.grad(expected, (view1, view2))):
            torch.testing.assert_close(g, e, **TOL)
    assert state["m"] > 0.1  # the margin really moved, so the comparison covered it


def spec_coreface(view1, view2, labels, margin, scale=64.0, momentum=0.99):
    """SPEC section 3 in float64: C = clamp(cos, -1, 1), same-identity off-diagonals 0, m_batch = mean_i(C_ii -
    max_{j != i} C_ij), m <- momentum * m_batch + (1 - momentum) * m, CE of s * (C - m I) rows to the diagonal."""
    z1, z2 = F.normalize(view1.double(), dim=1), F.normalize(view2.double(), dim=1)
    n = len(labels)
    eye = torch.eye(n, dtype=torch.bool)
    cosine = (z1 @ z2.T).clamp(-1, 1)
    cosine = cosine.masked_fill((labels[:, None] == labels[None, :]) & ~eye, 0.0)
    hardest = cosine.detach().masked_fill(eye, float("-inf")).amax(1)
    margin = momentum * (cosine.detach().diagonal() - hardest).mean().item() + (1 - momentum) * margin
    return F.cross_entropy(scale * (cosine - margin * eye.double()), torch.arange(n)), margin


def test_coreface_zeroes_same_identity_cosines_where_that_changes_the_loss():
    """At scale 2 with repeated identities whose views point apart, a zeroed same-identity cosine (SPEC) and
    one left out or kept give clearly different losses and margins: the spec's is the one computed."""
    generator = torch.Generator().manual_seed(9)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    view1 = torch.randn(8, 6, generator=generator, dtype=torch.float64)
    view2 = torch.where((labels % 2 == 0)[:, None], -view1, view1) + 0.5 * torch.randn(8, 6, generator=generator,
                                                                                     dtype=torch.float64)
    expected, margin = spec_coreface(view1, view2, labels, 0.0, scale=2.0)
    kept, _ = spec_coreface(view1, view2, torch.arange(8), 0.0, scale=2.0)  # no same-identity pair zeroed
    assert abs(expected.item() - kept.item()) > 1e-3
    loss = CoReFaceLoss(scale=2.0)
    torch.testing.assert_close(loss(view1, view2, labels), expected, rtol=1e-10, atol=1e-10)
    assert loss.margin.item() == pytest.approx(margin, abs=1e-12)


def test_coreface_margin_follows_the_spec_when_every_negative_is_below_zero():
    """Views whose off-diagonal cosines are all negative (a regular simplex, slightly perturbed): the SPEC's
    hardest negative is below 0 there, where the release's zeroed diagonal would give 0."""
    generator = torch.Generator().manual_seed(4)
    simplex = torch.eye(6, dtype=torch.float64) - 1 / 6
    view1 = (simplex + 0.01 * torch.randn(6, 6, generator=generator, dtype=torch.float64)).requires_grad_()
    view2 = (simplex + 0.01 * torch.randn(6, 6, generator=generator, dtype=torch.float64)).requires_grad_()
    labels = torch.arange(6)
    off_diagonal = (F.normalize(view1, dim=1) @ F.normalize(view2, dim=1).T)[~torch.eye(6, dtype=torch.bool)]
    assert off_diagonal.max() < -0.1
    loss, margin = CoReFaceLoss(), 0.0
    for _ in range(2):
        got = loss(view1, view2, labels)
        expected, margin = spec_coreface(view1, view2, labels, margin)
        assert loss.margin.item() == pytest.approx(margin, abs=1e-12)
        torch.testing.assert_close(got, expected, **TOL)
        for g, e in zip(torch.autograd.grad(got, (view1, view2)), torch.autograd.grad(expected, (view1, view2))):
            torch.testing.assert_close(g, e, **TOL)
    assert margin > 1.1  # C_ii - max_j C_ij with C_ii ~ 1 and negatives ~ -0.2; the release's would be ~ 1


def test_coreface_batch_of_one_has_no_margin_to_measure_and_leaves_the_running_one():
    """A row without a negative (a batch of one, say a DataLoader's last) gives no batch margin: counted as
    -1 it moved the running margin from 0 to 1.98, a logit more for the next batch at scale 64. The batch of one
    comes after a batch that moved the margin off 0, where counting it as a batch margin of 0 would move it too."""
    generator = torch.Generator().manual_seed(5)
    single = [torch.randn(1, 6, generator=generator, dtype=torch.float64) for _ in range(2)]
    batch = [torch.randn(8, 6, generator=generator, dtype=torch.float64) for _ in range(2)]
    labels = torch.randint(0, 3, (8,), generator=generator)
    loss = CoReFaceLoss()
    expected, expected_margin = spec_coreface(*batch, labels, 0.0)
    torch.testing.assert_close(loss(*batch, labels), expected, **TOL)
    margin = loss.margin.item()
    assert margin == pytest.approx(expected_margin, abs=1e-12) and abs(margin) > 0.1
    assert loss(*single, torch.zeros(1, dtype=torch.int64)).item() == 0.0  # the positive is the only logit
    assert loss.margin.item() == margin


def test_coreface_names_mismatched_views():
    view, labels = torch.randn(4, 8), torch.arange(4)
    with pytest.raises(ValueError, match=r"view2 must have size 4 \(one row per row of view1\)"):
        CoReFaceLoss()(view, view[:1], labels)  # would broadcast against view1's rows
    with pytest.raises(ValueError, match=r"view2 must have size 8 \(the embedding size of view1\)"):
        CoReFaceLoss()(view, view[:, :6], labels)
    with pytest.raises(ValueError, match="view1 must not be empty"):
        CoReFaceLoss()(view[:0], view[:0], labels[:0])
    with pytest.raises(ValueError, match="view2 must have 2 dimensions"):
        CoReFaceLoss()(view, view[0], labels)
    with pytest.raises(TypeError, match=r"view2 must have the dtype of view1 \(torch.float32\)"):
        CoReFaceLoss()(view, view.double(), labels)
    with pytest.raises(TypeError, match="view1 must have dtype in"):
        CoReFaceLoss()(view.long(), view.long(), labels)
    with pytest.raises(ValueError, match="view1 must not be empty along dimension 1"):
        CoReFaceLoss()(view[:, :0], view[:, :0], labels)
    with pytest.raises(ValueError, match="labels must be given"):
        CoReFaceLoss()(view, view, None)


def test_coreface_refuses_a_scale_past_float32_before_moving_its_margin():
    """A float32 scale past float32's range: the fused op refused it only after the training call had moved
    the running margin, so every failed call still changed the state. float64 views may take it."""
    views = torch.randn(4, 8), torch.randn(4, 8)
    loss = CoReFaceLoss(scale=1e39)
    for _ in range(2):
        with pytest.raises(ValueError, match="scale must be a finite positive number of at most 3.40282e"):
            loss(*views, torch.arange(4))
    assert loss.margin.item() == 0.0
    assert torch.isfinite(loss(views[0].double(), views[1].double(), torch.arange(4)))
    assert loss.margin.item() != 0.0


def test_coreface_eval_keeps_the_margin():
    loss = CoReFaceLoss().eval()
    view = torch.randn(8, 4)
    loss(view, view + 0.1, torch.arange(8))
    assert loss.margin.item() == 0.0


def test_coreface_traced_by_make_fx_keeps_its_running_margin():
    # make_fx's default (real) tracing reads the margin buffer, which it does not trace, as a constant
    # of the graph; only the traced inputs' values are unreadable.
    from torch.fx.experimental.proxy_tensor import make_fx
    generator = torch.Generator().manual_seed(0)
    view1, view2 = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    labels = torch.arange(6)
    loss = CoReFaceLoss(scale=16.0).eval()
    without_margin = loss(view1, view2, labels)
    loss.margin.fill_(0.3)
    eager = loss(view1, view2, labels)
    assert abs(eager.item() - without_margin.item()) > 1.0  # the margin matters at this scale
    graph = make_fx(loss)(view1, view2, labels)
    torch.testing.assert_close(graph(view1, view2, labels), eager, rtol=0, atol=0)


@pytest.mark.parametrize("cast", [lambda loss: loss.to(torch.bfloat16), lambda loss: loss.half(),
                                  lambda loss: loss.float()], ids=["to-bfloat16", "half", "float"])
def test_coreface_margin_stays_float64_when_the_module_is_cast(cast, tmp_path):
    """A module-wide cast (a model holding the loss cast to bf16) rounded the running margin to the new dtype:
    margin and loss drifted from SPEC's float64 values (0.69140625 against 0.69160529 in bf16)."""
    generator = torch.Generator().manual_seed(7)
    loss, margin = cast(CoReFaceLoss()), 0.0
    assert loss.margin.dtype == torch.float64
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    for step in range(3):
        view1 = torch.randn(6, 8, generator=generator, dtype=torch.float64)
        view2 = view1 + 0.3 * torch.randn(6, 8, generator=generator, dtype=torch.float64)
        expected, margin = spec_coreface(view1, view2, labels, margin)
        torch.testing.assert_close(loss(view1, view2, labels), expected, rtol=1e-10, atol=1e-10)
        assert loss.margin.item() == pytest.approx(margin, abs=1e-12)
    # The state still goes through a state_dict (weights_only) and moves with the module, in float64.
    torch.save(loss.state_dict(), tmp_path / "loss.pt")
    restored = cast(CoReFaceLoss())
    restored.load_state_dict(torch.load(tmp_path / "loss.pt", weights_only=True))
    assert restored.margin.dtype == torch.float64 and restored.margin.item() == loss.margin.item()
    moved = restored.to("meta", torch.bfloat16)
    assert (moved.margin.device.type, moved.margin.dtype) == ("meta", torch.float64)


def test_losses_name_bad_labels():
    words, regions = torch.randn(4, 3, 8), torch.randn(4, 5, 8)
    with pytest.raises(ValueError, match="labels"):
        WordRegionContrastiveLoss()(words, torch.tensor([3, 3, 3, 3]), regions, torch.arange(3))
    with pytest.raises(ValueError, match="regions"):
        WordRegionContrastiveLoss()(words, torch.tensor([3, 3, 3, 3]), regions[:3])
    with pytest.raises(TypeError, match="labels"):
        CoReFaceLoss()(torch.randn(4, 8), torch.randn(4, 8), torch.zeros(4))
    with pytest.raises(ValueError, match="same_identity"):
        WordRegionContrastiveLoss(same_identity="zero")


@pytest.mark.parametrize("gamma", ["gamma1", "gamma2", "gamma3"])
def test_wrcl_refuses_a_gamma_past_float32s_maximum_by_name(gamma):
    """The scores and logits are float32: a larger gamma would be inf there (gamma3's loss NaN). Refused when
    the loss is built, naming the gamma; float32's maximum itself is a gamma."""
    largest = torch.finfo(torch.float32).max
    WordRegionContrastiveLoss(**{gamma: largest})
    with pytest.raises(ValueError, match=rf"^{gamma} must be a finite positive number of at most 3.40282e\+38, "
                                         rf"got 1e\+39$"):
        WordRegionContrastiveLoss(**{gamma: 1e39})
    with pytest.raises(ValueError, match=rf"^{gamma} must be"):
        WordRegionContrastiveLoss(**{gamma: math.nextafter(largest, math.inf)})


@pytest.mark.parametrize("gamma2", [5.0, 1e30])
def test_wrcl_refuses_gammas_whose_logits_overflow_and_keeps_the_loss_finite_below(gamma2):
    """|score| <= gamma2 + log T (a log-sum-exp of T terms gamma2 * cos), the logits are gamma3 * score, and the
    cross-entropy subtracts two: below half float32's maximum for that product the loss is finite."""
    torch.manual_seed(0)
    words, lengths, regions = torch.randn(4, 3, 8), torch.tensor([3, 1, 2, 3]), torch.randn(4, 5, 8)
    limit = torch.finfo(torch.float32).max / 2 / (gamma2 + math.log(3))
    assert torch.isfinite(WordRegionContrastiveLoss(gamma2=gamma2, gamma3=limit * 0.999)(words, lengths, regions))
    with pytest.raises(ValueError, match=r"^gamma3 \* \(gamma2 \+ log T\) must be at most 1\.70141e\+38 .*T 3: "):
        WordRegionContrastiveLoss(gamma2=gamma2, gamma3=limit * 1.01)(words, lengths, regions)


def test_wrcl_names_labels_on_another_device():
    words, lengths, regions = torch.randn(4, 3, 8), torch.tensor([3, 1, 2, 3]), torch.randn(4, 5, 8)
    with pytest.raises(ValueError, match="all inputs must be on one device, got words on cpu, regions on cpu, "
                                         "labels on meta"):
        WordRegionContrastiveLoss()(words, lengths, regions, torch.arange(4, device="meta"))


def test_wrcl_names_words_that_are_not_a_tensor():
    lengths, regions = torch.tensor([3, 3]), torch.randn(2, 5, 8)
    with pytest.raises(TypeError, match="words must be a torch.Tensor"):
        WordRegionContrastiveLoss()(None, lengths, regions, torch.arange(2))
    with pytest.raises(ValueError, match="words must have 3 dimensions"):
        WordRegionContrastiveLoss()(torch.randn(2, 8), lengths, regions)


@pytest.mark.parametrize("loss_class, x_name, y_name", [
    (CaptionImageContrastiveLoss, "sentence", "image"), (IntraModalContrastiveLoss, "view1", "view2")])
def test_pair_losses_name_their_own_arguments(loss_class, x_name, y_name):
    """The fused op calls its inputs x and y and reads a batch mismatch as a bad target offset; the
    losses' messages name what their callers passed."""
    x, labels = torch.randn(4, 8), torch.arange(4)
    with pytest.raises(ValueError, match=rf"{y_name} must have size 4 \(one row per row of {x_name}\)"):
        loss_class()(x, torch.randn(6, 8))
    with pytest.raises(ValueError, match=rf"{y_name} must have size 8 \(the embedding size of {x_name}\)"):
        loss_class()(x, torch.randn(4, 6))
    with pytest.raises(ValueError, match=f"{x_name} must not be empty"):
        loss_class()(x[:0], x[:0])
    with pytest.raises(TypeError, match=f"{x_name} must be a torch.Tensor"):
        loss_class()(None, x)
    with pytest.raises(TypeError, match=f"{y_name} must have the dtype of {x_name}"):
        loss_class()(x, x.double())
    with pytest.raises(ValueError, match=rf"labels must have size 4 \(one label per row of {x_name}\)"):
        loss_class()(x, x, labels[:3])


# loss, the names of its inputs (labels last where it takes them)
PAIR_LOSSES = {
    "CICL": (CaptionImageContrastiveLoss, ("sentence", "image", "labels")),
    "intra-modal": (IntraModalContrastiveLoss, ("view1", "view2", "labels")),
    "CoReFace": (CoReFaceLoss, ("view1", "view2", "labels")),
    "association": (lambda: DualGranularityAssociationLoss(8, 3), ("image", "caption")),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case, moved", [(case, moved) for case, (_, names) in PAIR_LOSSES.items()
                                         for moved in names])
def test_pair_losses_name_their_own_arguments_on_another_device(case, moved, training):
    """A device mismatch was reported with the fused op's names (x, y, row_labels, column_labels), and CoReFace's
    margin update in training mode raised a bare RuntimeError before any check. Now it is a ValueError with the
    loss's own names, raised before any state moves."""
    make, names = PAIR_LOSSES[case]
    loss = make().train(training)
    state = copy.deepcopy(dict(loss.named_buffers()))
    inputs = {"labels": torch.tensor([0, 1, 0, 2])} if "labels" in names else {}
    inputs.update({name: torch.randn(4, 8) for name in names[:2]})
    inputs[moved] = inputs[moved].to("meta")
    listing = ", ".join(f"{name} on {inputs[name].device}" for name in names)
    with pytest.raises(ValueError, match=f"^all inputs must be on one device, got {listing}$"):
        loss(*(inputs[name] for name in names))
    for name, value in loss.named_buffers():
        assert torch.equal(value, state[name]), name


@pytest.mark.parametrize("compiler_backend", ["aot_eager", "inductor"])
def test_compiled_coreface_updates_its_margin_like_eager(compiler_backend):
    """torch.compile used to drop the in-place update of the 0-dim margin buffer: the margin stayed 0."""
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(6)
    view1 = torch.randn(10, 8, generator=generator, dtype=torch.float64)
    view2 = view1 + 0.5 * torch.randn(10, 8, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (10,), generator=generator)
    eager, compiled = CoReFaceLoss(), CoReFaceLoss()
    compiled_call, margin = torch.compile(compiled, backend=compiler_backend), 0.0
    for step in range(3):
        shifted1 = (view1 + 0.2 * step).requires_grad_()
        shifted2 = view2.roll(step, 1).requires_grad_()
        expected, margin = spec_coreface(shifted1, shifted2, labels, margin)
        got_eager, got_compiled = eager(shifted1, shifted2, labels), compiled_call(shifted1, shifted2, labels)
        torch.testing.assert_close(got_eager, expected, **TOL)
        torch.testing.assert_close(got_compiled, expected, **TOL)
        assert compiled.margin.item() == pytest.approx(margin, abs=1e-12)
        assert eager.margin.item() == pytest.approx(margin, abs=1e-12)
        for g, e in zip(torch.autograd.grad(got_compiled, (shifted1, shifted2)),
                        torch.autograd.grad(expected, (shifted1, shifted2))):
            torch.testing.assert_close(g, e, **TOL)
    assert abs(margin) > 0.1  # the margin moved, so a margin left at 0 would have shown


def test_coreface_margin_of_bfloat16_views_is_computed_in_float32():
    """The positive cosines of 16-bit views were computed in their dtype (the hardest negatives and the
    cross-entropy in float32): the margin was off by about 2e-3, the loss by about 2 %."""
    generator = torch.Generator().manual_seed(3)
    view1 = torch.randn(8, 32, generator=generator).bfloat16()
    view2 = (view1.float() + 0.3 * torch.randn(8, 32, generator=generator)).bfloat16()
    labels = torch.arange(8)
    in_bf16, in_fp32 = CoReFaceLoss(), CoReFaceLoss()
    loss_bf16, loss_fp32 = in_bf16(view1, view2, labels), in_fp32(view1.float(), view2.float(), labels)
    assert in_bf16.margin.item() == pytest.approx(in_fp32.margin.item(), abs=1e-6)
    torch.testing.assert_close(loss_bf16, loss_fp32, rtol=1e-5, atol=1e-5)


def test_coreface_stays_float32_where_autocast_would_give_the_fused_op_bf16(monkeypatch):
    """At scale 64 a bf16 rounding of the views moves logits by up to about 0.25: CoReFace keeps its
    cross-entropy in float32 under autocast (the CPU stands in for CUDA, whose fused ops take bf16)."""
    import tgfr.ops.autocast

    monkeypatch.setitem(tgfr.ops.autocast._KERNEL_DTYPES, "cpu", (torch.bfloat16,))
    generator = torch.Generator().manual_seed(4)
    view1 = torch.randn(16, 32, generator=generator)
    view2 = view1 + 0.3 * torch.randn(16, 32, generator=generator)
    labels = torch.randint(0, 6, (16,), generator=generator)
    plain, autocast = CoReFaceLoss(), CoReFaceLoss()
    expected = plain(view1, view2, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = autocast(view1, view2, labels)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert autocast.margin.item() == pytest.approx(plain.margin.item(), abs=1e-9)


def test_compiled_coreface_compiles_once_while_its_margin_changes():
    """The float margin passed to the fused op was guarded on: every training step compiled again, until
    the recompile limit sent the loss back to eager."""
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    loss, generator = CoReFaceLoss(), torch.Generator().manual_seed(2)
    compiled = torch.compile(loss, backend=counter)
    labels = torch.randint(0, 4, (10,), generator=generator)
    graphs, margins = [], []
    for _ in range(4):
        view1 = torch.randn(10, 8, generator=generator)
        compiled(view1, view1 + 0.5 * torch.randn(10, 8, generator=generator), labels)
        graphs.append(counter.frame_count)
        margins.append(loss.margin.item())
    assert len(set(margins)) == 4 and graphs[1:] == graphs[:1] * 3


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")])
@pytest.mark.parametrize("bad_view", [0, 1])
def test_coreface_non_finite_batch_gives_a_non_finite_loss_and_leaves_the_margin(bad_value, bad_view):
    """SPEC section 5: NaN/Inf propagate to the output. The batch's margin is not finite; it used to enter the
    running margin and make every later call raise."""
    generator = torch.Generator().manual_seed(7)
    batches = [[torch.randn(8, 6, generator=generator, dtype=torch.float64) for _ in range(2)] for _ in range(2)]
    labels = torch.randint(0, 3, (8,), generator=generator)
    loss = CoReFaceLoss()
    loss(*batches[0], labels)
    margin = loss.margin.clone()
    bad = [view.clone() for view in batches[0]]
    bad[bad_view][3, 2] = bad_value
    assert not torch.isfinite(loss(*bad, labels))
    assert torch.equal(loss.margin, margin)
    # The next batch as if the bad one had never come: SPEC section 3 from the margin after the first batch.
    expected, expected_margin = spec_coreface(*batches[1], labels, margin.item())
    torch.testing.assert_close(loss(*batches[1], labels), expected, **TOL)
    assert loss.margin.item() == pytest.approx(expected_margin, abs=1e-12)
    expected_eval, _ = spec_coreface(*batches[1], labels, expected_margin, momentum=0.0)
    torch.testing.assert_close(loss.eval()(*batches[1], labels), expected_eval, **TOL)


def test_compiled_coreface_in_eval_mode_uses_the_current_running_margin():
    """In eval mode the fused op runs inside the compiled graph, which reads the margin buffer while it traces
    (values_readable is False there): read as unreadable, the margin was baked in as 0; guarded on, the graph has
    to follow a margin that changes after compiling."""
    torch._dynamo.reset()
    generator = torch.Generator().manual_seed(8)
    view1 = torch.randn(6, 8, generator=generator, dtype=torch.float64)
    view2 = view1 + 0.5 * torch.randn(6, 8, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 3, 4])
    loss = CoReFaceLoss(scale=16.0).eval()
    compiled = torch.compile(loss, backend="aot_eager")
    for margin in (0.3, 0.5):
        loss.margin.fill_(margin)
        expected, _ = spec_coreface(view1, view2, labels, margin, scale=16.0, momentum=0.0)  # the margin as given
        torch.testing.assert_close(compiled(view1, view2, labels), expected, **TOL)
        torch.testing.assert_close(loss(view1, view2, labels), expected, **TOL)
        assert loss.margin.item() == margin


def test_coreface_margin_of_equal_views_counts_their_positive_cosines_as_1():
    """Equal views (model.dropout = 0): a float32 positive cosine rounds to just above 1, where SPEC's clamp puts it
    back at 1. Rows on disjoint coordinates make every negative cosine exactly 0, so only the positives can move the
    margin away from SPEC's."""
    generator = torch.Generator().manual_seed(0)
    rows, width = 8, 5
    view = torch.zeros(rows, rows * width)
    for row in range(rows):
        view[row, row * width:(row + 1) * width] = torch.rand(width, generator=generator) + 0.1
    unit = F.normalize(view, dim=1)
    assert ((unit * unit).sum(dim=1) > 1).any()  # the rounding the clamp is there for
    labels = torch.arange(rows)
    loss = CoReFaceLoss()
    got = loss(view, view, labels)
    expected, margin = spec_coreface(view, view, labels, 0.0)
    assert loss.margin.item() == pytest.approx(margin, abs=1e-12)
    torch.testing.assert_close(got, expected.float(), **TOL)
