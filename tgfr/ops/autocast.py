"""Autocast for the fused ops, whose cost is in their products: under torch.autocast they take
their floating inputs in the autocast dtype, as a matmul does, and still accumulate in float32.

Without this, code that casts its features to float32 before the ops (mixed dtypes under autocast
would otherwise not match) sent float32 to GPU kernels tuned and measured in bf16, whose float32
form runs on CUDA cores and spills. The dtypes are the ones the device's kernels take: bf16 on
CPU (the CPU kernels have no fp16), bf16 and fp16 on CUDA. float64 stays float64, as autocast
leaves it.
"""

import torch

_KERNEL_DTYPES = {"cpu": (torch.bfloat16,), "cuda": (torch.bfloat16, torch.float16)}
_CAST = (torch.float32, torch.float16, torch.bfloat16)


def autocast_inputs(*values: object) -> tuple:
    """`values` with every float32/16-bit tensor in the autocast dtype when autocast is on for the
    first tensor's device and its kernels take that dtype; anything else (non-tensors included, for
    the front end's checks to name) unchanged."""
    first = next((value for value in values if isinstance(value, torch.Tensor)), None)
    if first is None:
        return values
    device = first.device.type
    if not (torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)):
        return values
    dtype = torch.get_autocast_dtype(device)
    if dtype not in _KERNEL_DTYPES.get(device, ()):
        return values
    return tuple(value.to(dtype) if isinstance(value, torch.Tensor) and value.dtype in _CAST else value
                 for value in values)
