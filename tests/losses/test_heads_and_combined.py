"""Identity heads, the weakly supervised association loss and the combined TGFR objective."""

import copy
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from tgfr.losses import (ArcFaceHead, CaptionImageContrastiveLoss, CoReFaceLoss, CosFaceHead,
                         DualGranularityAssociationLoss, IntraModalContrastiveLoss, MultiGranularityLoss,
                         WordRegionContrastiveLoss, focal)

TOL = dict(rtol=1e-5, atol=1e-5)


def head_logits_by_angle(head, embeddings, labels, arc):
    """cos(theta + m) via arccos (ArcFace; past theta = pi - m arcface_torch's linear continuation
    cos(theta) - m sin(pi - m)) or cos(theta) - m (CosFace), as arcface_torch writes them."""
    cosine = (F.normalize(embeddings, dim=1) @ F.normalize(head.weight, dim=1).T).clamp(-1, 1)
    one_hot = F.one_hot(labels, cosine.shape[1]).bool()
    if arc:
        theta = torch.arccos(cosine)
        target = torch.where(theta < math.pi - head.margin, torch.cos(theta + head.margin),
                             cosine - head.margin * math.sin(math.pi - head.margin))
    else:
        target = cosine - head.margin
    return head.scale * torch.where(one_hot, target, cosine)


@pytest.mark.parametrize("head_class,arc", [(ArcFaceHead, True), (CosFaceHead, False)])
@pytest.mark.parametrize("focal", [False, True])
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32])
def test_margin_heads(head_class, arc, focal, label_dtype):
    torch.manual_seed(0)
    head = head_class(16, 10, focal=focal).double()
    embeddings = torch.randn(12, 16, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 10, (12,))
    ce = F.cross_entropy(head_logits_by_angle(head, embeddings, labels, arc), labels)
    expected = (1 - torch.exp(-ce)) ** 2 * ce if focal else ce
    got = head(embeddings, labels.to(label_dtype))
    torch.testing.assert_close(got, expected, **TOL)
    for g, e in zip(torch.autograd.grad(got, (embeddings, head.weight)),
                    torch.autograd.grad(expected, (embeddings, head.weight))):
        torch.testing.assert_close(g, e, **TOL)


@pytest.mark.parametrize("head_class,arc", [(ArcFaceHead, True), (CosFaceHead, False)])
def test_heads_default_to_the_plain_cross_entropy(head_class, arc):
    """focal is opt-in: the default head's loss is the batch-mean cross-entropy of its margin logits."""
    torch.manual_seed(0)
    head = head_class(4, 3, scale=2.0).double()
    embeddings, labels = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 2, 1, 1, 0])
    expected = F.cross_entropy(head_logits_by_angle(head, embeddings, labels, arc), labels)
    assert 0.1 < expected < 3  # where focal's factor (1 - exp(-ce))^2 is far from 1
    torch.testing.assert_close(head(embeddings, labels), expected, **TOL)


@pytest.mark.parametrize("head_class,target_cosine", [(ArcFaceHead, math.cos), (CosFaceHead, lambda m: 1.0 - m)],
                         ids=["ArcFace", "CosFace"])
