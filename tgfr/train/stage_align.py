"""Stage `align`: FCAM heads with the multi-granularity contrastive objective on a frozen backbone.

    loss = wrcl_weight * WRCL(words, regions) + cicl_weight * CICL(sentence, image)
         + intra_weight * intra-modal(sentence of caption a, sentence of caption b)
         + identity_weight * identity term

With identity labels (supervision "identity") the pairwise losses mask other pairs of one
identity and the identity term is ArcFace on the sentence and on the global image feature.
Without them ("weak") nothing sees a label: the identity term is the dual-granularity
association of images and captions.

A term of weight 0 is not computed: WRCL, CICL and the identity term are logged as 0 (the association's confidence
is not logged), and without the intra-modal term each image reads one caption.
"""

from typing import Any

import torch

from tgfr.losses import (ArcFaceHead, CaptionImageContrastiveLoss, DualGranularityAssociationLoss,
                         IntraModalContrastiveLoss, MultiGranularityLoss, WordRegionContrastiveLoss)
from tgfr.losses.multi_granularity import skipped_term
from tgfr.models import AlignedFeatures, BackboneOutput, TGFRModel
from tgfr.train.caption_features import CaptionFeatures
from tgfr.train.config import AlignStageConfig
from tgfr.train.stage import Stage


def align_features(model: TGFRModel, images: torch.Tensor, text, second_text=None,
                   backbone_output: BackboneOutput | None = None):
    """TGFRModel.align on precomputed caption features (`text`, `second_text`: CaptionFeatures'
    CaptionWords, words (B, T, H)): AlignedFeatures, plus the sentence feature (B, D) of a second
    caption per image when `second_text` is given. backbone_output: model.backbone(images), when
    the caller needs it too (the backbone then does not run again)."""
    embedding, region_map = backbone_output if backbone_output is not None else model.backbone(images)
    image_global, regions = model.image_head(embedding, region_map)
    if second_text is None:
        words, sentence = model.text_head(text.words, text.lengths)
        return AlignedFeatures(words, text.lengths, regions, sentence, image_global), None
    n = text.words.shape[0]
    words, sentence = model.text_head(torch.cat([text.words, second_text.words]),
                                      torch.cat([text.lengths, second_text.lengths]))
    return AlignedFeatures(words[:n], text.lengths, regions, sentence[:n], image_global), sentence[n:]


class AlignStage(Stage):
    name = "align"
    trained = ("image_head", "text_head", "text_encoder")

    def __init__(self, model: TGFRModel, config: AlignStageConfig, num_classes: int, captions: CaptionFeatures,
                 device: torch.device, distributed: bool = False):
        super().__init__(model, device)
        self.config, self.captions = config, captions
        dim = model.config.dim
        same_identity = "exclude" if config.supervision == "identity" else "none"
        self.losses["multi_granularity"] = MultiGranularityLoss(
            None, config.wrcl_weight, config.cicl_weight,
            word_region=WordRegionContrastiveLoss(config.gamma1, config.gamma2, config.gamma3, config.word_softmax,
                                                  same_identity=same_identity, gather_ranks=distributed),
            caption_image=CaptionImageContrastiveLoss(config.cicl_scale, same_identity=same_identity,
                                                      gather_ranks=distributed))
        self.losses["intra"] = IntraModalContrastiveLoss(
            config.intra_scale, same_identity="positive" if config.supervision == "identity" else "none",
            gather_ranks=distributed)
        if config.supervision == "identity":
            self.losses["sentence_identity"] = ArcFaceHead(dim, num_classes, config.identity_scale,
                                                           config.identity_margin, gather_ranks=distributed)
            self.losses["image_identity"] = ArcFaceHead(dim, num_classes, config.identity_scale,
                                                        config.identity_margin, gather_ranks=distributed)
        else:
            self.losses["association"] = DualGranularityAssociationLoss(dim, config.num_prototypes,
                                                                        gather_ranks=distributed)

    @property
    def captions_per_sample(self) -> int:
        return 2 if self.config.intra_weight > 0 else 1

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The heads at the stage's lr and a trainable text encoder, pretrained, at text_encoder_lr_scale times it:
        at the heads' rate its sentence features collapsed to one direction within 100 steps. At scale 1 (a run
        from before the setting) one group, the optimizer state its checkpoints hold."""
        parameters = self.parameters_to_optimize()
        encoder = {id(p) for p in self.model.text_encoder.parameters() if p.requires_grad}
        if not encoder or self.config.text_encoder_lr_scale == 1.0:
            return [{"params": parameters}]
        return [{"params": [p for p in parameters if id(p) not in encoder]},
                {"params": [p for p in parameters if id(p) in encoder],
                 "lr": self.config.optim.lr * self.config.text_encoder_lr_scale}]

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels = self.images_and_labels(batch)
        if self.captions_per_sample == 2:
            first, second = zip(*batch["all_captions"])
            aligned, second_sentence = align_features(self.model, images, self.captions(list(first)),
                                                      self.captions(list(second)))
        else:
            aligned, second_sentence = align_features(self.model, images, self.captions(batch["captions"]))
        aligned = AlignedFeatures(*(t.float() if t.is_floating_point() else t for t in aligned))
        supervised = self.config.supervision == "identity"
        total, components = self.losses["multi_granularity"](
            aligned.words, aligned.lengths, aligned.regions, aligned.sentence, aligned.image_global,
            labels if supervised else None)
        # Its "total" (of its own terms) is left out of the components, as the stage's is (logged as `loss`): a
        # script that plots every other number of a metrics.jsonl record as a component counted them again.
        del components["total"]
        if second_sentence is not None:
            components["intra"] = self.losses["intra"](aligned.sentence, second_sentence.float(),
                                                       labels if supervised else None)
            total = total + self.config.intra_weight * components["intra"]
        if self.config.identity_weight == 0:
            # Not computed, as MultiGranularityLoss's terms of weight 0: 0 * a non-finite term made the total NaN,
            # and the association's memory moved. Its losses' parameters still get (zero) gradients, for DDP.
            identity_losses = ("sentence_identity", "image_identity") if supervised else ("association",)
            components["identity"] = skipped_term(aligned.sentence, aligned.image_global, *(
                parameter for name in identity_losses for parameter in self.losses[name].parameters()))
        elif supervised:
            components["identity"] = (self.losses["sentence_identity"](aligned.sentence, labels)
                                      + self.losses["image_identity"](aligned.image_global, labels))
        else:
            components["identity"], stats = self.losses["association"](aligned.image_global, aligned.sentence)
            components["confidence"] = stats["mean_confidence"]
        total = total + self.config.identity_weight * components["identity"]
        return total, components
