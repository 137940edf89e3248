"""Weights on disk without pickle: TGFRModel checkpoints and released backbone weights.

A TGFRModel checkpoint is a directory:
    config.json         TGFRConfig as JSON
    model.safetensors   every parameter and buffer of the model
    text_encoder/       the text model's config and tokenizer files (no weights), so the
                        checkpoint does not depend on the directory the model was built from
"""

import copy
import json
import os
import re
from collections.abc import Collection
from pathlib import Path

import safetensors.torch
import torch
from torch._dynamo.eval_frame import OptimizedModule
from transformers import PretrainedConfig

from tgfr.text_formats import parse_json
from tgfr.models.text_encoder import TextModelFilesError
from tgfr.models.tgfr_model import TGFRConfig, TGFRModel
from tgfr.input_paths import file_problem, refuse_empty_path
from tgfr.output_paths import replace_entries_atomically
from tgfr.torch_files import load_torch_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TEXT_ENCODER_DIR = "text_encoder"
FC_WEIGHT = "backbone.fc.weight"
# A text model layer's weights: BERT's (and RoBERTa's, MiniLM's) encoder.layer.<i>., CLIP's encoder.layers.<i>.
_TEXT_LAYER = re.compile(r"text_encoder\.model\.(?:text_model\.)?encoder\.layers?\.(\d+)\.")


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """State dict from a `.safetensors` file or a torch file (e.g. insightface's `backbone.pth`)
    read with `torch.load(weights_only=True)`, on the CPU. An empty `path` is refused (as a Path, "" is the
    current folder)."""
    refuse_empty_path("path", path, "name the weights file to read")
    path = Path(path)
    if problem := file_problem(path):
        raise ValueError(f"weights file {str(path)!r} {problem}")
    try:
        if path.suffix.lower() == ".safetensors":  # W.SAFETENSORS went to torch.load, named a refused pickle
            state = safetensors.torch.load_file(path, device="cpu")
        else:
            state = load_torch_file(path)
    except Exception as error:  # an empty .safetensors file: its error has no message
        raise ValueError(f"weights file {str(path)!r} could not be read: {str(error) or type(error).__name__}") from error
    if not isinstance(state, dict):
        raise ValueError(f"weights file {str(path)!r} must hold a state dict (name -> tensor), got {type(state).__name__}")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"weights file {str(path)!r} must hold a state dict (name -> tensor), but its entry "
                             f"{name!r} is not a tensor but {type(value).__name__}")
    return state


def dtype_kind(dtype: torch.dtype) -> str:
    """"floating", "complex", "bool" or "integer": loading casts between dtypes of one kind harmlessly,
    across kinds silently wrongly (an integer tensor becomes whole numbers, bool ones, complex its real part)."""
    if dtype.is_floating_point:
        return "floating"
    if dtype.is_complex:
        return "complex"
    return "bool" if dtype == torch.bool else "integer"


def _safetensors_dtype_kind(dtype: str) -> str:
    """dtype_kind of a safetensors header dtype ("F32", "BF16", "F8_E4M3", "C64", "BOOL", "I64", "U8")."""
    if dtype.startswith(("F", "BF")):
        return "floating"
    if dtype.startswith("C"):
        return "complex"
    return "bool" if dtype == "BOOL" else "integer"


def check_weight_kinds(expected: dict[str, torch.dtype], stored: dict[str, str], description: str) -> None:
    """Refuses weights whose dtype kind (`dtype_kind`) differs from the model's.

    expected: name -> dtype of the model's parameters and buffers; stored: name -> dtype_kind of
    the file's tensors (names only one side has are left to the caller's key check); description
    names the file ("weights file '/path/backbone.pth'")."""
    wrong = [f"{name} (model: {kind}, file: {stored[name]})"
             for name, kind in sorted((name, dtype_kind(dtype)) for name, dtype in expected.items())
             if name in stored and stored[name] != kind]
    if wrong:
        raise ValueError(f"{description} holds tensors of another kind than the model's: {_first_few(wrong)}")


