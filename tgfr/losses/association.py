"""Dual-granularity identity association for training without identity labels.

Only the abstract of the paper (arXiv 2507.06744) is public; this is tgfr's design.
Inputs are matched pairs (image i, caption i); identities are unknown.

Global level: a memory of K visual identity prototypes P (K, D), unit vectors, kept as a buffer.
Each image is assigned to its nearest prototype a_i = argmax_k cos(v_i, P_k), with confidence
c_i = max_k softmax_k(cos(v_i, P_k) / temperature): how clearly the image belongs to one
pseudo-identity. Its caption is associated with that prototype through a cross-entropy over
prototypes, s * cos(t_i, P_k) against a_i, weighted by c_i (detached):
    L_global = sum_i c_i CE_i / sum_i c_i.
The confidence adapts during training: in training mode every call moves each used prototype
towards the mean of its assigned (detached, normalized) images with `prototype_momentum`, so
assignments and confidences sharpen as the visual embedding and the memory organize. A call's
loss uses the memory as it was before that call's update (P_new = normalize(m P + (1 - m) mean)),
and the update puts the new memory in a new tensor, leaving the one the backward saved as it was.
Images with NaN/Inf make the loss non-finite but are left out of the update, so the memory stays
finite. A training-mode call under torch.inference_mode (or torch.no_grad) updates the memory too, as
CoReFace's margin is updated there, and the memory stays a normal tensor that later calls can save for
their backward; in eval mode the memory is never updated. Under a torch.func transform (grad, vjp, jvp,
vmap) a training-mode call raises RuntimeError, leaving the memory as it was; an eval-mode one runs.

Local level: within the batch, identity relations are built with the image as the anchor:
images whose assignment is confident (c_i >= min_confidence) share a pseudo-identity when they
share a prototype; an unconfident image gets a pseudo-identity of its own. Caption j then
describes image i's identity when image j has image i's pseudo-identity, and those captions are
extra positives of the symmetric image-caption contrastive loss (the fused op's "positive"
mode, so nothing N x N is stored):
    L_local = symmetric supervised contrastive loss of (images, captions) on pseudo-identities.
Total: local_weight * L_local + global_weight * L_global.
Assignments, confidences and L_global are computed in float32 (float64 for float64 inputs) from
16-bit inputs and under autocast, as the fused op computes L_local: the loss and its stats are float32.

Distributed (gather_ranks in a process group): the local form of tgfr.distributed. The batch is
the concatenation of the ranks' batches: L_local runs this rank's rows against all ranks'
columns, L_global divides this rank's share of sum_i c_i CE_i by the mean over ranks of sum_i c_i,
and the memory moves with the images of all ranks, so the mean of the ranks' losses and every
rank's memory are those of one process on the whole batch. The memory must start equal on every
rank (the training loop broadcasts rank 0's): it is drawn from the RNG, which differs per rank.
"""

from collections.abc import Callable
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

from tgfr.distributed import gather, is_distributed, mean_over_ranks, row_offset
from tgfr.losses.pairwise import (check_pairs, check_state_device, refuse_state_update_under_transforms,
                                  symmetric_contrastive_loss)
from tgfr.ops.autocast import without_autocast
from tgfr.ops.contrastive import BACKENDS, FLOAT_DTYPES
from tgfr.reference import accumulation_dtype
from tgfr.validation import (check_choice, check_count, check_finite_number, check_flag, check_loss_weight,
                             check_positive, check_size, check_tensor, values_readable)


