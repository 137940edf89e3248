"""FCAM: the alignment heads that map face and caption features into one D-dim space.

Image head (TGFR's IMIM): BN over the region map, self-attention over regions, LayerNorm, a
two-layer 1x1 MLP, a per-region projection to D and L2 normalization; the backbone embedding is
projected to D and normalized as the global image feature. Text head: a TextCNN (kernel sizes
2, 3, 4) over the token features; word t's feature is the max over kernels of the window starting
at t, the sentence feature the mean over kernels of the max over valid positions.

A 1x1 convolution on a (B, C, H, W) map is the same map as a linear layer applied to each of the
R = H*W region tokens, which is how the heads are written (they work on (B, R, C) tokens).
Unlike TGFR's code, LayerNorm is per region over channels (not over the whole C x 14 x 14 map),
so the head works for any input size.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from tgfr.models.iresnet import regions_as_tokens
from tgfr.ops.autocast import autocast_enabled
from tgfr.word_mask import valid_word_mask
from tgfr.models.input_dtype import check_input_dtype
from tgfr.validation import check_size, check_tensor, check_word_lengths


def _unit_rows(features: torch.Tensor) -> torch.Tensor:
    """F.normalize along the last dimension, (..., D) -> (..., D), with zero rows kept zero in float16.

    F.normalize divides by max(norm, 1e-12), and 1e-12 is 0 in float16: a zero row (a padded
    word) would become 0/0 = NaN. float16 rows are therefore normalized in float32 and rounded back
    to float16, or left in float32 under autocast, where F.normalize gives float32 on CUDA too
    (autocast takes norms in float32). Other dtypes hold 1e-12 and go through F.normalize as before.
    """
    if features.dtype != torch.float16:
        return F.normalize(features, dim=-1)
    unit = F.normalize(features.float(), dim=-1)
    return unit if autocast_enabled(features.device.type) else unit.to(features.dtype)


class RegionSelfAttention(nn.Module):
    """Single-head scaled dot-product self-attention over region tokens (B, R, C) -> (B, R, C)."""

    def __init__(self, channels: int):
        super().__init__()
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.scale = 1.0 / math.sqrt(channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        scores = self.query(tokens) @ self.key(tokens).transpose(1, 2) * self.scale
        return scores.softmax(dim=-1) @ self.value(tokens)


class ImageAlignmentHead(nn.Module):
    """Backbone outputs -> global image feature (B, D) and region features (B, R, D), L2-normalized."""

    def __init__(self, region_channels: int = 256, embedding_dim: int = 512, dim: int = 256):
        super().__init__()
        self.region_channels = region_channels
        self.embedding_dim = embedding_dim
        self.norm_map = nn.BatchNorm2d(region_channels)
        self.attention = RegionSelfAttention(region_channels)
        self.norm_tokens = nn.LayerNorm(region_channels)
        self.mlp = nn.Sequential(
            nn.Linear(region_channels, region_channels // 2),
            nn.ReLU(),
            nn.Linear(region_channels // 2, region_channels),
            nn.ReLU(),
        )
        self.project_regions = nn.Linear(region_channels, dim)
        self.project_global = nn.Linear(embedding_dim, dim)

    def forward(self, embedding: torch.Tensor, region_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """embedding (B, E), region_map (B, C, H, W) -> image_global (B, D), regions (B, H*W, D)."""
        check_tensor("embedding", embedding, ndim=2)
        check_size("embedding", embedding, 1, self.embedding_dim, "the backbone's num_features")
        check_tensor("region_map", region_map, ndim=4)
        check_size("region_map", region_map, 0, embedding.shape[0], "one map per embedding")
        check_size("region_map", region_map, 1, self.region_channels, "the backbone's layer3 channels")
        check_input_dtype("embedding", embedding, self, cast_by_autocast=True)  # into a linear layer
        check_input_dtype("region_map", region_map, self)  # into a BatchNorm
        tokens = regions_as_tokens(self.norm_map(region_map))
        tokens = self.mlp(self.norm_tokens(self.attention(tokens)))
        regions = _unit_rows(self.project_regions(tokens))
        image_global = _unit_rows(self.project_global(embedding))
        return image_global, regions


class TextAlignmentHead(nn.Module):
    """TextCNN over token features -> word features (B, T, D) and sentence feature (B, D), L2-normalized.

    Word positions are kept: output word t comes from the windows starting at token t, padded
    tokens (t >= lengths) are zeroed before the convolutions, whatever they hold (NaN or Inf too), and
    zero in the output.
    """

    def __init__(self, hidden_size: int, dim: int = 256, kernel_sizes: tuple[int, ...] = (2, 3, 4)):
        super().__init__()
        if not kernel_sizes or any(k < 1 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be a non-empty list of positive sizes, got {kernel_sizes}")
        self.hidden_size = hidden_size
        self.kernel_sizes = tuple(kernel_sizes)
        self.convs = nn.ModuleList(nn.Conv1d(hidden_size, dim, kernel_size=k) for k in self.kernel_sizes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, T, H), lengths (B,) with 1 <= lengths <= T -> words (B, T, D), sentence (B, D)."""
        check_tensor("tokens", tokens, ndim=3)
        check_size("tokens", tokens, 2, self.hidden_size, "the text encoder's hidden size")
        check_input_dtype("tokens", tokens, self, cast_by_autocast=True)  # into convolutions
        check_word_lengths(lengths, tokens.shape[0], tokens.shape[1])
        valid = valid_word_mask(lengths, tokens.shape[1])  # (B, T)
        # Filled, not multiplied by the mask: 0 * NaN or 0 * Inf at a padded token would be NaN in valid outputs.
        x = tokens.masked_fill(~valid.unsqueeze(-1), 0.0).transpose(1, 2)  # (B, H, T)
        # Right padding by k - 1 keeps one output per token position for every kernel size.
        maps = torch.stack([F.relu(conv(F.pad(x, (0, conv.kernel_size[0] - 1)))) for conv in self.convs])
        invalid = ~valid[None, :, None, :]  # broadcast to (K, B, D, T)
        words = maps.amax(dim=0).transpose(1, 2).masked_fill(~valid.unsqueeze(-1), 0.0)
        sentence = maps.masked_fill(invalid, float("-inf")).amax(dim=-1).mean(dim=0)
        return _unit_rows(words), _unit_rows(sentence)
