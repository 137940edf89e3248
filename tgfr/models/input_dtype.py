"""The check that a model part's input has its parameters' dtype, as autocast allows."""

import torch
from torch import nn

from tgfr.ops.autocast import autocast_enabled

# The dtypes autocast casts to its own (float64 it leaves as it is, and it then meets 16-bit weights).
_AUTOCAST_CASTS = (torch.float32, torch.float16, torch.bfloat16)


def check_input_dtype(name: str, value: torch.Tensor, module: nn.Module, hint: str = "",
                      cast_by_autocast: bool = False) -> None:
    """Refuses an input `value` of another dtype than `module`'s parameters, whose layers would fail with a
    PyTorch error naming neither ("mat1 and mat2 must have the same dtype"). Under autocast a float32, float16
    or bfloat16 input is taken into float32 parameters; into 16-bit ones only when `cast_by_autocast` says the
    input meets a layer that autocast casts first (a convolution, a linear layer), not one it leaves alone
    (BatchNorm, LayerNorm: a float32 input into 16-bit parameters fails there). A module without parameters
    takes any dtype. hint: said after the error (what the input usually is)."""
    parameter = next(module.parameters(), None)
    if parameter is None or value.dtype == parameter.dtype:
        return
    if (value.dtype in _AUTOCAST_CASTS and autocast_enabled(value.device.type)
            and (cast_by_autocast or parameter.dtype == torch.float32)):
        return
    raise TypeError(f"{name} must have dtype {str(parameter.dtype).removeprefix('torch.')}, the "
                    f"{type(module).__name__}'s parameters, got {str(value.dtype).removeprefix('torch.')}"
                    + (f" ({hint})" if hint else ""))
