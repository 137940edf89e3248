"""TGFR's training objective: word-region + caption-image contrastive terms and an identity
term on the fused face-caption embedding, weighted (SPEC section 3; TGFR: 1, 2, 100)."""

import torch
from torch import nn

from tgfr.losses.caption_image import CaptionImageContrastiveLoss
from tgfr.losses.word_region import WordRegionContrastiveLoss
from tgfr.reference import accumulation_dtype
from tgfr.validation import check_loss_weight, check_size, check_tensor


def skipped_term(*inputs: torch.Tensor | None) -> torch.Tensor:
    """The value of a term of weight 0: a zero scalar, in the accumulation dtype of the first input that is not None
    (an input of a term not computed may be left out) as the term's own value,
    that keeps the term's inputs (and parameters) in the graph with zero gradients, as 0 * term did:
    DistributedDataParallel (without find_unused_parameters) refuses a parameter without a gradient, such as the
    image head's region branch, which only WRCL uses. Summed over empty slices, not multiplied by 0: no Inf or NaN
    in the inputs makes it NaN."""
    inputs = [tensor for tensor in inputs if tensor is not None]
    dtype = accumulation_dtype(inputs[0].dtype)
    return sum(tensor.flatten()[:0].sum(dtype=dtype) for tensor in inputs)


class MultiGranularityLoss(nn.Module):
    """total = wrcl_weight * WRCL + cicl_weight * CICL + identity_weight * identity_head(fused, labels).

    Args:
        identity_head: a module (embeddings, labels) -> scalar, e.g. ArcFaceHead(..., focal=True);
            None drops the identity term.
        wrcl_weight, cicl_weight, identity_weight: TGFR's 1, 2 and 100 by default; at least 0 and at most
            float32's maximum. A term of weight 0 is not computed (an ablation): its value is reported as 0, and
            its inputs (regions for WRCL, sentence and image for CICL) may be None.
        word_region: the WRCL module (default WordRegionContrastiveLoss()).
        caption_image: the CICL module (default CaptionImageContrastiveLoss()).

    forward(words, lengths, regions, sentence, image, labels=None, fused=None) ->
        (total scalar, {"wrcl", "cicl", "identity", "total"} detached scalars for logging; "identity"
        only with an identity_head).
    """

    def __init__(self, identity_head: nn.Module | None = None, wrcl_weight: float = 1.0, cicl_weight: float = 2.0,
                 identity_weight: float = 100.0, word_region: nn.Module | None = None,
                 caption_image: nn.Module | None = None) -> None:
        super().__init__()
        # A module, not any callable: at weight 0 its parameters are kept in the graph (skipped_term) for DDP.
        if identity_head is not None and not isinstance(identity_head, nn.Module):
            raise TypeError(f"identity_head must be an nn.Module (embeddings, labels) -> scalar, or None, "
                            f"got {type(identity_head).__name__}")
        self.word_region = word_region if word_region is not None else WordRegionContrastiveLoss()
        self.caption_image = caption_image if caption_image is not None else CaptionImageContrastiveLoss()
        self.identity_head = identity_head
        self.wrcl_weight = check_loss_weight("wrcl_weight", wrcl_weight)
        self.cicl_weight = check_loss_weight("cicl_weight", cicl_weight)
        self.identity_weight = check_loss_weight("identity_weight", identity_weight)

    def forward(self, words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor, sentence: torch.Tensor,
                image: torch.Tensor, labels: torch.Tensor | None = None,
                fused: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """words (N, T, Dw), lengths (N,), regions (N, R, Dw), sentence (N, Ds), image (N, Ds),
        labels (N,) identities (needed by the identity term), fused (N, E) embeddings for it."""
        # Each term checks its own inputs; this makes them describe one batch. None passes for a term of weight 0.
        check_tensor("words", words, ndim=3)
        if self.wrcl_weight == 0 and regions is not None:  # else WRCL checks it
            check_tensor("regions", regions, ndim=3)
            check_size("regions", regions, 0, words.shape[0], "one row per caption of words")
        for name, tensor in (("sentence", sentence), ("image", image), ("fused", fused)):
            if tensor is not None:
                check_tensor(name, tensor, ndim=2)
                check_size(name, tensor, 0, words.shape[0], "one row per caption of words")
        # A term of weight 0 is not computed: WRCL is most of the cost, and 0 * an Inf term made the total NaN.
        components = {
            "wrcl": (self.word_region(words, lengths, regions, labels) if self.wrcl_weight > 0
                     else skipped_term(words, regions)),
            "cicl": (self.caption_image(sentence, image, labels) if self.cicl_weight > 0
                     else skipped_term(sentence, image, words)),
        }
        total = self.wrcl_weight * components["wrcl"] + self.cicl_weight * components["cicl"]
        if self.identity_head is not None:
            if fused is None or labels is None:
                raise ValueError("fused embeddings and labels are needed for the identity term (identity_head is set)")
            components["identity"] = (self.identity_head(fused, labels) if self.identity_weight > 0
                                      else skipped_term(fused, *self.identity_head.parameters()))
            total = total + self.identity_weight * components["identity"]
        elif fused is not None:  # would be dropped without a word: the caller expects an identity term
            raise ValueError("fused embeddings were given, but there is no identity_head to train them with")
        components["total"] = total
        return total, {name: value.detach() for name, value in components.items()}
