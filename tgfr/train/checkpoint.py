"""Training checkpoints: written atomically, read back without pickle.

A checkpoint is one torch file holding only tensors and plain Python values (dicts, lists,
numbers, strings), so `torch.load(weights_only=True)` reads it: the RNG states of Python, numpy
and torch are stored as integer tensors. Writing goes to a temporary file in the same folder,
flushed to disk, then renamed over the old checkpoint (tgfr.output_paths.write_atomically), so a
crash leaves either the old or the new checkpoint, never half of one; a process killed while writing
also leaves the temporary file, which `tgfr.output_paths.remove_temporaries` deletes (a resumed run
does).
"""

import random
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tgfr.input_paths import file_problem
from tgfr.output_paths import write_atomically
from tgfr.torch_files import load_torch_file


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy (legacy global) and torch (CPU, and the process's CUDA device) as
    tensors/plain values.

    One CUDA state, the current device's (each rank's own, set from LOCAL_RANK), not one per visible
    device: a checkpoint of a machine with 8 visible GPUs then resumes where fewer are visible."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gauss": float(cached_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda_device"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["cached_gauss"]))
    torch.set_rng_state(state["torch"])
    if not torch.cuda.is_available():
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"])
    elif "cuda" in state:  # older checkpoints: every visible device's state; this process's device is the current one
        device = torch.cuda.current_device()
        if device < len(state["cuda"]):
            torch.cuda.set_rng_state(state["cuda"][device])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically writes `state` (tensors and plain values) to `path` (new, it gets the permissions the
    umask gives any new file); an OSError names `path`."""
    with write_atomically(path, "checkpoint", binary=True) as stream:
        try:
            torch.save(state, stream)
        except RuntimeError as error:
            # A write failing (a full disk) inside a tensor's record makes torch's zip writer, as it closes,
            # raise a RuntimeError of its own ("unexpected pos") over the OSError that says what happened.
            if isinstance(error.__context__, OSError):
                raise error.__context__ from None
            raise
    return Path(path)


def _state_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _valid_summary(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(counts, dict) and type(counts.get("steps_taken")) is int and type(counts.get("seconds")) is float
        for counts in value.values())


def _valid_optim(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and type(v) in (str, int, float) for k, v in value.items())


_RNG_SOURCES = {"python", "numpy", "torch"}
# The value types of the parts of one process's RNG state, as rng_state writes them (a dtype: a tensor of it):
# set_rng_state calls tensor methods on them, whose AttributeError on a list would name neither file nor part.
_RNG_TYPES: dict[str, dict[str, type | tuple[type, ...] | torch.dtype]] = {
    "python": {"version": int, "state": torch.int64, "gauss": (float, type(None))},
    "numpy": {"kind": str, "keys": torch.int64, "position": int, "has_gauss": int, "cached_gauss": float},
}


def _type_problem(value: Any, expected: type | tuple[type, ...] | torch.dtype) -> str | None:
    """What is wrong with the type of `value` for `expected` (a dtype: a tensor of it; int: no bool), or None."""
    name = type(value).__name__
    found = f"a tensor of {value.dtype}" if isinstance(value, torch.Tensor) else f"{'an' if name[0] in 'aeiouAEIOU' else 'a'} {name}"
    if isinstance(expected, torch.dtype):
        if isinstance(value, torch.Tensor) and value.dtype == expected:
            return None
        return f"is {found}, not a tensor of {expected}"
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if type(value) in kinds:
        return None
    return f"is {found}, not {' or '.join(kind.__name__ for kind in kinds)}"


def _rng_state_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with the value types of `state` (one process's RNG state, with the keys of _RNG_SOURCES),
    naming the part, or None."""
    for source, parts in _RNG_TYPES.items():
        if problem := _type_problem(state[source], dict):
            return f"{source!r} {problem}"
        for name, expected in parts.items():
            if name not in state[source]:
                return f"{source!r} has no {name!r}"
            if problem := _type_problem(state[source][name], expected):
                return f"{source!r} {name!r} {problem}"
    if "cuda" in state and (problem := _type_problem(state["cuda"], list)):
        return f"'cuda' {problem}"
    generators = {"'torch'": state["torch"]}
    if "cuda_device" in state:
        generators["'cuda_device'"] = state["cuda_device"]
    for index, device in enumerate(state.get("cuda", [])):  # older checkpoints: every visible device's state
        generators[f"'cuda' [{index}]"] = device
    for name, generator in generators.items():
        if problem := _type_problem(generator, torch.uint8):
            return f"{name} {problem}"
    return None


# The parts of a training checkpoint (tgfr.train.run): key -> (check, what the value must be). The
# optional "summary" (stage -> steps_taken and seconds up to this checkpoint), "optim" (the
# stage's optimizer settings, OptimConfig's fields) and "data" (tgfr.data.manifest.records_digest of
# the training split), absent in checkpoints of older tgfr versions, are checked on their own.
_PARTS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "stage": (lambda v: isinstance(v, str), "a stage name"),
    "step": (lambda v: type(v) is int and v >= 0, "an integer >= 0"),
    "model": (_state_dict, "a state dict (name -> tensor)"),
    "losses": (_state_dict, "a state dict (name -> tensor)"),
    "optimizer": (lambda v: isinstance(v, dict) and isinstance(v.get("state"), dict)
                  and isinstance(v.get("param_groups"), list), "an optimizer state dict"),
    "scheduler": (lambda v: isinstance(v, dict), "a scheduler state dict"),
    "rng": (lambda v: isinstance(v, list) and len(v) > 0
            and all(isinstance(r, dict) and _RNG_SOURCES <= r.keys() for r in v),
            "a list of per-process RNG states"),
}


