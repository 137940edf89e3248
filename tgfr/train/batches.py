"""Training data of a run: the manifest (or the embedded synthetic set), identity-balanced or
label-free batches, and a batch stream that can start at any step (for exact resumption).

Batch order depends only on (seed, epoch): step s is batch s mod E of epoch s // E, E batches
per epoch, so a resumed run sees the batches an uninterrupted run would have seen.
"""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tgfr.data import (CaptionCollator, FaceCaptionDataset, IdentityBalancedBatchSampler, ShuffledBatchSampler,
                       SyntheticConfig, TrainTransform, degrade_image, ensure_synthetic_dataset)
from tgfr.data.dataset import manifest_record_hint
from tgfr.data.degrade import check_recipe_fits
from tgfr.data.image_cache import DecodedImageCache
from tgfr.data.manifest import read_manifest, select_split
from tgfr.data.synthetic import degraded_splits
from tgfr.train.config import DataConfig
from tgfr.train.seeds import LOADER_STREAM, stream_seed


def synthetic_config(config: DataConfig) -> SyntheticConfig:
    return SyntheticConfig(identities=config.synthetic_identities,
                           images_per_identity=config.synthetic_images_per_identity,
                           captions_per_image=config.synthetic_captions_per_image, seed=config.synthetic_seed,
                           degradations=degraded_splits(config.degradation, config.synthetic_version),
                           version=config.synthetic_version)


def resolve_manifest(config: DataConfig) -> Path:
    """The configured manifest, or the embedded synthetic dataset's (generated on first use)."""
    if config.manifest:
        return Path(config.manifest)
    return ensure_synthetic_dataset(synthetic_config(config), cache_dir=config.cache_dir or None)


class DegradingTransform:
    """With probability p, degrades the PIL image with `recipe` (data.train_degradation; tgfr.data.degrade)
    before `base`; mirror False leaves out the recipe's horizontal flip."""

    def __init__(self, base: TrainTransform, recipe: str, p: float, mirror: bool = True):
        self.base, self.recipe, self.p, self.mirror = base, recipe, p, mirror

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Any:
        if self.p > 0 and rng.random() < self.p:
            try:
                image = degrade_image(image, self.recipe, rng, self.mirror)
            except ValueError as error:  # a recipe that does not suit the images (down<S> no smaller than them)
                raise ValueError(f"data.train_degradation = {self.recipe!r}: {error}") from None
        return self.base(image, rng)


