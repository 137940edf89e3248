"""The optimization loop shared by the stages: optimizer and schedule, mixed precision, gradient
clipping before the step, progress bar, metrics log, periodic atomic checkpoints and resumption."""

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from tgfr.distributed import mean_over_ranks
from tgfr.train.batches import StepBatches
from tgfr.train.checkpoint import set_rng_state
from tgfr.train.config import OptimConfig
from tgfr.train.prefetch import Prefetcher
from tgfr.train.stage import Stage
from tgfr.train.training_log import TrainingLog

# checkpoint(step, optimizer, scheduler): writes the run's state after `step` optimizer steps.
CheckpointWriter = Callable[[int, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler], None]


@dataclass
class LoopSettings:
    """bf16: autocast the stage's forward to bfloat16 (GPU); stop_after: optimizer steps this
    process may still take before it checkpoints and stops (None: no limit)."""

    device: torch.device
    bf16: bool = False
    log_every: int = 10
    checkpoint_every: int = 50
    rank: int = 0
    world_size: int = 1
    stop_after: int | None = None


# Buffers are not synced at each forward: torch 2.13 renamed broadcast_buffers=False (deprecated there, with a
# FutureWarning from every rank for every stage) to forward_sync_buffers=False.
_NO_FORWARD_BUFFER_SYNC = ({"forward_sync_buffers": False}
                           if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                           else {"broadcast_buffers": False})


def make_optimizer(groups: list[dict[str, Any]], config: OptimConfig) -> torch.optim.Optimizer:
    """groups: the stage's parameter groups (Stage.parameter_groups), at config.lr where a group names no lr."""
    if not any(group["params"] for group in groups):
        raise ValueError("the stage has no trainable parameters")
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(step: int, steps: int, config: OptimConfig) -> float:
    """Factor of the lr at 0-based optimizer step `step` of `steps`: linear warm-up (step + 1) / warmup_steps,
    so the last warm-up step uses the full lr; then constant, or cosine from the full lr at step
    warmup_steps down to min_lr_ratio at the last step, steps - 1."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    # steps - 1 - warmup_steps: the last step, not the step after it, takes min_lr_ratio (a one-step
    # cosine phase keeps the full lr).
    progress = (step - config.warmup_steps) / max(1, steps - 1 - config.warmup_steps)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _check_finite(loss: torch.Tensor, stage: str, step: int, world_size: int) -> None:
    """Raises FloatingPointError on every rank when the loss of any rank is not finite: a rank that
    raised alone would leave the others waiting in DDP's gradient all-reduce for good. Every rank's
    message gives the failing ranks' losses (rank 0 prints it, whose own loss may be finite)."""
    losses = torch.zeros(world_size, dtype=torch.float64, device=loss.device)
    losses[dist.get_rank() if world_size > 1 else 0] = loss.detach().double()
    if world_size > 1:
        dist.all_reduce(losses)  # each entry is one rank's: a sum with zeros keeps it, NaN and inf included
    bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
    if bad:
        if world_size > 1:
            values = ", ".join(f"rank {rank}: {losses[rank].item()}" for rank in bad)
            raise FloatingPointError(f"stage {stage}: loss is not finite on rank {', '.join(map(str, bad))} at step "
                                     f"{step} ({values})")
        raise FloatingPointError(f"stage {stage}: loss is not finite at step {step} (loss: {losses[0].item()})")


def _batch_scalars(loss: torch.Tensor, components: dict[str, torch.Tensor], world_size: int) -> dict[str, float]:
    """The loss and its components for the log: each rank's are of its share of the global batch,
    so under DDP they are averaged over ranks (the pairwise losses' mean over ranks is their value
    on the whole batch up to BatchNorm's per-rank statistics, see tgfr.distributed)."""
    names = ["loss", *components]
    values = torch.stack([value.detach().float().reshape(()) for value in (loss, *components.values())])
    if world_size > 1:
        values = mean_over_ranks(values)
    return dict(zip(names, values.tolist()))


