"""Face-caption dataset over a manifest, and the collate function that tokenizes captions."""

import operator
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tgfr.data.image_cache import DecodedImageCache
from tgfr.data.manifest import ManifestRecord, identity_labels, read_manifest, select_split
from tgfr.data.synthetic import synthetic_cache_folder
from tgfr.data.transforms import EvalTransform
from tgfr.validation import check_count, check_seed_word

Transform = Callable[..., torch.Tensor]


def manifest_record_hint(manifest: str | Path) -> str:
    """The remedy for a bad image that a command without a bad_images option gives its users: for the embedded
    synthetic dataset's cached manifest, to delete its folder (generated again on next use), not to edit it."""
    folder = synthetic_cache_folder(manifest)
    if folder is not None:
        return (f"the cached synthetic dataset {folder} is damaged: delete that folder, and the next run generates "
                "it again")
    return f"fix or remove that image's record in manifest {manifest}"


class FaceCaptionDataset(Dataset):
    """Images of one or more manifest splits with identity labels and sampled captions.

    Args:
        source: a manifest path, or records (then `root` is the folder their paths are relative to).
        split: split name(s) to keep; None keeps every record.
        transform: called as transform(pil_image, rng) -> (3, 112, 112) tensor; EvalTransform by default.
        captions_per_sample: captions drawn per item (without replacement while the image has enough;
            sample_captions).
        seed: base seed in [0, 2**32); with `set_epoch` every caption draw and random transform is reproducible.
        bad_images: "error" (default) raises naming the first missing or corrupt image (files.check_image),
            or with require_captions one without captions, at construction; "skip" drops such images and
            lists their paths in `skipped`.
        bad_image_hint: what that error tells the reader to do, in parentheses after it (a caller that
            does not expose bad_images names its own remedy); so does the error of an image that breaks
            after construction, when an item reads it.
        image_cache: keeps the images that the checks at construction decode, up to its budget, so that
            items skip reading them again (shared by the datasets of one run); None keeps none.
        require_captions: reject images without captions (a text-guided model needs one).

    Item: dict with image (3, 112, 112) float32 in [-1, 1], label int64 (contiguous identity
    index over the kept records), caption str, captions list[str] (length captions_per_sample)
    and index int.
    """

    def __init__(
        self,
        source: str | Path | Sequence[ManifestRecord],
        split: str | Sequence[str] | None = None,
        transform: Transform | None = None,
        captions_per_sample: int = 1,
        seed: int = 0,
        root: str | Path | None = None,
        bad_images: str = "error",
        require_captions: bool = True,
        bad_image_hint: str = "pass bad_images='skip' to skip such images",
        image_cache: DecodedImageCache | None = None,
    ):
        if isinstance(source, (str, Path)):
            if root is not None:  # else ignored: the manifest's paths are relative to its own folder
                raise ValueError("root is for records; a manifest's image paths are relative to its folder "
                                 f"({Path(source).parent}), got root={root!r}")
            manifest_root = Path(source).parent
            records = read_manifest(source)
        else:
            if root is None:
                raise ValueError("root must be given with records (the folder their paths are relative to)")
            manifest_root, records = Path(root), list(source)
        if isinstance(captions_per_sample, bool) or not isinstance(captions_per_sample, int) or captions_per_sample < 1:
            raise ValueError(f"captions_per_sample must be a positive integer, got {captions_per_sample!r}")
        if bad_images not in ("error", "skip"):
            raise ValueError(f"bad_images must be 'error' or 'skip', got {bad_images!r}")
        seed = check_seed_word("seed", seed)  # before every image is decoded
        records = select_split(records, split)
        self.image_cache = image_cache if image_cache is not None else DecodedImageCache(0)
        self.bad_image_hint = bad_image_hint
        kept, self.skipped = [], []
        first_problem = ""
        for record in records:
            path = manifest_root / record.path
            try:
                # Before the image is decoded: an image skipped for want of captions kept in the cache would spend
                # the budget of those kept.
                if require_captions and not record.captions:
                    raise ValueError(f"image {record.path} has no captions in the manifest, and a text-guided model "
                                     f"reads one of every image")
                self.image_cache.check(path)
            except ValueError as error:
                if bad_images == "error":
                    raise ValueError(f"{error} ({bad_image_hint})") from None
                self.skipped.append(str(path))
                first_problem = first_problem or str(error)
                continue
            kept.append(record)
        if not kept:
            problems = "missing, corrupt or without captions" if require_captions else "missing or corrupt"
            raise ValueError(f"no usable images left in split {split!r} ({len(self.skipped)} {problems}; the first: "
                             f"{first_problem})")
        self.root = manifest_root
        self.records = kept
        self.label_of = identity_labels(kept)
        self.labels = torch.tensor([self.label_of[r.identity] for r in kept], dtype=torch.int64)
        self.transform = transform if transform is not None else EvalTransform()
        self.captions_per_sample = captions_per_sample
        self.seed = seed
        self.epoch = 0

    @property
    def num_classes(self) -> int:
        return len(self.label_of)

    def set_epoch(self, epoch: int) -> None:
        """Changes the caption draws and random transforms for a new epoch, for items this object
        loads. DataLoader workers load from copies of the dataset made when they start, so with
        persistent_workers=True a later set_epoch does not reach them: build the DataLoader after
        set_epoch each epoch (as tgfr train does), or give keys that carry the epoch (__getitem__)."""
        self.epoch = check_seed_word("epoch", epoch)

    def __len__(self) -> int:
        return len(self.records)

    def sample_captions(self, index: int, rng: np.random.Generator) -> list[str]:
        """captions_per_sample captions of image `index`: its captions in a random order, cut short or,
        when it has fewer, followed by draws with replacement. The first k are the same whatever
        captions_per_sample >= k asks: drawing a second caption for the intra-caption loss changes no
        other loss's caption."""
        captions = self.records[index].captions
        if not captions:
            return [""] * self.captions_per_sample
        order = rng.permutation(len(captions))
        repeats = rng.integers(len(captions), size=max(self.captions_per_sample - len(captions), 0))
        return [captions[i] for i in np.concatenate((order, repeats))[:self.captions_per_sample]]

    def __getitem__(self, key: int | tuple[int, int] | tuple[int, int, int]) -> dict[str, Any]:
        """key: an index (negative ones count from the end, as in a list), or (index, draw) for the
        draw-th repeat of an image in one batch (the identity-balanced sampler's), which draws its own
        augmentation and captions (they may still coincide with the original's when there are few to
        draw from), or (index, draw, epoch) to draw as in that epoch whatever set_epoch said: a
        sampler's keys reach persistent DataLoader workers, where set_epoch does not.
        The captions and the transform draw from the two children, in that order, of
        numpy.random.SeedSequence((seed, epoch, index, draw)).spawn(2) (numpy reads a trailing 0 as absent: draw 0
        seeds with (seed, epoch, index))."""
        if isinstance(key, tuple) and not 2 <= len(key) <= 3:
            raise ValueError(f"key must be an index, (index, draw) or (index, draw, epoch), got {key!r}")
        index, draw, epoch = (*key, self.epoch)[:3] if isinstance(key, tuple) else (key, 0, self.epoch)
        draw = check_seed_word("draw", draw)
        try:
            if isinstance(index, bool):  # operator.index takes True for 1, as a boolean draw is refused
                raise TypeError
            index = operator.index(index)  # a 0-d integer tensor too (SubsetRandomSampler yields those)
        except TypeError:  # operator.index's own error ("'list' object cannot be ...") names no argument
            raise TypeError(f"index must be an integer, got {type(index).__name__} {index!r}") from None
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for the {len(self)} images of the dataset")
        index %= len(self)
        epoch = check_seed_word("epoch", epoch)
        seed = (self.seed, epoch, index) if draw == 0 else (self.seed, epoch, index, draw)
        # Captions and augmentation draw from streams of their own, so that the augmentation does not
        # depend on how many captions are drawn.
        caption_seed, image_seed = np.random.SeedSequence(seed).spawn(2)
        record = self.records[index]
        captions = self.sample_captions(index, np.random.default_rng(caption_seed))
        try:
            image = self.image_cache.load(self.root / record.path)
        except ValueError as error:  # the file changed since the check at construction
            raise ValueError(f"{error} ({self.bad_image_hint})") from None
        image = self.transform(image, np.random.default_rng(image_seed))
        # A copy: self.labels[index] is a view, through which an item's label changed in place would change the
        # dataset's labels (which the identity-balanced sampler and the evaluation read).
        return {"image": image, "label": self.labels[index].clone(), "caption": captions[0],
                "captions": captions, "index": index}