class StepBatches:
    """Batches of the training split, addressable by optimizer step.

    identity_balanced: True, each batch holds config.images_per_identity images of each of
    config.identities_per_batch identities (IdentityBalancedBatchSampler: the batches follow the
    labels); False, each batch is identities_per_batch x images_per_identity images of a seeded
    shuffle of the split, whatever their identities (ShuffledBatchSampler: no label is read), for
    training without identity labels.
    Every stage degrades training images as config.train_degradation / train_degrade_p say.
    captions_per_sample: captions drawn per image (2 for the intra-caption loss).
    rank, world_size: this process's share of each global batch of P x K images.
    image_cache: decoded images kept in memory (FaceCaptionDataset), shared by the stages of a run.
    caption_paired: the stage pairs each image with its caption (align, fuse), so the image is neither
    mirrored (captions say left and right: a mirrored face contradicts "a mole on the left cheek"), by
    TrainTransform or by the degradation recipe's flip, nor turned grey (they name colours); otherwise
    TrainTransform's flip and greyscale and the whole recipe apply.
    """

    def __init__(self, manifest: Path, config: DataConfig, collate: CaptionCollator, seed: int,
                 captions_per_sample: int = 1, rank: int = 0, world_size: int = 1,
                 image_cache: DecodedImageCache | None = None, identity_balanced: bool = True,
                 caption_paired: bool = False):
        # Each rank takes an equal share of every batch: of its identities when the batches follow the labels,
        # of its images when they are a shuffle.
        batch_size = config.identities_per_batch * config.images_per_identity
        if identity_balanced and config.identities_per_batch % world_size:
            raise ValueError(f"data.identities_per_batch={config.identities_per_batch} must be divisible by "
                             f"the world size {world_size} (each process takes an equal share of a batch's "
                             f"identities)")
        if not identity_balanced and batch_size % world_size:
            raise ValueError(f"data.identities_per_batch x data.images_per_identity = {config.identities_per_batch} "
                             f"x {config.images_per_identity} = {batch_size} must be divisible by the world size "
                             f"{world_size} (each process takes an equal share of a batch's images)")
        base = TrainTransform(config.image_size, flip_p=0.0, grayscale_p=0.0) if caption_paired else \
            TrainTransform(config.image_size)
        transform = DegradingTransform(base, config.train_degradation, config.train_degrade_p,
                                       mirror=not caption_paired)
        # The errors name the data.* key and the manifest to fix, not the dataset's and sampler's arguments.
        records = read_manifest(manifest)
        try:
            records = select_split(records, config.train_split)
        except ValueError as error:
            raise ValueError(f"data.train_split = {config.train_split!r}, manifest {manifest}: {error}") from None
        self.dataset = FaceCaptionDataset(records, root=manifest.parent, transform=transform,
                                          captions_per_sample=captions_per_sample, seed=seed,
                                          bad_image_hint=manifest_record_hint(manifest), image_cache=image_cache)
        if config.train_degrade_p > 0:  # an image too small for a down<S>, found now, not at the step drawing it
            for record in self.dataset.records:
                path = manifest.parent / record.path
                try:
                    check_recipe_fits(config.train_degradation, *self.dataset.image_cache.sizes[path])
                except ValueError as error:
                    raise ValueError(f"data.train_degradation = {config.train_degradation!r}: image {path}: "
                                     f"{error}") from None
        self.sampler: IdentityBalancedBatchSampler | ShuffledBatchSampler
        if identity_balanced:
            # With as many identities as a batch takes, every identity has a group of images_per_identity
            # (a smaller one is filled by drawing its images again), so there is at least one batch.
            if self.dataset.num_classes < config.identities_per_batch:
                raise ValueError(f"data.identities_per_batch = {config.identities_per_batch} exceeds the "
                                 f"{self.dataset.num_classes} identities of split {config.train_split!r} in "
                                 f"manifest {manifest} (a batch takes that many identities, "
                                 f"data.images_per_identity images each)")
            self.sampler = IdentityBalancedBatchSampler(self.dataset.labels, config.identities_per_batch,
                                                        config.images_per_identity, seed=seed,
                                                        num_replicas=world_size, rank=rank)
        else:
            if len(self.dataset) < batch_size:
                raise ValueError(f"data.identities_per_batch x data.images_per_identity = "
                                 f"{config.identities_per_batch} x {config.images_per_identity} = {batch_size} "
                                 f"exceeds the {len(self.dataset)} images of split {config.train_split!r} in "
                                 f"manifest {manifest} (a batch takes that many images)")
            self.sampler = ShuffledBatchSampler(len(self.dataset), batch_size, seed=seed,
                                                num_replicas=world_size, rank=rank)
        self.collate, self.workers, self.seed = collate, config.loader_workers, seed

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def short_identities(self) -> int:
        """The identities of the split with fewer images than config.images_per_identity (K), whose group of K
        in an identity-balanced batch repeats some of its images (IdentityBalancedBatchSampler); 0 for
        shuffled batches, which make no groups."""
        if not isinstance(self.sampler, IdentityBalancedBatchSampler):
            return 0
        return sum(len(indices) < self.sampler.k for indices in self.sampler.indices_of.values())

    @property
    def captions(self) -> list[str]:
        """Every caption of the split's images (the vocabulary the batches draw from)."""
        return [caption for record in self.dataset.records for caption in record.captions]

    def from_step(self, step: int) -> Iterator[dict[str, Any]]:
        """Endless stream of batches, starting with the batch of optimizer step `step` (0-based).

        One DataLoader serves every epoch: its keys carry their epoch (_EpochKeys), so its workers,
        started once, draw each epoch's captions and augmentation (a loader per epoch re-forked its
        workers every epoch, which cost a fifth of a step with small epochs)."""
        # An own generator: a DataLoader draws its worker seed from the global RNG otherwise, and a
        # resumed run (which opens a loader mid-stage) would then see other dropout masks.
        generator = torch.Generator().manual_seed(stream_seed(self.seed, LOADER_STREAM, step))
        loader = DataLoader(self.dataset, batch_sampler=_EpochKeys(self.sampler, step), collate_fn=self.collate,
                            num_workers=self.workers, generator=generator)
        batches = iter(loader)
        while True:
            try:
                batch = next(batches)
            except Exception as error:
                if str(error).startswith("DataLoader worker (pid"):  # killed (say for memory): torch's RuntimeError
                    raise ChildProcessError(f"a data loader worker process ended abruptly ({error}), killed, say for "
                                            "lack of memory: try fewer data.loader_workers; --resume continues the "
                                            "run from its last checkpoint") from error
                if (unwrapped := _unwrapped_worker_error(error)) is None:
                    raise
                raise unwrapped from error
            yield batch


class _EpochKeys:
    """A batch sampler's batches from step `step` on, epoch after epoch without end; step s is
    batch s mod E of epoch s // E (E batches per epoch), each key (index, draw, epoch), which
    FaceCaptionDataset reads as that epoch's draw wherever the item is made."""

    def __init__(self, sampler: IdentityBalancedBatchSampler | ShuffledBatchSampler, step: int):
        self.sampler, self.step = sampler, step

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        step = self.step
        while True:
            epoch, position = divmod(step, len(self.sampler))
            self.sampler.set_epoch(epoch)
            for batch in list(self.sampler)[position:]:
                yield [(key, 0, epoch) if isinstance(key, int) else (*key, epoch) for key in batch]
                step += 1


def _unwrapped_worker_error(error: Exception) -> Exception | None:
    """The exception a DataLoader worker raised, rebuilt with its own message, or None when `error` does
    not come from a worker (or its type cannot be rebuilt from one message).

    A worker's exception reaches the main process as the same type holding "Caught ValueError in
    DataLoader worker process 0.\nOriginal Traceback ...\nValueError: <message>\n": as the error line
    of `tgfr train` that is a traceback, where loader_workers = 0 gives the one-line message.
    """
    text = str(error)
    if isinstance(error, KeyError) or not re.match(r"Caught \w+ in DataLoader worker process \d+\.\n", text):
        return None  # (KeyError's str() is the repr of the wrapped text)
    kind = type(error)
    # The name traceback.format_exception_only writes before the message.
    name = kind.__qualname__
    if kind.__module__ not in ("builtins", "__main__"):
        name = f"{kind.__module__}.{name}"
    start = text.rfind(f"\n{name}: ")
    if start < 0:
        return None
    try:
        return kind(text[start + len(name) + 3:].rstrip("\n"))
    except Exception:  # a type that takes other arguments than one message
        return None
