"""CoReFace contrastive regularization (SPEC section 3; arXiv 2304.11668, IsidoreSong/CoreFace).

Two dropout views z, z' of each embedding; C_ij = clamp(cos(z_i, z'_j), -1, 1), off-diagonal
entries of one identity set to 0; adaptive margin from the batch, on detached values,
    m_batch = mean_i(C_ii - max_{j != i} C_ij)
as SPEC section 3 has it, over the rows that have a negative (the row of a batch of one has none, so no
margin to measure; counted as -1 it moved the running margin to about 2), kept as a running value
m <- momentum * m_batch + (1 - momentum) * m starting at 0 (a batch without any such row leaves it as
it was) and used on the same batch; loss = CE over j of s * (C_ij - m [i == j]) against the diagonal,
view1 rows only.
The release zeroes the diagonal before taking the row maximum, which makes its hardest negative
max(0, max_{j != i} C_ij): it differs from this one only for a row whose negatives all have a
cosine below 0.
The hardest negatives come from a separate forward-only tiled pass (contrastive_row_max), so
nothing N x N is stored: the margin has to be known before the fused cross-entropy starts.
"""

from collections.abc import Callable
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from tgfr.distributed import gather, gather_with_grad, is_distributed, mean_over_ranks
from tgfr.losses.pairwise import check_pairs, check_state_device, refuse_state_update_under_transforms
from tgfr.ops.autocast import without_autocast
from tgfr.ops.contrastive import BACKENDS, contrastive_loss, contrastive_row_max
from tgfr.reference import accumulation_dtype
from tgfr.validation import check_choice, check_finite_number, check_flag, check_positive, values_readable