class CaptionCollator:
    """Stacks dataset items and tokenizes their captions in one call.

    `tokenizer` is a Hugging Face tokenizer (or any callable with its signature):
    tokenizer(list[str], padding=..., truncation=True, max_length=L, split_special_tokens=True,
    return_tensors="pt"), where split_special_tokens=True tokenizes a caption's "[SEP]" as text, as
    TextEncoder.tokenize does.
    Returns images (B, 3, H, W), labels (B,), indices (B,), captions list[str] and input_ids,
    attention_mask (B, L); with captions_per_sample = k > 1 also all_captions (B lists of k) and
    all_input_ids, all_attention_mask (B, k, L) (caption 0 of each item is the one in input_ids).
    tokenize_batches=False leaves the captions as strings (no input_ids / attention_mask keys): for
    training, which looks its captions up in precomputed features; `tokenize` and `check_captions`
    still use the tokenizer.
    """

    def __init__(self, tokenizer: Callable[..., Any], max_length: int = 32, padding: str | bool = "max_length",
                 tokenize_batches: bool = True):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        self.tokenizer, self.max_length, self.padding = tokenizer, max_length, padding
        self.tokenize_batches = tokenize_batches

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.tokenizer(captions, padding=self.padding, truncation=True, max_length=self.max_length,
                                 split_special_tokens=True, return_tensors="pt")
        return encoded["input_ids"], encoded["attention_mask"]

    def check_captions(self, dataset: FaceCaptionDataset, chunk: int = 4096, first_only: bool = False) -> int:
        """Raises a ValueError naming the image and the caption when a caption of `dataset` tokenizes to
        no more tokens than "" does (no word: say only zero-width spaces, which manifests accept). The
        text encoder refuses such a caption, so training would stop at the first batch drawing it.
        first_only: check each image's first caption only (the one evaluation embeds). chunk: how many captions
        are tokenized per call (a positive integer).

        Returns how many distinct captions have more than max_length tokens, so that `tokenize` cuts
        off their last words."""
        chunk = check_count("chunk", chunk)  # else range() checked nothing for a negative chunk, or raised for 0
        special_tokens = int(self.tokenize([""])[1].sum())
        captions = sorted({caption for record in dataset.records
                           for caption in (record.captions[:1] if first_only else record.captions)})
        truncated = 0
        for start in range(0, len(captions), chunk):
            part = captions[start:start + chunk]
            # One token beyond max_length tells a caption that is cut from one that fits exactly.
            encoded = self.tokenizer(part, padding=self.padding, truncation=True, max_length=self.max_length + 1,
                                     split_special_tokens=True, return_tensors="pt")
            for caption, tokens in zip(part, encoded["attention_mask"].sum(1).tolist()):
                if tokens <= special_tokens:
                    record = next(r for r in dataset.records
                                  if caption in (r.captions[:1] if first_only else r.captions))
                    raise ValueError(f"image {dataset.root / record.path} has caption {caption!r}, which the "
                                     "tokenizer reduces to no word; edit or remove that caption in the manifest")
                truncated += tokens > self.max_length
        return truncated

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("items must be a non-empty list of dataset items")
        batch: dict[str, Any] = {
            "images": torch.stack([item["image"] for item in items]),
            "labels": torch.stack([torch.as_tensor(item["label"], dtype=torch.int64) for item in items]),
            "indices": torch.tensor([item["index"] for item in items], dtype=torch.int64),
            "captions": [item["caption"] for item in items],
        }
        per_item = len(items[0]["captions"])
        if per_item > 1:
            batch["all_captions"] = [list(item["captions"]) for item in items]
        if not self.tokenize_batches:
            return batch
        if per_item == 1:
            batch["input_ids"], batch["attention_mask"] = self.tokenize(batch["captions"])
            return batch
        flat = [caption for item in items for caption in item["captions"]]
        input_ids, attention_mask = self.tokenize(flat)
        batch["all_input_ids"] = input_ids.view(len(items), per_item, -1)
        batch["all_attention_mask"] = attention_mask.view(len(items), per_item, -1)
        batch["input_ids"] = batch["all_input_ids"][:, 0]
        batch["attention_mask"] = batch["all_attention_mask"][:, 0]
        return batch
