"""Readable PyTorch reference of every tgfr op: the baseline a user would write.

These functions materialize the full pairwise tensors (N*M*T*R and N*M*T*D for the word-region
similarity), which is exactly what the fused kernels avoid. Tests compare the kernels against
them and the benchmarks measure them. Inputs are assumed valid; the public ops check them.
"""

import torch

from tgfr.word_mask import valid_word_mask

_COS_EPS = 1e-8


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Computation dtype of the ops: float64 stays float64, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _valid_words(words: torch.Tensor, valid_word: torch.Tensor) -> torch.Tensor:
    """words with padded positions zeroed: whatever they hold (even NaN) then takes no part in the
    products, nor in their gradients (0 * NaN would be NaN)."""
    return words.masked_fill(~valid_word[..., None], 0)


def word_region_attention_all_pairs(
    words: torch.Tensor,
    lengths: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float = 4.0,
    word_softmax: bool = True,
) -> torch.Tensor:
    """alpha for every caption-image pair.

    words (N, T, D), lengths (N,), regions (M, R, D) -> alpha (N, M, T, R): for caption i and
    image j, a softmax over regions of gamma1 * a[t, r], where a is the dot product of word t and
    region r, first softmax-normalized over the caption's valid words when `word_softmax`.
    Rows of padded words are left as computed (they are masked by the callers).
    """
    dtype = accumulation_dtype(words.dtype)
    valid_word = valid_word_mask(lengths, words.shape[1])  # (N, T)
    w, v = _valid_words(words, valid_word).to(dtype), regions.to(dtype)
    attn = torch.einsum("ntd,mrd->nmtr", w, v)
    if word_softmax:
        attn = attn.masked_fill(~valid_word[:, None, :, None], float("-inf")).softmax(dim=2)
    return (gamma1 * attn).softmax(dim=3)


def word_region_scores(
    words: torch.Tensor,
    lengths: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    word_softmax: bool = True,
) -> torch.Tensor:
    """Word-region similarity of every caption with every image (SPEC section 2).

    words (N, T, D), lengths (N,) int64 in [1, T], regions (M, R, D) -> scores (N, M), float32
    (float64 for float64 inputs):
        scores[i, j] = log sum_{t < lengths[i]} exp(gamma2 * cos(c_ijt, w_it)),
        c_ijt = sum_r alpha[i, j, t, r] * v_jr.
    """
    dtype = accumulation_dtype(words.dtype)
    valid_word = valid_word_mask(lengths, words.shape[1])  # (N, T)
    w, v = _valid_words(words, valid_word).to(dtype), regions.to(dtype)
    alpha = word_region_attention_all_pairs(words, lengths, regions, gamma1, word_softmax)
    context = torch.einsum("nmtr,mrd->nmtd", alpha, v)
    dot = (context * w[:, None]).sum(dim=-1)  # (N, M, T)
    context_norms = context.norm(dim=-1)  # (N, M, T)
    word_norms = w.norm(dim=-1)[:, None].expand_as(context_norms)
    # A product of norms past the float range gives a cosine of 0 with a zero gradient, as in the kernels. Both
    # factors are 1 there: the product's backward would multiply one factor's zero gradient by the other, inf,
    # and the NaN would reach every caption and image through the attention. So are they at padded words, whose
    # cosines the kernels never form: their zero norm times an inf context norm is NaN, and so is the division's
    # zero gradient over it.
    discarded = (context_norms * word_norms).isinf() | ~valid_word[:, None, :]
    norms = context_norms.masked_fill(discarded, 1) * word_norms.masked_fill(discarded, 1)
    cos = torch.where(discarded, 0.0, dot / norms.clamp_min(_COS_EPS))
    logits = (gamma2 * cos).masked_fill(~valid_word[:, None, :], float("-inf"))
    return logits.logsumexp(dim=2)


