"""The optimization loop's schedule: linear warm-up to the full learning rate, then cosine down to
lr * min_lr_ratio at the last step; metrics.jsonl logs the learning rate each step actually used,
also across a resume in the middle of the warm-up, under the constant schedule too; the stage in its training modes;
bf16 autocast of the forward; the logged throughput."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tgfr.train.checkpoint import rng_state
from tgfr.train.config import OptimConfig
from tgfr.train.loop import LoopSettings, lr_factor, run_stage
from tgfr.train.stage import Stage
from tgfr.train.training_log import TrainingLog, read_log

STEPS, WARMUP, MIN_RATIO, LR = 12, 4, 0.1, 0.5


def expected_factor(step: int) -> float:
    """Warm-up (s + 1) / W for s < W; then min + (1 - min) * (1 + cos(pi * (s - W) / (S - 1 - W))) / 2."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    progress = (step - WARMUP) / (STEPS - 1 - WARMUP)
    return MIN_RATIO + (1 - MIN_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))


def test_schedule_reaches_the_full_rate_after_warm_up_and_min_lr_ratio_at_the_last_step():
    config = OptimConfig(lr=LR, warmup_steps=WARMUP, min_lr_ratio=MIN_RATIO)
    factors = [lr_factor(step, STEPS, config) for step in range(STEPS)]
    assert factors[0] == pytest.approx(1 / WARMUP)
    assert factors[WARMUP - 1] == factors[WARMUP] == 1.0
    assert factors[-1] == pytest.approx(MIN_RATIO)
    assert factors == pytest.approx([expected_factor(step) for step in range(STEPS)])
    no_warmup = OptimConfig(lr=LR, warmup_steps=0, min_lr_ratio=MIN_RATIO)
    assert lr_factor(0, STEPS, no_warmup) == 1.0 and lr_factor(STEPS - 1, STEPS, no_warmup) == pytest.approx(MIN_RATIO)
    assert lr_factor(0, 1, no_warmup) == 1.0  # a one-step stage trains at the full rate


def test_the_constant_schedule_warms_up_too():
    """OptimConfig's schedule = "constant" follows the same linear warm-up, (s + 1) / W for s < W, then keeps 1."""
    config = OptimConfig(lr=LR, schedule="constant", warmup_steps=WARMUP)
    assert [lr_factor(step, STEPS, config) for step in range(STEPS)] == pytest.approx(
        [(step + 1) / WARMUP if step < WARMUP else 1.0 for step in range(STEPS)])


class LinearStage(Stage):
    """loss = <weight, direction>: its gradient is `direction` whatever the weight, so plain SGD moves the
    weight by exactly -lr * direction and the learning rate of every step can be read off the weights."""

    name = "linear"

    def __init__(self):
        nn.Module.__init__(self)
        self.losses = nn.ModuleDict()
        self.weight = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        self.register_buffer("direction", torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))

    def train(self, mode: bool = True) -> "LinearStage":
        return nn.Module.train(self, mode)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return (self.weight * self.direction).sum(), {}


class Batches:
    def from_step(self, step: int):
        while True:
            yield {"labels": torch.zeros(2)}


class ModeRecordingStage(LinearStage):
    """Built in eval mode (as a resumed process builds its model); records self.training at each forward."""

    def __init__(self):
        super().__init__()
        self.eval()
        self.modes = []

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.modes.append(self.training)
        return super().forward(batch)


def test_the_loop_puts_the_stage_into_its_training_modes(tmp_path):
    """run_stage calls Stage.train, which sets each part's mode (the parts a stage keeps fixed in eval mode, so a
    fixed BatchNorm keeps its running statistics): left as built, a stage would train in whatever mode it had."""
    optim = OptimConfig(optimizer="sgd", lr=LR, momentum=0.0, weight_decay=0.0, schedule="constant", warmup_steps=0)
    stage = ModeRecordingStage()
    run_stage(stage, Batches(), optim, 3, LoopSettings(torch.device("cpu"), checkpoint_every=3),
              TrainingLog(tmp_path / "metrics.jsonl"), lambda step, optimizer, scheduler: None)
    assert stage.modes == [True] * 3


