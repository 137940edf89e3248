"""CICL: caption-image (global) contrastive loss (SPEC section 3)."""

import torch
from torch import nn

from tgfr.losses.pairwise import symmetric_contrastive_loss
from tgfr.ops.contrastive import BACKENDS, SAME_IDENTITY_MODES
from tgfr.validation import check_choice, check_flag, check_positive


class CaptionImageContrastiveLoss(nn.Module):
    """CLIP's symmetric loss summed (caption->image CE + image->caption CE), logits = scale * cos.

    Args:
        scale: logit scale (TGFR: 10).
        same_identity: handling of other pairs of one identity when labels are given
            ("exclude", AttnGAN's class masking, by default).
        gather_ranks: in a process group, compute the local form on features of all ranks.
        backend: backend of the fused contrastive op.
    """

    def __init__(self, scale: float = 10.0, same_identity: str = "exclude", gather_ranks: bool = False,
                 backend: str = "auto") -> None:
        super().__init__()
        self.scale = check_positive("scale", scale)
        self.same_identity = check_choice("same_identity", same_identity, SAME_IDENTITY_MODES)
        self.gather_ranks = check_flag("gather_ranks", gather_ranks)
        self.backend = check_choice("backend", backend, BACKENDS)

    def forward(self, sentence: torch.Tensor, image: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """sentence (N, D) caption embeddings, image (N, D) embeddings of their images, labels
        (N,) optional identities -> scalar."""
        return symmetric_contrastive_loss(sentence, image, labels, self.scale, self.same_identity,
                                          self.gather_ranks, self.backend, ("sentence", "image"))
