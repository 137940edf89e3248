"""Batch samplers for contrastive training: identity-balanced batches (P identities x K images),
and shuffled batches that never read a label (weakly supervised training)."""

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from tgfr.validation import check_seed_word


class IdentityBalancedBatchSampler(Sampler[list[int | tuple[int, int]]]):
    """Yields batches of P distinct identities with K images each (batch size P*K).

    Each epoch, every identity's images are shuffled and cut into groups of K (an identity with
    fewer than K images fills its single group by drawing again from its own images; such a
    repeat is the pair (index, draw), draw >= 1, which FaceCaptionDataset reads as another draw of
    the image's augmentation and captions; with few augmentation outcomes and captions, a repeat
    can still equal its original, and it is the same face either way; `tgfr train` says how many
    identities are that short: StepBatches.short_identities). Each batch
    takes a group from each of the P identities with the most groups left (random among ties),
    which makes as many batches as any packing can; the groups left when fewer than P identities
    have any are dropped. Batches are then shuffled. The order depends only on (seed, epoch):
    call `set_epoch` each epoch, as with DistributedSampler.

    With num_replicas > 1, identities_per_batch is the global P (divisible by num_replicas), and
    replica `rank` gets its share of P / num_replicas identities of each batch of the common plan:
    the replicas' batches of one step together are the batch a single process gets.
    """

    def __init__(self, labels: Sequence[int] | torch.Tensor, identities_per_batch: int,
                 images_per_identity: int, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        labels = _integer_labels(labels)
        for name, value in (("identities_per_batch", identities_per_batch), ("images_per_identity", images_per_identity)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.indices_of: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            self.indices_of.setdefault(label, []).append(index)
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(f"num_replicas must be a positive integer, got {num_replicas!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank!r}")
        self.num_replicas, self.rank = num_replicas, rank
        if identities_per_batch % num_replicas:
            raise ValueError(f"identities_per_batch={identities_per_batch} must be divisible by num_replicas="
                             f"{num_replicas} (each replica takes an equal share of every batch's identities)")
        if len(self.indices_of) < identities_per_batch:
            raise ValueError(f"identities_per_batch={identities_per_batch} exceeds the {len(self.indices_of)} "
                             "identities in labels")
        self.p, self.k, self.seed, self.epoch = identities_per_batch, images_per_identity, check_seed_word("seed", seed), 0
        self._plan: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = check_seed_word("epoch", epoch)

    def _batches(self) -> list[list[int | tuple[int, int]]]:
        if self._plan is not None and self._plan[0] == self.epoch:
            return self._plan[1]
        # A spawn key of its own: numpy drops trailing zeros of a seed tuple, so (seed, epoch) is the entropy
        # of the dataset's item 0, (seed, epoch, 0), whose caption and augmentation streams are its children
        # (0,) and (1,); with either key the plan would follow item 0's draws.
        rng = np.random.default_rng(np.random.SeedSequence((self.seed, self.epoch), spawn_key=(3,)))
        labels = sorted(self.indices_of)
        groups: list[list[list[int | tuple[int, int]]]] = []  # per label, its groups of K items
        for label in labels:
            indices = [self.indices_of[label][i] for i in rng.permutation(len(self.indices_of[label]))]
            if len(indices) < self.k:
                extra = rng.choice(indices, size=self.k - len(indices), replace=True)
                draws = dict.fromkeys(indices, 0)
                repeats = []
                for index in (int(i) for i in extra):
                    draws[index] += 1
                    repeats.append((index, draws[index]))
                groups.append([indices + repeats])
            else:
                groups.append([indices[s:s + self.k] for s in range(0, len(indices) - self.k + 1, self.k)])
        left = np.array([len(label_groups) for label_groups in groups])
        share = self.p // self.num_replicas
        batches = []
        # Taking the identities with the most groups left never strands groups that a batch could
        # still use: a random first-fit packing drops whole batches when P is a large share of the
        # identities (e.g. 3 of 4 possible batches of 10 among 20 identities).
        while (left > 0).sum() >= self.p:
            chosen = np.lexsort((rng.random(left.size), -left))[:self.p]
            chosen = chosen[rng.permutation(self.p)]
            left[chosen] -= 1
            batch = [groups[label_index][left[label_index]] for label_index in chosen]
            part = batch[self.rank * share:(self.rank + 1) * share]
            batches.append([index for group in part for index in group])
        batches = [batches[i] for i in rng.permutation(len(batches))]
        self._plan = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int | tuple[int, int]]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class ShuffledBatchSampler(Sampler[list[int]]):
    """Yields batches of `batch_size` images drawn without labels: a shuffle of the images, cut up.

    Each epoch the indices 0..num_items-1 are permuted by
    `np.random.default_rng(np.random.SeedSequence((seed, epoch), spawn_key=(2,))).permutation(num_items)`
    and cut into consecutive batches of batch_size; the incomplete last batch is dropped, so an
    epoch has num_items // batch_size batches. The order depends only on (seed, epoch): call
    `set_epoch` each epoch, as with IdentityBalancedBatchSampler, whose contract this follows.
    Its spawn key differs from that sampler's (3) and from the dataset's item streams, the children (0,)
    and (1,) of (seed, epoch, index), which for item 0 is the entropy (seed, epoch).

    With num_replicas > 1, batch_size is the global batch (divisible by num_replicas), and replica
    `rank` gets the contiguous share [rank * b, (rank + 1) * b) of each batch, b = batch_size /
    num_replicas: the replicas' batches of one step together are the batch a single process gets.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        for name, value in (("num_items", num_items), ("batch_size", batch_size), ("num_replicas", num_replicas)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank!r}")
        if batch_size % num_replicas:
            raise ValueError(f"batch_size={batch_size} must be divisible by num_replicas={num_replicas} "
                             "(each replica takes an equal share of every batch)")
        if num_items < batch_size:
            raise ValueError(f"batch_size={batch_size} exceeds the {num_items} items (no batch would be complete)")
        self.num_items, self.batch_size, self.seed, self.epoch = num_items, batch_size, check_seed_word("seed", seed), 0
        self.num_replicas, self.rank = num_replicas, rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = check_seed_word("epoch", epoch)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(np.random.SeedSequence((self.seed, self.epoch), spawn_key=(2,)))
        order = rng.permutation(self.num_items).tolist()
        share = self.batch_size // self.num_replicas
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start + self.rank * share:start + (self.rank + 1) * share]

    def __len__(self) -> int:
        return self.num_items // self.batch_size


def _integer_labels(labels: Sequence[int] | torch.Tensor) -> list[int]:
    """labels as Python ints: a 1-D tensor or sequence of integers (a float's int() truncated 0.2 and 0.7 into one
    identity; a manifest's identity strings gave int()'s error, naming no argument)."""
    values = labels.tolist() if isinstance(labels, (torch.Tensor, np.ndarray)) else list(labels)
    integers = []
    for index, label in enumerate(values):
        # One label as a 0-d tensor or array (a list of dataset[i]["label"]) is its item.
        if isinstance(label, (torch.Tensor, np.ndarray)) and label.ndim == 0:
            label = label.item()
        if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
            raise ValueError(f"labels must be integers (identity_labels maps a manifest's identities to them), got "
                             f"{label!r} at index {index}")
        integers.append(int(label))
    return integers

