"""Input checks shared by the public ops and losses (SPEC section 5).

Each check raises TypeError (not a tensor, wrong dtype) or ValueError (wrong rank, size,
device or value) with a message that names the argument, what was expected and what came.
"""

import math
import numbers
import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch._subclasses.fake_tensor import is_fake
from torch.fx.experimental.proxy_tensor import has_proxy_slot


def check_tensor(
    name: str,
    value: object,
    ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
) -> torch.Tensor:
    """Checks that `value` is a tensor of rank `ndim` with one of `dtypes`; returns it."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions, got {value.dim()} (shape {tuple(value.shape)})"
        )
    if dtypes is not None and value.dtype not in dtypes:
        expected = ", ".join(str(dtype).replace("torch.", "") for dtype in dtypes)
        raise TypeError(f"{name} must have dtype in ({expected}), got {str(value.dtype).replace('torch.', '')}")
    return value


def check_same_device(**tensors: torch.Tensor) -> None:
    """Checks that all named tensors are on one device."""
    devices = {name: tensor.device for name, tensor in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"all inputs must be on one device, got {listing}")


def check_nonempty(name: str, tensor: torch.Tensor, dim: int = 0) -> None:
    """Checks that `tensor` has at least one entry along `dim` (empty batches are an error)."""
    if tensor.shape[dim] == 0:
        raise ValueError(f"{name} must not be empty along dimension {dim}, got shape {tuple(tensor.shape)}")


def check_size(name: str, tensor: torch.Tensor, dim: int, expected: int, what: str) -> None:
    """Checks tensor.shape[dim] == expected; `what` says where `expected` comes from."""
    if tensor.shape[dim] != expected:
        raise ValueError(
            f"{name} must have size {expected} ({what}) in dimension {dim}, got {tensor.shape[dim]} "
            f"(shape {tuple(tensor.shape)})"
        )


def _as_float(name: str, value: object) -> float:
    """`value` as a float (an int beyond float's range as inf); TypeError naming `name` unless it is
    a real number (int, float, a numpy integer or floating scalar; a bool or a string such as "0.5"
    is a mistake, not a number)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except OverflowError:
        return math.inf


def check_positive(name: str, value: float, maximum: float = math.inf) -> float:
    """Checks a finite, strictly positive hyperparameter, at most `maximum`; returns it as a float."""
    number = _as_float(name, value)
    if not 0 < number < math.inf or number > maximum:
        bound = "" if maximum == math.inf else f" of at most {maximum:g}"
        raise ValueError(f"{name} must be a finite positive number{bound}, got {value}")
    return number


def check_finite_number(name: str, value: object, maximum: float = sys.float_info.max) -> float:
    """Checks a number of magnitude at most `maximum` (so finite, not NaN); returns it as a float."""
    number = _as_float(name, value)
    if not abs(number) <= maximum:
        bound = "" if maximum == sys.float_info.max else f" of magnitude at most {maximum:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value}")
    return number


