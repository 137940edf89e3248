"""The random streams of a training run, all derived from its one `seed` setting.

Each stream's seed is mixed from (seed, stream, its keys) by numpy's SeedSequence. Offsets added to
the seed (seed + stage index) would make runs overlap: seed 1's first stage would replay seed 0's
second stage, batch for batch, and seeds 0, 1, 2 would be no independent replicates.
"""

import random

import numpy as np
import torch

# Which stream: a spawn key apart from the keys, since numpy drops a seed tuple's trailing zeros.
DATA_STREAM = 1  # a stage's batches: order, caption draws, augmentation (keys: stage index)
STEP_STREAM = 2  # a stage's global RNGs: dropout, embedding augmentation (keys: stage index, rank)
LOADER_STREAM = 3  # a DataLoader's worker seeds (keys: the data stream's seed, the step the loader starts at)


def stream_seed(seed: int, stream: int, *keys: int) -> int:
    """The 32-bit seed of one random stream of the run seeded with `seed`."""
    return int(np.random.SeedSequence((seed, *keys), spawn_key=(stream,)).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seeds Python's, numpy's and torch's global generators (seed below 2^32, as numpy takes it)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
