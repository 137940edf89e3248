"""FCFM: fusion of aligned face and caption features into one identity embedding.

FCFM = [fine-grained interaction (fine_dim) | LayerNorm(global image) (D) | LayerNorm(sentence) (D)],
128 + 256 + 256 = 640 in TGFR. The fine-grained part lets every region attend over the caption's
valid words (padded words masked), adds the attended word context to the region (residual,
LayerNorm), averages over regions and projects to fine_dim. The coarse part follows TGFR's code
(LayerNorm on each normalized global feature). `LinearFusion` and `ConcatFusion` are the
baselines; every fusion module has the same call signature and an `out_dim`.
"""

import math

import torch
from torch import nn

from tgfr.models.input_dtype import check_input_dtype
from tgfr.ops.autocast import autocast_enabled
from tgfr.word_mask import valid_word_mask
from tgfr.validation import check_nonempty, check_size, check_tensor, check_word_lengths

FUSIONS = ("fcfm", "linear", "concat")


def _check_features(module: nn.Module, regions, words, lengths, **global_features: torch.Tensor) -> None:
    """Checks regions (B, R, D), words (B, T, D), lengths (B,) in [1, T] and any (B, D) global_features against
    module.dim and module's parameter dtype, naming the argument."""
    for name, value, ndim in (("regions", regions, 3), ("words", words, 3),
                              *((name, value, 2) for name, value in global_features.items())):
        check_tensor(name, value, ndim=ndim)
        check_size(name, value, ndim - 1, module.dim, "the alignment dimension D")
        check_size(name, value, 0, regions.shape[0], "the batch size of regions")
        check_input_dtype(name, value, module)
    check_nonempty("regions", regions, 0)
    check_nonempty("regions", regions, 1)  # the fine-grained mean over no region is NaN
    check_word_lengths(lengths, regions.shape[0], words.shape[1])


def _check_aligned(fusion: nn.Module, regions, words, lengths, image_global, sentence) -> None:
    _check_features(fusion, regions, words, lengths, image_global=image_global, sentence=sentence)
    for name, value in (("regions", regions), ("words", words), ("image_global", image_global),
                        ("sentence", sentence)):
        _check_autocast_mix(name, value)


def _check_autocast_mix(name: str, value: torch.Tensor) -> None:
    """Every fusion concatenates its features, and torch.cat under autocast fails on a 16-bit input of the
    other 16-bit dtype than autocast's ("Unexpected floating ScalarType in at::autocast::prioritize")."""
    device = value.device.type
    if value.dtype in (torch.float16, torch.bfloat16) and autocast_enabled(device):
        autocast_dtype = torch.get_autocast_dtype(device)
        if value.dtype != autocast_dtype:
            raise TypeError(f"{name} has dtype {str(value.dtype).removeprefix('torch.')}, which torch.autocast "
                            f"with dtype {str(autocast_dtype).removeprefix('torch.')} cannot concatenate with its "
                            f"own; pass float32 or {str(autocast_dtype).removeprefix('torch.')} features")


class FineGrainedInteraction(nn.Module):
    """Regions attend over valid words: (B, R, D), (B, T, D), lengths (B,) -> (B, out_dim); padded words
    (t >= lengths) take no part, whatever they hold (NaN or Inf too)."""

    def __init__(self, dim: int = 256, out_dim: int = 128):
        super().__init__()
        self.dim = dim
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.project = nn.Linear(dim, out_dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, regions: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # A length of 0 masked every word (a NaN row from the softmax), one past T was read as T.
        _check_features(self, regions, words, lengths)
        padded = ~valid_word_mask(lengths, words.shape[1])  # (B, T)
        # A padded word's value enters the product below with weight 0, and its key meets the queries' gradient:
        # 0 * NaN = NaN. Filled with zeros, whatever padded words hold (NaN or Inf) reaches no output or gradient.
        words = words.masked_fill(padded[..., None], 0.0)
        scores = self.query(regions) @ self.key(words).transpose(1, 2) * self.scale  # (B, R, T)
        attention = scores.masked_fill(padded[:, None, :], float("-inf")).softmax(dim=-1)
        context = attention @ self.value(words)  # (B, R, D)
        return self.project(self.norm(regions + context).mean(dim=1))


class FCFM(nn.Module):
    """Fine-grained + coarse fusion -> (B, fine_dim + 2 * dim)."""

    def __init__(self, dim: int = 256, fine_dim: int = 128):
        super().__init__()
        self.dim = dim
        self.out_dim = fine_dim + 2 * dim
        self.fine = FineGrainedInteraction(dim, fine_dim)
        self.norm_image = nn.LayerNorm(dim)
        self.norm_sentence = nn.LayerNorm(dim)

    def forward(self, regions, words, lengths, image_global, sentence) -> torch.Tensor:
        """regions (B, R, D), words (B, T, D), lengths (B,), image_global (B, D), sentence (B, D)."""
        _check_aligned(self, regions, words, lengths, image_global, sentence)
        fine = self.fine(regions, words, lengths)
        return torch.cat((fine, self.norm_image(image_global), self.norm_sentence(sentence)), dim=1)


class LinearFusion(nn.Module):
    """Baseline: linear layer on [image_global | sentence] -> (B, out_dim). Local features unused."""

    def __init__(self, dim: int = 256, out_dim: int = 640):
        super().__init__()
        self.dim = dim
        self.out_dim = out_dim
        self.linear = nn.Linear(2 * dim, out_dim)

    def forward(self, regions, words, lengths, image_global, sentence) -> torch.Tensor:
        _check_aligned(self, regions, words, lengths, image_global, sentence)
        return self.linear(torch.cat((image_global, sentence), dim=1))


class ConcatFusion(nn.Module):
    """Baseline without parameters: [image_global | sentence] -> (B, 2 * dim)."""

    def __init__(self, dim: int = 256):
        super().__init__()
        self.dim = dim
        self.out_dim = 2 * dim

    def forward(self, regions, words, lengths, image_global, sentence) -> torch.Tensor:
        _check_aligned(self, regions, words, lengths, image_global, sentence)
        return torch.cat((image_global, sentence), dim=1)


def build_fusion(name: str, dim: int = 256, fine_dim: int = 128, out_dim: int = 640) -> nn.Module:
    """"fcfm" (uses fine_dim), "linear" (uses out_dim) or "concat"."""
    if name == "fcfm":
        return FCFM(dim, fine_dim)
    if name == "linear":
        return LinearFusion(dim, out_dim)
    if name == "concat":
        return ConcatFusion(dim)
    raise ValueError(f"fusion must be one of {FUSIONS}, got {name!r}")
