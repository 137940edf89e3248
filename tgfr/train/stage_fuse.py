"""Stage `fuse`: FCFM fusion trained with ArcFace on the fused embedding; backbone, heads and
text encoder are fixed (their features are computed without a graph)."""

import torch

from tgfr.losses import ArcFaceHead
from tgfr.models import TGFRModel
from tgfr.train.caption_features import CaptionFeatures
from tgfr.train.config import FuseStageConfig
from tgfr.train.stage import Stage
from tgfr.train.stage_align import align_features


class FuseStage(Stage):
    name = "fuse"
    trained = ("fusion",)

    def __init__(self, model: TGFRModel, config: FuseStageConfig, num_classes: int, captions: CaptionFeatures,
                 device: torch.device, distributed: bool = False):
        super().__init__(model, device)
        self.captions = captions
        self.losses["arcface"] = ArcFaceHead(model.fused_dim, num_classes, config.arcface_scale,
                                             config.arcface_margin, focal=config.focal,
                                             gather_ranks=distributed)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels = self.images_and_labels(batch)
        with torch.no_grad():
            aligned, _ = align_features(self.model, images, self.captions(batch["captions"]))
        fused = self.model.fuse(aligned).float()
        loss = self.losses["arcface"](fused, labels)
        return loss, {"arcface": loss}
