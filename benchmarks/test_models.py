"""CPU throughput (images/s) of the reduced iResNet used for CPU training.

Backbone `iresnet_small` (one block per stage, base width 16, 512-d embedding) in training mode
(batch-statistics BN, as in a training step); forward, and forward + backward of the embedding
sum. Quick mode: 64x64 inputs, batches 8 and 32, one round; full mode (TGFR_BENCH_FULL=1):
64x64 and 112x112, batches 32 and 128, three rounds. images/s = batch / median seconds, stored
in the benchmark's extra_info.
"""

import pytest
import torch

from benchmarks.conftest import FULL
from tgfr.models import IResNet, IResNetConfig

BATCHES = [32, 128] if FULL else [8, 32]
INPUT_SIZES = [64, 112] if FULL else [64]


@pytest.mark.parametrize("input_size", INPUT_SIZES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("passes", ["forward", "forward_backward"])
def test_iresnet_small_images_per_second(benchmark, bench_rounds, passes, batch, input_size):
    torch.manual_seed(0)
    model = IResNet(IResNetConfig.preset("iresnet_small", input_size=input_size)).train()
    images = torch.randn(batch, 3, input_size, input_size)

    def step():
        if passes == "forward":
            with torch.no_grad():
                return model(images).embedding
        model.zero_grad(set_to_none=True)
        embedding = model(images).embedding
        embedding.sum().backward()
        return embedding

    benchmark.group = f"iresnet_small {passes} {input_size}x{input_size}"
    benchmark.pedantic(step, rounds=bench_rounds, iterations=1, warmup_rounds=1)
    if benchmark.disabled:  # --benchmark-disable: the step ran once, as a check; nothing was timed
        return
    images_per_second = batch / benchmark.stats.stats.median
    benchmark.extra_info.update(images_per_second=images_per_second, batch=batch, input_size=input_size,
                                dtype="float32", threads=torch.get_num_threads())
    assert images_per_second > 0
