"""Run by test_distributed_training.py under torchrun (2 processes, gloo):
`ddp_corrupt_image_worker.py RUN_FOLDER TRAIN_ARGUMENTS_JSON`.

`tgfr train` with one change: once every rank has checked the training images at the start, rank 1
overwrites the images of its share of the fr stage's second batch with bytes that are no image. Only
rank 1 reads them (without the decoded-image cache, --image-cache-mib 0, it reads them again), so
only rank 1 meets the error. Exits with `tgfr train`'s status.
"""

import json
import sys

import torch.distributed as dist

from tgfr.cli import main
from tgfr.train import run

NOT_AN_IMAGE = b"not an image"


def corrupting_stage_batches(*args, **kwargs):
    batches = original_stage_batches(*args, **kwargs)
    from_step = batches.from_step

    def corrupted_from_step(step):
        dist.barrier()  # rank 0 has built its batches from the intact files too
        if dist.get_rank() == 1:
            batches.sampler.set_epoch(0)
            for item in list(batches.sampler)[1]:
                index = item[0] if isinstance(item, tuple) else item
                (batches.dataset.root / batches.dataset.records[index].path).write_bytes(NOT_AN_IMAGE)
        dist.barrier()
        return from_step(step)

    batches.from_step = corrupted_from_step
    return batches


original_stage_batches = run.stage_batches
run.stage_batches = corrupting_stage_batches

if __name__ == "__main__":
    sys.exit(main(["train", "--out", sys.argv[1], *json.loads(sys.argv[2])]))
