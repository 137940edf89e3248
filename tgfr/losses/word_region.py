"""WRCL: word-region contrastive loss (SPEC section 3), AttnGAN's DAMSM words loss batched.

logits = gamma3 * word_region_scores (N x M, the fused op keeps nothing bigger); symmetric
cross-entropy summed; with identity labels, other captions/images of one identity are dropped
from the softmax ("exclude", AttnGAN's class masking) or kept as negatives ("none").
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from tgfr.distributed import CollectiveCheckError, gather, gather_with_grad, is_distributed
from tgfr.ops.word_region import BACKENDS, GAMMA_MAX, word_region_scores
from tgfr.validation import (check_choice, check_flag, check_positive, check_same_device, check_size,
                             check_tensor, check_word_lengths)


def logits_fit_float32(gamma2: float, gamma3: float, words: int) -> bool:
    """Whether WRCL's float32 logits gamma3 * score stay finite, and so do their differences in the
    cross-entropy, for captions of `words` word slots: a score (SPEC section 2, step 6: log of a sum of
    at most `words` terms exp(gamma2 * cos), cosines in [-1, 1]) lies in [-gamma2, gamma2 + log(words)]."""
    return gamma3 * (gamma2 + math.log(max(words, 1))) <= GAMMA_MAX / 2


def _row_cross_entropy(logits: torch.Tensor, row_labels: torch.Tensor | None,
                       column_labels: torch.Tensor | None, offset: int, exclude: bool) -> torch.Tensor:
    """Mean CE of logits (n, M) whose row i targets column i + offset."""
    target = torch.arange(logits.shape[0], device=logits.device) + offset
    if exclude and row_labels is not None:
        same = row_labels[:, None] == column_labels[None, :]
        same[torch.arange(logits.shape[0], device=logits.device), target] = False
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, target)


class WordRegionContrastiveLoss(nn.Module):
    """Word-region contrastive loss.

    Args:
        gamma1, gamma2, word_softmax: of the word-region similarity (SPEC section 2).
        gamma3: logit scale of the scores (TGFR/AttnGAN: 10). Each gamma must be finite, positive and
            at most GAMMA_MAX (float32's maximum; a ValueError names it), and gamma3 * (gamma2 + log T)
            at most half of it (checked when called, with the T of `words`; see logits_fit_float32).
        same_identity: "exclude" (default) or "none", used when labels are given.
        gather_ranks: in a process group, compute the local form on features of all ranks (every rank
            holds N captions and images; the word dimension T may differ between ranks).
        backend: backend of tgfr.ops.word_region_scores.
    """

    def __init__(self, gamma1: float = 4.0, gamma2: float = 5.0, gamma3: float = 10.0, word_softmax: bool = True,
                 same_identity: str = "exclude", gather_ranks: bool = False, backend: str = "auto") -> None:
        super().__init__()
        # The op refuses gamma1 and gamma2 past GAMMA_MAX only when called; gamma3 scales its float32
        # scores here, where a larger one would make the loss NaN. All three are refused up front.
        self.gamma1, self.gamma2, self.gamma3 = (check_positive(name, value, GAMMA_MAX) for name, value in
                                                 (("gamma1", gamma1), ("gamma2", gamma2), ("gamma3", gamma3)))
        self.word_softmax = check_flag("word_softmax", word_softmax)
        self.same_identity = check_choice("same_identity", same_identity, ("exclude", "none"))
        self.gather_ranks = check_flag("gather_ranks", gather_ranks)
        self.backend = check_choice("backend", backend, BACKENDS)

    def _logits(self, words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        if not logits_fit_float32(self.gamma2, self.gamma3, words.shape[1]):
            raise ValueError(f"gamma3 * (gamma2 + log T) must be at most {GAMMA_MAX / 2:g} (half float32's maximum), "
                             f"got gamma2 {self.gamma2:g}, gamma3 {self.gamma3:g}, T {words.shape[1]}: the logits "
                             "or their differences would overflow")
        scores = word_region_scores(words, lengths, regions, self.gamma1, self.gamma2, self.word_softmax,
                                    self.backend)
        return self.gamma3 * scores

    def forward(self, words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        """words (N, T, D), lengths (N,), regions (N, R, D) of the N matching images, labels (N,)
        optional identities -> scalar: mean CE caption->image + mean CE image->caption."""
        check_tensor("words", words, ndim=3)  # its N sizes the checks below
        if labels is not None:
            check_tensor("labels", labels, ndim=1, dtypes=(torch.int64, torch.int32))
            check_size("labels", labels, 0, words.shape[0], "one label per caption of words")
        check_tensor("regions", regions, ndim=3)
        check_size("regions", regions, 0, words.shape[0], "one image per caption: N of words")
        if labels is not None:
            check_same_device(words=words, regions=regions, labels=labels)
        exclude = self.same_identity == "exclude"
        if not (self.gather_ranks and is_distributed()):
            logits = self._logits(words, lengths, regions)
            return (_row_cross_entropy(logits, labels, labels, 0, exclude)
                    + _row_cross_entropy(logits.T, labels, labels, 0, exclude))
        # Ranks may pad their captions to different T (collation with padding="longest"): gather them padded to
        # the longest T of any rank, with zero words past every caption's length, which the scores mask.
        words_per_rank = gather(torch.tensor([words.shape[1]], device=words.device)).tolist()
        check_tensor("lengths", lengths, ndim=1, dtypes=(torch.int64, torch.int32))
        check_size("lengths", lengths, 0, words.shape[0], "the number of captions N")
        all_lengths = gather(lengths)
        # Every rank checks every rank's lengths against that rank's T: a rank that raised alone would leave the
        # others waiting in the backward's all-reduce.
        for rank, (num_words, rank_lengths) in enumerate(zip(words_per_rank, all_lengths.split(words.shape[0]))):
            try:
                check_word_lengths(rank_lengths, words.shape[0], num_words)
            except ValueError as error:
                raise CollectiveCheckError(f"on rank {rank}: {error}") from None
        all_words, offset = gather_with_grad(F.pad(words, (0, 0, 0, max(words_per_rank) - words.shape[1])))
        all_regions, _ = gather_with_grad(regions)
        all_labels = None if labels is None else gather(labels)
        rows = self._logits(words, lengths, all_regions)
        columns = self._logits(all_words, all_lengths, regions).T
        return (_row_cross_entropy(rows, labels, all_labels, offset, exclude)
                + _row_cross_entropy(columns, labels, all_labels, offset, exclude))
