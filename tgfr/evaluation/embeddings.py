"""Embeddings of one manifest split: image-only (the backbone's) and TGFR's fused face-caption
embedding, both L2-normalized. Each image is paired with its first caption.

With controls, two more, which tell what the caption adds to TGFR: text_only, the aligned sentence feature of
the first caption alone, and tgfr_other_captions, TGFR's embedding with each image's caption replaced by one of
another identity (other_identity_captions). TGFR scoring above that control shows it uses the caption's match
to the face; scoring about as well or below does not show it does not (tgfr.evaluation.report.CONTROLS_MEANING)."""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tgfr.data import CaptionCollator, EvalTransform, FaceCaptionDataset
from tgfr.data.dataset import manifest_record_hint
from tgfr.data.image_cache import DecodedImageCache
from tgfr.data.protocol import path_order
from tgfr.models import TGFRModel
from tgfr.train.caption_features import CaptionFeatures
from tgfr.train.prefetch import Prefetcher
from tgfr.train.stage_align import align_features

# The methods an evaluation compares: the two it is about, then the controls.
METHODS = ("image_only", "tgfr", "text_only", "tgfr_other_captions")


@dataclass
class SplitEmbeddings:
    """paths, labels (N,) contiguous identities, captions (N,), image_only (N, E), tgfr (N, F); the controls,
    None when not computed: text_only (N, D), tgfr_other_captions (N, F), other_captions_repeated."""

    paths: list[str]
    labels: np.ndarray
    captions: list[str]
    image_only: np.ndarray
    tgfr: np.ndarray
    text_only: np.ndarray | None = None
    tgfr_other_captions: np.ndarray | None = None
    # Images whose tgfr_other_captions caption an earlier image of their identity has too (a next identity with
    # fewer captions than this one has images); None without the controls.
    other_captions_repeated: int | None = None

    def methods(self) -> tuple[str, ...]:
        """The methods computed, in METHODS' order."""
        return tuple(name for name in METHODS if getattr(self, name) is not None)

    def method(self, name: str) -> np.ndarray:
        """The (N, *) embeddings of method `name`, one of methods()."""
        if name not in self.methods():
            raise KeyError(name)
        return getattr(self, name)


def other_identity_captions(labels: np.ndarray, captions: Sequence[Sequence[str]], paths: list[str]) -> list[str]:
    """Each image's caption replaced by one of another identity, consistently within an identity: with the K
    identities in label order and each identity's images in path order (tgfr.data.protocol.path_order, the order
    the pairs and the gallery use, in which a degraded copy's images sort as the clean split's do), the j-th
    image of the i-th identity gets the (j mod P)-th caption of the ((i + 1) mod K)-th identity's pool: its images'
    first captions in path order, then their second captions, and so on (P captions in all). Every image of an
    identity thus carries captions of one other identity (its own with K = 1), an image and its degraded copy the
    same caption, and an identity of more images than the next one has still distinct captions while the next
    one's records hold enough: repeated captions would be an identity cue the images' own first captions are not.
    labels (N,) identity labels; captions (N,) each image's captions, first the one evaluated; paths (N,) its
    path; returns (N,) captions."""
    order = sorted(range(len(paths)), key=lambda image: (labels[image], path_order(paths[image])))
    _, counts = np.unique(labels, return_counts=True)
    members = np.split(np.array(order, dtype=np.int64), np.cumsum(counts)[:-1])  # members[k]: k-th identity's
    replaced = [""] * len(captions)
    for k, images in enumerate(members):
        donors = members[(k + 1) % len(members)]
        pool = [captions[donor][rank] for rank in range(max(len(captions[donor]) for donor in donors))
                for donor in donors if rank < len(captions[donor])]
        for j, image in enumerate(images):
            replaced[image] = pool[j % len(pool)]
    return replaced


def repeated_within_identity(labels: np.ndarray, captions: list[str]) -> int:
    """How many images carry a caption that an earlier image of their identity carries: (N,) labels and captions."""
    return len(captions) - len(set(zip(labels.tolist(), captions)))


def _image_batches(dataset: FaceCaptionDataset, batch_size: int) -> Iterator[tuple[range, torch.Tensor]]:
    """(indices, images (B, 3, S, S)) of consecutive batches of `dataset`, in order."""
    for start in range(0, len(dataset), batch_size):
        indices = range(start, min(start + batch_size, len(dataset)))
        yield indices, torch.stack([dataset[i]["image"] for i in indices])


@torch.no_grad()
def embed_split(model: TGFRModel, captions: CaptionFeatures, manifest: Path, split: str, batch_size: int,
                device: torch.device, image_cache: DecodedImageCache | None = None,
                controls: bool = False) -> SplitEmbeddings:
    """The split's embeddings, in manifest order. image_cache: keeps the images that the dataset's check
    decodes, which are then not decoded again here or by a later dataset over them (FaceCaptionDataset).
    controls: also text_only and tgfr_other_captions (evaluation.controls), from the same backbone pass."""
    dataset = FaceCaptionDataset(manifest, split=split, transform=EvalTransform(model.config.backbone.input_size),
                                 bad_image_hint=manifest_record_hint(manifest), image_cache=image_cache)
    # The text encoder refuses a caption without words mid-split, naming neither caption nor image; only
    # each image's first caption is embedded, and the controls' captions are drawn from all, so only these are
    # checked.
    CaptionCollator(model.text_encoder.tokenizer, max_length=model.config.max_length).check_captions(
        dataset, first_only=not controls)
    texts = [record.captions[0] for record in dataset.records]
    labels = dataset.labels.numpy()
    other_texts = (other_identity_captions(labels, [record.captions for record in dataset.records],
                                           [record.path for record in dataset.records]) if controls else None)
    image_only, fused, text_only, fused_other = [], [], [], []
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
            if controls:
                text_only.append(F.normalize(aligned.sentence.float(), dim=1).cpu())
                other, _ = align_features(model, images, captions([other_texts[i] for i in indices]),
                                          backbone_output=backbone_output)
                fused_other.append(F.normalize(model.fuse(other).float(), dim=1).cpu())
    return SplitEmbeddings([r.path for r in dataset.records], labels, texts,
                           torch.cat(image_only).numpy(), torch.cat(fused).numpy(),
                           torch.cat(text_only).numpy() if controls else None,
                           torch.cat(fused_other).numpy() if controls else None,
                           repeated_within_identity(labels, other_texts) if controls else None)