def test_logged_rate_is_the_rate_each_step_used_also_after_a_resume_in_warm_up(tmp_path):
    optim = OptimConfig(optimizer="sgd", lr=LR, momentum=0.0, weight_decay=0.0, warmup_steps=WARMUP,
                        min_lr_ratio=MIN_RATIO, grad_clip=0.0)
    settings = LoopSettings(torch.device("cpu"), log_every=1, checkpoint_every=STEPS)
    stage, log, weights, saved = LinearStage(), TrainingLog(tmp_path / "metrics.jsonl"), [], {}

    def checkpoint(step, optimizer, scheduler):
        weights.append((step, stage.weight.detach().clone()))
        saved.update(step=step, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=[rng_state()])

    settings.stop_after = WARMUP // 2  # stop in the middle of the warm-up
    assert run_stage(stage, Batches(), optim, STEPS, settings, log, checkpoint) == WARMUP // 2
    settings.stop_after = None
    resumed = dict(saved)
    # A fresh stage holding the checkpointed weights (as a resumed process builds it).
    weight = stage.weight.detach().clone()
    stage = LinearStage()
    with torch.no_grad():
        stage.weight.copy_(weight)
    assert run_stage(stage, Batches(), optim, STEPS, settings, log, checkpoint, resumed) == STEPS - WARMUP // 2
    records = read_log(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    expected = [LR * expected_factor(step) for step in range(STEPS)]
    assert [r["lr"] for r in records] == pytest.approx(expected)
    # The weights moved by exactly the logged rates: sum of the rates so far times -direction.
    direction = LinearStage().direction
    for step, weight in weights:
        assert torch.allclose(weight, -sum(expected[:step]) * direction), step


def run_linear_stage(tmp_path, steps, grad_clip=0.0, log_every=1):
    """Trains a fresh LinearStage for `steps` SGD steps at the constant rate LR -> (its weight, the log's records)."""
    optim = OptimConfig(optimizer="sgd", lr=LR, momentum=0.0, weight_decay=0.0, schedule="constant", warmup_steps=0,
                        grad_clip=grad_clip)
    settings = LoopSettings(torch.device("cpu"), log_every=log_every, checkpoint_every=steps)
    stage, log = LinearStage(), TrainingLog(tmp_path / "metrics.jsonl")
    run_stage(stage, Batches(), optim, steps, settings, log, lambda *state: None)
    return stage.weight.detach(), read_log(tmp_path / "metrics.jsonl")


@pytest.mark.parametrize("grad_clip", [0.0, 0.5, 2.0, 10.0])
def test_a_step_moves_the_weights_by_lr_times_the_gradient_clipped_to_grad_clip(tmp_path, grad_clip):
    """The gradient is `direction`, norm sqrt(1 + 4 + 0.25) = 2.29: grad_clip below it scales the step to
    norm lr * grad_clip; above it, or 0 (no clipping), the step is lr * direction. The log has the norm before
    clipping."""
    weight, records = run_linear_stage(tmp_path, 1, grad_clip=grad_clip)
    direction = LinearStage().direction
    norm = math.sqrt(1 + 4 + 0.25)
    step_norm = LR * (min(grad_clip, norm) if grad_clip > 0 else norm)
    assert torch.allclose(weight, -step_norm * direction / norm, rtol=1e-6, atol=0)
    assert records[0]["grad_norm"] == pytest.approx(norm)


@pytest.mark.parametrize("steps,log_every,logged", [(3, 5, [3]), (5, 2, [2, 4, 5]), (4, 2, [2, 4])])
def test_the_log_has_every_log_every_th_step_and_the_last(tmp_path, steps, log_every, logged):
    """A stage shorter than log_every, or not a multiple of it, still logs its last step."""
    _, records = run_linear_stage(tmp_path, steps, log_every=log_every)
    assert [record["step"] for record in records] == logged


class AutocastRecordingStage(LinearStage):
    """Records, at each forward, whether CPU autocast is on and the dtype it casts to."""

    def __init__(self):
        super().__init__()
        self.autocast = []

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.autocast.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return super().forward(batch)


@pytest.mark.parametrize("bf16", [True, False])
def test_bf16_autocasts_every_forward_to_bfloat16_and_fp32_none(tmp_path, bf16):
    """precision bf16 (or auto on GPU) must not train silently in fp32, nor fp32 under autocast."""
    optim = OptimConfig(optimizer="sgd", lr=LR, momentum=0.0, weight_decay=0.0, schedule="constant", warmup_steps=0)
    settings = LoopSettings(torch.device("cpu"), bf16=bf16, log_every=1, checkpoint_every=3)
    stage = AutocastRecordingStage()
    run_stage(stage, Batches(), optim, 3, settings, TrainingLog(tmp_path / "metrics.jsonl"), lambda *state: None)
    assert [enabled for enabled, _ in stage.autocast] == [bf16] * 3
    if bf16:
        assert [dtype for _, dtype in stage.autocast] == [torch.bfloat16] * 3
    assert not torch.is_autocast_enabled("cpu")  # the loop leaves autocast as it found it


def test_samples_per_s_is_the_batch_over_the_time_of_its_own_step(tmp_path, monkeypatch):
    """A fake clock gives each step its own duration: samples_per_s is the batch's size over that step's time,
    not over the time since the stage started. With world size 1 only: the factor world_size (the global
    batch of all ranks) needs a process group of several ranks."""
    durations = [0.5, 2.0, 0.25, 4.0]
    readings = [100.0 + sum(durations[:count]) for count in range(len(durations) + 1)]
    monkeypatch.setattr("tgfr.train.loop.time", SimpleNamespace(perf_counter=lambda: readings.pop(0)))
    run_linear_stage(tmp_path, len(durations))
    batch_size = len(next(Batches().from_step(0))["labels"])
    records = read_log(tmp_path / "metrics.jsonl")
    assert [record["samples_per_s"] for record in records] == pytest.approx([batch_size / d for d in durations])


class SquareRootStage(LinearStage):
    """loss = sum(sqrt(|weight|)): finite at weight 0, where its gradient is not."""

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.weight.abs().sqrt().sum(), {}


class InfiniteAtStep2(LinearStage):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self.calls += 1
        loss, components = super().forward(batch)
        return (loss + math.inf if self.calls == 2 else loss), components


@pytest.mark.parametrize("grad_clip", [0.0, 5.0])
def test_a_non_finite_gradient_stops_the_stage_before_the_step(tmp_path, grad_clip):
    optim = OptimConfig(optimizer="sgd", lr=LR, momentum=0.0, weight_decay=0.0, schedule="constant", warmup_steps=0,
                        grad_clip=grad_clip)
    settings = LoopSettings(torch.device("cpu"), log_every=1, checkpoint_every=1)
    stage, saved = SquareRootStage(), []
    with pytest.raises(FloatingPointError, match=r"^stage linear: gradient is not finite at step 1 \(loss 0, "
                                                 r"gradient norm nan\); the weights were not updated$"):
        run_stage(stage, Batches(), optim, 3, settings, TrainingLog(tmp_path / "metrics.jsonl"),
                  lambda step, optimizer, scheduler: saved.append(step))
    assert torch.equal(stage.weight, torch.zeros(3, dtype=torch.float64)) and not saved


def test_an_infinite_loss_stops_the_stage(tmp_path):
    optim = OptimConfig(optimizer="sgd", lr=LR, momentum=0.0, weight_decay=0.0, schedule="constant", warmup_steps=0)
    settings = LoopSettings(torch.device("cpu"), log_every=1, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match=r"^stage linear: loss is not finite at step 2 \(loss: inf\)$"):
        run_stage(InfiniteAtStep2(), Batches(), optim, 3, settings, TrainingLog(tmp_path / "metrics.jsonl"),
                  lambda step, optimizer, scheduler: None)


@pytest.mark.parametrize("start, stop_after", [(0, 3), (0, 4), (0, 6), (2, 1), (2, 2), (3, 3)])
def test_stop_after_writes_the_checkpoint_of_each_step_once(tmp_path, start, stop_after):
    """stop_after ends the call with a checkpoint of its last step; where that step wrote its periodic one
    (the call's last step a multiple of checkpoint_every), the same checkpoint was written twice: one more full
    save. A call resumed at step `start` counts its steps from there."""
    optim = OptimConfig(optimizer="sgd", lr=LR, momentum=0.0, weight_decay=0.0, schedule="constant", warmup_steps=0)
    log, resume = TrainingLog(tmp_path / "metrics.jsonl"), None
    if start:
        resume = {}
        run_stage(LinearStage(), Batches(), optim, STEPS, LoopSettings(torch.device("cpu"), stop_after=start), log,
                  lambda step, optimizer, scheduler: resume.update(step=step, optimizer=optimizer.state_dict(),
                                                                   scheduler=scheduler.state_dict(),
                                                                   rng=[rng_state()]))
        assert resume["step"] == start
    settings = LoopSettings(torch.device("cpu"), checkpoint_every=3, stop_after=stop_after)
    saved = []
    assert run_stage(LinearStage(), Batches(), optim, STEPS, settings, log,
                     lambda step, optimizer, scheduler: saved.append(step), resume) == stop_after
    last = start + stop_after
    periodic = [step for step in range(start + 1, last + 1) if step % settings.checkpoint_every == 0]
    assert saved == periodic + ([] if last in periodic else [last])


class TextEncoderStage(LinearStage):
    """A stage that trains the text encoder, as align does; frozen, the encoder takes no part in it."""

    trained = ("text_encoder",)

    def __init__(self, frozen: bool):
        super().__init__()
        self.model = nn.Module()  # stands in for TGFRModel: only its text encoder's `frozen` is read
        self.model.text_encoder = nn.Module()
        self.model.text_encoder.frozen = frozen


@pytest.mark.parametrize("make_stage, pooler", [(LinearStage, False), (lambda: TextEncoderStage(frozen=True), False),
                                                (lambda: TextEncoderStage(frozen=False), True)],
                         ids=["no text encoder", "frozen text encoder", "trained text encoder"])
def test_a_resume_state_that_does_not_load_names_its_file_and_the_pooler_only_where_it_trained(tmp_path, make_stage,
                                                                                              pooler):
    """tgfr before 2026-11-27 optimized the text encoder's pooler too, where the text encoder trained: only there
    can that be why a checkpoint's optimizer state does not fit (here one of another number of groups)."""
    optim = OptimConfig(optimizer="sgd", lr=LR, momentum=0.0, weight_decay=0.0, schedule="constant", warmup_steps=0)
    resume = {"step": 1, "optimizer": {"state": {}, "param_groups": []}, "scheduler": {}, "rng": [rng_state()]}
    with pytest.raises(ValueError) as error:
        run_stage(make_stage(), Batches(), optim, 3, LoopSettings(torch.device("cpu")),
                  TrainingLog(tmp_path / "metrics.jsonl"), lambda step, optimizer, scheduler: None, resume,
                  resume_file=tmp_path / "last.pt")
    assert str(error.value).startswith(f"checkpoint file {tmp_path / 'last.pt'}: the state of stage linear does not "
                                       "fit its optimizer, schedule or RNGs: ValueError(")
    assert ("the text encoder's pooler" in str(error.value)) == pooler
