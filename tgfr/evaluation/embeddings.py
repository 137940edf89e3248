"""Embeddings of one manifest split: image-only (the backbone's) and TGFR's fused face-caption
embedding, both L2-normalized. Each image is paired with its first caption."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tgfr.data import CaptionCollator, EvalTransform, FaceCaptionDataset
from tgfr.data.dataset import manifest_record_hint
from tgfr.data.image_cache import DecodedImageCache
from tgfr.models import TGFRModel
from tgfr.train.caption_features import CaptionFeatures
from tgfr.train.prefetch import Prefetcher
from tgfr.train.stage_align import align_features


@dataclass
class SplitEmbeddings:
    """paths, labels (N,) contiguous identities, captions (N,), image_only (N, E), tgfr (N, F)."""

    paths: list[str]
    labels: np.ndarray
    captions: list[str]
    image_only: np.ndarray
    tgfr: np.ndarray

    def method(self, name: str) -> np.ndarray:
        return {"image_only": self.image_only, "tgfr": self.tgfr}[name]


def _image_batches(dataset: FaceCaptionDataset, batch_size: int) -> Iterator[tuple[range, torch.Tensor]]:
    """(indices, images (B, 3, S, S)) of consecutive batches of `dataset`, in order."""
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        yield indices, torch.stack([dataset[i]["image"] for i in indices])


@torch.no_grad()
def embed_split(model: TGFRModel, captions: CaptionFeatures, manifest: Path, split: str, batch_size: int,
                device: torch.device, image_cache: DecodedImageCache | None = None) -> SplitEmbeddings:
    """The split's embeddings, in manifest order. image_cache: keeps the images that the dataset's check
    decodes, which are then not decoded again here or by a later dataset over them (FaceCaptionDataset)."""
    dataset = FaceCaptionDataset(manifest, split=split, transform=EvalTransform(model.config.backbone.input_size),
                                 bad_image_hint=manifest_record_hint(manifest), image_cache=image_cache)
    # The text encoder refuses a caption without words mid-split, naming neither caption nor image; only
    # each image's first caption is embedded, so only it is checked.
    CaptionCollator(model.text_encoder.tokenizer, max_length=model.config.max_length).check_captions(
        dataset, first_only=True)
    texts = [record.captions[0] for record in dataset.records]
    image_only, fused = [], []
    model.eval()
    # The next batch is decoded in a thread while the model embeds this one, as training's batches are.
    with Prefetcher(_image_batches(dataset, batch_size)) as batches:
        for indices, images in batches:
            images = images.to(device)
            backbone_output = model.backbone(images)
            aligned, _ = align_features(model, images, captions([texts[i] for i in indices]),
                                        backbone_output=backbone_output)
            image_only.append(F.normalize(backbone_output.embedding.float(), dim=1).cpu())
            fused.append(F.normalize(model.fuse(aligned).float(), dim=1).cpu())
    return SplitEmbeddings([r.path for r in dataset.records], dataset.labels.numpy(), texts,
                           torch.cat(image_only).numpy(), torch.cat(fused).numpy())