def check_loss_weight(name: str, value: object) -> float:
    """Checks a loss term's weight: at least 0 (a negative one would have the optimizer raise that term) and at
    most float32's maximum (the terms are float32, where a larger weight makes the total inf); returns it as a
    float."""
    number = check_finite_number(name, value, torch.finfo(torch.float32).max)
    if number < 0:
        raise ValueError(f"{name} must be at least 0, got {value}")
    return number


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """Checks a size setting (a number of classes, an embedding size): an integer (a Python or numpy one,
    or a 0-dim integer tensor such as labels.max() + 1; a bool or a float such as 8.0 is a mistake, not a
    size) of at least `minimum`; returns it as an int."""
    if (isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype != torch.bool
            and not value.dtype.is_floating_point and not value.dtype.is_complex):
        if not values_readable(value):  # a meta or fake tensor's item() failed naming nothing
            raise TypeError(f"{name} must be an integer whose value can be read, got a tensor without one (meta, "
                            "fake or traced): give it as a Python int")
        value = int(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


SEED_LIMIT = 2**32  # seeds, epochs and draws that seed numpy.random.SeedSequence lie in [0, SEED_LIMIT)


def check_seed_word(name: str, value: object) -> int:
    """Checks a number that goes into a numpy.random.SeedSequence tuple (a seed, an epoch, a draw): an
    integer in [0, 2**32), as check_count. SeedSequence splits a larger one into 32-bit words and drops
    trailing zero words, so (seed, epoch 2**32, index 0) seeded as (seed, epoch 0, index 1): another item's
    stream."""
    value = check_count(name, value, minimum=0)
    if value >= SEED_LIMIT:
        raise ValueError(f"{name} must be an integer in [0, {SEED_LIMIT}), got {value}")
    return value


def check_flag(name: str, value: object) -> bool:
    """Checks a boolean option (a string such as "False" would otherwise count as true)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _functorch_unwrapped(tensor: torch.Tensor) -> torch.Tensor:
    """The plain tensor under the wrappers of the torch.func transforms (vmap's BatchedTensor, the
    grad and jvp transforms' GradTrackingTensor); `tensor` itself outside them."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(tensor):
        tensor = functorch.get_unwrapped(tensor)
    return tensor


def values_readable(tensor: torch.Tensor) -> bool:
    """False where the values of `tensor` are not there to read: while torch.compile traces, and for
    meta and fake tensors (FakeTensorMode), which carry shapes only, and for real tensors inside an
    active FakeTensorMode, where what is computed from them is fake, and for a tensor make_fx traces
    (real ones too: reading its value would bake this input's value into the graph, so make_fx
    refuses it; a tensor it does not trace, such as a module's buffer, is a constant of the graph
    and is read). Value checks then go through torch._assert_async, which the
    traced or compiled graph runs and shape inference passes over. Under the torch.func transforms
    it is the tensor inside their wrappers that counts: value_range reads it."""
    if torch.compiler.is_compiling():  # first: dynamo cannot trace the dispatch-mode lookup below
        return False
    tensor = _functorch_unwrapped(tensor)
    modes = torch._C._TorchDispatchModeKey
    proxy_mode = torch._C._get_dispatch_mode(modes.PROXY)
    return not (tensor.is_meta or is_fake(tensor)
                or torch._C._get_dispatch_mode(modes.FAKE) is not None
                or (proxy_mode is not None and has_proxy_slot(tensor, proxy_mode.tracer)))


def value_range(tensor: torch.Tensor) -> tuple[int, int]:
    """Smallest and largest value of a nonempty integer tensor whose values_readable is True.

    Under torch.func.vmap these are taken over the whole batch, from the tensor inside vmap's
    BatchedTensor: vmap refuses to read a value (.item()) itself, and has no batching rule for
    torch._assert_async either, so a per-item check could not run at all.
    """
    low, high = _functorch_unwrapped(tensor).aminmax()
    return int(low), int(high)


def check_word_lengths(lengths: object, batch: int, num_words: int) -> torch.Tensor:
    """Checks caption lengths: (batch,) int32/int64 with values in [1, num_words]; returns it.

    The values are data, which torch.compile does not have while it traces, nor a meta or fake
    tensor at all: a compiled graph checks them with an assertion when it runs (on CUDA a
    device-side assert), so no kernel, compiled or not, reads words past T.
    """
    check_tensor("lengths", lengths, ndim=1, dtypes=(torch.int64, torch.int32))
    check_size("lengths", lengths, 0, batch, "the number of captions N")
    if not values_readable(lengths):
        # No T in the message: a symbolic T (dynamic shapes) put into a string is fixed to its value,
        # and every new caption length would compile the graph again.
        torch._assert_async(((lengths >= 1) & (lengths <= num_words)).all(),
                            "lengths must lie in [1, T] (T from words.shape[1])")
    elif lengths.numel():
        shortest, longest = value_range(lengths)
        if shortest < 1 or longest > num_words:
            raise ValueError(f"lengths must lie in [1, T={num_words}] (T from words.shape[1]), got values in "
                             f"[{shortest}, {longest}]")
    return lengths


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Checks that `value` is one of the allowed strings `choices`; returns it."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value