class CoReFaceLoss(nn.Module):
    """CoReFace's contrastive term L_C (the released `ContraFace`).

    Args:
        scale: logit scale s (64).
        momentum: weight of the batch margin in the running margin (0.99, as released).
        gather_ranks: in a process group, compute the local form on features of all ranks, and move the
            running margin by the batch margin of all ranks' rows (the same on every rank); without it, a
            rank's margin follows its own batches only.
        backend: backend of the fused contrastive op.

    Buffer `margin` (float64 scalar): the running margin m, updated by every training-mode call whose
    batch margin is finite (a batch with NaN/Inf gives a non-finite loss and leaves m as it was). It stays
    float64 when the module is cast to another dtype (.half(), .to(torch.bfloat16)). Meta and fake
    tensors (FakeTensorMode) give the loss's shape and leave m as it was. Under a torch.func transform (grad,
    vjp, jvp, vmap) a training-mode call raises RuntimeError, leaving m as it was; an eval-mode one runs.
    """

    margin: torch.Tensor

    def __init__(self, scale: float = 64.0, momentum: float = 0.99, gather_ranks: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        self.scale = check_positive("scale", scale)
        self.momentum = check_finite_number("momentum", momentum)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
        self.gather_ranks = check_flag("gather_ranks", gather_ranks)
        self.backend = check_choice("backend", backend, BACKENDS)
        self.register_buffer("margin", torch.zeros((), dtype=torch.float64))

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Self:
        margin = self.margin
        super()._apply(fn, recurse)
        if self.margin.dtype != torch.float64:
            # A cast of the module (or of a model holding the loss) would round the running margin to the new dtype,
            # 8 significant bits in bf16, so margin and loss would drift from SPEC's float64 ones. Device moves
            # still apply: only the dtype is kept.
            self.margin = margin.to(self.margin.device)
        return self

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """view1, view2 (N, D) two embedding-augmented views, labels (N,) identities -> scalar.

        In eval mode the running margin is used as it is, not updated."""
        # Checked before the row-wise product below, which would broadcast mismatched views silently.
        if labels is None:
            raise ValueError("labels must be given: CoReFace zeroes the off-diagonal entries of one identity")
        check_pairs(view1, view2, labels, ("view1", "view2"))
        # Before the margin update: a meta margin was read as 0 and never moved, silently.
        check_state_device("view1", view1, margin=self.margin)
        # The fused op refuses such a scale too, but only after _update_margin has moved the margin.
        check_positive("scale", self.scale, torch.finfo(accumulation_dtype(view1.dtype)).max)
        columns, offset, column_labels = view2, 0, labels
        if self.gather_ranks and is_distributed():
            columns, offset = gather_with_grad(view2)
            column_labels = gather(labels)
        common = dict(row_labels=labels, column_labels=column_labels, same_identity="zero", offset=offset,
                      backend=self.backend)
        if self.training:
            self._update_margin(view1, view2, columns, common)
            return self._training_cross_entropy(view1, columns, common)
        return self._cross_entropy(view1, columns, common)

    def _cross_entropy(self, view1: torch.Tensor, columns: torch.Tensor, common: dict[str, Any]) -> torch.Tensor:
        # A meta or fake margin has no value to read (while torch.compile traces, the value is the buffer's); the
        # loss's shape, all there is to compute then, does not depend on it.
        readable = torch.compiler.is_compiling() or values_readable(self.margin)
        margin = float(self.margin) if readable else 0.0
        # Float32 even under autocast, where the fused op would take bf16 on CUDA: at scale 64 bf16-rounded views
        # move a logit by up to about 0.25 (2^-8 in a cosine), as for the margin below.
        with without_autocast(view1.device.type):
            return contrastive_loss(view1, columns, self.scale, margin=margin, direction="rows", **common)

    # Run eagerly in training, where the margin changes every step: torch.compile would guard on the float margin
    # (the fused op takes a float) and compile the rest of forward again at every step. The training graph breaks at
    # _update_margin anyway, and the fused op is opaque to the compiler, so nothing is lost.
    @torch.compiler.disable
    def _training_cross_entropy(self, view1: torch.Tensor, columns: torch.Tensor,
                                common: dict[str, Any]) -> torch.Tensor:
        return self._cross_entropy(view1, columns, common)

    # Run eagerly: torch.compile (aot_eager, inductor; torch 2.13) drops in-place updates of a 0-dim buffer, which
    # left the margin at 0 in compiled training; and the finiteness check below branches on data.
    @torch.compiler.disable
    @torch.no_grad()
    def _update_margin(self, view1: torch.Tensor, view2: torch.Tensor, columns: torch.Tensor,
                       common: dict[str, Any]) -> None:
        refuse_state_update_under_transforms("CoReFaceLoss's running margin (buffer margin)")
        # Meta and fake tensors carry shapes only: there is no batch margin to read, nor a running one to move.
        if not (values_readable(view1) and values_readable(self.margin)):
            return
        # In the ops' accumulation dtype, as the hardest negatives and the cross-entropy are: from 16-bit views
        # the positive cosines would be off by up to 2^-8 (bf16), 0.25 in a logit at scale 64.
        dtype = accumulation_dtype(view1.dtype)
        z1, z2 = F.normalize(view1.to(dtype), dim=1), F.normalize(view2.to(dtype), dim=1)
        positive = (z1 * z2).sum(dim=1).clamp(-1.0, 1.0).double()
        hardest = contrastive_row_max(view1, columns, **common).double()
        measured = hardest != -torch.inf  # rows that have a negative
        margins = (positive - hardest.clamp(-1.0, 1.0))[measured]
        total, count = margins.sum(), measured.sum().double()
        if self.gather_ranks:
            # The margin of the ranks' batch together, the same on every rank. Without gather_ranks each rank is on
            # its own: a collective here would wait for ranks that never call the loss.
            total, count = mean_over_ranks(total), mean_over_ranks(count)
        batch_margin = total / count  # NaN without any measured row
        # A batch with NaN/Inf gets a non-finite loss from its features; its margin must not stay in the state,
        # where it would poison every later call. With gather_ranks the mean makes the skip the same on every rank.
        if torch.isfinite(batch_margin):
            self.margin.mul_(1.0 - self.momentum).add_(self.momentum * batch_margin)
