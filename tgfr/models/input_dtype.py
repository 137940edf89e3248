"""The check that a model part's input has its parameters' dtype, as autocast allows."""

import torch
from torch import nn

from tgfr.ops.autocast import autocast_enabled

# The dtypes autocast casts to its own (float64 it leaves as it is, and it then meets 16-bit weights).
_AUTOCAST_CASTS = (torch.float32, torch.float16, torch.bfloat16)


def check_input_dtype(name: str, value: torch.Tensor, module: nn.Module, hint: str = "") -> None:
    """Refuses an input `value` of another dtype than `module`'s parameters, whose layers would fail with a
    PyTorch error naming neither ("mat1 and mat2 must have the same dtype"); under autocast a float32, float16
    or bfloat16 input into float32 parameters is taken, as autocast means them (its matrix products cast both
    themselves, and layers it does not cast, such as BatchNorm, take a 16-bit input into float32 parameters
    but not a float32 input into 16-bit ones). A module without parameters takes any dtype.
    hint: said after the error (what the input usually is)."""
    parameter = next(module.parameters(), None)
    if parameter is None or value.dtype == parameter.dtype:
        return
    if parameter.dtype == torch.float32 and value.dtype in _AUTOCAST_CASTS and autocast_enabled(value.device.type):
        return
    raise TypeError(f"{name} must have dtype {str(parameter.dtype).removeprefix('torch.')}, the "
                    f"{type(module).__name__}'s parameters', got {str(value.dtype).removeprefix('torch.')}"
                    + (f" ({hint})" if hint else ""))
