"""Embeddings of one manifest split: image-only (the backbone's) and TGFR's fused face-caption
embedding, both L2-normalized. Each image is paired with its first caption.

With controls, two more, which tell what the caption adds to TGFR: text_only, the aligned sentence feature of
the first caption alone, and tgfr_other_captions, TGFR's embedding with each image's caption replaced by one of
another identity (other_identity_captions). TGFR minus that control with its interval above 0 shows TGFR uses the
caption's match to the face; an interval reaching 0 or below does not show it does not
(tgfr.evaluation.report.CONTROLS_MEANING)."""

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
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
    None when not computed: text_only (N, D), tgfr_other_captions (N, F), other_captions_repeated; first_captions."""

    paths: list[str]
    labels: np.ndarray
    captions: list[str]
    image_only: np.ndarray
    tgfr: np.ndarray
    text_only: np.ndarray | None = None
    tgfr_other_captions: np.ndarray | None = None
    # Images whose tgfr_other_captions caption an earlier image of their identity has too where their own first
    # caption does not repeat (the next identity's records hold too few distinct captions); None without controls.
    other_captions_repeated: int | None = None
    # first_caption_cuts of the split's first captions.
    first_captions: dict[str, int] | None = None

    def methods(self) -> tuple[str, ...]:
        """The methods computed, in METHODS' order."""
        return tuple(name for name in METHODS if getattr(self, name) is not None)

    def method(self, name: str) -> np.ndarray:
        """The (N, *) embeddings of method `name`, one of methods()."""
        if name not in self.methods():
            raise KeyError(name)
        return getattr(self, name)


def other_identity_captions(labels: np.ndarray, captions: Sequence[Sequence[str]], paths: list[str],
                            seen: Callable[[str], Hashable] = str) -> list[str]:
    """Each image's caption replaced by one of another identity, consistently within an identity: with the K
    identities in label order and each identity's images in path order (tgfr.data.protocol.path_order, the order
    the pairs and the gallery use, in which a degraded copy's images sort as the clean split's do), the k-th
    distinct first caption of the i-th identity (in that order) is replaced by the (k mod P)-th caption of the
    ((i + 1) mod K)-th identity's pool: the distinct captions of its images' first captions in path order, then
    of their second captions, and so on (P in all). Every image of an identity thus carries captions of one other
    identity (its own with K = 1), an image and its degraded copy the same caption, and images share a replacement
    where they share their own first caption, and only there while the pool holds enough: a caption repeated
    among an identity's images is an identity cue, which the control should carry only as the images' own
    first captions do. Captions are the same where `seen` (a caption -> what the model sees of it, the token ids
    model_view gives) is: two spellings of one caption, or two captions that differ only past the cut, are one.
    labels (N,) identity labels; captions (N,) each image's captions, first the one evaluated; paths (N,) its
    path; returns (N,) captions."""
    order = sorted(range(len(paths)), key=lambda image: (labels[image], path_order(paths[image])))
    _, counts = np.unique(labels, return_counts=True)
    members = np.split(np.array(order, dtype=np.int64), np.cumsum(counts)[:-1])  # members[k]: k-th identity's
    replaced = [""] * len(captions)
    for k, images in enumerate(members):
        donors = members[(k + 1) % len(members)]
        shown: dict[Hashable, str] = {}  # what the model sees -> the first caption showing it
        for rank in range(max(len(captions[donor]) for donor in donors)):
            for donor in donors:
                if rank < len(captions[donor]):
                    shown.setdefault(seen(captions[donor][rank]), captions[donor][rank])
        pool = list(shown.values())
        own = {view: j for j, view in enumerate(dict.fromkeys(seen(captions[image][0]) for image in images))}
        for image in images:
            replaced[image] = pool[own[seen(captions[image][0])] % len(pool)]
    return replaced


def repeated_within_identity(labels: np.ndarray, captions: list[str], own: list[str],
                             seen: Callable[[str], Hashable] = str) -> int:
    """How many images carry a caption (N,) that an earlier image of their identity (labels (N,)) carries, where
    their own first caption (N,) an earlier one's does not; captions are the same where `seen` is."""
    shown, shown_own, repeated = set(), set(), 0
    for label, caption, first in zip(labels.tolist(), map(seen, captions), map(seen, own)):
        repeated += (label, caption) in shown and (label, first) not in shown_own
        shown.add((label, caption))
        shown_own.add((label, first))
    return repeated


def _token_ids(collator: CaptionCollator, captions: list[str], max_length: int) -> list[tuple[int, ...]]:
    """Each caption's token ids, special tokens included, cut to max_length tokens; in chunks, as check_captions.
    Unpadded: padded to the chunk's longest, one pasted paragraph made every caption of its chunk that long."""
    ids = []
    for start in range(0, len(captions), 4096):
        encoded = collator.tokenizer(captions[start:start + 4096], truncation=True, max_length=max_length,
                                     split_special_tokens=True)
        ids += [tuple(row) for row in encoded["input_ids"]]
    return ids


def model_view(collator: CaptionCollator, captions: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Each distinct caption -> the token ids the text encoder sees (cut to collator.max_length): captions that
    differ in case, in spaces or only past the cut are one caption to the model."""
    distinct = sorted(set(captions))
    return dict(zip(distinct, _token_ids(collator, distinct, collator.max_length)))


# Longer than any caption a model takes (model.max_length < 2^16): the token ids of a caption before any cut.
_UNCUT = 2**16


def first_caption_cuts(collator: CaptionCollator, captions: list[str]) -> dict[str, int]:
    """Of the `captions`, as word pieces (captions that differ only in case or spaces are one, as to the
    tokenizer): how many are distinct ("distinct"), how many of those have more than collator.max_length tokens,
    so that the text encoder sees only their first max_length - 2 word pieces ("cut"), and how many distinct
    ones remain once cut ("distinct_after_cut"): captions that differ only past the cut are one to the model, and
    a split of long captions can leave text only and TGFR one caption for every face."""
    strings = sorted(set(captions))
    whole = set(_token_ids(collator, strings, _UNCUT))
    return {"distinct": len(whole), "cut": sum(len(ids) > collator.max_length for ids in whole),
            "distinct_after_cut": len(set(model_view(collator, strings).values()))}


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
    collator = CaptionCollator(model.text_encoder.tokenizer, max_length=model.config.max_length)
    collator.check_captions(dataset, first_only=not controls)
    texts = [record.captions[0] for record in dataset.records]
    labels = dataset.labels.numpy()
    other_texts = seen = None
    if controls:
        seen = model_view(collator, (caption for record in dataset.records for caption in record.captions)).__getitem__
        other_texts = other_identity_captions(labels, [record.captions for record in dataset.records],
                                              [record.path for record in dataset.records], seen)
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
                           repeated_within_identity(labels, other_texts, texts, seen) if controls else None,
                           first_caption_cuts(collator, texts))