def _text_config_as_saved(model: TGFRModel) -> PretrainedConfig:
    """The text model's config naming the dtype of the text weights model.safetensors holds: the
    config it was loaded with may still name float16 after `.float()`."""
    config = copy.deepcopy(model.text_encoder.model.config)
    config.dtype = next(model.text_encoder.model.parameters()).dtype
    return config


def _unwrapped(model: torch.nn.Module) -> TGFRModel:
    """The TGFRModel inside torch.compile's and (Distributed)DataParallel's wrappers, whose state dicts
    prefix every name (a checkpoint saved with those names would not load)."""
    while isinstance(model, (OptimizedModule, torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        model = model._orig_mod if isinstance(model, OptimizedModule) else model.module
    if not isinstance(model, TGFRModel):
        raise TypeError(f"model: expected a TGFRModel (or one wrapped by torch.compile or DistributedDataParallel), "
                        f"got {type(model).__name__}")
    return model


def save_tgfr_model(model: TGFRModel, directory: str | Path) -> Path:
    """Writes the checkpoint directory (created if needed); returns its path. `model` may be wrapped by
    torch.compile or (Distributed)DataParallel; the checkpoint holds the TGFRModel inside.

    config.json records the backbone and text encoder as frozen when they are, also when they were
    frozen after the model was built (`model.backbone.freeze()`), so the loaded model trains the same parts.

    The whole checkpoint (config.json, model.safetensors, text_encoder/) is first written into a
    hidden staging folder inside `directory` and flushed, then each entry renamed into place, config.json
    last (`tgfr.output_paths.replace_entries_atomically`): a save that fails (a full disk) fails while
    staging and leaves an earlier checkpoint as it was, loading with its own weights, with an OSError
    naming `directory`. `directory` itself and a user's other files in it stay. An empty `directory` is
    refused before anything is written: as a Path, "" is the current folder, whose config.json it would replace.
    """
    refuse_empty_path("directory", directory, "name the checkpoint folder to write")
    directory = Path(directory)
    model = _unwrapped(model)
    config = model.config.to_dict()
    config["freeze_backbone"] = model.backbone.frozen
    config["freeze_text_encoder"] = model.text_encoder.frozen
    config["text_encoder"] = TEXT_ENCODER_DIR  # relative: the checkpoint directory can move
    # No TGFRModel parameter shares storage with another (load_tgfr_model's key check would miss the
    # names safetensors.torch.save_model drops), so the state dict serializes as it is.
    weights = safetensors.torch.save({name: tensor.contiguous() for name, tensor in model.state_dict().items()})
    with replace_entries_atomically(directory, "checkpoint folder", last=(CONFIG_FILE,)) as staging:
        text_dir = staging / TEXT_ENCODER_DIR
        try:
            _text_config_as_saved(model).save_pretrained(text_dir)
            model.text_encoder.tokenizer.save_pretrained(text_dir)
        except OSError:
            raise
        except Exception as error:  # tokenizers fails to write with a bare Exception ("File too large (os error 27)")
            raise OSError(f"cannot write the text model's files: {error}") from error
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2), encoding="utf-8")
        (staging / WEIGHTS_FILE).write_bytes(weights)
    return directory


