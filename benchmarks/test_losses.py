"""Each loss, fused backend vs the full-matrix reference backend: forward+backward time.

Quick by default; TGFR_BENCH_FULL=1 adds larger batches. Peak memory of the fused contrastive
op is measured in benchmarks/test_contrastive.py.
"""

import os

import pytest
import torch

from tgfr.losses import (CaptionImageContrastiveLoss, CoReFaceLoss, IntraModalContrastiveLoss,
                         WordRegionContrastiveLoss)

FULL = os.environ.get("TGFR_BENCH_FULL") == "1"
BATCHES = [256] + ([4096] if FULL else [])


def embeddings(n, d=256, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=generator, requires_grad=True),
            torch.randn(n, d, generator=generator, requires_grad=True),
            torch.randint(0, max(1, n // 4), (n,), generator=generator))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("loss_class", [CaptionImageContrastiveLoss, IntraModalContrastiveLoss, CoReFaceLoss])
def test_embedding_losses(benchmark, loss_class, n, backend):
    a, b, labels = embeddings(n)
    loss = loss_class(backend=backend)
    benchmark.extra_info.update(n=n, d=256)
    benchmark.pedantic(lambda: loss(a, b, labels).backward(), rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("n", [32] + ([256] if FULL else []))
def test_word_region_loss(benchmark, n, backend):
    # SPEC "small" shape: T 12, R 49, D 64.
    generator = torch.Generator().manual_seed(0)
    words = torch.randn(n, 12, 64, generator=generator, requires_grad=True)
    regions = torch.randn(n, 49, 64, generator=generator, requires_grad=True)
    lengths = torch.randint(1, 13, (n,), generator=generator)
    labels = torch.randint(0, max(1, n // 4), (n,), generator=generator)
    loss = WordRegionContrastiveLoss(backend=backend)
    benchmark.extra_info.update(n=n, t=12, r=49, d=64)
    benchmark.pedantic(lambda: loss(words, lengths, regions, labels).backward(), rounds=3, iterations=1,
                       warmup_rounds=1)
