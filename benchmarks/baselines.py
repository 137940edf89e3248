"""The strongest plain-PyTorch baselines the fused ops are measured against.

Besides the vectorized reference (tgfr.reference), a careful user has two more options:
- chunked and activation-checkpointed: the reference applied to a block of captions at a time
  against all images, each block under torch.utils.checkpoint, so only one block's pairwise
  tensors live at once, in the forward and (recomputed) in the backward;
- torch.compile of the reference (inductor; dynamic shapes so one compilation serves every N).
"""

import functools

import torch
from torch.utils.checkpoint import checkpoint

from tgfr import reference

# Pairs (caption, image) per block: the pairwise tensors of a block at the `tgfr` shape are
# 256 * 22 * 256 * 4 B = 5.8 MB each, small against any realistic budget, yet a block is still
# a few hundred GEMM-shaped products, so the chunking costs little speed.
CHUNK_PAIRS = 256


def chunked_checkpointed_word_region_scores(
    words: torch.Tensor,
    lengths: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    word_softmax: bool = True,
    chunk_pairs: int = CHUNK_PAIRS,
) -> torch.Tensor:
    """tgfr.reference.word_region_scores over blocks of max(1, chunk_pairs // M) captions.

    words (N, T, D), lengths (N,), regions (M, R, D) -> scores (N, M) float32. Each block is
    checkpointed: its N_block*M*T*R and N_block*M*T*D tensors are freed after the forward and
    rebuilt one block at a time in the backward.
    """
    rows = max(1, chunk_pairs // regions.shape[0])
    blocks = [
        checkpoint(
            reference.word_region_scores,
            words[start : start + rows],
            lengths[start : start + rows],
            regions,
            gamma1,
            gamma2,
            word_softmax,
            use_reentrant=False,
        )
        for start in range(0, words.shape[0], rows)
    ]
    return torch.cat(blocks)


@functools.cache
def compiled_word_region_scores():
    """torch.compile of tgfr.reference.word_region_scores, built once per process."""
    return torch.compile(reference.word_region_scores, dynamic=True)


WORD_REGION_IMPLEMENTATIONS = ("fused", "reference", "chunked_checkpointed", "compiled_reference")


def word_region_function(implementation: str):
    """The scores function (words, lengths, regions) -> (N, M) of one implementation name."""
    import tgfr.ops

    if implementation == "fused":
        return functools.partial(tgfr.ops.word_region_scores, backend="cpu")
    if implementation == "reference":
        return reference.word_region_scores
    if implementation == "chunked_checkpointed":
        return chunked_checkpointed_word_region_scores
    if implementation == "compiled_reference":
        return compiled_word_region_scores()
    raise ValueError(f"implementation must be one of {WORD_REGION_IMPLEMENTATIONS}, got {implementation!r}")
