"""Run by test_distributed_training.py under torchrun (2 processes, gloo): `ddp_resume_worker.py ROOT OVERRIDES_JSON`.

Each rank draws its own dropout masks, so a resumed rank must continue its own RNG stream: a run
stopped after 2 of 4 fr steps and resumed must end with the uninterrupted run's weights. Its align stage
follows the resume: every stage starts from rank 0's buffers (BatchNorm statistics), which after a resume
are the checkpoint's on rank 0 only, so the weights are the same only if they come from rank 0. The weakly
supervised association memory is drawn from each rank's RNG and moves with the images: it must be
one memory, the same on every rank, after training. Any failed check exits non-zero.
"""

import json
import sys
from pathlib import Path

import safetensors.torch
import torch
import torch.distributed as dist

from tgfr.train import run
from tgfr.train.checkpoint import load_checkpoint
from tgfr.train.config import load_config


def main(root: Path, overrides: list[str]) -> None:
    config = load_config("quick", overrides + ['stages=["fr", "align"]', "fr.steps=4", "align.steps=2",
                                               "align.optim.warmup_steps=0"])
    run.train(config, root / "straight")
    run.train(config, root / "resumed", stop_after=2)
    assert len(load_checkpoint(root / "resumed" / run.CHECKPOINT)["rng"]) == dist.get_world_size()
    run.train(config, root / "resumed", resume=True)
    if dist.get_rank() == 0:
        straight, resumed = (safetensors.torch.load_file(root / name / "model" / "model.safetensors")
                             for name in ("straight", "resumed"))
        differing = [name for name in straight if not torch.equal(straight[name], resumed[name])]
        assert not differing, f"resumed weights differ from the uninterrupted run's: {differing}"

    memories = []
    original_run_stage = run.run_stage

    def recording_run_stage(stage, *args, **kwargs):
        taken = original_run_stage(stage, *args, **kwargs)
        if "association" in stage.losses:
            memories.append(stage.losses["association"].prototypes.clone())
        return taken

    run.run_stage = recording_run_stage
    weak = load_config("quick", overrides + ['stages=["fr", "align"]', "fr.steps=1", "fr.optim.warmup_steps=0",
                                             "align.steps=3", "align.supervision=weak"])
    run.train(weak, root / "weak")
    (memory,) = memories
    memory_of = [torch.empty_like(memory) for _ in range(dist.get_world_size())]
    dist.all_gather(memory_of, memory)
    assert all(torch.equal(m, memory_of[0]) for m in memory_of), "the association memory differs between ranks"
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
