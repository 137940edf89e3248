"""iResNet face backbones (insightface arcface_torch layout) with regional features.

Module names and parameter shapes match insightface's `recognition/arcface_torch/backbones/
iresnet.py`, so a released `backbone.pth` loads with `load_state_dict(strict=True)`:
conv1, bn1, prelu, layer1..layer4 (IBasicBlock: bn1, conv1, bn2, prelu, conv2, bn3,
downsample.0 conv1x1 / downsample.1 BN), bn2, dropout, fc (512*7*7 -> 512), features (BatchNorm1d, scale fixed at 1).

Beyond the original: `forward` also returns the layer3 map (the regions TGFR aligns with words),
the base width and the input size are configurable (the fc input follows the input size), and
`forward_two_views` gives CoReFace's two dropout views of the embedding from one trunk pass.
"""

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import nn

from tgfr.models.freezing import FreezableModule
from tgfr.models.input_dtype import check_input_dtype
from tgfr.validation import check_count, check_finite_number, check_tensor

IRESNET_LAYERS = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
    # Reduced variant for CPU training and tests (not an insightface architecture).
    "iresnet_small": (1, 1, 1, 1),
}
_PRESET_WIDTH = {"iresnet_small": 16}


def _halved(size: int, times: int) -> int:
    """Side after `times` stride-2 3x3 convolutions with padding 1: ceil(size / 2) each time."""
    for _ in range(times):
        size = (size + 1) // 2
    return size


