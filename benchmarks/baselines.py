"""The strongest plain-PyTorch baselines the fused ops are measured against.

Besides the vectorized reference (tgfr.reference), a careful user has two more options:
- chunked and activation-checkpointed: the reference applied to a block at a time (word-region:
  a block of captions against all images; contrastive: a block of rows, then of columns, of the
  logits matrix), each block under torch.utils.checkpoint, so only one block's pairwise tensors
  live at once, in the forward and (recomputed) in the backward;
- torch.compile of the reference (inductor; dynamic shapes so one compilation serves every N).
Each op's implementations are looked up by name: "fused", "reference", "chunked_checkpointed",
"compiled_reference".
"""

import functools

import torch
import torch.nn.functional as F
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


def reference_contrastive_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    labels: torch.Tensor | None = None,
    scale: float = 10.0,
    margin: float = 0.0,
    same_identity: str = "none",
) -> torch.Tensor:
    """Symmetric contrastive loss from the full (N, N) logits matrix (tgfr.reference), scalar.

    x, y (N, D), L2-normalized here; labels (N,) or None: mean row plus mean column
    cross-entropy to the diagonal, same-identity entries handled by `same_identity`.
    """
    x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    row_loss, column_loss = reference.contrastive_cross_entropy(x, y, scale, margin, labels, labels, same_identity)
    return row_loss.mean() + column_loss.mean()


CONTRASTIVE_CHUNK_ROWS = 1024


def chunked_checkpointed_contrastive_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    labels: torch.Tensor | None = None,
    scale: float = 10.0,
    margin: float = 0.0,
    same_identity: str = "none",
    chunk_rows: int = CONTRASTIVE_CHUNK_ROWS,
) -> torch.Tensor:
    """reference_contrastive_loss over (chunk_rows, N) blocks of logits, each checkpointed.

    Row losses come from blocks of rows of x against all of y, column losses from blocks of y
    against all of x (the block's targets found through the reference's `offset`), so at most
    one chunk_rows x N block of logits lives at a time.
    """
    x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    size = x.shape[0]

    def block_loss(start: int, queries: torch.Tensor, keys: torch.Tensor, direction: str) -> torch.Tensor:
        stop = start + queries.shape[0]
        block_labels = None if labels is None else labels[start:stop]
        if direction == "rows":
            row_loss, _ = reference.contrastive_cross_entropy(
                queries, keys, scale, margin, block_labels, labels, same_identity, "rows", start
            )
            return row_loss.sum()
        _, column_loss = reference.contrastive_cross_entropy(
            keys, queries, scale, margin, labels, block_labels, same_identity, "columns", -start
        )
        return column_loss.sum()

    total = x.new_zeros((), dtype=torch.float32)
    for start in range(0, size, chunk_rows):
        stop = start + chunk_rows
        total = total + checkpoint(block_loss, start, x[start:stop], y, "rows", use_reentrant=False)
        total = total + checkpoint(block_loss, start, y[start:stop], x, "columns", use_reentrant=False)
    return total / size


@functools.cache
def compiled_contrastive_loss():
    """torch.compile of reference_contrastive_loss, built once per process."""
    return torch.compile(reference_contrastive_loss, dynamic=True)


CONTRASTIVE_IMPLEMENTATIONS = ("fused", "reference", "chunked_checkpointed", "compiled_reference")


def contrastive_function(implementation: str):
    """The loss function (x, y, labels, scale, margin, same_identity) -> scalar of one implementation."""
    import tgfr.ops

    if implementation == "fused":
        def fused(x, y, labels=None, scale=10.0, margin=0.0, same_identity="none"):
            return tgfr.ops.contrastive_loss(x, y, scale, margin, labels, same_identity=same_identity, backend="cpu")

        return fused
    if implementation == "reference":
        return reference_contrastive_loss
    if implementation == "chunked_checkpointed":
        return chunked_checkpointed_contrastive_loss
    if implementation == "compiled_reference":
        return compiled_contrastive_loss()
    raise ValueError(f"implementation must be one of {CONTRASTIVE_IMPLEMENTATIONS}, got {implementation!r}")
