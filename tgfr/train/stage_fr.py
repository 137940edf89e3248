"""Stage `fr`: the face backbone with ArcFace on two dropout views plus CoReFace regularization."""

import torch

from tgfr.losses import ArcFaceHead, CoReFaceLoss
from tgfr.models import TGFRModel
from tgfr.train.config import FRStageConfig
from tgfr.train.stage import Stage


class FRStage(Stage):
    """loss = ce_weight * (CE(view1) + CE(view2)) + coreface_weight * L_C (CoReFace, released 0.5/0.05).

    One shared ArcFace head scores both views (CoReFace's setup: two dropout masks on one trunk pass).
    """

    name = "fr"
    trained = ("backbone",)

    def __init__(self, model: TGFRModel, config: FRStageConfig, num_classes: int, device: torch.device,
                 distributed: bool = False):
        super().__init__(model, device)
        if model.backbone.frozen:
            raise ValueError("the fr stage needs a trainable backbone (model built with freeze_backbone=False)")
        self.config = config
        self.losses["arcface"] = ArcFaceHead(model.backbone.config.num_features, num_classes,
                                             config.arcface_scale, config.arcface_margin, gather_ranks=distributed)
        self.losses["coreface"] = CoReFaceLoss(config.coreface_scale, gather_ranks=distributed)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels = self.images_and_labels(batch)
        view1, view2, _ = self.model.backbone.forward_two_views(images)
        view1, view2 = view1.float(), view2.float()
        ce1, ce2 = self.losses["arcface"](view1, labels), self.losses["arcface"](view2, labels)
        contrastive = self.losses["coreface"](view1, view2, labels)
        total = self.config.ce_weight * (ce1 + ce2) + self.config.coreface_weight * contrastive
        return total, {"arcface1": ce1, "arcface2": ce2, "coreface": contrastive,
                       "margin": self.losses["coreface"].margin}
