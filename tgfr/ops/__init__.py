"""Fused operators of tgfr (SPEC section 4). Importing this loads the compiled extension."""

from tgfr.ops.backends import available_backends
from tgfr.ops.contrastive import contrastive_cross_entropy, contrastive_loss, contrastive_row_max
from tgfr.ops.word_region import word_region_attention, word_region_scores

__all__ = [
    "available_backends",
    "contrastive_cross_entropy",
    "contrastive_loss",
    "contrastive_row_max",
    "word_region_attention",
    "word_region_scores",
]
