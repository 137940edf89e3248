"""Fused operators of tgfr (SPEC section 4). Importing this loads the compiled extension."""

from tgfr.ops import backends
from tgfr.ops.backends import available_backends
from tgfr.ops.contrastive import contrastive_cross_entropy, contrastive_loss, contrastive_row_max
from tgfr.ops.word_region import word_region_attention, word_region_scores

# The Triton ops (torch.ops.tgfr.*_triton) are registered here too, not only at the first backend="triton" call:
# a program exported or traced where "auto" took Triton (on CUDA) must load after `import tgfr.ops`.
if backends._TRITON_INSTALLED:
    try:
        from tgfr.ops import contrastive_triton, word_region_triton  # noqa: F401
    except ImportError:  # a broken Triton install: backend "triton" raises this error when asked for
        pass

__all__ = [
    "available_backends",
    "contrastive_cross_entropy",
    "contrastive_loss",
    "contrastive_row_max",
    "word_region_attention",
    "word_region_scores",
]
