"""Word validity from caption lengths: word t of caption i is valid iff t < lengths[i] (SPEC section 2)."""

import torch


def valid_word_mask(lengths: torch.Tensor, num_words: int) -> torch.Tensor:
    """lengths (B,) -> (B, num_words) bool mask of the valid words."""
    return torch.arange(num_words, device=lengths.device)[None, :] < lengths[:, None]
