"""Networks of text-guided face recognition: iResNet backbone, text encoder, FCAM heads, FCFM fusion."""

from tgfr.models.checkpoint import load_tgfr_model, load_weights_file, save_tgfr_model
from tgfr.models.fcam import ImageAlignmentHead, RegionSelfAttention, TextAlignmentHead
from tgfr.models.fcfm import FCFM, ConcatFusion, FineGrainedInteraction, LinearFusion, build_fusion
from tgfr.models.iresnet import (
    IRESNET_LAYERS,
    BackboneOutput,
    IBasicBlock,
    IResNet,
    IResNetConfig,
    iresnet18,
    iresnet34,
    iresnet50,
    iresnet100,
    regions_as_tokens,
)
from tgfr.models.text_encoder import TextEncoder, TextFeatures, packaged_minilm_path
from tgfr.models.tgfr_model import AlignedFeatures, TGFRConfig, TGFRModel

__all__ = [
    "AlignedFeatures",
    "BackboneOutput",
    "ConcatFusion",
    "FCFM",
    "FineGrainedInteraction",
    "IBasicBlock",
    "IRESNET_LAYERS",
    "IResNet",
    "IResNetConfig",
    "ImageAlignmentHead",
    "LinearFusion",
    "RegionSelfAttention",
    "TGFRConfig",
    "TGFRModel",
    "TextAlignmentHead",
    "TextEncoder",
    "TextFeatures",
    "build_fusion",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "load_tgfr_model",
    "load_weights_file",
    "packaged_minilm_path",
    "regions_as_tokens",
    "save_tgfr_model",
]