def run_stage(stage: Stage, batches: StepBatches, optim: OptimConfig, steps: int, settings: LoopSettings,
              log: TrainingLog, checkpoint: CheckpointWriter, resume: dict[str, Any] | None = None,
              on_resumed: Callable[[], None] | None = None, resume_file: Path | None = None) -> int:
    """Trains `stage` for `steps` optimizer steps (from resume["step"] when resuming; resume["rng"]
    holds one RNG state per rank). on_resumed: called once the resume state is loaded, before the
    first step (tgfr.train.run cuts metrics.jsonl back to the checkpoint only then, so a state that
    does not load leaves the log as it was). resume_file: the checkpoint file `resume` was read from,
    which an error in loading it names.

    Returns the number of steps taken in this call (stops early at settings.stop_after).
    """
    stage.train()
    parameters = stage.parameters_to_optimize()
    optimizer = make_optimizer(stage.parameter_groups(), optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps, optim))
    start = 0
    if resume is not None:
        try:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            set_rng_state(resume["rng"][settings.rank])
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as error:
            source = f"checkpoint file {resume_file}" if resume_file is not None else "the resume state"
            # Only a stage that trains the text encoder optimized its pooler too, in tgfr before 2026-11-27.
            pooler = (" (tgfr before 2026-11-27 also optimized the text encoder's pooler, which TGFR never uses, "
                      "when model.freeze_text_encoder was false: such a checkpoint of this stage cannot be resumed)"
                      if "text_encoder" in stage.trained and not stage.model.text_encoder.frozen else "")
            raise ValueError(f"{source}: the state of stage {stage.name} does not fit its optimizer, schedule or "
                             f"RNGs: {error!r}. A checkpoint of other settings or of another tgfr "
                             f"version?{pooler}") from error
        start = resume["step"]
        if on_resumed is not None:
            on_resumed()
    module = stage
    if settings.world_size > 1:
        # DDP syncs parameters, but buffers at most once (where torch has forward_sync_buffers): every rank
        # starts from rank 0's (the association memory is drawn from each rank's RNG; BN statistics drift
        # apart per rank in fr).
        for buffer in stage.buffers():
            dist.broadcast(buffer, 0)
        module = DistributedDataParallel(stage, device_ids=[settings.device.index] if settings.device.type == "cuda"
                                         else None, **_NO_FORWARD_BUFFER_SYNC)
    # The next batch is made while this step computes (tgfr.train.prefetch); leaving the block stops that.
    # The bar closes on an error too, before the command prints it (else the line lands inside the bar).
    with (Prefetcher(batches.from_step(start)) as stream,
          tqdm(total=steps, initial=start, desc=stage.name, disable=settings.rank != 0, dynamic_ncols=True) as bar):
        taken, last, checkpointed = 0, time.perf_counter(), None
        for step in range(start, steps):
            if settings.stop_after is not None and taken >= settings.stop_after:
                break
            batch = next(stream)
            with torch.autocast(settings.device.type, dtype=torch.bfloat16, enabled=settings.bf16):
                loss, components = module(batch)
            _check_finite(loss, stage.name, step + 1, settings.world_size)  # 1-based, as in metrics.jsonl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip = optim.grad_clip if optim.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, clip)  # before the step
            # A finite loss can have a non-finite gradient (sqrt at 0): the step would write NaN weights, and the
            # next checkpoint would hold them. The norm is of the all-reduced gradients: every rank raises.
            if not torch.isfinite(grad_norm):
                raise FloatingPointError(f"stage {stage.name}: gradient is not finite at step {step + 1} (loss "
                                         f"{float(loss.detach()):.6g}, gradient norm {float(grad_norm)}); the "
                                         "weights were not updated")
            lr = optimizer.param_groups[0]["lr"]  # this step's; after scheduler.step() it is the next step's
            optimizer.step()
            scheduler.step()
            taken += 1
            now = time.perf_counter()
            samples_per_s = len(batch["labels"]) * settings.world_size / (now - last)
            last = now
            logged = (step + 1) % settings.log_every == 0 or step + 1 == steps
            # Averaging needs a collective, so only at logged steps (the same steps on every rank).
            values = {**_batch_scalars(loss, components, settings.world_size if logged else 1),
                      "grad_norm": float(grad_norm), "lr": lr, "samples_per_s": samples_per_s}
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in values.items() if k != "lr"})
            if logged:
                log.write(stage.name, step + 1, values)
            if (step + 1) % settings.checkpoint_every == 0 or step + 1 == steps:
                checkpoint(step + 1, optimizer, scheduler)
                checkpointed = step + 1
        else:
            return taken
        if checkpointed != start + taken:  # stop_after ran out on a step that wrote no periodic checkpoint
            checkpoint(start + taken, optimizer, scheduler)
        return taken
