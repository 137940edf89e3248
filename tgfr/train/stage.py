"""What the three training stages share: which parts of the model train, and the step interface.

A stage is an nn.Module holding the TGFRModel and the stage's loss modules (identity heads
with class centres, CoReFace's running margin, the association memory). Its forward takes a
batch and returns (loss, components); the training loop wraps it in DDP when distributed, so
only parameters that take part in the stage may require gradients.
"""

from typing import Any

import torch
from torch import nn

from tgfr.models import TGFRModel

HEADS = ("image_head", "text_head", "fusion")


class Stage(nn.Module):
    """Base of FRStage, AlignStage and FuseStage.

    trained: names of the model's submodules that train in this stage (backbone and text_encoder
    train only when not frozen).
    """

    name = ""
    trained: tuple[str, ...] = ()

    def __init__(self, model: TGFRModel, device: torch.device):
        super().__init__()
        self.model, self.device = model, device
        self.losses = nn.ModuleDict()
        for head in HEADS:
            getattr(model, head).requires_grad_(head in self.trained)
        if not model.text_encoder.frozen:  # a trainable encoder takes part only where it trains
            model.text_encoder.requires_grad_("text_encoder" in self.trained)

    def train(self, mode: bool = True) -> "Stage":
        super().train(mode)
        self.model.train(False)
        for name in self.trained:
            getattr(self.model, name).train(mode)
        return self

    def parameters_to_optimize(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: one, at the stage's lr."""
        return [{"params": self.parameters_to_optimize()}]

    def images_and_labels(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["images"].to(self.device), batch["labels"].to(self.device)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError
