"""`tgfr train` with 2 CPU processes (gloo): under torchrun every stage runs with DDP and the
losses' gathered local form and rank 0 writes the run folder; a stopped run resumes exactly, and
the weakly supervised association memory stays one memory across ranks."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

import tgfr.train.run as run_module
from tgfr.models import TextEncoder
from tgfr.train.checkpoint import load_checkpoint
from tgfr.train.config import load_config


def torchrun(log_root: Path, *arguments: str, timeout: int = 240) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run` with 2 processes of 1 OpenMP thread each; its agent's logs go under
    log_root (by default it leaves a torchelastic_* folder in $TMPDIR)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--log-dir", str(log_root / "torchrun-logs"), *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_process_cpu_run(tmp_path, tiny_overrides):
    run = tmp_path / "ddp"
    overrides = [arg for o in tiny_overrides + ["fr.steps=3", "align.steps=3", "fuse.steps=3"] for arg in ("--set", o)]
    result = torchrun(tmp_path, "-m", "tgfr.cli", "train", "--preset", "quick", "--out", str(run), *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "model" / "model.safetensors").is_file()
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in log] == [(s, k) for s in ("fr", "align", "fuse") for k in (1, 2, 3)]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["align"]["global_batch"] == 8 and summary["fuse"]["steps_taken"] == 3


def test_two_process_run_trains_the_text_encoder(tmp_path, tiny_overrides):
    """With model.freeze_text_encoder = false the align stage trains the text encoder under DDP: every
    trainable parameter gets a gradient at every step (BERT's pooler, which TGFR never uses, is not
    trainable), so DDP takes its second step; the encoder moved, the pooler kept its packaged weights."""
    run = tmp_path / "ddp"
    settings = tiny_overrides + ["fr.steps=1", "align.steps=2", "fuse.steps=1", "fr.optim.warmup_steps=0",
                                 "align.optim.warmup_steps=1", "fuse.optim.warmup_steps=0",
                                 "model.freeze_text_encoder=false"]
    result = torchrun(tmp_path, "-m", "tgfr.cli", "train", "--preset", "quick", "--out", str(run),
                      *[arg for o in settings for arg in ("--set", o)])
    assert result.returncode == 0, result.stderr[-3000:]
    # torch 2.13 deprecates DDP's broadcast_buffers with a warning per rank and stage.
    assert "FutureWarning" not in result.stderr
    trained = safetensors.torch.load_file(run / "model" / "model.safetensors")
    packaged = TextEncoder().state_dict()
    changed = {name for name, value in packaged.items()
               if not torch.equal(trained[f"text_encoder.{name}"], value)}
    assert "model.embeddings.word_embeddings.weight" in changed
    assert "model.encoder.layer.5.output.dense.weight" in changed
    assert not any(name.startswith("model.pooler.") for name in changed)
    # Each rank seeds its steps apart, so that the ranks draw other dropout masks (the checkpoint holds the
    # ranks' RNG states as the run ended).
    rng = load_checkpoint(run / "checkpoints" / "last.pt")["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])



def test_an_fr_stage_that_only_loads_backbone_weights_is_held_to_no_batch_rule(tmp_path, tiny_overrides):
    """stages = ["fr", "align"] with model.backbone_weights: fr trains nothing, so only the weakly supervised
    align stage's rule holds (3 identities x 2 images = 6 images split over 2 processes), not the
    identity-balanced batches' (3 identities cannot split in two), as without torchrun."""
    from tgfr.train.config import load_config
    from tgfr.train.run import build_model

    weights = tmp_path / "backbone.safetensors"
    safetensors.torch.save_file(build_model(load_config("quick", tiny_overrides)).backbone.state_dict(), weights)
    run = tmp_path / "ddp"
    settings = tiny_overrides + ['stages=["fr", "align"]', 'align.supervision="weak"', "data.identities_per_batch=3",
                                 "align.steps=2", "align.optim.warmup_steps=1", f'model.backbone_weights="{weights}"']
    result = torchrun(tmp_path, "-m", "tgfr.cli", "train", "--preset", "quick", "--out", str(run),
                      *[arg for o in settings for arg in ("--set", o)])
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in log] == [("align", 1), ("align", 2)]
    trained = safetensors.torch.load_file(run / "model" / "model.safetensors")
    loaded = safetensors.torch.load_file(weights)
    assert all(torch.equal(trained[f"backbone.{name}"], value) for name, value in loaded.items())