def word_region_attention(
    words: torch.Tensor,
    lengths: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float = 4.0,
    word_softmax: bool = True,
) -> torch.Tensor:
    """alpha of the matching pairs (i, i) only.

    words (N, T, D), lengths (N,), regions (N, R, D) -> (N, T, R), zeros at padded words.
    """
    dtype = accumulation_dtype(words.dtype)
    valid_word = valid_word_mask(lengths, words.shape[1])  # (N, T)
    w, v = _valid_words(words, valid_word).to(dtype), regions.to(dtype)
    attn = torch.einsum("ntd,nrd->ntr", w, v)
    if word_softmax:
        attn = attn.masked_fill(~valid_word[:, :, None], float("-inf")).softmax(dim=1)
    alpha = (gamma1 * attn).softmax(dim=2)
    return alpha.masked_fill(~valid_word[:, :, None], 0.0)


def _contrastive_logits(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: float,
    margin: float,
    row_labels: torch.Tensor | None,
    column_labels: torch.Tensor | None,
    same_identity: str,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full (N, M) logits of the contrastive op, its positive mask and its diagonal mask."""
    dtype = accumulation_dtype(x.dtype)
    similarity = x.to(dtype) @ y.to(dtype).T
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    diagonal = torch.arange(y.shape[0], device=x.device)[None, :] == rows + offset
    same = torch.zeros_like(diagonal)
    if row_labels is not None and same_identity != "none":
        same = (row_labels[:, None] == column_labels[None, :]) & ~diagonal
    if same_identity == "zero":
        similarity = similarity.masked_fill(same, 0.0)
    logits = scale * (similarity - margin * diagonal.to(dtype))
    if same_identity == "exclude":
        logits = logits.masked_fill(same, float("-inf"))
    positive = diagonal | same if same_identity == "positive" else diagonal
    return logits, positive, diagonal


def contrastive_cross_entropy(
    x: torch.Tensor,
    y: torch.Tensor,
    scale: float = 10.0,
    margin: float = 0.0,
    row_labels: torch.Tensor | None = None,
    column_labels: torch.Tensor | None = None,
    same_identity: str = "none",
    direction: str = "both",
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row and per-column cross-entropy of the contrastive op, from the full logits matrix.

    x (N, D), y (M, D) -> (row_loss (N,), column_loss (M,)); a direction that is off gives (0,).
    logits[i, j] = scale * (<x_i, y_j> - margin * [j == i + offset]); an off-diagonal entry whose
    labels agree is dropped ("exclude"), has its similarity set to 0 ("zero"), is one more
    positive ("positive": the loss is minus the mean log-probability of the positives) or is an
    ordinary negative ("none"). Row i's target is column i + offset, column j's is row j - offset.
    """
    logits, positive, _ = _contrastive_logits(x, y, scale, margin, row_labels, column_labels, same_identity, offset)

    def cross_entropy(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_prob = scores.log_softmax(dim=1)
        # where() instead of a product so excluded -inf entries give 0, not nan.
        picked = torch.where(targets, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
        return -picked / targets.sum(dim=1)

    empty = logits.new_zeros(0)
    row_loss = cross_entropy(logits, positive) if direction in ("rows", "both") else empty
    column_loss = cross_entropy(logits.T, positive.T) if direction in ("columns", "both") else empty
    return row_loss, column_loss


def contrastive_row_max(
    x: torch.Tensor,
    y: torch.Tensor,
    row_labels: torch.Tensor | None = None,
    column_labels: torch.Tensor | None = None,
    same_identity: str = "none",
    offset: int = 0,
) -> torch.Tensor:
    """Hardest negative of each row: max of the masked similarity <x_i, y_j> over the columns that
    are no positive of row i, -inf when there is none: (N,). The positives are the target
    j = i + offset and, in mode "positive", the other columns of the row's identity."""
    logits, positive, _ = _contrastive_logits(x, y, 1.0, 0.0, row_labels, column_labels, same_identity, offset)
    return logits.masked_fill(positive, float("-inf")).amax(dim=1)
