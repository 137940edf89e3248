"""Intra-modal contrastive loss: two views of one modality (two captions of a face, two
embedding-augmented views of an image) against each other (SPEC section 3)."""

import torch
from torch import nn

from tgfr.losses.pairwise import symmetric_contrastive_loss
from tgfr.ops.contrastive import BACKENDS, SAME_IDENTITY_MODES
from tgfr.validation import check_choice, check_flag, check_positive


class IntraModalContrastiveLoss(nn.Module):
    """Symmetric contrastive loss between view1[i] and view2[i] of one modality.

    Args:
        scale: logit scale.
        same_identity: handling of other pairs of one identity when labels are given
            ("positive": supervised contrastive, by default).
        gather_ranks: in a process group, compute the local form on features of all ranks.
        backend: backend of the fused contrastive op.
    """

    def __init__(self, scale: float = 10.0, same_identity: str = "positive", gather_ranks: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        self.scale = check_positive("scale", scale)
        self.same_identity = check_choice("same_identity", same_identity, SAME_IDENTITY_MODES)
        self.gather_ranks = check_flag("gather_ranks", gather_ranks)
        self.backend = check_choice("backend", backend, BACKENDS)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """view1, view2 (N, D) two views of the same N samples, labels (N,) optional -> scalar."""
        return symmetric_contrastive_loss(view1, view2, labels, self.scale, self.same_identity,
                                          self.gather_ranks, self.backend, ("view1", "view2"))
