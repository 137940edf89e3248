"""Word validity from caption lengths: word t of caption i is valid iff t < lengths[i] (SPEC section 2)."""

import torch

from tgfr.validation import check_size, check_tensor


def check_word_lengths(lengths: object, batch: int, num_words: int) -> torch.Tensor:
    """Checks lengths: (batch,) int32/int64 with values in [1, num_words]; returns it."""
    check_tensor("lengths", lengths, ndim=1, dtypes=(torch.int64, torch.int32))
    check_size("lengths", lengths, 0, batch, "the batch size")
    if lengths.numel() and bool(((lengths < 1) | (lengths > num_words)).any()):
        raise ValueError(f"lengths must lie in [1, T={num_words}], got values in "
                         f"[{int(lengths.min())}, {int(lengths.max())}]")
    return lengths


def valid_word_mask(lengths: torch.Tensor, num_words: int) -> torch.Tensor:
    """lengths (B,) -> (B, num_words) bool mask of the valid words."""
    return torch.arange(num_words, device=lengths.device)[None, :] < lengths[:, None]
