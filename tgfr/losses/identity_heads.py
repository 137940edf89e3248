"""Margin-based softmax identity heads: ArcFace and CosFace (SPEC section 3), as arcface_torch's
normalized linear layer followed by CombinedMarginLoss, with TGFR's optional focal form.

logits[i, k] = scale * cos(theta_ik), theta_ik the angle between embedding i and class centre k;
the target class k = labels[i] gets cos(theta + margin) (ArcFace) or cos(theta) - margin
(CosFace). Past theta = pi - margin, where cos(theta + margin) would rise again as the sample moves
away from its class, ArcFace continues linearly with cos(theta) - margin * sin(pi - margin), as
arcface_torch does. The cosines, margins and scale are computed in float32 (float64 for float64
input) even under autocast: a bf16 cosine is off by up to 2^-9, 0.125 at scale 64; a scale above
that dtype's maximum is a ValueError at the call (every logit would be inf). focal=True applies
(1 - exp(-ce))^2 * ce to the batch-mean cross-entropy ce (TGFR's FocalLoss with gamma 2).

gather_ranks=True, in a process group: ce is the mean over the rows of all ranks (every rank must
hold as many rows), gathered with gradient (tgfr.distributed), so that focal sees the global
batch's cross-entropy; each rank's loss is then the single-process loss on the concatenated
batch, and DDP's averaging of parameter gradients gives its gradient. Focal is not linear in ce:
applied to each rank's own mean, the ranks would optimize the mean of focal(ce_rank) instead.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from tgfr.distributed import gather_with_grad, is_distributed
from tgfr.losses.pairwise import check_state_device
from tgfr.ops.autocast import without_autocast
from tgfr.validation import (check_count, check_finite_number, check_flag, check_nonempty, check_positive,
                             check_same_device, check_size, check_tensor, value_range, values_readable)

FLOAT_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_MARGIN = 1.5  # margins lie in [0, MAX_MARGIN) (the training config checks its margins against it too)


def focal(cross_entropy: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """(1 - p)^gamma * ce with p = exp(-ce), on an already reduced cross-entropy (any shape, elementwise);
    gamma a finite number >= 0."""
    check_tensor("cross_entropy", cross_entropy)
    # A negative gamma weights the well-classified samples up (NaN at ce 0); NaN or inf gives a NaN or zero loss.
    if check_finite_number("gamma", gamma) < 0:
        raise ValueError(f"gamma must be at least 0, got {gamma}")
    return (1.0 - torch.exp(-cross_entropy)) ** gamma * cross_entropy


class _MarginSoftmaxHead(nn.Module):
    def __init__(self, embedding_size: int, num_classes: int, scale: float, margin: float, focal: bool,
                 gather_ranks: bool) -> None:
        super().__init__()
        embedding_size = check_count("embedding_size", embedding_size)
        num_classes = check_count("num_classes", num_classes)
        self.scale = check_positive("scale", scale)
        self.margin = check_finite_number("margin", margin)
        if not 0.0 <= self.margin < MAX_MARGIN:
            raise ValueError(f"margin must lie in [0, {MAX_MARGIN}), got {margin}")
        self.focal = check_flag("focal", focal)
        self.gather_ranks = check_flag("gather_ranks", gather_ranks)
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (num_classes, embedding_size)))

    def target_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """embeddings (N, E), labels (N,) -> (N, num_classes) margin logits."""
        check_tensor("embeddings", embeddings, ndim=2, dtypes=FLOAT_TYPES)
        check_nonempty("embeddings", embeddings)  # the mean cross-entropy of no row is nan
        check_size("embeddings", embeddings, 1, self.weight.shape[1], "embedding_size of the head")
        check_tensor("labels", labels, ndim=1, dtypes=(torch.int64, torch.int32))
        check_size("labels", labels, 0, embeddings.shape[0], "one label per embedding")
        check_same_device(embeddings=embeddings, labels=labels)
        check_state_device("embeddings", embeddings, weight=self.weight)
        num_classes = self.weight.shape[0]
        labels_in_range = None
        if not values_readable(labels):  # unknown while torch.compile traces, and in meta/fake tensors: checked on run
            labels_in_range = ((labels >= 0) & (labels < num_classes)).all()
            torch._assert_async(labels_in_range, "labels must lie in [0, num_classes)")
        else:
            low, high = value_range(labels)
            if low < 0 or high >= num_classes:
                raise ValueError(f"labels must lie in [0, num_classes={num_classes}), got values in [{low}, {high}]")
        # Embeddings in another float dtype than the head (bf16 features, fp32 head outside autocast) are
        # compared in the widest of the two dtypes and float32 rather than failing in the matmul.
        dtype = torch.promote_types(torch.promote_types(embeddings.dtype, self.weight.dtype), torch.float32)
        # A scale past the dtype's maximum turns every logit into inf and the loss into NaN, silently.
        check_positive("scale", self.scale, torch.finfo(dtype).max)
        with without_autocast(embeddings.device.type):
            cosine = F.normalize(embeddings.to(dtype), dim=1) @ F.normalize(self.weight.to(dtype), dim=1).T
        cosine = cosine.clamp(-1.0, 1.0)
        if labels_in_range is not None:
            # Inductor fused the range check into the cross-entropy's gather, whose own bounds check then met a
            # bad label first with a generic "index out of bounds"; logits that depend on the check make every
            # use of the labels wait for it, so the assertion above speaks first.
            cosine = torch.where(labels_in_range, cosine, math.nan)
        rows = torch.arange(cosine.shape[0], device=cosine.device)
        target = self.target_cosine(cosine[rows, labels])
        cosine = cosine.index_put((rows, labels.long()), target)
        return self.scale * cosine

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """embeddings (N, E), labels (N,) class indices -> scalar loss (focal if asked); with
        gather_ranks in a process group, the loss of the ranks' rows together (N on every rank)."""
        logits = self.logits(embeddings, labels)
        if self.gather_ranks and is_distributed():
            rows, _ = gather_with_grad(F.cross_entropy(logits, labels.long(), reduction="none"))
            cross_entropy = rows.mean()
        else:
            cross_entropy = F.cross_entropy(logits, labels.long())
        return focal(cross_entropy) if self.focal else cross_entropy