class DualGranularityAssociationLoss(nn.Module):
    """Weakly supervised image-caption association loss (design in the module docstring).

    Args:
        embedding_size: D of the image and caption embeddings.
        num_prototypes: K pseudo-identities in the memory.
        scale: logit scale of both levels.
        temperature: of the confidence softmax over prototypes; at least 2 / the largest float32 number (float64
            for float64 features), so that a cosine over it stays finite.
        min_confidence: below it an image makes no batch-level relation.
        prototype_momentum: weight of the old prototype in its update.
        local_weight, global_weight: of the two levels.
        gather_ranks: in a process group, compute the local form over the batches of all ranks.
        backend: backend of the fused contrastive op.

    Buffer `prototypes` (K, D). forward(image, caption) -> (loss, stats) with stats a dict of
    detached tensors: "local", "global", "mean_confidence".
    """

    prototypes: torch.Tensor

    def __init__(self, embedding_size: int, num_prototypes: int, scale: float = 10.0, temperature: float = 0.1,
                 min_confidence: float = 0.5, prototype_momentum: float = 0.9, local_weight: float = 1.0,
                 global_weight: float = 1.0, gather_ranks: bool = False, backend: str = "auto") -> None:
        super().__init__()
        embedding_size = check_count("embedding_size", embedding_size)
        num_prototypes = check_count("num_prototypes", num_prototypes)
        self.scale, self.temperature = check_positive("scale", scale), check_positive("temperature", temperature)
        self.min_confidence = check_finite_number("min_confidence", min_confidence)
        self.prototype_momentum = check_finite_number("prototype_momentum", prototype_momentum)
        if not 0.0 <= self.min_confidence <= 1.0 or not 0.0 <= self.prototype_momentum <= 1.0:
            raise ValueError(f"min_confidence and prototype_momentum must lie in [0, 1], "
                             f"got {min_confidence}, {prototype_momentum}")
        self.local_weight = check_loss_weight("local_weight", local_weight)
        self.global_weight = check_loss_weight("global_weight", global_weight)
        self.gather_ranks = check_flag("gather_ranks", gather_ranks)
        self.backend = check_choice("backend", backend, BACKENDS)
        self.register_buffer("prototypes", F.normalize(torch.randn(num_prototypes, embedding_size), dim=1))

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Self:
        prototypes = self.prototypes
        super()._apply(fn, recurse)
        if self.prototypes.dtype in (torch.float16, torch.bfloat16):
            # A cast of the module (or of a model holding the loss) would round every moving-average step to 8 or
            # 11 bits: at momentum 0.999 a bfloat16 memory barely moves. Device moves still apply; every use of
            # the memory casts it to the accumulation dtype anyway.
            self.prototypes = prototypes.to(self.prototypes.device)
        return self

    @torch.no_grad()
    def assign(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (N, D) -> (assignment (N,) int64, confidence (N,)) against the memory, computed in the
        accumulation dtype (float32, float64 for float64 images) even under autocast."""
        check_tensor("image", image, ndim=2, dtypes=FLOAT_DTYPES)
        check_size("image", image, 1, self.prototypes.shape[1], "embedding_size of the loss")
        check_state_device("image", image, prototypes=self.prototypes)
        dtype = accumulation_dtype(image.dtype)
        # A cosine over a smaller temperature overflows: inf logits, a NaN softmax, wrong assignments moving the memory.
        # 2 / max, not 1 / max: the temperature rounded to the dtype, and a cosine rounded past 1, overflowed there.
        smallest_temperature = 2.0 / torch.finfo(dtype).max
        if self.temperature < smallest_temperature:
            raise ValueError(f"temperature must be at least {smallest_temperature:g} (2 / the largest {dtype} number) "
                             f"for {image.dtype} image features, got {self.temperature:g}")
        # In bf16 (autocast, or bf16 images) a cosine is off by up to 2^-9: divided by the temperature, enough to
        # flip the assignment of an image between two near prototypes and to round the confidence to 8 bits.
        with without_autocast(image.device.type):
            similarity = F.normalize(image.detach().to(dtype), dim=1) @ self.prototypes.to(dtype).T
            confidence, assignment = (similarity / self.temperature).softmax(dim=1).max(dim=1)
        return assignment, confidence

    # Run eagerly, as CoReFace's margin update: the selection of finite images has a data-dependent shape, and
    # torch.compile has dropped buffer updates (torch 2.13 drops in-place updates of 0-dim buffers).
    @torch.compiler.disable
    @torch.no_grad()
    def _update_prototypes(self, image: torch.Tensor, assignment: torch.Tensor) -> None:
        refuse_state_update_under_transforms("DualGranularityAssociationLoss's memory (buffer prototypes)")
        # Meta and fake tensors carry shapes only: no image to move a prototype with (nor a finite mask to select).
        if not (values_readable(image) and values_readable(self.prototypes)):
            return
        features = F.normalize(image.detach(), dim=1).to(self.prototypes.dtype)
        # An image with NaN/Inf makes the loss non-finite; in the memory it would make every later loss NaN.
        finite = features.isfinite().all(dim=1)
        features, assignment = features[finite], assignment[finite]
        sums = torch.zeros_like(self.prototypes).index_add_(0, assignment, features)
        counts = torch.bincount(assignment, minlength=self.prototypes.shape[0])
        means = sums / counts.clamp_min(1)[:, None]
        moved = F.normalize(self.prototype_momentum * self.prototypes + (1.0 - self.prototype_momentum) * means, dim=1)
        # A new tensor, not an in-place update: the memory tensor that a forward's matmul saved for its backward
        # (this call's, or an earlier call's still to come) must keep its values ("modified by an inplace
        # operation" otherwise). A copy of the memory in forward does not do it under torch.compile: inductor
        # removes the copy. Made outside inference mode even when called in it: an inference tensor as the buffer
        # would make every later autograd-recording call fail (it cannot be saved for backward), and
        # load_state_dict too (it cannot be updated in place outside inference mode).
        with torch.inference_mode(False), torch.no_grad():
            self.prototypes = torch.where((counts > 0)[:, None], moved, self.prototypes)

    def forward(self, image: torch.Tensor, caption: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """image, caption (N, D) matched pairs -> (scalar loss, stats)."""
        check_pairs(image, caption, None, ("image", "caption"))
        gathering = self.gather_ranks and is_distributed()
        assignment, confidence = self.assign(image)  # checks image's size against the memory
        # An unconfident image's own pseudo-identity: unique over the images of all ranks.
        first = row_offset(image.shape[0]) if gathering else 0
        own = -1 - first - torch.arange(image.shape[0], device=image.device)
        pseudo_identity = torch.where(confidence >= self.min_confidence, assignment, own)
        local = symmetric_contrastive_loss(image, caption, pseudo_identity, self.scale, "positive", gathering,
                                           self.backend, ("image", "caption"))
        # In the accumulation dtype, as the local level's fused op and the assignment: in bf16 a logit at scale 10
        # is off by up to about 0.02.
        dtype = accumulation_dtype(caption.dtype)
        with without_autocast(caption.device.type):
            memory = self.prototypes.to(dtype)
            prototype_logits = self.scale * F.normalize(caption.to(dtype), dim=1) @ memory.T
            per_caption = F.cross_entropy(prototype_logits, assignment, reduction="none")
        weight = confidence.to(per_caption.dtype)
        total_weight = mean_over_ranks(weight.sum()) if gathering else weight.sum()
        global_ = (weight * per_caption).sum() / total_weight
        if self.training:
            if gathering:
                self._update_prototypes(gather(image.detach()), gather(assignment))
            else:
                self._update_prototypes(image, assignment)
        loss = self.local_weight * local + self.global_weight * global_
        stats = {"local": local.detach(), "global": global_.detach(), "mean_confidence": confidence.mean()}
        return loss, stats
