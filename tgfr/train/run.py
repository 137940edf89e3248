"""`tgfr train`: builds the data and the model, runs the configured stages in order and writes
the run folder:

    config.toml           the resolved configuration (every value)
    metrics.jsonl         training log (tensorboard/<stage>/ too when tensorboard is installed)
    checkpoints/last.pt   the latest training state (atomic; --resume continues from it), with the
                          RNG states of every rank and the optimizer settings of its stage
    model/                the trained TGFRModel (tgfr.models.save_tgfr_model), written at the end
                          (removed by a resume that trains on past it: present only while the run is
                          finished as its config.toml describes it)
    run_info.json         per call of `tgfr train` on the run: tgfr version and commit, torch, device,
                          precision, threads (tgfr.train.run_info)
    train_summary.json    per stage: steps, seconds, samples/s (summed over the calls of a resumed
                          run, up to each call's last checkpoint: a crashed call's checkpointed
                          steps count too), last logged values

Under torchrun (WORLD_SIZE > 1) every rank runs this; the process group uses nccl on GPU and
gloo on CPU, each rank takes identities_per_batch / world_size identities of every global batch
(of the weakly supervised align stage's shuffled batches: identities_per_batch * images_per_identity /
world_size images),
the pairwise losses run in their local (gathered) form, and rank 0 writes the files.
"""

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tgfr.data import CaptionCollator
from tgfr.data.image_cache import DEFAULT_IMAGE_CACHE_BYTES, DecodedImageCache
from tgfr.data.manifest import records_digest
from tgfr.data.synthetic import default_cache_dir
from tgfr.distributed import CollectiveCheckError, gather_objects, launch_variable
from tgfr.text_formats import check_utf8, parse_json
from tgfr.models import IResNetConfig, TGFRConfig, TGFRModel, load_weights_file, save_tgfr_model
from tgfr.models.checkpoint import check_weight_kinds, dtype_kind
from tgfr.folder_lock import folder_lock
from tgfr.input_paths import file_problem, refuse_empty_path
from tgfr.output_paths import check_output_folder, remove_temporaries, temporary_name, write_atomically
from tgfr.provenance import environment
from tgfr.train.batches import StepBatches, resolve_manifest
from tgfr.train.caption_features import CaptionFeatures
from tgfr.train.checkpoint import load_checkpoint, optimizer_settings, rng_state, save_checkpoint
from tgfr.train.config import (STAGES, TrainConfig, config_to_dict, read_run_config, to_toml, torch_threads,
                               with_added_keys)
from tgfr.train.loop import LoopSettings, run_stage
from tgfr.train.run_info import record_call
from tgfr.train.seeds import DATA_STREAM, STEP_STREAM, seed_everything, stream_seed
from tgfr.train.stage import Stage
from tgfr.train.stage_align import AlignStage
from tgfr.train.stage_fr import FRStage
from tgfr.train.stage_fuse import FuseStage
from tgfr.train.training_log import TrainingLog, drop_records_after, read_log
from tgfr.validation import check_count

CHECKPOINT = Path("checkpoints") / "last.pt"
TEXT_ENCODER_PREFIX = "text_encoder."
BACKBONE_PREFIX = "backbone."


def build_model(config: TrainConfig) -> TGFRModel:
    """TGFRModel of the run; the backbone trains only when the fr stage will train it."""
    m = config.model
    backbone = IResNetConfig.preset(m.backbone, width=m.width, input_size=config.data.image_size,
                                    num_features=m.num_features, dropout=m.dropout)
    train_backbone = "fr" in config.trained_stages
    try:
        model = TGFRModel(TGFRConfig(backbone=backbone, freeze_backbone=not train_backbone,
                                     text_encoder=m.text_encoder or None, max_length=m.max_length,
                                     freeze_text_encoder=m.freeze_text_encoder, dim=m.dim, fusion=m.fusion,
                                     fine_dim=m.fine_dim, fusion_out_dim=m.fusion_out_dim))
    except ValueError as error:  # the text encoder refuses its folder, or a max_length past its positions
        raise ValueError(f"model.text_encoder ({m.text_encoder or 'the packaged all-MiniLM-L6-v2'}) with "
                         f"model.max_length = {m.max_length}: {error}") from error
    if m.backbone_weights:
        try:
            weights = _backbone_part(load_weights_file(m.backbone_weights), model.backbone.state_dict())
            check_weight_kinds({name: tensor.dtype for name, tensor in model.backbone.state_dict().items()},
                               {name: dtype_kind(tensor.dtype) for name, tensor in weights.items()},
                               f"weights file {m.backbone_weights!r}")
        except ValueError as error:
            raise ValueError(f"model.backbone_weights: {error}") from error
        try:
            model.backbone.load_state_dict(weights, strict=True)
        except RuntimeError as error:
            raise ValueError(f"model.backbone_weights: weights file {m.backbone_weights!r} does not fit the configured "
                             f"backbone (model.backbone={m.backbone!r}, model.width={m.width}, "
                             f"model.num_features={m.num_features}, data.image_size={config.data.image_size}): "
                             f"{load_error_line(error)}") from error
    return model