def test_focal_head_loss_where_the_cross_entropy_is_below_one(head_class, target_cosine):
    """test_margin_heads has a cross-entropy near 54, where (1 - exp(-ce))^gamma is 1 for any gamma and focal
    equals ce. Here each embedding is its class's weight row (orthonormal rows): the target cosine is
    cos(0 + m) (ArcFace) or 1 - m (CosFace), every other cosine 0, so ce = log(1 + (K - 1) exp(-s * target))."""
    classes, scale, margin = 6, 4.0, 0.3
    head = head_class(classes, classes, scale=scale, margin=margin, focal=True).double()
    head.weight.data = torch.eye(classes, dtype=torch.float64)
    labels = torch.tensor([0, 3, 5, 3])
    embeddings = 2.5 * torch.eye(classes, dtype=torch.float64)[labels]  # the norm does not count
    ce = math.log(1 + (classes - 1) * math.exp(-scale * target_cosine(margin)))
    assert 0.01 < ce < 1
    expected = (1 - math.exp(-ce)) ** 2 * ce
    # rel: ArcFace clamps sin(0) at 1e-6 (finite gradients), which moves ce by about 1e-7.
    assert head(embeddings, labels).item() == pytest.approx(expected, rel=1e-5)
    head.focal = False
    assert head(embeddings, labels).item() == pytest.approx(ce, rel=1e-5)
    # On its class centre (cosine 1) the gradient stays finite: ArcFace's sine is floored, where sqrt(0)'s
    # derivative would make it NaN while the loss itself stays finite.
    embeddings.requires_grad_()
    head(embeddings, labels).backward()
    assert torch.isfinite(embeddings.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("head_class,arc", [(ArcFaceHead, True), (CosFaceHead, False)])
def test_a_scale_past_the_computation_dtypes_maximum_is_refused_not_a_nan_loss(head_class, arc):
    """The heads compute in float32 (float64 for float64 input): a larger scale makes every logit inf."""
    torch.manual_seed(0)
    head = head_class(4, 3, scale=1e39)
    embeddings, labels = torch.randn(2, 4), torch.tensor([0, 2])
    with pytest.raises(ValueError,
                       match=r"^scale must be a finite positive number of at most 3\.40282e\+38, got 1e\+39$"):
        head(embeddings, labels)
    head, embeddings = head.double(), embeddings.double()
    expected = F.cross_entropy(head_logits_by_angle(head, embeddings, labels, arc), labels)
    assert torch.isfinite(expected)
    torch.testing.assert_close(head(embeddings, labels), expected, **TOL)


@pytest.mark.parametrize("margin", [0.5, 1.2])
def test_arcface_loss_grows_as_a_sample_turns_away_from_its_class(margin):
    """cos(theta + m) alone rises again past theta = pi - m, so a sample far from its class would be
    pushed further away; arcface_torch's continuation keeps the loss increasing over [0, pi]."""
    # The other class is orthogonal to the plane the sample turns in, so only the target logit moves.
    head = ArcFaceHead(3, 2, scale=4.0, margin=margin).double()
    head.weight.data = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    angles = torch.linspace(0.0, math.pi, 721, dtype=torch.float64)
    embeddings = torch.stack([torch.cos(angles), torch.sin(angles), torch.zeros_like(angles)], dim=1)
    labels = torch.zeros(len(angles), dtype=torch.long)
    losses = torch.stack([head(sample[None], label[None]) for sample, label in zip(embeddings, labels)])
    assert (losses.diff() > 0).all()
    # Both sides of pi - m agree with the formula written above, so the switch sits where it should.
    expected = F.cross_entropy(head_logits_by_angle(head, embeddings, labels, True), labels, reduction="none")
    torch.testing.assert_close(losses, expected, **TOL)  # TOL: sin(0) is clamped at 1e-6 for finite gradients


@pytest.mark.parametrize("head_class", [ArcFaceHead, CosFaceHead])
def test_heads_compute_logits_in_float32_under_bf16_autocast(head_class):
    """Under autocast the head's matmul would give bf16 cosines (off by up to 2^-9, 0.125 at scale 64)."""
    torch.manual_seed(0)
    head = head_class(64, 100)
    embeddings, labels = torch.randn(32, 64), torch.randint(0, 100, (32,))
    expected = head.logits(embeddings, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head.logits(embeddings, labels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("head_class", [ArcFaceHead, CosFaceHead])
def test_heads_compile_to_one_graph_and_check_labels_when_it_runs(head_class):
    """The label range check read the labels while tracing: fullgraph=True failed, the default mode broke
    the graph. Inductor then ran the cross-entropy's gather before the assertion, whose generic "index out
    of bounds" named neither labels nor num_classes."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    head = head_class(16, 10)
    embeddings, labels = torch.randn(6, 16), torch.randint(0, 10, (6,))
    for backend in ("aot_eager", "inductor"):
        compiled = torch.compile(head, fullgraph=True, backend=backend)
        torch.testing.assert_close(compiled(embeddings, labels), head(embeddings, labels), rtol=1e-6, atol=1e-6)
        for bad_labels in ([0, 1, 2, 3, 4, 10], [0, 1, -1, 3, 4, 5]):
            with pytest.raises(RuntimeError, match=r"^labels must lie in \[0, num_classes\)$"):
                compiled(embeddings, torch.tensor(bad_labels))


@pytest.mark.parametrize("head_class,arc", [(ArcFaceHead, True), (CosFaceHead, False)])
def test_heads_under_vmap_take_labels_batched_with_the_embeddings(head_class, arc):
    """The label check read the labels with int(), which vmap refuses ("calling .item() on a Tensor")."""
    torch.manual_seed(1)
    head = head_class(8, 5).double()
    embeddings = torch.randn(3, 4, 8, dtype=torch.float64)
    labels = torch.tensor([[0, 1, 4, 1], [2, 2, 3, 0], [4, 3, 1, 1]])
    expected = torch.stack([F.cross_entropy(head_logits_by_angle(head, item, item_labels, arc), item_labels)
                            for item, item_labels in zip(embeddings, labels)])
    torch.testing.assert_close(torch.func.vmap(head)(embeddings, labels), expected, **TOL)
    labels[1, 2] = 7
    with pytest.raises(ValueError, match=r"^labels must lie in \[0, num_classes=5\), got values in \[0, 7\]$"):
        torch.func.vmap(head)(embeddings, labels)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 3.0])
def test_focal_takes_its_gamma(gamma):
    """The heads call focal with gamma 2 only, so a gamma forced to 2 failed no test."""
    values = [0.05, 0.5, 3.0]
    expected = torch.tensor([(1.0 - math.exp(-value)) ** gamma * value for value in values], dtype=torch.float64)
    torch.testing.assert_close(focal(torch.tensor(values, dtype=torch.float64), gamma), expected)
    torch.testing.assert_close(focal(torch.tensor(0.5, dtype=torch.float64), gamma=gamma), expected[1])


@pytest.mark.parametrize("gamma, error, message", [
    (-1.0, ValueError, "gamma must be at least 0, got -1.0"),
    (math.nan, ValueError, "gamma must be a finite number, got nan"),
    (math.inf, ValueError, "gamma must be a finite number, got inf"),
    ("2", TypeError, "gamma must be a number, got str '2'"),
    (True, TypeError, "gamma must be a number, got bool True"),
])
def test_focal_names_a_bad_gamma(gamma, error, message):
    """A negative gamma gave a loss weighting easy samples up (NaN at ce 0), NaN a NaN loss, both silently."""
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        focal(torch.tensor(0.5), gamma)


def test_focal_names_a_cross_entropy_that_is_not_a_tensor():
    """torch.exp's own message named its 'input', not focal's argument."""
    with pytest.raises(TypeError, match="^cross_entropy must be a torch.Tensor, got float$"):
        focal(0.5)


def test_head_rejects_wrong_embedding_size():
    with pytest.raises(ValueError, match="embeddings"):
        ArcFaceHead(16, 10)(torch.randn(3, 8), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("head_class", [ArcFaceHead, CosFaceHead])
@pytest.mark.parametrize("embeddings, labels, error, message", [
    (torch.randn(3, 16), torch.tensor([0, 10, 2]), ValueError,
     r"labels must lie in \[0, num_classes=10\), got values in \[0, 10\]"),
    (torch.randn(3, 16), torch.tensor([0, -1, 2]), ValueError,
     r"labels must lie in \[0, num_classes=10\), got values in \[-1, 2\]"),
    (torch.randn(0, 16), torch.zeros(0, dtype=torch.long), ValueError, "embeddings must not be empty"),
    (torch.ones(3, 16, dtype=torch.long), torch.tensor([0, 1, 2]), TypeError, "embeddings must have dtype in"),
    (torch.randn(3, 16), torch.tensor([0, 1, 2], device="meta"), ValueError,
     "all inputs must be on one device, got embeddings on cpu, labels on meta"),
], ids=["label too large", "negative label", "empty batch", "integer embeddings", "labels on another device"])
def test_heads_name_bad_labels_and_embeddings(head_class, embeddings, labels, error, message):
    """Labels outside the classes (a negative one would silently index from the end), an empty batch
    (a nan loss), integer embeddings and labels on another device are errors naming the argument."""
    with pytest.raises(error, match=message):
        head_class(16, 10)(embeddings, labels)


@pytest.mark.parametrize("head_class,arc", [(ArcFaceHead, True), (CosFaceHead, False)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_heads_take_embeddings_of_another_float_dtype(head_class, arc, dtype):
    """bf16 features into an fp32 head outside autocast (or float64 ones for gradcheck-style work) are
    computed in the wider dtype, as the arccos formula on the promoted values gives, not a matmul error."""
    torch.manual_seed(0)
    head = head_class(16, 10)
    embeddings = torch.randn(12, 16).to(dtype).requires_grad_(True)
    labels = torch.randint(0, 10, (12,))
    wide = torch.promote_types(dtype, head.weight.dtype)
    promoted = embeddings.detach().to(wide).requires_grad_(True)
    weight = head.weight.detach().to(wide)
    reference = head_class(16, 10).to(wide)
    reference.weight.data.copy_(weight)
    expected = F.cross_entropy(head_logits_by_angle(reference, promoted, labels, arc), labels)
    got = head(embeddings, labels)
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, **TOL)
    got.backward(), expected.backward()
    assert embeddings.grad.dtype == dtype
    torch.testing.assert_close(embeddings.grad, promoted.grad.to(dtype))


def test_association_loss_names_its_arguments():
    loss = DualGranularityAssociationLoss(8, 4)
    with pytest.raises(TypeError, match="image must have dtype in"):
        loss(torch.ones(3, 8, dtype=torch.long), torch.randn(3, 8))
    with pytest.raises(ValueError, match="image must not be empty"):
        loss(torch.randn(0, 8), torch.randn(0, 8))
    with pytest.raises(TypeError, match=r"caption must have the dtype of image \(torch.float32\)"):
        loss(torch.randn(3, 8), torch.randn(3, 8, dtype=torch.float64))


def test_association_refuses_a_temperature_that_overflows_the_cosines_before_moving_its_memory():
    """cos / temperature past the float32 range made the softmax NaN: wrong assignments, a NaN loss, and the
    prototypes moved with those assignments. float64 features may take such a temperature."""
    loss = DualGranularityAssociationLoss(8, 3, temperature=1e-39)
    memory = loss.prototypes.clone()
    image, caption = torch.randn(6, 8), torch.randn(6, 8)
    with pytest.raises(ValueError, match=r"temperature must be at least 5.87747e-39 .* for torch.float32 image "
                                         r"features, got 1e-39"):
        loss(image, caption)
    assert torch.equal(loss.prototypes, memory)
    # The smallest temperature accepted, against images on the prototypes (cosines of 1, rounded past it).
    smallest = DualGranularityAssociationLoss(8, 3, temperature=2 / torch.finfo(torch.float32).max)
    assignment, confidence = smallest.assign(smallest.prototypes * 3)
    assert torch.equal(assignment, torch.arange(3)) and torch.isfinite(confidence).all()
    with pytest.raises(ValueError, match="temperature must be at least"):
        DualGranularityAssociationLoss(8, 3, temperature=1 / torch.finfo(torch.float32).max).assign(image)
    assignment, confidence = loss.assign(image.double())
    assert torch.equal(assignment, (F.normalize(image.double(), dim=1) @ memory.double().T).argmax(dim=1))
    assert torch.isfinite(confidence).all()


def test_association_assign_names_its_argument():
    """assign(image) is public: a wrong embedding size reached the matmul (a RuntimeError naming no argument) and
    a 1-D image raised IndexError."""
    loss = DualGranularityAssociationLoss(8, 4)
    with pytest.raises(ValueError, match=r"image must have size 8 \(embedding_size of the loss\) in dimension 1"):
        loss.assign(torch.randn(3, 5))
    with pytest.raises(ValueError, match="image must have 2 dimensions, got 1"):
        loss.assign(torch.randn(8))
    with pytest.raises(TypeError, match="image must have dtype in"):
        loss.assign(torch.ones(3, 8, dtype=torch.long))
    with pytest.raises(TypeError, match="image must be a torch.Tensor, got list"):
        loss.assign([[0.0] * 8])
    with pytest.raises(ValueError, match=r"image must have size 8 \(embedding_size of the loss\)"):
        loss(torch.randn(3, 5), torch.randn(3, 5))


def association_reference(image, caption, prototypes, scale, temperature, min_confidence, local_weight=1.0,
                          global_weight=1.0):
    """The module docstring's formula in plain PyTorch -> (loss, assignment, confidence)."""
    probabilities = (F.normalize(image.detach(), dim=1) @ prototypes.T / temperature).softmax(1)
    confidence, assignment = probabilities.max(1)
    identity = torch.where(confidence >= min_confidence, assignment, -1 - torch.arange(image.shape[0]))
    positives = (identity[:, None] == identity[None, :]).to(image.dtype)
    logits = scale * F.normalize(image, dim=1) @ F.normalize(caption, dim=1).T

    def supcon(scores):
        return (-(scores.log_softmax(1) * positives).sum(1) / positives.sum(1)).mean()

    ce = F.cross_entropy(scale * F.normalize(caption, dim=1) @ prototypes.T, assignment, reduction="none")
    local, global_ = supcon(logits) + supcon(logits.T), (confidence * ce).sum() / confidence.sum()
    loss = local_weight * local + global_weight * global_
    return loss, assignment, confidence


def test_association_confidence_equal_to_min_confidence_is_confident():
    """c_i >= min_confidence makes image i confident. With one prototype every confidence is softmax of one
    logit, exactly 1 = min_confidence: all images share the pseudo-identity, every caption is a positive of
    every image, and L_local = mean_i(LSE_j L_ij - mean_j L_ij) + the same over columns, L = s cos(v_i, t_j).
    The cross-entropy over one prototype is 0, so that is the whole loss."""
    torch.manual_seed(6)
    loss = DualGranularityAssociationLoss(8, 1, scale=5.0, min_confidence=1.0).double().eval()
    image, caption = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    logits = 5.0 * F.normalize(image, dim=1) @ F.normalize(caption, dim=1).T
    expected = sum((scores.logsumexp(1) - scores.mean(1)).mean() for scores in (logits, logits.T))
    got, stats = loss(image, caption)
    assert stats["mean_confidence"].item() == 1.0 and stats["global"].item() == 0.0
    torch.testing.assert_close(stats["local"], expected, **TOL)
    torch.testing.assert_close(got, expected, **TOL)


def check_prototypes_moved(moved, old, image, assignment, momentum=0.9):
    """Each used prototype became normalize(momentum * old + (1 - momentum) * mean of its images); others stayed."""
    images = F.normalize(image.detach(), dim=1)
    for k in range(old.shape[0]):
        members = assignment == k
        expected = (F.normalize(momentum * old[k] + (1 - momentum) * images[members].mean(0), dim=0)
                    if members.any() else old[k])
        torch.testing.assert_close(moved[k], expected)


def test_association_loss_matches_its_documented_formula():
    torch.manual_seed(1)
    loss = DualGranularityAssociationLoss(8, 4, scale=5.0, temperature=0.2, min_confidence=0.4).double()
    image = torch.randn(20, 8, dtype=torch.float64, requires_grad=True)
    caption = torch.randn(20, 8, dtype=torch.float64, requires_grad=True)
    prototypes = loss.prototypes.clone()
    expected, assignment, _ = association_reference(image, caption, prototypes, 5.0, 0.2, 0.4)
    got, stats = loss(image, caption)
    torch.testing.assert_close(got, expected, **TOL)
    assert 0 < stats["mean_confidence"] <= 1
    check_prototypes_moved(loss.prototypes, prototypes, image, assignment)


def test_association_loss_takes_its_level_weights_and_momentum():
    torch.manual_seed(1)
    loss = DualGranularityAssociationLoss(8, 4, scale=5.0, temperature=0.2, min_confidence=0.4, local_weight=0.3,
                                          global_weight=2.0, prototype_momentum=0.7).double()
    image, caption = torch.randn(20, 8, dtype=torch.float64), torch.randn(20, 8, dtype=torch.float64)
    prototypes = loss.prototypes.clone()
    expected, assignment, _ = association_reference(image, caption, prototypes, 5.0, 0.2, 0.4, 0.3, 2.0)
    torch.testing.assert_close(loss(image, caption)[0], expected, **TOL)
    check_prototypes_moved(loss.prototypes, prototypes, image, assignment, momentum=0.7)


@pytest.mark.parametrize("cast", [torch.nn.Module.bfloat16, torch.nn.Module.half])
def test_the_association_memory_keeps_float32_when_the_module_is_cast(cast):
    """A 16-bit memory rounded every moving-average step to 8 or 11 bits: at momentum 0.999 a bfloat16 memory
    moved about a quarter as far as the float32 one. A cast keeps it float32 (as CoReFace keeps its margin)."""
    torch.manual_seed(4)
    cast_loss = cast(DualGranularityAssociationLoss(8, 3, prototype_momentum=0.999)).train()
    float_loss = DualGranularityAssociationLoss(8, 3, prototype_momentum=0.999).train()
    float_loss.prototypes = cast_loss.prototypes.clone()
    assert cast_loss.prototypes.dtype == torch.float32
    for _ in range(20):
        image, caption = torch.randn(16, 8), torch.randn(16, 8)
        float_loss(image, caption), cast_loss(image, caption)
    torch.testing.assert_close(cast_loss.prototypes, float_loss.prototypes, rtol=0, atol=1e-6)
    assert cast_loss.to("meta").prototypes.device.type == "meta"


def test_identity_heads_default_to_the_released_scales_and_margins():
    """ArcFace s = 64, m = 0.5; CosFace s = 64, m = 0.4 (insightface's released heads)."""
    assert (ArcFaceHead(4, 3).scale, ArcFaceHead(4, 3).margin) == (64.0, 0.5)
    assert (CosFaceHead(4, 3).scale, CosFaceHead(4, 3).margin) == (64.0, 0.4)


def test_association_loss_trains_several_steps_in_a_row():
    """Forward, backward and optimizer step twice with the memory updating in between: the backward
    must survive the in-place memory update, its gradients must be those of the formula on the memory
    as it was before the call, and the memory must move as documented, from the moved memory on."""
    torch.manual_seed(3)
    loss = DualGranularityAssociationLoss(8, 3, scale=5.0, temperature=0.2, min_confidence=0.4).double().train()
    # Few prototypes and clustered images so several images share one: the local level has extra positives.
    centres = torch.randn(3, 8, dtype=torch.float64)
    image = torch.nn.Parameter(centres[torch.arange(12) % 3] + 0.3 * torch.randn(12, 8, dtype=torch.float64))
    caption = torch.nn.Parameter(torch.randn(12, 8, dtype=torch.float64))
    optimizer = torch.optim.SGD([image, caption], lr=0.5)
    for _ in range(2):
        before = loss.prototypes.clone()
        optimizer.zero_grad()
        got, _ = loss(image, caption)
        got.backward()
        expected, assignment, _ = association_reference(image, caption, before, 5.0, 0.2, 0.4)
        torch.testing.assert_close(got, expected, **TOL)
        for gradient, reference in zip((image.grad, caption.grad), torch.autograd.grad(expected, (image, caption))):
            torch.testing.assert_close(gradient, reference, **TOL)
        check_prototypes_moved(loss.prototypes, before, image, assignment)
        assert not torch.equal(loss.prototypes, before)
        optimizer.step()


@pytest.mark.parametrize("bad_input,bad_value", [("image", float("nan")), ("image", float("inf")),
                                                 ("caption", float("nan"))])
def test_association_non_finite_batch_gives_a_non_finite_loss_and_keeps_the_memory_finite(bad_input, bad_value):
    """SPEC section 5: NaN/Inf propagate to the output. An image with NaN/Inf used to write NaN into its
    prototype, and every later loss was NaN; the memory now moves with the batch's finite images only."""
    torch.manual_seed(8)
    loss = DualGranularityAssociationLoss(8, 3, scale=5.0, temperature=0.2, min_confidence=0.4).double()
    centres = torch.randn(3, 8, dtype=torch.float64)
    image = centres[torch.arange(12) % 3] + 0.3 * torch.randn(12, 8, dtype=torch.float64)
    caption = torch.randn(12, 8, dtype=torch.float64)
    bad = {"image": image.clone(), "caption": caption.clone()}
    bad[bad_input][2, 5] = bad_value
    before = loss.prototypes.clone()
    got, _ = loss(bad["image"], bad["caption"])
    assert not torch.isfinite(got)
    _, assignment, _ = association_reference(image, caption, before, 5.0, 0.2, 0.4)
    finite = (torch.arange(12) != 2) if bad_input == "image" else torch.ones(12, dtype=torch.bool)
    assert (assignment[finite] == assignment[2]).any()  # the bad image's prototype has finite images to move with
    check_prototypes_moved(loss.prototypes, before, image[finite], assignment[finite])
    moved = loss.prototypes.clone()
    next_image, next_caption = image.roll(1, 1), caption.roll(1, 0)
    expected, _, _ = association_reference(next_image, next_caption, moved, 5.0, 0.2, 0.4)
    torch.testing.assert_close(loss(next_image, next_caption)[0], expected, **TOL)


@pytest.mark.parametrize("precision", ["bf16 autocast", "bf16 inputs"])
def test_association_loss_computes_in_float32_from_bf16(precision):
    """Assignments, confidences and the global level were computed in bf16 under autocast and from bf16 inputs:
    assignments flipped between near prototypes and the global term and stats came back rounded to bf16."""
    torch.manual_seed(0)
    loss = DualGranularityAssociationLoss(64, 16).eval()
    image, caption = torch.randn(256, 64), torch.randn(256, 64)
    if precision == "bf16 inputs":
        image, caption = image.bfloat16(), caption.bfloat16()
    expected, expected_assignment, expected_confidence = association_reference(
        image.double(), caption.double(), loss.prototypes.double(), loss.scale, loss.temperature, loss.min_confidence)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16 autocast"):
        assignment, confidence = loss.assign(image)
        got, stats = loss(image, caption)
    assert torch.equal(assignment, expected_assignment)
    torch.testing.assert_close(confidence, expected_confidence.float(), **TOL)
    assert got.dtype == stats["global"].dtype == stats["mean_confidence"].dtype == torch.float32
    torch.testing.assert_close(got, expected.float(), **TOL)
    torch.testing.assert_close(stats["mean_confidence"], expected_confidence.mean().float(), **TOL)


def test_association_memory_update_under_inference_mode_keeps_a_normal_buffer():
    """A training-mode call under torch.inference_mode put an inference tensor in the memory buffer: every later
    autograd-recording call failed ("Inference tensors cannot be saved for backward"), and so did
    load_state_dict. The call still updates the memory, as CoReFace's margin is updated there."""
    torch.manual_seed(4)
    loss = DualGranularityAssociationLoss(8, 3, scale=5.0, temperature=0.2, min_confidence=0.4).double().train()
    centres = torch.randn(3, 8, dtype=torch.float64)
    image = centres[torch.arange(12) % 3] + 0.3 * torch.randn(12, 8, dtype=torch.float64)
    caption = torch.randn(12, 8, dtype=torch.float64)
    before = loss.prototypes.clone()
    with torch.inference_mode():
        loss(image, caption)
    _, assignment, _ = association_reference(image, caption, before, 5.0, 0.2, 0.4)
    check_prototypes_moved(loss.prototypes, before, image, assignment)
    assert not loss.prototypes.is_inference()
    moved = loss.prototypes.clone()
    image.requires_grad_(), caption.requires_grad_()
    got, _ = loss(image, caption)
    expected, _, _ = association_reference(image, caption, moved, 5.0, 0.2, 0.4)
    torch.testing.assert_close(got, expected, **TOL)
    for gradient, reference in zip(torch.autograd.grad(got, (image, caption)),
                                   torch.autograd.grad(expected, (image, caption))):
        torch.testing.assert_close(gradient, reference, **TOL)
    loss.load_state_dict({"prototypes": before})
    assert torch.equal(loss.prototypes, before)


def test_compiled_association_loss_trains_like_eager():
    """Inductor removed the copy of the memory that the global level's matmul saved for its backward, and the
    in-place memory update then broke that backward ("modified by an inplace operation")."""
    torch._dynamo.reset()
    torch.manual_seed(9)
    eager = DualGranularityAssociationLoss(8, 3, scale=5.0, temperature=0.2, min_confidence=0.4).double()
    compiled = copy.deepcopy(eager)
    compiled_call = torch.compile(compiled, backend="inductor")
    centres = torch.randn(3, 8, dtype=torch.float64)
    for _ in range(3):
        image = (centres[torch.arange(12) % 3] + 0.3 * torch.randn(12, 8, dtype=torch.float64)).requires_grad_()
        caption = torch.randn(12, 8, dtype=torch.float64, requires_grad=True)
        before = compiled.prototypes.clone()
        expected, assignment, _ = association_reference(image, caption, before, 5.0, 0.2, 0.4)
        got_eager, got_compiled = eager(image, caption)[0], compiled_call(image, caption)[0]
        torch.testing.assert_close(got_eager, expected, **TOL)
        torch.testing.assert_close(got_compiled, expected, **TOL)
        for gradient, reference in zip(torch.autograd.grad(got_compiled, (image, caption)),
                                       torch.autograd.grad(expected, (image, caption))):
            torch.testing.assert_close(gradient, reference, **TOL)
        check_prototypes_moved(compiled.prototypes, before, image, assignment)
        torch.testing.assert_close(compiled.prototypes, eager.prototypes)
        assert not torch.equal(compiled.prototypes, before)


def test_multi_granularity_weights_and_components():
    torch.manual_seed(2)
    words, regions = torch.randn(6, 4, 8, dtype=torch.float64), torch.randn(6, 9, 8, dtype=torch.float64)
    lengths = torch.tensor([4, 2, 3, 1, 4, 4])
    sentence, image = torch.randn(6, 12, dtype=torch.float64), torch.randn(6, 12, dtype=torch.float64)
    fused = torch.randn(6, 16, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 3, 4])
    head = ArcFaceHead(16, 5, focal=True).double()
    inputs = (words, regions, sentence, image, fused)
    for tensor in inputs:
        tensor.requires_grad_()
    total, parts = MultiGranularityLoss(head)(words, lengths, regions, sentence, image, labels, fused)
    expected = (WordRegionContrastiveLoss()(words, lengths, regions, labels)
                + 2 * CaptionImageContrastiveLoss()(sentence, image, labels) + 100 * head(fused, labels))
    torch.testing.assert_close(total, expected, **TOL)
    for got, want in zip(torch.autograd.grad(total, (*inputs, head.weight), retain_graph=True),
                         torch.autograd.grad(expected, (*inputs, head.weight), retain_graph=True)):
        torch.testing.assert_close(got, want, **TOL)
    assert set(parts) == {"wrcl", "cicl", "identity", "total"} and not parts["total"].requires_grad
    assert math.isclose(parts["total"].item(), parts["wrcl"] + 2 * parts["cicl"] + 100 * parts["identity"],
                        rel_tol=1e-9)
    with pytest.raises(ValueError, match="fused"):
        MultiGranularityLoss(head)(words, lengths, regions, sentence, image, labels)
    with pytest.raises(ValueError, match="fused embeddings were given, but there is no identity_head"):
        MultiGranularityLoss()(words, lengths, regions, sentence, image, labels, fused)
    weighted, _ = MultiGranularityLoss(head, wrcl_weight=0.5, cicl_weight=3.0, identity_weight=7.0)(
        words, lengths, regions, sentence, image, labels, fused)
    torch.testing.assert_close(weighted, 0.5 * parts["wrcl"] + 3.0 * parts["cicl"] + 7.0 * parts["identity"], **TOL)
    # Without a head (the align stage's use) there is no identity term, and no "identity" entry.
    total, parts = MultiGranularityLoss()(words, lengths, regions, sentence, image, labels)
    torch.testing.assert_close(total, expected - 100 * head(fused, labels), **TOL)
    assert set(parts) == {"wrcl", "cicl", "total"}


@pytest.mark.parametrize("name", ["sentence", "image", "fused"])
def test_multi_granularity_refuses_parts_of_another_batch(name):
    """Each term checks only its own inputs: sentences of 3 captions against words of 4 would add a
    WRCL over 4 pairs to a CICL over 3 without an error."""
    inputs = dict(words=torch.randn(4, 3, 8), lengths=torch.tensor([3, 2, 1, 3]), regions=torch.randn(4, 5, 8),
                  sentence=torch.randn(4, 6), image=torch.randn(4, 6), labels=torch.arange(4), fused=torch.randn(4, 16))
    inputs[name] = inputs[name][:3]
    with pytest.raises(ValueError, match=rf"{name} must have size 4 \(one row per caption of words\)"):
        MultiGranularityLoss(ArcFaceHead(16, 4))(**inputs)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_losses_infer_shapes_on_meta_and_fake_tensors(backend):
    """Shape inference (meta tensors, FakeTensorMode) through the word-region and combined losses,
    identity head included, gives the scalars they give on real tensors instead of failing where the
    length and label checks would read values."""
    torch.manual_seed(3)
    batch = dict(words=torch.randn(4, 3, 8), lengths=torch.tensor([3, 2, 1, 3]), regions=torch.randn(4, 5, 8),
                 sentence=torch.randn(4, 6), image=torch.randn(4, 6), labels=torch.tensor([0, 1, 0, 2]),
                 fused=torch.randn(4, 16))
    word_region = WordRegionContrastiveLoss(backend=backend)
    combined = MultiGranularityLoss(ArcFaceHead(16, 3), word_region=word_region)

    def shapes(inputs, combined=combined):
        wrcl = word_region(inputs["words"], inputs["lengths"], inputs["regions"], inputs["labels"])
        total, parts = combined(**inputs)
        return wrcl.shape, total.shape, {name: part.shape for name, part in parts.items()}

    expected = shapes(batch)
    assert expected == (torch.Size([]), torch.Size([]), dict.fromkeys(("wrcl", "cicl", "identity", "total"),
                                                                       torch.Size([])))
    meta_batch = {name: tensor.to("meta") for name, tensor in batch.items()}
    assert shapes(meta_batch, copy.deepcopy(combined).to("meta")) == expected
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        assert shapes({name: mode.from_tensor(tensor) for name, tensor in batch.items()}) == expected
        # Real lengths and labels made outside the mode: what is computed from them inside is fake too.
        real = ("lengths", "labels")
        assert shapes({name: tensor if name in real else mode.from_tensor(tensor)
                       for name, tensor in batch.items()}) == expected


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_stateful_losses_infer_shapes_on_meta_and_fake_tensors_and_keep_their_state(training):
    """CoReFace's margin update read its batch margin (.item()) and the association loss's prototype update
    selected finite images (nonzero): both failed on meta and fake tensors, and CoReFace moved to meta failed
    even in eval mode, reading its margin. Shapes are those of real tensors; the state stays as it was."""
    torch.manual_seed(4)
    view1, view2, labels = torch.randn(4, 8), torch.randn(4, 8), torch.tensor([0, 1, 0, 2])
    coreface, association = CoReFaceLoss().train(training), DualGranularityAssociationLoss(8, 3).train(training)
    coreface.margin.fill_(0.25)
    prototypes = association.prototypes.clone()

    def shapes(view1, view2, labels, coreface=coreface, association=association):
        loss, stats = association(view1, view2)
        return coreface(view1, view2, labels).shape, loss.shape, {name: part.shape for name, part in stats.items()}

    expected = (torch.Size([]), torch.Size([]), dict.fromkeys(("local", "global", "mean_confidence"), torch.Size([])))
    meta = (view1.to("meta"), view2.to("meta"), labels.to("meta"))
    assert shapes(*meta, copy.deepcopy(coreface).to("meta"), copy.deepcopy(association).to("meta")) == expected
    assert shapes(*meta) == expected  # meta inputs to a loss whose state is real
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        assert shapes(*(mode.from_tensor(tensor) for tensor in (view1, view2, labels))) == expected
    assert coreface.margin.item() == 0.25
    assert torch.equal(association.prototypes, prototypes)
    # Real inputs still update the state in training mode, so the checks above covered a skipped update.
    shapes(view1, view2, labels)
    assert (coreface.margin.item() != 0.25) == training
    assert (not torch.equal(association.prototypes, prototypes)) == training


def call_head(head, device):
    return head(torch.randn(3, 8, device=device), torch.tensor([0, 1, 3], device=device))


# loss, a call of it on inputs made on a device (-> a tensor), the input and the state its message names, whether
# building it under torch.device("meta") puts its state there (a head's torch.normal weight ignores the context)
STATEFUL_LOSS_CALLS = {
    "ArcFace": (lambda: ArcFaceHead(8, 4), call_head, "embeddings", "weight", False),
    "CosFace": (lambda: CosFaceHead(8, 4), call_head, "embeddings", "weight", False),
    "association": (lambda: DualGranularityAssociationLoss(8, 4),
                    lambda loss, device: loss(torch.randn(3, 8, device=device), torch.randn(3, 8, device=device))[0],
                    "image", "prototypes", True),
    "association assign": (lambda: DualGranularityAssociationLoss(8, 4),
                           lambda loss, device: loss.assign(torch.randn(3, 8, device=device))[1],
                           "image", "prototypes", True),
    "CoReFace": (CoReFaceLoss,
                 lambda loss, device: loss(torch.randn(3, 8, device=device), torch.randn(3, 8, device=device),
                                           torch.tensor([0, 1, 0], device=device)),
                 "view1", "margin", True),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", STATEFUL_LOSS_CALLS)
def test_losses_refuse_real_inputs_while_their_state_is_on_meta(case, training):
    """A loss moved to meta, or built under torch.device("meta") (deferred init) and never materialised, took CPU
    inputs: the heads and the association loss read uninitialised memory (a finite garbage loss), CoReFace read its
    margin as 0 and never moved it. Meta inputs are shape inference, and still take a real state."""
    make, call, input_name, state_name, builds_on_meta = STATEFUL_LOSS_CALLS[case]
    on_meta = [make().to("meta")]
    if builds_on_meta:
        with torch.device("meta"):
            on_meta.append(make())
    message = (f"^the loss's {state_name} is on meta, its input {input_name} on cpu: move the loss to its inputs' "
               r"device \(loss.to\('cpu'\)\)$")
    for loss in on_meta:
        assert getattr(loss, state_name).is_meta
        with pytest.raises(ValueError, match=message):
            call(loss.train(training), "cpu")
    assert call(make().train(training), "meta").is_meta


LOSS_FLAGS = {
    "WRCL word_softmax": (lambda flag: WordRegionContrastiveLoss(word_softmax=flag), "word_softmax"),
    "WRCL gather_ranks": (lambda flag: WordRegionContrastiveLoss(gather_ranks=flag), "gather_ranks"),
    "CICL gather_ranks": (lambda flag: CaptionImageContrastiveLoss(gather_ranks=flag), "gather_ranks"),
    "intra-modal gather_ranks": (lambda flag: IntraModalContrastiveLoss(gather_ranks=flag), "gather_ranks"),
    "CoReFace gather_ranks": (lambda flag: CoReFaceLoss(gather_ranks=flag), "gather_ranks"),
    "association gather_ranks": (lambda flag: DualGranularityAssociationLoss(8, 4, gather_ranks=flag), "gather_ranks"),
    "ArcFace focal": (lambda flag: ArcFaceHead(8, 4, focal=flag), "focal"),
    "CosFace focal": (lambda flag: CosFaceHead(8, 4, focal=flag), "focal"),
    "ArcFace gather_ranks": (lambda flag: ArcFaceHead(8, 4, gather_ranks=flag), "gather_ranks"),
    "CosFace gather_ranks": (lambda flag: CosFaceHead(8, 4, gather_ranks=flag), "gather_ranks"),
}


@pytest.mark.parametrize("case", LOSS_FLAGS)
def test_loss_flags_must_be_bools(case):
    """A string such as "False" is true to bool() and to an if: it would turn the option on."""
    make, name = LOSS_FLAGS[case]
    with pytest.raises(TypeError, match=f"{name} must be a bool, got str 'False'"):
        make("False")
    assert getattr(make(False), name) is False


def call_pair_loss(loss):
    return loss(torch.randn(3, 8), torch.randn(3, 8))


CONTRASTIVE_BACKENDS = ("auto", "reference", "cpu", "triton")
# loss of a backend, a call of it on CPU inputs, the backends its op takes (contrastive_loss, word_region_scores)
LOSS_BACKENDS = {
    "WRCL": (lambda backend: WordRegionContrastiveLoss(backend=backend),
             lambda loss: loss(torch.randn(3, 4, 8), torch.tensor([4, 2, 1]), torch.randn(3, 5, 8)),
             CONTRASTIVE_BACKENDS + ("cuda",)),
    "CICL": (lambda backend: CaptionImageContrastiveLoss(backend=backend), call_pair_loss, CONTRASTIVE_BACKENDS),
    "intra-modal": (lambda backend: IntraModalContrastiveLoss(backend=backend), call_pair_loss, CONTRASTIVE_BACKENDS),
    "CoReFace": (lambda backend: CoReFaceLoss(backend=backend),
                 lambda loss: loss(torch.randn(3, 8), torch.randn(3, 8), torch.tensor([0, 1, 0])),
                 CONTRASTIVE_BACKENDS),
    "association": (lambda backend: DualGranularityAssociationLoss(8, 4, backend=backend), call_pair_loss,
                    CONTRASTIVE_BACKENDS),
}


@pytest.mark.parametrize("case", LOSS_BACKENDS)
def test_loss_backends_are_refused_at_construction_as_the_first_call_refused_them(case):
    """The backend was the one argument not checked in __init__: a misspelt one surfaced at the first forward."""
    make, call, taken = LOSS_BACKENDS[case]
    for backend in ("bogus", "CPU", None, "cuda"):
        if backend in taken:
            continue
        loss = make("auto")
        loss.backend = backend  # past __init__'s check: what the forward says of it
        with pytest.raises(ValueError, match="^backend must be one of ") as at_call:
            call(loss)
        with pytest.raises(ValueError) as at_construction:
            make(backend)
        assert str(at_construction.value) == str(at_call.value)
    for backend in taken:
        assert make(backend).backend == backend


LOSS_NUMBERS = {
    "ArcFace margin": (lambda value: ArcFaceHead(8, 4, margin=value), "margin"),
    "CosFace margin": (lambda value: CosFaceHead(8, 4, margin=value), "margin"),
    "CoReFace momentum": (lambda value: CoReFaceLoss(momentum=value), "momentum"),
    "association min_confidence": (lambda value: DualGranularityAssociationLoss(8, 4, min_confidence=value),
                                   "min_confidence"),
    "association prototype_momentum": (lambda value: DualGranularityAssociationLoss(8, 4, prototype_momentum=value),
                                       "prototype_momentum"),
    "association local_weight": (lambda value: DualGranularityAssociationLoss(8, 4, local_weight=value),
                                 "local_weight"),
    "association global_weight": (lambda value: DualGranularityAssociationLoss(8, 4, global_weight=value),
                                  "global_weight"),
    "combined wrcl_weight": (lambda value: MultiGranularityLoss(wrcl_weight=value), "wrcl_weight"),
    "combined cicl_weight": (lambda value: MultiGranularityLoss(cicl_weight=value), "cicl_weight"),
    "combined identity_weight": (lambda value: MultiGranularityLoss(identity_weight=value), "identity_weight"),
}


@pytest.mark.parametrize("case", LOSS_NUMBERS)
def test_loss_numbers_name_a_wrong_type_or_a_non_finite_value(case):
    """A string such as "0.5" failed in a comparison with a TypeError naming no argument, or went
    through float() unnoticed; NaN passed a weight through to a NaN loss."""
    make, name = LOSS_NUMBERS[case]
    with pytest.raises(TypeError, match=f"{name} must be a number, got str '0.5'"):
        make("0.5")
    with pytest.raises(TypeError, match=f"{name} must be a number, got bool True"):
        make(True)
    with pytest.raises(ValueError, match=name):
        make(float("nan"))
    assert getattr(make(0.5), name) == 0.5
    # numpy scalars (a sweep over np.linspace) are numbers, stored as Python floats.
    for number in (np.float32(0.5), np.float64(0.5)):
        stored = getattr(make(number), name)
        assert type(stored) is float and stored == 0.5


# Hyperparameters that only a positive number makes sense for: 0 would flatten every logit (scale, gamma) or
# divide by zero (temperature). The ops' C++ kernels re-check some, not these constructors' values.
LOSS_POSITIVE_NUMBERS = {
    "ArcFace scale": (lambda value: ArcFaceHead(8, 4, scale=value), "scale"),
    "CosFace scale": (lambda value: CosFaceHead(8, 4, scale=value), "scale"),
    "CoReFace scale": (lambda value: CoReFaceLoss(scale=value), "scale"),
    "CICL scale": (lambda value: CaptionImageContrastiveLoss(scale=value), "scale"),
    "intra-modal scale": (lambda value: IntraModalContrastiveLoss(scale=value), "scale"),
    "association scale": (lambda value: DualGranularityAssociationLoss(8, 4, scale=value), "scale"),
    "association temperature": (lambda value: DualGranularityAssociationLoss(8, 4, temperature=value), "temperature"),
    **{f"WRCL {gamma}": (lambda value, gamma=gamma: WordRegionContrastiveLoss(**{gamma: value}), gamma)
       for gamma in ("gamma1", "gamma2", "gamma3")},
}


@pytest.mark.parametrize("case", LOSS_POSITIVE_NUMBERS)
def test_loss_positive_numbers_refuse_zero_and_take_the_smallest_positive_float(case):
    make, name = LOSS_POSITIVE_NUMBERS[case]
    for value in (0.0, -0.0, -1.0):
        with pytest.raises(ValueError, match=rf"^{name} must be a finite positive number"):
            make(value)
    assert getattr(make(5e-324), name) == 5e-324


BELOW_ZERO, ABOVE_ONE = math.nextafter(0.0, -1.0), math.nextafter(1.0, 2.0)
BELOW_MAX_MARGIN = math.nextafter(1.5, 0.0)
# name: (make, argument, values refused, values taken: the edges of its range).
LOSS_RANGES = {
    "ArcFace margin": (lambda value: ArcFaceHead(8, 4, margin=value), "margin", [BELOW_ZERO, 1.5, 2.0],
                       [0.0, BELOW_MAX_MARGIN]),
    "CosFace margin": (lambda value: CosFaceHead(8, 4, margin=value), "margin", [BELOW_ZERO, 1.5, 2.0],
                       [0.0, BELOW_MAX_MARGIN]),
    "CoReFace momentum": (lambda value: CoReFaceLoss(momentum=value), "momentum", [BELOW_ZERO, ABOVE_ONE, 1.5],
                          [0.0, 1.0]),
    "association min_confidence": (lambda value: DualGranularityAssociationLoss(8, 4, min_confidence=value),
                                   "min_confidence", [BELOW_ZERO, ABOVE_ONE, 1.5], [0.0, 1.0]),
    "association prototype_momentum": (lambda value: DualGranularityAssociationLoss(8, 4, prototype_momentum=value),
                                       "prototype_momentum", [BELOW_ZERO, ABOVE_ONE, 1.5], [0.0, 1.0]),
}


@pytest.mark.parametrize("case", LOSS_RANGES)
def test_loss_numbers_refuse_values_just_outside_their_range_and_take_its_edges(case):
    """Margins lie in [0, 1.5) (MAX_MARGIN; 1.5 itself is refused), momentums and min_confidence in [0, 1]."""
    make, name, refused, taken = LOSS_RANGES[case]
    for value in refused:
        with pytest.raises(ValueError, match=rf"{name}\b.* must lie in \[0, "):
            make(value)
    for value in taken:
        assert getattr(make(value), name) == value


LOSS_SIZES = {
    "ArcFace embedding_size": (lambda value: ArcFaceHead(value, 4), "embedding_size"),
    "ArcFace num_classes": (lambda value: ArcFaceHead(8, value), "num_classes"),
    "CosFace embedding_size": (lambda value: CosFaceHead(value, 4), "embedding_size"),
    "CosFace num_classes": (lambda value: CosFaceHead(8, value), "num_classes"),
    "association embedding_size": (lambda value: DualGranularityAssociationLoss(value, 4), "embedding_size"),
    "association num_prototypes": (lambda value: DualGranularityAssociationLoss(8, value), "num_prototypes"),
}


@pytest.mark.parametrize("case", LOSS_SIZES)
def test_loss_sizes_name_a_wrong_type_or_a_size_below_one(case):
    """A float size failed inside torch.normal or randn, a string or None in a comparison, naming no argument;
    True was taken as a size of 1."""
    make, name = LOSS_SIZES[case]
    for value in (8.0, "8", None, True, torch.tensor(8.0), torch.tensor(True), torch.tensor([4, 5])):
        with pytest.raises(TypeError, match=f"^{name} must be an integer, got {type(value).__name__} "):
            make(value)
    for value in (0, -3):
        with pytest.raises(ValueError, match=f"^{name} must be an integer >= 1, got {value}$"):
            make(value)
    # A numpy integer (a size read from an array) or a 0-dim integer tensor (labels.max() + 1) is a size;
    # the parameter or buffer takes it in that dimension.
    for value in (np.int64(5), torch.tensor([0, 4]).max() + 1):
        module = make(value)
        shape = (module.prototypes if isinstance(module, DualGranularityAssociationLoss) else module.weight).shape
        assert shape[1 if name == "embedding_size" else 0] == 5
    # One whose value is not there to read (meta): item()'s RuntimeError named no argument.
    with pytest.raises(TypeError, match=f"^{name} must be an integer whose value can be read"):
        make(torch.tensor(5, device="meta"))


@pytest.mark.parametrize("head_class,arc", [(ArcFaceHead, True), (CosFaceHead, False)])
def test_a_bfloat16_head_computes_its_logits_in_float32(head_class, arc):
    """A head cast to bf16 with bf16 embeddings: the cosines in bf16 would move a logit by about 0.2 at s 64."""
    torch.manual_seed(1)
    head = head_class(16, 10).bfloat16()
    embeddings, labels = torch.randn(12, 16).bfloat16(), torch.randint(0, 10, (12,))
    logits = head.logits(embeddings, labels)
    wide = head_class(16, 10).double()
    wide.weight.data.copy_(head.weight.data.double())
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.double(), wide.logits(embeddings.double(), labels), rtol=0, atol=1e-4)


@pytest.mark.parametrize("make", [
    lambda: MultiGranularityLoss(wrcl_weight=-1.0),
    lambda: MultiGranularityLoss(cicl_weight=-0.5),
    lambda: MultiGranularityLoss(identity_weight=-2),
    lambda: DualGranularityAssociationLoss(8, 4, local_weight=-1.0),
    lambda: DualGranularityAssociationLoss(8, 4, global_weight=-1.0),
])
def test_negative_loss_weights_are_refused(make):
    """The training config refuses them; the modules took them, and the optimizer would raise that term."""
    with pytest.raises(ValueError, match=r"_weight must be at least 0, got -"):
        make()


@pytest.mark.parametrize("case", [case for case, (_, name) in LOSS_NUMBERS.items() if name.endswith("_weight")])
def test_loss_weights_past_float32s_maximum_are_refused_by_name(case):
    """The losses are float32: a larger weight made them inf, where the gammas and scales of the same modules,
    and the training config's weights, were refused."""
    make, name = LOSS_NUMBERS[case]
    largest = torch.finfo(torch.float32).max
    with pytest.raises(ValueError, match=rf"^{name} must be a finite number of magnitude at most 3.40282e\+38, "
                                         r"got 1e\+39$"):
        make(1e39)
    assert getattr(make(largest), name) == largest


STATEFUL_LOSSES = {  # loss with the reference backend (which the transforms take), its call to a scalar, its state
    "CoReFace": (lambda: CoReFaceLoss(backend="reference"),
                 lambda loss, image, caption: loss(image, caption, torch.tensor([0, 1, 2, 0, 1, 2])),
                 "CoReFaceLoss's running margin (buffer margin)"),
    "association": (lambda: DualGranularityAssociationLoss(8, 3, backend="reference"),
                    lambda loss, image, caption: loss(image, caption)[0],
                    "DualGranularityAssociationLoss's memory (buffer prototypes)"),
}
TRANSFORMS = {
    "grad": lambda call, image, caption: torch.func.grad(call)(image, caption),
    "vjp": lambda call, image, caption: torch.func.vjp(call, image, caption),
    "jvp": lambda call, image, caption: torch.func.jvp(call, (image, caption), (image, caption)),
    "vmap": lambda call, image, caption: torch.func.vmap(call)(image.expand(2, -1, -1), caption.expand(2, -1, -1)),
}


@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("case", STATEFUL_LOSSES)
def test_stateful_losses_refuse_a_training_call_under_a_torch_func_transform_by_the_state(case, transform):
    """grad, vjp and jvp refused CoReFace's in-place margin update with PyTorch's error about a captured tensor;
    the association loss stored the transform's wrapper as its memory, and a later deepcopy failed on it. In eval
    mode, where the state is only read, a transform takes both: torch.func.grad gives autograd's gradient."""
    make, call, state = STATEFUL_LOSSES[case]
    generator = torch.Generator().manual_seed(5)
    image, caption = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    loss = make()
    before = {name: value.clone() for name, value in loss.named_buffers()}
    with pytest.raises(RuntimeError, match=rf"^{re.escape(state)} is updated by every training-mode call, .*"
                                           r"call the loss in eval mode \(loss\.eval\(\)\) under the transform"):
        TRANSFORMS[transform](lambda x, y: call(loss, x, y), image, caption)
    for name, value in loss.named_buffers():
        assert not torch._C._functorch.is_functorch_wrapped_tensor(value) and torch.equal(value, before[name]), name
    copy.deepcopy(loss)
    loss.eval()
    transformed = torch.func.grad(lambda x: call(loss, x, caption))(image)
    leaf = image.clone().requires_grad_()
    torch.testing.assert_close(transformed, torch.autograd.grad(call(loss, leaf, caption), leaf)[0], **TOL)


@pytest.mark.parametrize("term, weight, module_class, input_name", [
    ("wrcl", "wrcl_weight", WordRegionContrastiveLoss, "words"),
    ("cicl", "cicl_weight", CaptionImageContrastiveLoss, "sentence"),
    ("identity", "identity_weight", ArcFaceHead, "fused"),
])
def test_multi_granularity_skips_a_term_of_weight_0(term, weight, module_class, input_name, monkeypatch):
    """A term of weight 0 (an ablation) was computed, WRCL most of the cost, and an Inf in its input made the
    total 0 * Inf = NaN. Its value is reported as a zero of the other terms' dtype, and its inputs still get a
    (zero) gradient, as under 0 * term: DistributedDataParallel refuses a parameter that gets none."""
    generator = torch.Generator().manual_seed(6)
    inputs = dict(words=torch.randn(6, 4, 8, generator=generator), lengths=torch.tensor([4, 2, 3, 1, 4, 4]),
                  regions=torch.randn(6, 9, 8, generator=generator), sentence=torch.randn(6, 12, generator=generator),
                  image=torch.randn(6, 12, generator=generator), labels=torch.tensor([0, 1, 2, 0, 3, 4]),
                  fused=torch.randn(6, 16, generator=generator))
    head = ArcFaceHead(16, 5)
    weights = {"wrcl_weight": 1.0, "cicl_weight": 2.0, "identity_weight": 100.0, weight: 0.0}
    terms = {"wrcl": WordRegionContrastiveLoss()(inputs["words"], inputs["lengths"], inputs["regions"],
                                                 inputs["labels"]),
             "cicl": CaptionImageContrastiveLoss()(inputs["sentence"], inputs["image"], inputs["labels"]),
             "identity": head(inputs["fused"], inputs["labels"])}
    expected = sum(weights[f"{name}_weight"] * value for name, value in terms.items() if name != term)

    def refuse(*args, **kwargs):
        raise AssertionError(f"the {term} term of weight 0 was computed")

    monkeypatch.setattr(module_class, "forward", refuse)
    loss = MultiGranularityLoss(head, **weights)
    inputs[input_name] = inputs[input_name].clone()
    inputs[input_name][0, 0] = torch.inf
    inputs[input_name].requires_grad_()
    total, parts = loss(**inputs)
    torch.testing.assert_close(total, expected, **TOL)
    assert set(parts) == {"wrcl", "cicl", "identity", "total"}
    assert parts[term].item() == 0.0 and (parts[term].dtype, parts[term].device) == (total.dtype, total.device)
    total.backward()
    assert torch.equal(inputs[input_name].grad, torch.zeros_like(inputs[input_name]))
    if term == "identity":  # the skipped head's own parameters too, not only its input
        for name, parameter in head.named_parameters():
            assert parameter.grad is not None and torch.equal(parameter.grad, torch.zeros_like(parameter)), name


@pytest.mark.parametrize("weight, missing", [("wrcl_weight", ("regions",)), ("cicl_weight", ("sentence",)),
                                             ("cicl_weight", ("sentence", "image"))])
def test_a_term_of_weight_0_takes_none_for_the_inputs_only_it_reads(weight, missing):
    """An ablation that never computes a skipped term's features passes None: that was an AttributeError naming
    no argument. The other terms are as with the inputs given; something neither a tensor nor None is named."""
    generator = torch.Generator().manual_seed(7)
    inputs = dict(words=torch.randn(5, 4, 8, generator=generator), lengths=torch.tensor([4, 2, 3, 1, 4]),
                  regions=torch.randn(5, 9, 8, generator=generator), sentence=torch.randn(5, 12, generator=generator),
                  image=torch.randn(5, 12, generator=generator), labels=torch.tensor([0, 1, 2, 0, 3]))
    loss = MultiGranularityLoss(**{weight: 0.0})
    given_total, given_parts = loss(**inputs)
    total, parts = loss(**{**inputs, **dict.fromkeys(missing)})
    torch.testing.assert_close(total, given_total, rtol=0, atol=0)
    assert parts == given_parts and parts[weight.removesuffix("_weight")].item() == 0.0
    with pytest.raises(TypeError, match=rf"^{missing[0]} must be a torch\.Tensor, got str$"):
        loss(**{**inputs, missing[0]: "features"})
    with pytest.raises(ValueError, match=rf"^{missing[0]} "):  # a tensor given still describes the batch
        loss(**{**inputs, missing[0]: inputs[missing[0]][:4]})


def test_multi_granularity_refuses_an_identity_head_that_is_not_a_module():
    """A plain function worked as the identity head until a term of weight 0 kept the head's parameters in the
    graph (AttributeError there, at no other weight): the docstring's module is required at construction."""
    def identity_function(embeddings, labels):
        return embeddings.sum()

    for weight in (0.0, 100.0):
        with pytest.raises(TypeError, match=r"^identity_head must be an nn\.Module .*, got function$"):
            MultiGranularityLoss(identity_function, identity_weight=weight)
