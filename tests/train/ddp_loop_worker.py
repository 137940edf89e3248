"""Run by test_distributed_training.py under torchrun (2 processes, gloo): `ddp_loop_worker.py ROOT`.

run_stage on a stage whose loss differs by rank: rank 0 logs the mean of the ranks' losses and
components, and a loss that is not finite on rank 1 only stops both ranks with FloatingPointError
(a rank that raised alone would leave the other waiting in DDP's all-reduce). A fake clock makes
every step take STEP_SECONDS, so the logged samples_per_s is known. Each rank writes what it saw to
ROOT/rank<r>.json for the test to check.
"""

import itertools
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch import nn

from tgfr.train import loop
from tgfr.train.config import OptimConfig
from tgfr.train.loop import LoopSettings, run_stage
from tgfr.train.stage import Stage
from tgfr.train.training_log import TrainingLog, read_log

BAD_STEP = 3
STEP_SECONDS = 0.25


class RankStage(Stage):
    """loss = <weight, x> + 10 * rank, component "rank_term" = 10 * rank; at step BAD_STEP rank 1's loss is NaN."""

    name = "ranked"

    def __init__(self, rank: int):
        nn.Module.__init__(self)
        self.losses = nn.ModuleDict()
        self.rank = rank
        self.weight = nn.Parameter(torch.zeros(3))
        self.step = 0

    def train(self, mode: bool = True) -> "RankStage":
        return nn.Module.train(self, mode)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.step += 1
        offset = torch.tensor(10.0 * self.rank)
        if self.step == BAD_STEP and self.rank == 1:
            offset = torch.tensor(float("nan"))
        return (self.weight * batch["x"]).sum() + offset, {"rank_term": offset}


class Batches:
    def from_step(self, step: int):
        while True:
            yield {"labels": torch.zeros(2), "x": torch.ones(3)}


def main(root: Path) -> None:
    dist.init_process_group("gloo")
    readings = itertools.count(0.0, STEP_SECONDS)
    loop.time = SimpleNamespace(perf_counter=lambda: next(readings))
    rank = dist.get_rank()
    settings = LoopSettings(torch.device("cpu"), log_every=1, checkpoint_every=100, rank=rank, world_size=2)
    log = TrainingLog(root / "metrics.jsonl" if rank == 0 else None)
    optim = OptimConfig(optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.0, warmup_steps=0, grad_clip=0.0)
    seen = {"error": None, "step_seconds": STEP_SECONDS}
    try:
        run_stage(RankStage(rank), Batches(), optim, 5, settings, log, lambda *args: None)
    except FloatingPointError as error:
        seen["error"] = str(error)
    if rank == 0:
        seen["log"] = read_log(root / "metrics.jsonl")
    (root / f"rank{rank}.json").write_text(json.dumps(seen))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