def _backbone_part(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's weights of a weights file: a saved tgfr model's (model/model.safetensors) are its
    BACKBONE_PREFIX entries, without the prefix; a released backbone's are the file's entries."""
    if not expected.keys() & weights.keys() and any(name.startswith(BACKBONE_PREFIX) for name in weights):
        return {name.removeprefix(BACKBONE_PREFIX): tensor for name, tensor in weights.items()
                if name.startswith(BACKBONE_PREFIX)}
    return weights


def model_state(model: TGFRModel) -> dict[str, torch.Tensor]:
    """Every weight that can change in training (a frozen text encoder is rebuilt from its files)."""
    skip = model.text_encoder.frozen
    return {k: v for k, v in model.state_dict().items() if not (skip and k.startswith(TEXT_ENCODER_PREFIX))}


def load_error_line(error: RuntimeError) -> str:
    """torch's load_state_dict `error` as one line (tgfr train's errors are one line): torch lists one
    problem per tab-indented line after a heading line, a missing or unexpected one with every key;
    the first three problems, joined by '; ', each with its first three keys."""
    problems = []
    for line in str(error).splitlines()[1:]:
        problem, _, keys = line.strip().rstrip(".").partition(" in state_dict: ")
        if keys:  # 'Missing key(s) in state_dict: "a", "b", ...'
            names = keys.split(", ")
            problem += f": {', '.join(names[:3])}" + (f" (and {len(names) - 3} more)" if len(names) > 3 else "")
        if problem:
            problems.append(problem)
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return f"{'; '.join(problems[:3])}{more}"


def load_model_state(model: TGFRModel, state: dict[str, torch.Tensor], source: Path) -> None:
    """Loads the model part of the checkpoint file `source` (model_state's weights) into `model`; a
    part that does not fit, in names or shapes, is a ValueError naming the file."""
    mismatch = (f"checkpoint file {source} does not fit the model the run's config builds (a checkpoint of "
                f"another run, or model.* settings or data.image_size of the run's config.toml changed since "
                f"it was written?)")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise ValueError(f"{mismatch}: {load_error_line(error)}") from error
    missing = [k for k in missing if not (model.text_encoder.frozen and k.startswith(TEXT_ENCODER_PREFIX))]
    if missing or unexpected:
        raise ValueError(f"{mismatch}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def check_optimizer_settings(config: TrainConfig, state: dict[str, Any], source: Path) -> None:
    """Refuses to resume checkpoint `state` (from file `source`) when the run's config changed the
    optimizer settings of the stage it continues: the optimizer and scheduler state it loads keep
    the old lr and weight decay (an edit would be silently ignored), another optimizer's state does
    not fit, and the others (schedule, warm-up, clipping) would change the stage's training midway.
    A ValueError names the keys."""
    stage, steps = state["stage"], getattr(config, state["stage"]).steps
    if state["step"] > steps:  # an edit of steps below the checkpoint's: the stage would end there without a word
        raise ValueError(f"checkpoint file {source} is at step {state['step']} of stage {stage}, past {stage}.steps = "
                         f"{steps} in the run's config: a stage cannot be cut shorter than it has trained (set it "
                         f"back to at least {state['step']} in config.toml)")
    if state["step"] == steps:
        return  # that stage is done: the resume goes on with the next one, whose settings apply
    now = dataclasses.asdict(getattr(config, stage).optim)
    trained = optimizer_settings(state)
    unused = _unused_optimizer_settings(trained, now)
    changed = [key for key, value in trained.items() if key in now and key not in unused and now[key] != value]
    if changed:
        def named(values: dict[str, Any]) -> dict[str, Any]:
            return {f"{stage}.optim.{key}": values[key] for key in changed}

        raise _changed_settings_error(source, list(named(trained)), named(trained), named(now),
                                      "the optimizer settings of the stage a resume continues cannot change (set "
                                      "them back in config.toml)")


def _unused_optimizer_settings(trained: dict[str, Any], now: dict[str, Any]) -> set[str]:
    """The names of the optimizer settings that neither `trained` nor `now` (one stage's, OptimConfig field
    name -> value) reads, so that an edit of them changes nothing: AdamW's momentum (AdamW has none), and
    min_lr_ratio under a constant schedule (only the cosine one decays to it: tgfr.train.loop.lr_factor)."""
    unused = set()
    if trained.get("optimizer") == now.get("optimizer") == "adamw":
        unused.add("momentum")
    if trained.get("schedule") == now.get("schedule") == "constant":
        unused.add("min_lr_ratio")
    return unused


def _listing(keys: list[str], values: dict[str, Any]) -> str:
    """`key = value` of each dotted key of `keys` in `values`, the values as JSON."""
    return ", ".join(f"{key} = {json.dumps(values.get(key))}" for key in keys)


def _changed_settings_error(source: Path, keys: list[str], trained: dict[str, Any], now: dict[str, Any],
                            why: str) -> ValueError:
    """The refusal of a resume from checkpoint file `source` whose config.toml changed the settings `keys`
    (dotted names, looked up in `trained` and `now`)."""
    return ValueError(f"checkpoint file {source} was trained with {_listing(keys, trained)}, but the run's "
                      f"config.toml now has {_listing(keys, now)}: {why}")


# The settings a resume may change: where and how fast the run goes (its device, precision, threads, loader
# workers), where its data are (a moved manifest or cache: the checkpoint's digest of the data still has to
# match), how often it logs and checkpoints, and what `tgfr evaluate` reads (the degraded test copy, the report).
# None changes which samples the remaining steps draw or which losses and updates they compute; the device,
# precision and threads do change the numbers (another device's kernels and another thread count's reductions round
# otherwise, in the last bits: a caption's encoder output with more than one thread, say; bf16 autocast rounds to
# bf16), as they would for a run started with them: moving a run is worth that, and run_info.json records each
# call's.
# check_config_unchanged also lets the weights' paths move.
FREE_ON_RESUME = ("device", "precision", "threads", "checkpoint_every", "log_every", "data.loader_workers",
                  "data.cache_dir", "data.manifest", "data.degradation", "evaluation.")


def text_encoder_digest(model: TGFRModel) -> str:
    """sha256 (hex) of what a resume rebuilds from model.text_encoder's folder rather than from the checkpoint:
    the tokenizer's vocabulary, and the weights while the encoder is frozen (a trainable one's are checkpointed)."""
    digest = hashlib.sha256(json.dumps(sorted(model.text_encoder.tokenizer.get_vocab().items())).encode())
    if model.text_encoder.frozen:
        for name, tensor in sorted(model.text_encoder.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _flat_settings(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as dotted key -> value."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_config_unchanged(config: TrainConfig, state: dict[str, Any], source: Path) -> None:
    """Refuses to resume checkpoint `state` (from file `source`) when config.toml was edited since the checkpoint
    in a setting the run has trained with: the rest of the run would train otherwise than config.toml says it
    did (another seed, batch or loss weight from midway), without a word. Free: FREE_ON_RESUME, a moved
    model.backbone_weights (the checkpoint's backbone replaces what it loads; set or unset, it decides whether
    fr trains) and model.text_encoder (where the checkpoint holds the encoder's digest, compared in train), the
    stages after the checkpoint's (still to come) and fr when it only loads weights, the checkpoint's stage's
    optim.* (check_optimizer_settings judges them,
    with its own message) and its steps under a constant schedule (check_optimizer_settings keeps them at least
    its step; a cosine schedule would be stretched from the resume on, its lr jumping), the optimizer settings
    of a finished stage that neither side reads (_unused_optimizer_settings), and settings a tgfr
    dropped since the checkpoint or added without a known value for older runs (a setting the checkpoint lacks
    cannot be set back); those with one (with_added_keys) are compared. A checkpoint of an older tgfr,
    without its config, is not compared. A ValueError names the keys."""
    if "config" not in state:
        return
    stage = state["stage"]
    # An older checkpoint's config lacks the keys added since, which trained with _ADDED_KEYS' values: uncompared,
    # config.toml could turn align.word_softmax off midway.
    trained, now = _flat_settings(with_added_keys(state["config"])), _flat_settings(config_to_dict(config))
    for values in (trained, now):  # `stages` up to the checkpoint's: those after it may be added or dropped
        stages = values.get("stages", [])
        values["stages"] = stages[:stages.index(stage) + 1] if stage in stages else stages

    def optimizer_of(values: dict[str, Any], head: str) -> dict[str, Any]:  # stage `head`'s optim.* settings
        return {key.removeprefix(f"{head}.optim."): value for key, value in values.items()
                if key.startswith(f"{head}.optim.")}

    def free(key: str) -> bool:
        head, _, rest = key.partition(".")
        if key.startswith(FREE_ON_RESUME):
            return True
        if key == "model.backbone_weights":  # a moved file; set or not decides whether fr trains
            return bool(trained[key]) == bool(now[key])
        if key == "model.text_encoder":  # a moved folder, judged by the checkpoint's digest where it has one
            return "text_encoder" in state
        loads_only = head == "fr" and trained.get("model.backbone_weights")  # fr loading weights trains nothing
        if head in STAGES and (head not in trained["stages"] or loads_only):
            return True  # a stage still to come, or one this run does not train
        if head == stage and rest == "steps":
            return trained.get(f"{stage}.optim.schedule") == now.get(f"{stage}.optim.schedule") == "constant"
        if not rest.startswith("optim."):
            return False
        return head == stage or rest.removeprefix("optim.") in _unused_optimizer_settings(optimizer_of(trained, head),
                                                                                          optimizer_of(now, head))

    changed = [key for key in sorted(trained.keys() & now.keys()) if not free(key) and trained[key] != now[key]]
    if changed:
        raise _changed_settings_error(source, changed, trained, now, "the rest of the run would train otherwise than "
                                      "config.toml says it did (set them back in config.toml, or train a new run)")


def check_config_matches_config_toml(config: TrainConfig, out: Path) -> None:
    """Refuses to resume the run in folder `out` with a `config` (train()'s) that differs from the run's
    config.toml, read as `tgfr train --resume` reads it, in a setting outside FREE_ON_RESUME (the path settings
    compared as the run resolves them, against the current directory): the run would train otherwise than
    config.toml, which `tgfr evaluate` and later resumes read, says. config.toml is not rewritten: the free
    settings are each call's own, kept as written as under `tgfr train --resume` (run_info.json records each
    call's device, precision and threads). A ValueError names config.toml and the keys."""
    path = out / "config.toml"
    written = read_run_config(out)
    recorded, passed = (_flat_settings(config_to_dict(values.with_absolute_paths())) for values in (written, config))
    changed = [key for key in sorted(recorded.keys() | passed.keys())
               if not key.startswith(FREE_ON_RESUME) and recorded.get(key) != passed.get(key)]
    if changed:
        raise ValueError(f"run config {path} has {_listing(changed, recorded)}, but the config passed to resume the "
                         f"run has {_listing(changed, passed)}: a resume trains the run as config.toml describes it "
                         f"(to change a setting midway, edit config.toml, which the resume checks against the "
                         f"checkpoint, and pass the config read from it; only the call's own settings, such as "
                         f"device, threads or log_every, may differ)")


def finish_stage(model: TGFRModel, name: str) -> None:
    """After fr, the backbone is frozen for good (and saved as such)."""
    if name == "fr":
        model.backbone.freeze()
        model.config.freeze_backbone = True


def _init_distributed(config: TrainConfig) -> tuple[int, int, torch.device]:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError('device = "cuda", but this torch sees no CUDA device (torch.cuda.is_available() is '
                         'False): use device = "auto" or "cpu"')
    cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if dist.is_initialized():
        # The caller's own process group (mp.spawn, no torchrun) sets the rank and world size: read from
        # WORLD_SIZE alone, which mp.spawn does not set, every process would train as rank 0 of one, each into
        # the same run folder.
        world_size = dist.get_world_size()
        declared = os.environ.get("WORLD_SIZE")
        if declared is not None and declared != str(world_size):
            raise ValueError(f"WORLD_SIZE={declared} in the environment, but the process group already "
                             f"initialized has {world_size} process(es)")
    else:
        world_size = launch_variable("WORLD_SIZE", 1, minimum=1)
        # Every rank, before the process group: the rank past the GPUs alone would raise below, and rank 0 would
        # then meet only a broken connection, which does not say why.
        if cuda and launch_variable("LOCAL_WORLD_SIZE", 1, minimum=1) > torch.cuda.device_count():
            raise ValueError(f"LOCAL_WORLD_SIZE={os.environ['LOCAL_WORLD_SIZE']}, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s): start at most that many processes per "
                             f"machine (torchrun --nproc_per_node), or train on the CPU (device = \"cpu\")")
        if world_size > 1:
            dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if world_size > 1 else 0
    if cuda:
        # torchrun sets LOCAL_RANK; mp.spawn on one machine does not, and rank r takes GPU r there.
        local_rank = launch_variable("LOCAL_RANK", rank % torch.cuda.device_count())
        if local_rank >= torch.cuda.device_count():  # torch.cuda.set_device's own error: "invalid device ordinal"
            raise ValueError(f"LOCAL_RANK={local_rank}, but this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s): start at most that many processes per machine (torchrun --nproc_per_node), "
                             f"or train on the CPU (device = \"cpu\")")
        torch.cuda.set_device(local_rank)
        return rank, world_size, torch.device("cuda", local_rank)
    return rank, world_size, torch.device("cpu")


def _stopped_before_first_checkpoint(out: Path, config: TrainConfig) -> bool:
    """Whether run folder `out` without a checkpoint is one that never wrote one: its config.toml, no
    model/ or train_summary.json, and metrics.jsonl records of the first trained stage only, up to its
    first checkpoint. A step's record is logged before its checkpoint is written, so a run stopped while
    writing its first checkpoint has logged that step too. A run whose checkpoint was deleted or moved
    later must not start again from step 0 (emptying its log, overwriting its model): that is an error,
    a ValueError where only the log tells it, which names checkpoint_every (free on resume: an edit of it
    moves the first checkpoint)."""
    if not (out / "config.toml").is_file() or (out / "model").exists() or (out / "train_summary.json").exists():
        return False
    if not config.trained_stages:
        return False
    first = config.trained_stages[0]
    steps = getattr(config, first).steps
    first_checkpoint = min(config.checkpoint_every, steps)
    log = out / "metrics.jsonl"
    records = read_log(log) if log.is_file() else []
    if any(record["stage"] != first for record in records):
        return False
    last = max((record["step"] for record in records), default=0)
    if last > first_checkpoint:
        raise ValueError(f"checkpoint file {out / CHECKPOINT} does not exist, but {log} logs step {last} of stage "
                         f"{first}, past the run's first checkpoint (step {first_checkpoint}: checkpoint_every = "
                         f"{config.checkpoint_every}, {first}.steps = {steps} in config.toml): put the checkpoint "
                         f"back, or, if the run stopped before its first checkpoint and checkpoint_every was edited "
                         f"since, set it back to train the run again from its first step")
    return True


def _barrier(world_size: int) -> None:
    if world_size > 1:
        dist.barrier()


def _on_rank_0(rank: int, world_size: int, action: Callable[[], None],
               group: dist.ProcessGroup | None = None) -> None:
    """Runs `action` on rank 0 alone. An error it raises (a run folder another trainer holds) is raised on
    every rank, rank 0's as it is and the others' as a CollectiveCheckError with its message, which the command
    prints once: the other ranks would otherwise fail in their next collective with the backend's error.
    The other ranks wait for it in `group` (None: the default process group)."""
    message, collective = None, world_size > 1
    try:
        if rank == 0:
            action()
    except (ValueError, OSError) as error:
        message = str(error)
        raise
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM reaches every rank (torchrun forwards it, a scheduler signals the job): the others may
        # have ended already, and a collective with them would replace the interruption with the backend's
        # "Connection closed by peer"; torchrun ends a rank that still waits.
        collective = False
        raise
    except BaseException as error:  # a failure of another kind must not pass for success on the other ranks
        message = f"rank 0 failed: {error!r}"
        raise
    finally:
        if collective:
            message = gather_objects(message, group)[0]
    if message is not None:
        raise CollectiveCheckError(message)


def _resolve_manifest_on_rank_0(config: TrainConfig, rank: int, world_size: int) -> Path:
    """resolve_manifest, which writes the embedded synthetic set when it is not there yet, on rank 0 first,
    then on the others, which then read it. That write takes hours for a large set, while a collective of the
    job's process group gives up after its timeout (30 minutes for gloo, 10 for NCCL by default): the other
    ranks wait in a gloo group of their own, whose timeout outlasts it. A manifest of the user's is only read:
    the job's group, so that an NCCL job needs no gloo connections (GLOO_SOCKET_IFNAME on some clusters)."""
    if world_size == 1:
        return resolve_manifest(config.data)
    waiting = None if config.data.manifest else dist.new_group(backend="gloo", timeout=datetime.timedelta(days=7))
    try:
        resolved: list[Path] = []
        _on_rank_0(rank, world_size, lambda: resolved.append(resolve_manifest(config.data)), waiting)
    finally:
        if waiting is not None:
            dist.destroy_process_group(waiting)
    return resolved[0] if rank == 0 else resolve_manifest(config.data)


def _synthetic_cache_entry(out: Path, config: TrainConfig) -> Path | None:
    """The entry of run folder `out` holding the embedded synthetic set's cache (<cache folder>/synthetic),
    when data.cache_dir (or the default cache folder) lies inside `out`: the run's own data, not another
    run's files."""
    if config.data.manifest:
        return None
    cache = Path(os.path.realpath(Path(config.data.cache_dir or default_cache_dir()) / "synthetic"))
    run = Path(os.path.realpath(out))
    return out / cache.relative_to(run).parts[0] if cache.is_relative_to(run) and cache != run else None


def _holds_other_files(out: Path, config: TrainConfig) -> bool:
    """Whether `out` holds anything but the run's synthetic cache (_synthetic_cache_entry)."""
    own = _synthetic_cache_entry(out, config)
    return out.is_dir() and any(entry != own for entry in out.iterdir())


def _build_stage(name: str, config: TrainConfig, model: TGFRModel, num_classes: int, captions: CaptionFeatures,
                 device: torch.device, distributed: bool) -> Stage:
    if name == "fr":
        return FRStage(model, config.fr, num_classes, device, distributed)
    if name == "align":
        return AlignStage(model, config.align, num_classes, captions, device, distributed)
    return FuseStage(model, config.fuse, num_classes, captions, device, distributed)


def stage_batches(config: TrainConfig, name: str, manifest: Path, collate: CaptionCollator, rank: int = 0,
                  world_size: int = 1, image_cache: DecodedImageCache | None = None) -> StepBatches:
    """The training batches of stage `name`: every stage reads the same split of the same manifest with
    the same degradation augmentation (config.data), so the fr stage's backbone, the image-only
    baseline of the evaluation, saw the training images the fused model saw; the align and fuse stages,
    which pair each image with its caption, neither mirror nor grey it (StepBatches' caption_paired).
    The fr and fuse stages, and the align stage under identity supervision, take identity-balanced
    batches; the align stage under align.supervision = "weak" takes shuffled batches that no label shaped."""
    index = config.stages.index(name)
    share = config.data.identities_per_batch * config.data.images_per_identity // world_size
    if name in ("fr", "align") and share < 2:  # their BatchNorm layers train (the backbone's, the image head's)
        raise ValueError(f"data.identities_per_batch x data.images_per_identity = {config.data.identities_per_batch} "
                         f"x {config.data.images_per_identity} gives {share} image(s) per process (world size "
                         f"{world_size}); the {name} stage's BatchNorm layers need at least 2")
    captions_per_sample = 2 if name == "align" and config.align.intra_weight > 0 else 1
    return StepBatches(manifest, config.data, collate, seed=stream_seed(config.seed, DATA_STREAM, index),
                       captions_per_sample=captions_per_sample, rank=rank, world_size=world_size,
                       image_cache=image_cache,
                       identity_balanced=not (name == "align" and config.align.supervision == "weak"),
                       caption_paired=name in ("align", "fuse"))


def train(config: TrainConfig, out: str | Path, resume: bool = False, stop_after: int | None = None,
          image_cache_bytes: int = DEFAULT_IMAGE_CACHE_BYTES) -> Path:
    """Runs the stages of `config` into the run folder `out`; returns it.

    resume: continue from out/checkpoints/last.pt; a run folder with its config.toml but no checkpoint
    yet (the run stopped before its first one) starts again from its first step, with metrics.jsonl
    emptied, and ends as an uninterrupted run would; any other folder without a checkpoint (one
    whose checkpoint went missing after it was written, or no run) is an error. `config` must then be
    the run's config.toml (tgfr.train.config.config_from_dict of it, as `tgfr train --resume` reads it)
    but for the settings of the call (FREE_ON_RESUME: device, precision, threads, log_every, ...), which
    apply to this call and are not written back: another difference is a ValueError naming config.toml
    and the keys (to change a setting midway, edit config.toml, which the resume checks against the
    checkpoint). Without
    resume, `out` must not exist or be empty, so that two runs never mix in one folder, and the
    path settings (tgfr.train.config.PATH_KEYS) are made absolute against the current directory,
    as config.toml then records them.
    stop_after: take at most this many (>= 1) optimizer steps in this call, then checkpoint and
    return (the run is finished when out/model exists: a resume whose checkpoint is not at the last step
    of config's last stage, one config.toml extended since, removes the model/ of the run's earlier end).
    image_cache_bytes: decoded training images kept in memory, per process (tgfr.data.image_cache); the
    results do not depend on it, only the time spent reading images.
    config.threads > 0 sets torch's CPU threads for the call; the caller's count is restored on return.
    """
    refuse_empty_path("out", out, "name the run folder")
    out = Path(out)
    config.check()
    # A count of steps: nan passed `< 1` and then never stopped the loop (the whole run trained), and a bool or
    # 1.5 was taken as 1 or 2 steps.
    if stop_after is not None:  # a numpy or 0-dim tensor integer too, as an int
        stop_after = check_count("stop_after", stop_after)
    # tokenizers takes paths as UTF-8 only, and the model is saved at the run folder's real path (through
    # symlinks and the current directory): another byte there fails the final save, after all the
    # training, and every --resume after it.
    check_utf8("run folder (--out)", os.path.realpath(out),
               need="as the saved model's tokenizer files are written at its real path",
               remedy="rename the folder holding that byte, or train into another --out")
    with torch_threads(config), contextlib.ExitStack() as held:
        return _train(config, out, resume, stop_after, DecodedImageCache(image_cache_bytes), held)


def _train(config: TrainConfig, out: Path, resume: bool, stop_after: int | None,
           image_cache: DecodedImageCache, held: contextlib.ExitStack) -> Path:
    """train() once its arguments are checked, in config.threads threads; `held` releases the run
    folder's lock (tgfr.folder_lock) when train() returns."""

    def lock() -> None:
        held.enter_context(folder_lock(out, f"run folder {out} is being trained by another tgfr train process: wait "
                                            "for it to end (two processes would write the same checkpoint and log "
                                            "every step twice)"))

    rank, world_size, device = _init_distributed(config)
    if resume and out.is_dir():
        _on_rank_0(rank, world_size, lock)
    training_log = out / "metrics.jsonl"  # read, emptied or appended to: a pipe would be waited on for ever
    if resume and os.path.lexists(training_log) and (problem := file_problem(training_log)):
        raise ValueError(f"training log {training_log} {problem}")
    # Through a broken link (a disk not mounted) the checkpoint looks absent, and a run stopped early would be
    # trained again from its first step, its log emptied and its new checkpoint written through the link.
    # A file in its place is named as one, not taken for a missing checkpoint.
    if resume:
        check_output_folder("checkpoint folder", (out / CHECKPOINT).parent)
    state = None
    # A run that died before its first checkpoint was written (a non-finite loss, a kill during the caption
    # prefill or inside that checkpoint's write) has nothing to continue from, and its folder is no longer
    # empty for a fresh start. A checkpoint file behind a broken link is there (lexists): load_checkpoint names it.
    # Before the checks below, whose messages take `config` for config.toml's; a folder without config.toml is
    # first told whether it holds a checkpoint.
    config_written = resume and os.path.lexists(out / "config.toml")
    if config_written:
        check_config_matches_config_toml(config, out)
    restart = resume and not os.path.lexists(out / CHECKPOINT) and _stopped_before_first_checkpoint(out, config)
    if resume and not restart:
        state = load_checkpoint(out / CHECKPOINT)
        if len(state["rng"]) != world_size:
            raise ValueError(f"checkpoint file {out / CHECKPOINT} holds the RNG states of {len(state['rng'])} "
                             f"process(es); resume it with as many (this run has {world_size})")
        if not config_written:
            check_config_matches_config_toml(config, out)  # names the missing config.toml
    if state is not None:
        if state["stage"] not in config.stages:
            raise ValueError(f"checkpoint file {out / CHECKPOINT} continues stage {state['stage']!r}, but the run's "
                             f"config.toml now has stages = {json.dumps(config.stages)}, without it: the stages a "
                             f"resume continues cannot be dropped (put it back in config.toml)")
        check_optimizer_settings(config, state, out / CHECKPOINT)
    elif not resume:
        # config.toml records the files as trained on, whatever directory a later command starts in. A
        # resumed run keeps its config.toml as written (an older tgfr's relative paths included).
        config = config.with_absolute_paths()
        config.check_training_recipe()
        check_output_folder("run folder", out)
        if _holds_other_files(out, config):
            raise ValueError(f"run folder {out} is not empty: continue its run with --resume, or train into "
                             f"another --out")
    if not config.data.manifest:
        check_output_folder("data.cache_dir" if config.data.cache_dir else "cache folder (data.cache_dir is empty)",
                            Path(config.data.cache_dir) if config.data.cache_dir else default_cache_dir())
    counted = _earlier_counts(out, state)
    _barrier(world_size)  # every rank has looked at `out` before rank 0 writes into it
    manifest = _resolve_manifest_on_rank_0(config, rank, world_size)
    seed_everything(config.seed)
    model = build_model(config).to(device)
    if state is not None:
        load_model_state(model, state["model"], out / CHECKPOINT)
    captions = CaptionFeatures(model.text_encoder, device)
    # The stages look their captions up in `captions`: batches need no tokens.
    collate = CaptionCollator(model.text_encoder.tokenizer, max_length=config.model.max_length, tokenize_batches=False)
    settings = LoopSettings(device, bf16=config.precision == "bf16" or (config.precision == "auto"
                                                                        and device.type == "cuda"),
                            log_every=config.log_every, checkpoint_every=config.checkpoint_every, rank=rank,
                            world_size=world_size, stop_after=stop_after)
    resume_index = config.stages.index(state["stage"]) if state is not None else 0
    # The model (above) and the data of every stage still to train are built before the first file is
    # written: a bad weights file, manifest or batch size fails here and leaves a fresh run's folder
    # empty, so the corrected command can train into it. A stage that takes no step (fr loading
    # model.backbone_weights) reads no batch, so its batch rules (world size, BatchNorm) do not apply.
    stage_data = {name: stage_batches(config, name, manifest, collate, rank, world_size, image_cache)
                  for name in config.stages[resume_index:] if name in config.trained_stages}
    # Checkpoints record the training split they trained on: resumed over other data (another dataset
    # written into the manifest's folder, captions edited), the run would train the rest of its steps on
    # it without a word. Every stage reads the same split (stage_batches).
    training_data = records_digest(next(iter(stage_data.values())).dataset.records) if stage_data else None
    if state is not None and "data" in state and training_data not in (None, state["data"]):
        if not config.data.manifest:  # the embedded synthetic set: only config.toml's settings can have changed it
            raise ValueError(f"checkpoint file {out / CHECKPOINT} trained on another synthetic set than the run's "
                             f"config.toml now generates (its data.synthetic_* or data.train_split settings "
                             f"changed since), and resuming would train the rest of the run on other data: set "
                             f"them back in config.toml")
        raise ValueError(f"checkpoint file {out / CHECKPOINT} trained on split {config.data.train_split!r} of "
                         f"manifest {manifest} as it was then; its images' paths, identities or captions, or their "
                         f"order, have changed since, and resuming would train the rest of the run on other data: "
                         f"restore the data the run started with, or train a new run")
    text_encoder = text_encoder_digest(model)
    if state is not None and state.get("text_encoder", text_encoder) != text_encoder:
        raise ValueError(f"checkpoint file {out / CHECKPOINT} trained with another text encoder than "
                         f"model.text_encoder ({config.model.text_encoder or 'the packaged all-MiniLM-L6-v2'}) now "
                         f"holds (its vocabulary, or its weights while frozen, differ), and resuming would train "
                         f"the rest of the run with it: point model.text_encoder in config.toml at the folder the run "
                         f"trained with")
    if state is not None:
        check_config_unchanged(config, state, out / CHECKPOINT)
    if resume:
        # A stage that has not started (one added to config.toml since, or not reached yet) has no trained state
        # that a newer check could make unresumable: it is judged as a fresh run's. The stages that trained are
        # not. After the comparison with the checkpoint, which names an edit of the trained part more precisely.
        begun = config.stages[:config.stages.index(state["stage"]) + (state["step"] > 0)] if state is not None else []
        try:
            config.check_stage_recipes([name for name in config.stages if name not in begun])
        except ValueError as error:
            raise ValueError(f"run config {out / 'config.toml'}: {error} (a stage that has not started yet is checked "
                             f"as a fresh run's: edit its settings in config.toml)") from None
    if any(name != "fr" for name in stage_data):  # every stage reads the same images (stage_batches)
        truncated = collate.check_captions(next(iter(stage_data.values())).dataset)
        if rank == 0 and truncated:
            words = config.model.max_length - 2
            print(f"tgfr train: {truncated} distinct training captions have more than model.max_length - 2 = "
                  f"{words} word-piece tokens; the text encoder sees only their first {words}", file=sys.stderr)
    # Said only in the sampler's docstring, the repeats made a dataset of single-image identities train on
    # augmented copies of one face per identity without a word. Every stage reads the same split (stage_batches).
    short = max((data.short_identities for data in stage_data.values()), default=0)
    if rank == 0 and short:
        print(f"tgfr train: note: {short} of {next(iter(stage_data.values())).num_classes} training identities have "
              f"fewer than data.images_per_identity = {config.data.images_per_identity} images: their groups repeat "
              "images", file=sys.stderr)
    # What rank 0 alone writes goes through _on_rank_0: a failed write (a full disk, a folder where a file
    # goes) is then raised on every rank, where the others would fail in their next collective with a
    # backend error that does not say why.
    def tidy_resumed_folder() -> None:  # an earlier call killed while writing either file leaves its temporary file
        remove_temporaries(out / CHECKPOINT)
        remove_temporaries(out / "metrics.jsonl")
        if restart:
            print(f"tgfr train: {out} holds no checkpoint yet (its run stopped before the first one): training it "
                  f"from its first step, {out / 'metrics.jsonl'} emptied", file=sys.stderr)
            (out / "metrics.jsonl").write_text("", encoding="utf-8")
        if state is not None and not _at_run_end(config, state):
            _remove_stale_model(out)

    if resume:
        _on_rank_0(rank, world_size, tidy_resumed_folder)
    else:
        def start_run_folder() -> None:
            out.mkdir(parents=True, exist_ok=True)
            lock()
            if _holds_other_files(out, config):  # another run started here since the check above
                raise ValueError(f"run folder {out} is not empty: continue its run with --resume, or train into "
                                 f"another --out")
            with write_atomically(out / "config.toml", "run config") as stream:
                stream.write(to_toml(config))

        _on_rank_0(rank, world_size, start_run_folder)

    def record_this_call() -> None:
        resumed_at = {"stage": state["stage"], "step": state["step"]} if state is not None else None
        record_call(out, {**environment(device, "bf16" if settings.bf16 else "fp32", world_size),
                          "resumed_at": resumed_at})

    _on_rank_0(rank, world_size, record_this_call)
    log = TrainingLog(out / "metrics.jsonl" if rank == 0 else None,
                      (state["stage"], state["step"]) if state is not None else None)

    def drop_lost_records() -> None:  # only once the checkpoint's whole state has loaded
        _on_rank_0(rank, world_size, lambda: drop_records_after(out / "metrics.jsonl", state["stage"], state["step"]))

    for index, name in enumerate(config.stages):
        if index < resume_index or name not in config.trained_stages:
            finish_stage(model, name)
            continue
        if settings.stop_after is not None and settings.stop_after <= 0:
            break
        seed_everything(stream_seed(config.seed, STEP_STREAM, index, rank))
        stage_config = getattr(config, name)
        batches = stage_data[name]
        stage = _build_stage(name, config, model, batches.num_classes, captions, device, world_size > 1).to(device)
        stage_resume = state if state is not None and index == resume_index else None
        if stage_resume is not None:
            try:
                stage.losses.load_state_dict(stage_resume["losses"])
            except RuntimeError as error:
                raise ValueError(f"checkpoint file {out / CHECKPOINT} does not match stage {name}'s losses: "
                                 f"{load_error_line(error)}") from error
        if name != "fr":
            captions.prefill(batches.captions)  # features independent of batch order (caption_features)

        first_step = stage_resume["step"] if stage_resume else 0
        started = time.perf_counter()

        def checkpoint(step, optimizer, scheduler, name=name, stage=stage, counted=counted, first_step=first_step,
                       started=started, optim=stage_config.optim):
            rng = gather_objects(rng_state())  # on every rank: each continues its own stream on resume

            def save() -> None:
                # The steps and seconds up to here travel with the state: a call that crashes after this
                # checkpoint still counts them when resumed.
                summary = _add_counts(counted, name, step - first_step, time.perf_counter() - started)
                save_checkpoint(out / CHECKPOINT, {
                    "stage": name, "step": step, "model": model_state(model), "losses": stage.losses.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng,
                    "summary": summary, "optim": dataclasses.asdict(optim), "data": training_data,
                    "config": config_to_dict(config), "text_encoder": text_encoder})

            _on_rank_0(rank, world_size, save)

        taken = run_stage(stage, batches, stage_config.optim, stage_config.steps, settings, log, checkpoint,
                          stage_resume, drop_lost_records if stage_resume is not None else None, out / CHECKPOINT)
        if taken:  # a call resumed at the stage's last step (its end, a finished run) trained it no more
            counted = _add_counts(counted, name, taken, time.perf_counter() - started)
        done = first_step + taken >= stage_config.steps
        if settings.stop_after is not None:
            settings.stop_after -= taken
        if not done:
            break
        finish_stage(model, name)
    else:
        _on_rank_0(rank, world_size, lambda: save_tgfr_model(model, out / "model"))
    _on_rank_0(rank, world_size, lambda: _write_summary(out, counted, config.data.identities_per_batch
                                                        * config.data.images_per_identity))
    log.close()
    _barrier(world_size)
    return out


def _at_run_end(config: TrainConfig, state: dict[str, Any]) -> bool:
    """Whether checkpoint `state` is at the last step of config's last stage: the run as config.toml now
    describes it has finished."""
    last = config.stages[-1]
    return state["stage"] == last and state["step"] >= getattr(config, last).steps


def _remove_stale_model(out: Path) -> None:
    """Removes run folder `out`'s model/, saved when the run finished as config.toml described it then: a resume
    that trains on (a stage added since, a longer constant-schedule stage) and stops early would otherwise leave
    it, and `tgfr train` and `tgfr evaluate`, which take model/ for a finished run, would report and score weights
    that the run's later steps never reached. A symbolic link in its place is removed, not what it points to."""
    model = out / "model"
    if model.is_symlink():
        model.unlink()
    elif model.is_dir():
        # Renamed first: a kill during the removal leaves no partial model/ that would pass for a finished run.
        aside = model.with_name(temporary_name(model.name))
        model.rename(aside)
        shutil.rmtree(aside)
    else:
        return
    print(f"tgfr train: {model} removed: the run trains on past the end it had when the model was saved (its "
          f"config.toml extends it); the model is saved again when the run finishes", file=sys.stderr)


def _earlier_counts(out: Path, state: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Steps and seconds per stage of the run's earlier calls, up to the checkpoint it resumes: the
    checkpoint's own counts, or, for a checkpoint of an older tgfr without them, train_summary.json's
    (that file counts only the calls that ended normally)."""
    if state is None:
        return {}
    if "summary" in state:
        return state["summary"]
    path = out / "train_summary.json"
    try:
        previous = parse_json(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return {name: {"steps_taken": int(values["steps_taken"]), "seconds": float(values["seconds"])}
                for name, values in previous.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ValueError(f"summary file {path} is not a tgfr train summary: {error!r}") from error


def _add_counts(counts: dict[str, dict[str, Any]], name: str, steps: int, seconds: float) -> dict[str, dict[str, Any]]:
    """`counts` with `steps` and `seconds` added to stage `name`'s (a new dict)."""
    earlier = counts.get(name, {"steps_taken": 0, "seconds": 0.0})
    return {**counts, name: {"steps_taken": earlier["steps_taken"] + steps,
                             "seconds": earlier["seconds"] + seconds}}


def _write_summary(out: Path, counts: dict[str, dict[str, Any]], global_batch: int) -> None:
    """Writes the run's steps and seconds per stage (every call's, up to its last checkpoint, and this
    call's) with the rates derived from these totals and each stage's last logged record."""
    last = {}
    if (out / "metrics.jsonl").is_file():
        for record in read_log(out / "metrics.jsonl"):
            last[record["stage"]] = record
    summary = {}
    for name, values in counts.items():
        values = {**values, "global_batch": global_batch, "last_logged": last.get(name, {})}
        if values["seconds"] > 0 and values["steps_taken"]:
            values["seconds_per_step"] = values["seconds"] / values["steps_taken"]
            values["samples_per_s"] = values["steps_taken"] * global_batch / values["seconds"]
        summary[name] = values
    with write_atomically(out / "train_summary.json", "training summary") as stream:
        stream.write(json.dumps(summary, indent=1) + "\n")
