"""Multi-granularity contrastive losses of TGFR, CoReFace, identity heads and weakly
supervised identity association (SPEC section 3). One module per loss."""

from tgfr.losses.association import DualGranularityAssociationLoss
from tgfr.losses.caption_image import CaptionImageContrastiveLoss
from tgfr.losses.coreface import CoReFaceLoss
from tgfr.losses.identity_heads import ArcFaceHead, CosFaceHead, focal
from tgfr.losses.intra_modal import IntraModalContrastiveLoss
from tgfr.losses.multi_granularity import MultiGranularityLoss
from tgfr.losses.word_region import WordRegionContrastiveLoss

__all__ = [
    "ArcFaceHead",
    "CaptionImageContrastiveLoss",
    "CoReFaceLoss",
    "CosFaceHead",
    "DualGranularityAssociationLoss",
    "IntraModalContrastiveLoss",
    "MultiGranularityLoss",
    "WordRegionContrastiveLoss",
    "focal",
]