# Stage settings, after fr loads the same backbone weights: align identity-supervised (its caption-image and
# intra-modal terms over the gathered batch), weakly supervised (the association memory, the confidence-weighted
# global term), and fuse with the focal loss (of the global batch's mean cross-entropy).
GLOBAL_BATCH_CASES = {
    "align": ["align.steps=2"],
    "weak align": ["align.steps=2", 'align.supervision="weak"'],
    "focal fuse": ["align.steps=1", 'stages=["fr", "align", "fuse"]', "fuse.steps=2", "fuse.optim.warmup_steps=0",
                   "fuse.focal=true", "fuse.arcface_scale=2.0", 'model.fusion="linear"'],
}


@pytest.mark.parametrize("case", list(GLOBAL_BATCH_CASES))
def test_two_processes_train_on_the_global_batch_of_one(tmp_path, tiny_overrides, case):
    """Each rank trains on its own share of the global batch: the steps, from the same backbone weights and
    seeded heads, give every logged loss term and gradient norm of one process on the whole batch, the second
    step also its update. WRCL is left out (its weight 0): the image head's BatchNorm normalizes each rank's
    share, as README says. Every rank on rank 0's share passed every other DDP test, and a gradient scaled by the
    number of ranks passed the first step's losses."""
    from tgfr.train.run import build_model, train

    weights = tmp_path / "backbone.safetensors"
    safetensors.torch.save_file(build_model(load_config("quick", tiny_overrides)).backbone.state_dict(), weights)
    settings = tiny_overrides + ['stages=["fr", "align"]', "align.optim.warmup_steps=0", "align.wrcl_weight=0",
                                 f'model.backbone_weights="{weights}"', *GLOBAL_BATCH_CASES[case]]
    result = torchrun(tmp_path, "-m", "tgfr.cli", "train", "--preset", "quick", "--out", str(tmp_path / "ddp"),
                      *[arg for o in settings for arg in ("--set", o)])
    assert result.returncode == 0, result.stderr[-3000:]
    train(load_config("quick", settings), tmp_path / "single")
    two, one = ([json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
                for run in ("ddp", "single"))
    steps = [(r["stage"], r["step"]) for r in one]
    assert [(r["stage"], r["step"]) for r in two] == steps and steps[-2:] == [(steps[-1][0], 1), (steps[-1][0], 2)]
    for step_two, step_one in zip(two, one):
        compared = [key for key, value in step_one.items() if isinstance(value, float) and key != "samples_per_s"]
        assert {"loss", "grad_norm"} <= set(compared) and step_two.keys() == step_one.keys()
        for value in compared:
            assert step_two[value] == pytest.approx(step_one[value], rel=1e-5), (step_one["step"], value)


def test_two_process_resume_and_shared_association_memory(tmp_path, tiny_overrides):
    """ddp_resume_worker.py under torchrun: stop and resume (with a stage after it, which starts from rank 0's
    buffers) end with the weights of an uninterrupted run, and the weakly supervised association memory is the
    same on both ranks after training."""
    worker = Path(__file__).with_name("ddp_resume_worker.py")
    result = torchrun(tmp_path, str(worker), str(tmp_path), json.dumps(tiny_overrides))
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_process_loop_logs_rank_means_and_stops_every_rank_on_a_non_finite_loss(tmp_path):
    """ddp_loop_worker.py under torchrun: rank 0's log holds the mean over ranks (rank 1's loss is 10
    above rank 0's), and rank 1's NaN at step 3 stops both ranks at that step, naming rank 1. Its throughput
    is of the global batch: each rank's 2 samples times 2 ranks per step of the worker's fake clock."""
    worker = Path(__file__).with_name("ddp_loop_worker.py")
    result = torchrun(tmp_path, str(worker), str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for seen in ranks:
        assert seen["error"] is not None and "not finite on rank 1 at step 3 (rank 1: nan)" in seen["error"]
    log = ranks[0]["log"]
    assert [record["step"] for record in log] == [1, 2]  # the two steps before the NaN
    for record in log:
        assert record["rank_term"] == 5.0  # (0 + 10) / 2
        # loss = <w, 1> + rank term on each rank; SGD keeps w equal on both ranks
        assert abs(record["loss"] - record["rank_term"]) < 1.0
        assert record["samples_per_s"] == pytest.approx(2 * 2 / ranks[0]["step_seconds"])


def test_an_image_only_rank_1_reads_is_named_by_rank_1(tmp_path, tiny_overrides):
    """ddp_corrupt_image_worker.py under torchrun: rank 1 meets an image that is no longer one in its share of a
    batch, which rank 0 never reads; the run fails, and stderr holds rank 1's error line naming the file (rank 0
    meets only a broken connection, which does not say why)."""
    from tgfr.train.batches import resolve_manifest
    from tgfr.train.config import load_config

    data = tmp_path / "data"  # a copy: the worker overwrites some of its images
    shutil.copytree(resolve_manifest(load_config("quick", tiny_overrides).data).parent, data)
    settings = tiny_overrides + ['stages=["fr"]', "fr.steps=3", f'data.manifest="{data / "manifest.jsonl"}"']
    arguments = ["--preset", "quick", "--image-cache-mib", "0", *[arg for o in settings for arg in ("--set", o)]]
    worker = Path(__file__).with_name("ddp_corrupt_image_worker.py")
    result = torchrun(tmp_path, str(worker), str(tmp_path / "run"), json.dumps(arguments))
    assert result.returncode != 0
    corrupted = sorted(path for path in data.rglob("*.png") if path.read_bytes() == b"not an image")
    assert corrupted
    # Rank 0's progress bar shares the terminal's line (it ends in a carriage return, not a newline).
    lines = re.findall(r"tgfr train: error \(rank 1\): [^\r\n]*", result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    assert any(f"image file {path} is corrupt or not an image" in lines[0] for path in corrupted), lines[0]


def test_tgfr_train_destroys_the_process_group_of_its_run(tmp_path, monkeypatch):
    """A process group still alive when the interpreter exits lets a gloo thread drop the last collectives'
    tensors after Python has gone, which aborts a finished run (SIGABRT): tgfr train destroys the group its
    training made (train() itself cannot: a caller may train again in the same group)."""
    import torch.distributed as dist

    from tgfr.cli import main
    from tgfr.train import run

    def train_in_a_group(config, out, **kwargs):  # as train() under torchrun: its group outlives the call
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        out.mkdir()
        return out

    monkeypatch.setattr(run, "train", train_in_a_group)
    try:
        assert main(["train", "--preset", "quick", "--out", str(tmp_path / "run")]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("resume", [False, True], ids=["new run", "resume"])
def test_a_run_folder_another_trainer_holds_is_refused_by_every_rank(tmp_path, tiny_overrides, folder_held_elsewhere,
                                                                     resume):
    """Rank 0 alone takes the run folder's lock. Refused, it stopped alone, and rank 1 died in its next
    collective with gloo's "Connection closed by peer" and a traceback; now every rank stops with rank 0's
    message, which rank 0 alone prints."""
    from tgfr.train.config import load_config
    from tgfr.train.run import train

    run = tmp_path / "ddp"
    if resume:
        train(load_config("quick", tiny_overrides), run, stop_after=1)
        arguments = ["--resume", "--out", str(run)]
    else:
        run.mkdir()  # the other trainer made it and holds it, not yet written into
        arguments = ["--preset", "quick", "--out", str(run), *[arg for o in tiny_overrides for arg in ("--set", o)]]
    folder_held_elsewhere(run)
    result = torchrun(tmp_path, "-m", "tgfr.cli", "train", *arguments)
    assert result.returncode != 0
    assert re.findall(r"tgfr train: error[^\r\n]*", result.stderr) == [
        f"tgfr train: error: run folder {run} is being trained by another tgfr train process: wait for it to end (two "
        "processes would write the same checkpoint and log every step twice)"], result.stderr[-3000:]
    assert "[rank1]" not in result.stderr and "Connection closed" not in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize("failing", ["run_info.json", "metrics.jsonl", "checkpoint", "synthetic set"])
def test_a_write_that_rank_0_alone_does_fails_on_every_rank_with_its_message(tmp_path, tiny_overrides, failing):
    """A file rank 0 alone writes or reads fails: run_info.json (a folder stands there), metrics.jsonl (a bad
    line, met when a resume cuts the log back), the checkpoint or the first image of the embedded synthetic set
    (a file size limit, as a full disk). Rank 1 died in its next collective with about 30 lines of gloo's
    traceback, or, for the checkpoint, printed rank 0's error a second time as its own; now every rank stops,
    rank 0 alone saying why."""
    run = tmp_path / "ddp"
    if failing == "synthetic set":  # a cache folder of its own: the set is written, not read from a shared one
        tiny_overrides = tiny_overrides + [f'data.cache_dir="{tmp_path / "cache"}"']
    train = ["-m", "tgfr.cli", "train", "--preset", "quick", "--out", str(run), "--stop-after", "2",
             *[arg for o in tiny_overrides for arg in ("--set", o)]]
    if failing in ("checkpoint", "synthetic set"):
        # 256 KB: the log and config files fit, the checkpoint (650 KB) does not; 1 KB: no face image fits.
        limit, expected = ((256, f"cannot write checkpoint {run / 'checkpoints' / 'last.pt'}") if failing == "checkpoint"
                           else (1, f"cannot write image {tmp_path / 'cache'}"))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                   "--log-dir", str(tmp_path / "torchrun-logs"), *train]
        result = subprocess.run(["bash", "-c", f'ulimit -f {limit} && exec "$@"', "bash", *command],
                                capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    else:
        started = torchrun(tmp_path, *train)
        assert started.returncode == 0, started.stderr[-3000:]
        if failing == "run_info.json":
            (run / "run_info.json").unlink()
            (run / "run_info.json").mkdir()
            expected = f"cannot write run information {run / 'run_info.json'}"
        else:
            (run / "metrics.jsonl").write_text("x" + (run / "metrics.jsonl").read_text(), encoding="utf-8")  # of 2
            expected = f"metrics log {run / 'metrics.jsonl'}, line 1, is not valid JSON"
        result = torchrun(tmp_path, "-m", "tgfr.cli", "train", "--resume", "--out", str(run))
    assert result.returncode != 0
    errors = re.findall(r"tgfr train: error[^\r\n]*", result.stderr)
    assert len(errors) == 1 and expected in errors[0], result.stderr[-3000:]
    assert "[rank1]" not in result.stderr and "Connection closed" not in result.stderr, result.stderr[-3000:]


def test_a_process_group_the_caller_made_sets_the_rank_and_world_size(monkeypatch):
    """mp.spawn with init_process_group and no torchrun: read from WORLD_SIZE alone (unset), every process
    trained as rank 0 of one, each writing the same run folder."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(run_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(run_module.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(run_module.dist, "get_rank", lambda: 1)
    config = load_config("quick", ['device="cpu"'])
    assert run_module._init_distributed(config) == (1, 2, torch.device("cpu"))
    # On CUDA, rank r of one machine takes GPU r (mp.spawn sets no LOCAL_RANK; every rank took GPU 0).
    chosen = []
    monkeypatch.setattr(run_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(run_module.torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(run_module.torch.cuda, "set_device", chosen.append)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert run_module._init_distributed(load_config("quick", ['device="cuda"'])) == (1, 2, torch.device("cuda", 1))
    assert chosen == [1]
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match=re.escape("WORLD_SIZE=4 in the environment, but the process group already "
                                                   "initialized has 2 process(es)")):
        run_module._init_distributed(config)


@pytest.mark.parametrize("name, value, minimum", [("WORLD_SIZE", "two", 1), ("WORLD_SIZE", "0", 1),
                                                   ("WORLD_SIZE", "-2", 1), ("LOCAL_RANK", "x1", 0)])
def test_a_bad_launch_variable_is_named(monkeypatch, name, value, minimum):
    """A stray value left in a cluster job's environment failed with int()'s "invalid literal for int() with
    base 10: 'two'", which names no variable."""
    monkeypatch.setenv(name, value)
    monkeypatch.setenv("RANK", "0")
    if name == "LOCAL_RANK":  # read on CUDA only, in a process group already made
        monkeypatch.setattr(run_module.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(run_module.dist, "get_world_size", lambda: 2)
        monkeypatch.setattr(run_module.dist, "get_rank", lambda: 0)
        monkeypatch.setattr(run_module.torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(run_module.torch.cuda, "device_count", lambda: 2)
        monkeypatch.setattr(run_module.torch.cuda, "set_device", lambda index: None)
        monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=re.escape(f"{name}={value} in the environment must be an integer >= "
                                                   f"{minimum} (torchrun sets it; unset it to run without torchrun)")):
        run_module._init_distributed(load_config("quick", ['device="auto"']))


def test_a_local_rank_past_the_machine_s_gpus_is_named(monkeypatch):
    """torchrun --nproc_per_node 2 on a machine of one GPU: rank 1's torch.cuda.set_device(1) failed with CUDA's
    "invalid device ordinal" traceback."""
    monkeypatch.setattr(run_module.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(run_module.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(run_module.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(run_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(run_module.torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(run_module.torch.cuda, "set_device", lambda index: pytest.fail(f"set_device({index})"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match=re.escape("LOCAL_RANK=1, but this machine has 1 CUDA device(s): start at "
                                                   "most that many processes per machine (torchrun --nproc_per_node)")):
        run_module._init_distributed(load_config("quick", ['device="cuda"']))


def test_more_processes_per_machine_than_gpus_are_refused_by_every_rank_before_the_process_group(monkeypatch):
    """torchrun --nproc_per_node 2 on one GPU: only rank 1 met its LOCAL_RANK, after init_process_group, and rank 0
    died in its next collective with gloo's "Connection closed by peer", the only line the user saw."""
    monkeypatch.setattr(run_module.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(run_module.dist, "init_process_group", lambda *arguments: pytest.fail("process group"))
    monkeypatch.setattr(run_module.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(run_module.torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=re.escape("LOCAL_WORLD_SIZE=2, but this machine has 1 CUDA device(s)")):
        run_module._init_distributed(load_config("quick", ['device="cuda"']))


def relay_worker(rank, store_file):
    import torch.distributed as dist

    from tgfr.distributed import CollectiveCheckError

    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
    try:
        def fail_on_rank_0():
            assert rank == 0  # rank 0 alone runs the action
            raise OSError(28, "cannot write checkpoint c.pt: No space left on device")

        try:
            run_module._on_rank_0(rank, 2, fail_on_rank_0)
        except CollectiveCheckError as error:
            assert rank == 1 and str(error) == "[Errno 28] cannot write checkpoint c.pt: No space left on device"
        except OSError:
            assert rank == 0
        else:
            raise AssertionError("the error was not raised on every rank")
        run_module._on_rank_0(rank, 2, lambda: None)  # nothing raised anywhere: the ranks go on together
    finally:
        dist.destroy_process_group()


def test_rank_0_s_error_in_what_it_alone_does_is_raised_on_every_rank(tmp_path):
    """Rank 0 raises its own error; the other ranks a CollectiveCheckError with its message, which `tgfr train`
    does not print again (as a plain ValueError, rank 1 printed it a second time as its own; the torchrun tests
    see that line only when rank 1 prints before torchrun ends it)."""
    import torch.multiprocessing as mp

    mp.spawn(relay_worker, args=(str(tmp_path / "store"),), nprocs=2, join=True)


SHORT_TIMEOUT_S = 2


def slow_data_worker(rank, store_file):
    """Rank 0 takes three times the process group's timeout to write the data; both ranks get its manifest."""
    import datetime
    import time

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=SHORT_TIMEOUT_S))
    try:
        def write_slowly(data):
            if rank == 0:
                time.sleep(3 * SHORT_TIMEOUT_S)
            return Path("data") / "manifest.jsonl"

        run_module.resolve_manifest = write_slowly
        new_group, made = dist.new_group, []
        dist.new_group = lambda *args, **kwargs: made.append(kwargs) or new_group(*args, **kwargs)
        manifest = run_module._resolve_manifest_on_rank_0(load_config("quick"), rank, 2)
        assert manifest == Path("data") / "manifest.jsonl" and made[0]["backend"] == "gloo"
        run_module._on_rank_0(rank, 2, lambda: None)  # the job's own group is still there and in step
        # A manifest of the user's is only read, in the job's group: an NCCL job then needs no gloo connections.
        run_module.resolve_manifest = lambda data: Path(data.manifest)
        user_data = load_config("quick", ['data.manifest="m.jsonl"'])
        assert run_module._resolve_manifest_on_rank_0(user_data, rank, 2) == Path("m.jsonl") and len(made) == 1
    finally:
        dist.destroy_process_group()


def test_the_other_ranks_wait_for_rank_0_s_data_past_the_process_group_s_timeout(tmp_path):
    """Writing the embedded synthetic set takes hours for a large one, on rank 0 alone: rank 1 waited for it in
    a collective of the job's group, which gave up after its timeout (gloo's default: 30 minutes) and killed a
    run that one process trains."""
    import torch.multiprocessing as mp

    mp.spawn(slow_data_worker, args=(str(tmp_path / "store"),), nprocs=2, join=True)


@pytest.fixture
def objects_sent(monkeypatch):
    """What _on_rank_0 sends the other ranks (a gather_objects that records it, the other rank saying nothing)."""
    sent = []
    monkeypatch.setattr(run_module, "gather_objects", lambda value, group=None: sent.append(value) or [value, None])
    return sent


def test_an_interruption_of_rank_0_s_action_waits_for_no_collective(objects_sent):
    """Ctrl-C reaches every rank: the others may have ended, and rank 0's collective with them replaced its
    interruption with gloo's "Connection closed by peer" traceback and exit status 1."""
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_module._on_rank_0(0, 2, interrupted)
    assert objects_sent == []


def test_an_unexpected_error_of_rank_0_s_action_is_not_taken_for_success(objects_sent):
    """Only ValueError and OSError were relayed: another failure sent None, success, and the other ranks went on
    (writing the synthetic set themselves, say)."""
    def broken():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_module._on_rank_0(0, 2, broken)
    assert objects_sent == ["rank 0 failed: RuntimeError('boom')"]