def _check_crcs(path: Path) -> None:
    """Raises ValueError when a record of torch.save's zip archive `path` does not match the CRC-32 stored
    with it, or its zip directory is damaged: torch.load checks neither, and a flipped byte in a tensor's
    record (bit rot, a bad copy) loads as a changed weight. A file that is no zip archive (truncated, not
    torch.save's) is left to torch.load's error."""
    try:
        with zipfile.ZipFile(path) as archive:
            member = archive.testzip()  # reads every record once
    except zipfile.BadZipFile:  # no zip directory at all (testzip reports a bad record by its name)
        return
    except (EOFError, NotImplementedError, UnicodeDecodeError) as error:  # an entry's size, method or name
        raise ValueError(f"it is corrupt (its zip directory is damaged: {error!r})") from error
    if member is not None:
        raise ValueError(f"it is corrupt (record {member} does not match its CRC-32)")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Reads a training checkpoint with weights_only=True, after checking its records' CRC-32s, and checks
    that it holds every part of one; errors are ValueErrors naming the file."""
    path = Path(path)
    if problem := file_problem(path):
        raise ValueError(f"checkpoint file {path} {problem}")
    try:
        _check_crcs(path)
        state = load_torch_file(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"checkpoint file {path} could not be read: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint file {path} is not a tgfr training checkpoint (not a dict)")
    if isinstance(state.get("rng"), dict) and _RNG_SOURCES <= state["rng"].keys():
        # An older tgfr kept one RNG state, its process's (rank 0's under torchrun): one process's list.
        state["rng"] = [state["rng"]]
    # Every part is checked here, before a resumed run changes anything (metrics.jsonl is cut back to
    # the checkpoint's step), so that a malformed file stops it with its name, not a KeyError later.
    for key, (valid, expected) in _PARTS.items():
        if key not in state:
            raise ValueError(f"checkpoint file {path} is not a tgfr training checkpoint (no {key!r})")
        if not valid(state[key]):
            raise ValueError(f"checkpoint file {path}: {key!r} must be {expected}")
    for process, rng in enumerate(state["rng"]):
        if problem := _rng_state_problem(rng):
            raise ValueError(f"checkpoint file {path}: 'rng' must be a list of per-process RNG states as tgfr writes "
                             f"them: process {process}'s {problem}")
    if "summary" in state and not _valid_summary(state["summary"]):
        raise ValueError(f"checkpoint file {path}: 'summary' must be a dict of stage name -> "
                         f"{{'steps_taken': int, 'seconds': float}}")
    if "optim" in state and not _valid_optim(state["optim"]):
        raise ValueError(f"checkpoint file {path}: 'optim' must be a dict of optimizer setting name -> string or "
                         f"number")
    if "data" in state and not (isinstance(state["data"], str) and re.fullmatch(r"[0-9a-f]{64}", state["data"])):
        raise ValueError(f"checkpoint file {path}: 'data' must be a sha256 digest in hex (the training split's)")
    if "text_encoder" in state and not (isinstance(state["text_encoder"], str)
                                        and re.fullmatch(r"[0-9a-f]{64}", state["text_encoder"])):
        raise ValueError(f"checkpoint file {path}: 'text_encoder' must be a sha256 digest in hex (the text encoder's)")
    if "config" in state and not _valid_config(state["config"]):
        raise ValueError(f"checkpoint file {path}: 'config' must be a dict of setting name -> value (the run's), "
                         f"its 'stages' a list of stage names")
    return state


def _valid_config(config: Any) -> bool:
    """Whether `config` has the form of a run config as a checkpoint records it (its values are compared, not
    rebuilt: a later tgfr may have added or dropped settings)."""
    def names_settings(table: Any) -> bool:
        return isinstance(table, dict) and all(isinstance(key, str) and (not isinstance(value, dict)
                                                                          or names_settings(value))
                                               for key, value in table.items())

    stages = config.get("stages", []) if isinstance(config, dict) else None
    return names_settings(config) and isinstance(stages, list) and all(isinstance(stage, str) for stage in stages)


def optimizer_settings(state: dict[str, Any]) -> dict[str, Any]:
    """The optimizer settings (OptimConfig field name -> value) that the stage of checkpoint `state`
    (load_checkpoint's) trained with: its "optim" part, or, in a checkpoint of an older tgfr without
    one, those its optimizer state holds (optimizer, lr, weight_decay, and momentum for sgd)."""
    if "optim" in state:
        return state["optim"]
    groups = state["optimizer"]["param_groups"]
    group = groups[0] if groups and isinstance(groups[0], dict) else {}  # the stages optimize one group
    settings = {}
    if "nesterov" in group:  # only SGD's groups have it, only AdamW's have betas
        settings["optimizer"] = "sgd"
        if "momentum" in group:
            settings["momentum"] = group["momentum"]
    elif "betas" in group:
        settings["optimizer"] = "adamw"
    if "initial_lr" in group:  # the schedule's base lr; "lr" is that of the step after the checkpoint
        settings["lr"] = group["initial_lr"]
    if "weight_decay" in group:
        settings["weight_decay"] = group["weight_decay"]
    return settings