class ArcFaceHead(_MarginSoftmaxHead):
    """ArcFace: additive angular margin, cos(theta + margin) on the target (s 64, m 0.5).

    focal: the focal form of the batch-mean cross-entropy. gather_ranks: in a process group, the loss
    of the ranks' rows together, focal included (module docstring).
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.5,
                 focal: bool = False, gather_ranks: bool = False) -> None:
        super().__init__(embedding_size, num_classes, scale, margin, focal, gather_ranks)

    def target_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        # cos(theta + m) expanded, so the gradient stays finite where arccos' would not.
        sine = (1.0 - cosine * cosine).clamp_min(1e-12).sqrt()
        shifted = cosine * math.cos(self.margin) - sine * math.sin(self.margin)
        linear = cosine - self.margin * math.sin(math.pi - self.margin)
        return torch.where(cosine > math.cos(math.pi - self.margin), shifted, linear)


class CosFaceHead(_MarginSoftmaxHead):
    """CosFace: additive cosine margin, cos(theta) - margin on the target (s 64, m 0.4).

    focal: the focal form of the batch-mean cross-entropy. gather_ranks: in a process group, the loss
    of the ranks' rows together, focal included (module docstring).
    """

    def __init__(self, embedding_size: int, num_classes: int, scale: float = 64.0, margin: float = 0.4,
                 focal: bool = False, gather_ranks: bool = False) -> None:
        super().__init__(embedding_size, num_classes, scale, margin, focal, gather_ranks)

    def target_cosine(self, cosine: torch.Tensor) -> torch.Tensor:
        return cosine - self.margin
