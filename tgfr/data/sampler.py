"""Identity-balanced batches (P identities x K images) for contrastive training."""

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


class IdentityBalancedBatchSampler(Sampler[list[int]]):
    """Yields batches of P distinct identities with K images each (batch size P*K).

    Each epoch, every identity's images are shuffled and cut into groups of K (an identity with
    fewer than K images fills its single group by drawing again from its own images); groups are
    shuffled and packed P per batch so that no identity appears twice in a batch. Groups that do
    not fill a last batch are dropped. The order depends only on (seed, epoch): call
    `set_epoch` each epoch, as with DistributedSampler. With num_replicas > 1, replica `rank`
    gets every num_replicas-th batch of the common plan (all replicas get equally many).
    """

    def __init__(self, labels: Sequence[int] | torch.Tensor, identities_per_batch: int,
                 images_per_identity: int, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        labels = torch.as_tensor(labels).tolist() if isinstance(labels, torch.Tensor) else list(labels)
        for name, value in (("identities_per_batch", identities_per_batch), ("images_per_identity", images_per_identity)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.indices_of: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            self.indices_of.setdefault(int(label), []).append(index)
        if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(f"num_replicas must be a positive integer, got {num_replicas!r}")
        if not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank!r}")
        self.num_replicas, self.rank = num_replicas, rank
        if len(self.indices_of) < identities_per_batch:
            raise ValueError(f"identities_per_batch={identities_per_batch} exceeds the {len(self.indices_of)} "
                             "identities in labels")
        self.p, self.k, self.seed, self.epoch = identities_per_batch, images_per_identity, seed, 0
        self._plan: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        if self._plan is not None and self._plan[0] == self.epoch:
            return self._plan[1]
        rng = np.random.default_rng((self.seed, self.epoch))
        groups: list[tuple[int, list[int]]] = []
        for label in sorted(self.indices_of):
            indices = [self.indices_of[label][i] for i in rng.permutation(len(self.indices_of[label]))]
            if len(indices) < self.k:
                extra = rng.choice(indices, size=self.k - len(indices), replace=True)
                groups.append((label, indices + [int(i) for i in extra]))
            else:
                groups += [(label, indices[s:s + self.k]) for s in range(0, len(indices) - self.k + 1, self.k)]
        order = rng.permutation(len(groups))
        batches, open_batches = [], []  # open batches: (labels in batch, indices)
        for group_index in order:
            label, indices = groups[group_index]
            target = next((b for b in open_batches if label not in b[0]), None)
            if target is None:
                target = (set(), [])
                open_batches.append(target)
            target[0].add(label)
            target[1].extend(indices)
            if len(target[0]) == self.p:
                open_batches.remove(target)
                batches.append(target[1])
        per_replica = len(batches) // self.num_replicas
        batches = batches[self.rank:per_replica * self.num_replicas:self.num_replicas]
        self._plan = (self.epoch, batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