def _stored_shapes_and_kinds(weights_path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Name -> shape and name -> dtype_kind of every tensor in the safetensors file, read from its header only."""
    try:
        with safetensors.safe_open(str(weights_path), framework="pt") as weights:
            slices = {name: weights.get_slice(name) for name in weights.keys()}
            return ({name: tuple(piece.get_shape()) for name, piece in slices.items()},
                    {name: _safetensors_dtype_kind(piece.get_dtype()) for name, piece in slices.items()})
    except (OSError, safetensors.SafetensorError) as error:
        raise ValueError(f"checkpoint file {str(weights_path)!r} could not be loaded: {error}") from error


def _stored_floating_dtypes(weights_path: Path) -> set[str]:
    """The safetensors dtypes ("F64", "BF16") of the file's floating tensors, read from its header only."""
    with safetensors.safe_open(str(weights_path), framework="pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}
    return {dtype for dtype in dtypes if _safetensors_dtype_kind(dtype) == "floating"}


def _first_few(items: list[str]) -> str:
    """The first 5 of `items`, then how many more (a config of 10**4 layers misses about 10**5 names)."""
    return "; ".join(items[:5] or ["none"]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")


def _declared_text_layers(text_config: Path) -> int | None:
    """num_hidden_layers in the text model's config.json (a full CLIP's in its text_config); None where the file
    does not say it plainly (then the text model's own loading judges the file)."""
    try:
        values = parse_json(text_config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(values, dict) and isinstance(values.get("text_config"), dict):
        values = values["text_config"]
    layers = values.get("num_hidden_layers") if isinstance(values, dict) else None
    return layers if type(layers) is int else None


def _check_layer_counts(config: TGFRConfig, config_path: Path, weights_path: Path, stored: Collection[str]) -> None:
    """Compares the backbone's blocks per stage and the text model's layers that the configs describe with those
    the weights file names (stored), before the meta build, which takes about 15 ms a block or layer:
    "layers": [1, 1, 1, 10**6] would build for hours before it failed."""
    held = [len({name.split(".")[2] for name in stored if name.startswith(f"backbone.layer{stage}.")})
            for stage in range(1, 5)]
    if list(config.backbone.layers) != held:
        raise ValueError(f"checkpoint file {str(config_path)!r} does not fit its weights: backbone.layers "
                         f"{list(config.backbone.layers)}, {str(weights_path)!r} holds {held} blocks per stage")
    text_config = config_path.parent / TEXT_ENCODER_DIR / CONFIG_FILE
    text_layers = {match[1] for name in stored if (match := _TEXT_LAYER.match(name))}
    declared = _declared_text_layers(text_config)
    # Only more layers than held: another layout (no match, or layers counted otherwise) is left to the meta build.
    if text_layers and declared is not None and declared > len(text_layers):
        raise ValueError(f"checkpoint file {str(text_config)!r} does not fit the weights: num_hidden_layers "
                         f"{declared}, {str(weights_path)!r} holds {len(text_layers)} layers of the text model")


def _check_config_fits_weights(config: TGFRConfig, config_path: Path, weights_path: Path) -> None:
    """Builds the model `config` describes on the meta device (no memory) and compares its every
    parameter and buffer with the weights file's header, before the model is built for real: a
    config that does not fit (say dim 10**8, or input_size 10**6, which sizes the backbone's fc)
    would otherwise first allocate its tensors and fail with an allocation error naming nothing."""
    stored, stored_kinds = _stored_shapes_and_kinds(weights_path)
    _check_layer_counts(config, config_path, weights_path, stored)
    try:
        with torch.device("meta"):
            expected_tensors = TGFRModel(config, pretrained_text=False).state_dict()
    except TextModelFilesError:
        raise  # names the text_encoder folder and what transformers said, not config.json
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:
        # A size past int64 ("fine_dim": 10**19) or one whose square is (dim 10**10): PyTorch's message, whose
        # later lines are its C++ backtrace.
        reason = next(iter(str(error).splitlines()), "") or type(error).__name__
        raise ValueError(f"checkpoint file {str(config_path)!r} does not describe a model: {reason}") from error
    expected = {name: tuple(tensor.shape) for name, tensor in expected_tensors.items()}
    text_config = config_path.parent / TEXT_ENCODER_DIR / CONFIG_FILE
    missing, unexpected = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(f"checkpoint file {str(weights_path)!r} does not match the model that {str(config_path)!r} "
                         f"and {str(text_config)!r} describe: missing {_first_few(missing)}, unexpected "
                         f"{_first_few(unexpected)}")
    backbone = config.backbone
    if stored[FC_WEIGHT] != expected[FC_WEIGHT]:
        raise ValueError(
            f"checkpoint file {str(config_path)!r} does not fit its weights: backbone.input_size "
            f"{backbone.input_size}, backbone.width {backbone.width} and backbone.num_features "
            f"{backbone.num_features} give {FC_WEIGHT} the shape {expected[FC_WEIGHT]}, {str(weights_path)!r} "
            f"holds {stored[FC_WEIGHT]}"
        )
    mismatched = [name for name in sorted(expected) if expected[name] != stored[name]]
    if mismatched:
        shapes = _first_few([f"{name} {expected[name]} (file: {stored[name]})" for name in mismatched])
        raise ValueError(f"checkpoint files {str(config_path)!r} and {str(text_config)!r} describe a model that does "
                         f"not fit the weights in {str(weights_path)!r}: it has {shapes}")
    check_weight_kinds({name: tensor.dtype for name, tensor in expected_tensors.items()}, stored_kinds,
                       f"checkpoint file {str(weights_path)!r}")


def load_tgfr_model(directory: str | Path) -> TGFRModel:
    """Rebuilds a TGFRModel from `save_tgfr_model`'s directory; every weight must match (strict).

    The model comes back in eval mode, as Hugging Face's `from_pretrained` returns its models: in
    training mode the image head's BatchNorm would normalize each call's batch by its own statistics
    (an embedding would depend on the other images of the batch) and move its running statistics
    for good. Call `.train()` to train it further.

    The model is built in the default dtype (`torch.get_default_dtype()`, float32 unless set otherwise), text
    model included, and 16-bit weights load into it exactly. A file whose floating tensors are all float64 (a
    saved `.double()` model) loads in float64: float32 would round its weights. An empty `directory` is
    refused (as a Path, "" is the current folder).
    """
    refuse_empty_path("directory", directory, "name the checkpoint folder to read")
    directory = Path(directory)
    try:
        str(directory).encode("utf-8")
    except UnicodeEncodeError:
        # safetensors and the tokenizers library open UTF-8 paths only. A folder reached through a link with a
        # non-UTF-8 name (`tgfr train --out` accepts one whose real path is UTF-8) is opened through its real path.
        directory = Path(os.path.realpath(directory))
    if not directory.is_dir():  # else named as its config.json, which "does not exist"
        problem = file_problem(directory) or "is a file, not a folder"
        raise ValueError(f"checkpoint folder {str(directory)!r} {problem}")
    config_path = directory / CONFIG_FILE
    weights_path = directory / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if problem := file_problem(path):
            raise ValueError(f"checkpoint file {str(path)!r} {problem}")
    text_dir = directory / TEXT_ENCODER_DIR
    if not text_dir.is_dir():
        raise ValueError(f"checkpoint folder {str(text_dir)!r} (the text model's files) does not exist")
    try:
        values = parse_json(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"checkpoint file {str(config_path)!r} is not valid JSON: {error}") from error
    try:
        config = TGFRConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint file {str(config_path)!r} does not describe a model: {error}") from error
    config.text_encoder = str(text_dir)
    _check_config_fits_weights(config, config_path, weights_path)
    model = TGFRModel(config, pretrained_text=False)
    if _stored_floating_dtypes(weights_path) == {"F64"}:
        # Cast before the weights are copied in, so they keep every bit; a cast of the whole model, not a
        # float64 default dtype set for the build, which would reach other threads building their own models.
        model = model.to(torch.float64)
    try:
        safetensors.torch.load_model(model, str(weights_path))
    except (RuntimeError, OSError, safetensors.SafetensorError) as error:
        raise ValueError(f"checkpoint file {str(weights_path)!r} could not be loaded: {error}") from error
    return model.eval()