@dataclass(frozen=True)
class IResNetConfig:
    """Architecture of an iResNet.

    layers: blocks per stage; width: channels of the stem and layer1 (stages have width * 1, 2, 4, 8);
    input_size: side of the square input (at least 16; 112 gives a 14x14 layer3 map and the 7x7
    map insightface's fc expects, 56 gives 7x7 and 4x4); num_features: embedding size;
    dropout: probability on the flattened feature map before fc (insightface's `dropout`).
    """

    layers: tuple[int, int, int, int] = IRESNET_LAYERS["iresnet50"]
    width: int = 64
    input_size: int = 112
    num_features: int = 512
    dropout: float = 0.0

    @classmethod
    def preset(cls, name: str, **overrides) -> "IResNetConfig":
        """Named architecture: iresnet18/34/50/100 (insightface) or iresnet_small; overrides win."""
        if name not in IRESNET_LAYERS:
            raise ValueError(f"name must be one of {sorted(IRESNET_LAYERS)}, got {name!r}")
        config = cls(layers=IRESNET_LAYERS[name], width=_PRESET_WIDTH.get(name, 64))
        return replace(config, **overrides)

    def __post_init__(self) -> None:
        # A float size (16.0) or a string dropout failed deep inside PyTorch, naming no field.
        if not isinstance(self.layers, (list, tuple)) or len(self.layers) != 4:
            raise ValueError(f"layers must be 4 positive block counts, got {self.layers}")
        object.__setattr__(self, "layers", tuple(check_count(f"layers[{stage}]", blocks)
                                                 for stage, blocks in enumerate(self.layers)))
        object.__setattr__(self, "width", check_count("width", self.width))
        object.__setattr__(self, "input_size", check_count("input_size", self.input_size, minimum=16))
        object.__setattr__(self, "num_features", check_count("num_features", self.num_features))
        if not 0.0 <= check_finite_number("dropout", self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def region_channels(self) -> int:
        return 4 * self.width

    @property
    def region_grid(self) -> int:
        """Side of the layer3 map: 14 at 112x112."""
        return _halved(self.input_size, 3)

    @property
    def final_grid(self) -> int:
        """Side of the layer4 map that fc flattens: 7 at 112x112."""
        return _halved(self.input_size, 4)

    @property
    def num_regions(self) -> int:
        return self.region_grid**2

    @property
    def fc_inputs(self) -> int:
        """Inputs of fc: the flattened layer4 map, 8*width channels of final_grid^2."""
        return 8 * self.width * self.final_grid**2


class BackboneOutput(NamedTuple):
    embedding: torch.Tensor  # (B, num_features)
    regions: torch.Tensor  # (B, 4*width, G, G), layer3 output, G = region_grid (14 at 112)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block: BN, conv3x3, BN, PReLU, conv3x3 (stride), BN."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=1e-05),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(FreezableModule):
    """iResNet trunk + embedding head. Input (B, 3, input_size, input_size), normalized images."""

    def __init__(self, config: IResNetConfig = IResNetConfig(), frozen: bool = False):
        super().__init__()
        self.config = config
        width = config.width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=1e-05)
        self.prelu = nn.PReLU(width)
        inplanes = width
        for index, blocks in enumerate(config.layers):
            planes = width * 2**index
            stage = [IBasicBlock(inplanes, planes, stride=2)]
            stage += [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.dropout = nn.Dropout(p=config.dropout)
        self.fc = nn.Linear(config.fc_inputs, config.num_features)
        self.features = nn.BatchNorm1d(num_features=config.num_features, eps=1e-05)
        self._reset_parameters()
        self._init_frozen(frozen)

    def _reset_parameters(self) -> None:
        # insightface's initialization; its embedding BN keeps a fixed unit scale.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.ones_(self.features.weight)

    def fixed_parameters(self) -> list[nn.Parameter]:
        """The embedding BatchNorm's scale, fixed at 1 (insightface's). A parameter, not a buffer, so that the
        BatchNorm stays one (SyncBatchNorm.convert_sync_batchnorm takes it); grad_context keeps it off."""
        return [self.features.weight]

    def _trunk(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the flattened final map (B, 8*width*final_grid^2) and the layer3 map."""
        size = self.config.input_size
        check_tensor("images", images, ndim=4)
        if tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"images must have shape (B, 3, {size}, {size}), got {tuple(images.shape)}")
        check_input_dtype("images", images, self, "images are floats in [-1, 1], as tgfr.data.EvalTransform gives them",
                          cast_by_autocast=True)  # into conv1
        x = self.prelu(self.bn1(self.conv1(images)))
        regions = self.layer3(self.layer2(self.layer1(x)))
        x = self.bn2(self.layer4(regions))
        return torch.flatten(x, 1), regions

    def _head(self, flat: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(flat))

    def forward(self, images: torch.Tensor) -> BackboneOutput:
        """images (B, 3, S, S) -> embedding (B, num_features), regions (B, 4*width, G, G)."""
        with self.grad_context():
            flat, regions = self._trunk(images)
            return BackboneOutput(self._head(self.dropout(flat)), regions)

    def forward_two_views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CoReFace embedding augmentation: one trunk pass, two independent dropout masks on the
        flattened map, each view through the shared fc + BN (separate BN batches, as CoReFace).

        Returns view1, view2 (B, num_features) and regions (B, 4*width, G, G). In eval mode
        (or with dropout 0) both views are equal.
        """
        with self.grad_context():
            flat, regions = self._trunk(images)
            return self._head(self.dropout(flat)), self._head(self.dropout(flat)), regions


def regions_as_tokens(regions: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) region map -> (B, R=H*W, C) tokens, row-major over the grid."""
    check_tensor("regions", regions, ndim=4)
    return regions.flatten(2).transpose(1, 2)


def iresnet18(**overrides) -> IResNet:
    return IResNet(IResNetConfig.preset("iresnet18", **overrides))


def iresnet34(**overrides) -> IResNet:
    return IResNet(IResNetConfig.preset("iresnet34", **overrides))


def iresnet50(**overrides) -> IResNet:
    return IResNet(IResNetConfig.preset("iresnet50", **overrides))


def iresnet100(**overrides) -> IResNet:
    return IResNet(IResNetConfig.preset("iresnet100", **overrides))
