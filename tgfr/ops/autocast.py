"""Autocast for the fused ops on CUDA, whose cost is in their products: under torch.autocast they
take their floating inputs in the autocast dtype, as a matmul does, and still accumulate in float32.

Without this, code that casts its features to float32 before the ops (mixed dtypes under autocast
would otherwise not match) sent float32 to GPU kernels tuned and measured in bf16, whose float32
form runs on CUDA cores and spills. On CPU nothing is cast: the CPU contrastive kernel multiplies in
float32 whatever its inputs (bf16 would only round them), and the word-region kernel's bf16 products
trade about 1% of gradient precision for a speed that varies with the shape. Inputs with a float64
among them are left alone too (autocast leaves float64 as it is, and a cast of the others would make
the front end's dtype errors name a dtype the caller never passed).
"""

import contextlib

import torch

_KERNEL_DTYPES = {"cuda": (torch.bfloat16, torch.float16)}
_CAST = (torch.float32, torch.float16, torch.bfloat16)


def autocast_inputs(*values: object) -> tuple:
    """`values` with every float32/16-bit tensor in the autocast dtype when autocast is on for the
    first tensor's device and that device's kernels take the dtype (CUDA: bf16, fp16); anything else
    (non-tensors included, for the front end's checks to name) unchanged."""
    tensors = [value for value in values if isinstance(value, torch.Tensor)]
    if not tensors or any(tensor.dtype == torch.float64 for tensor in tensors):
        return values
    device = tensors[0].device.type
    if device not in _KERNEL_DTYPES or not torch.is_autocast_enabled(device):
        return values
    dtype = torch.get_autocast_dtype(device)
    if dtype not in _KERNEL_DTYPES[device]:
        return values
    return tuple(value.to(dtype) if isinstance(value, torch.Tensor) and value.dtype in _CAST else value
                 for value in values)


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for `device_type`; False for devices without autocast (meta, used for
    shape inference), where torch.is_autocast_enabled raises."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def without_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """A region where autocast is off for `device_type` (nothing to turn off for devices without
    autocast, such as meta, where torch.autocast raises)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def promoted_under_autocast(*values: object) -> tuple:
    """`values` with its float32/16-bit tensors in float32 where autocast is on for the first tensor's device, that
    device's kernels take the autocast dtype (CUDA), and the tensors' dtypes differ: the fused backends take such a
    mix (autocast_inputs), so the float32 paths (the reference, contrastive_row_max, word_region_attention) take it
    too rather than refuse it; anything else (float64 among them, one dtype, no autocast) unchanged."""
    tensors = [value for value in values if isinstance(value, torch.Tensor)]
    if not tensors or tensors[0].device.type not in _KERNEL_DTYPES or not autocast_enabled(tensors[0].device.type):
        return values
    dtypes = {tensor.dtype for tensor in tensors}
    if len(dtypes) < 2 or not dtypes <= set(_CAST):
        return values
    return tuple(value.float() if isinstance(value, torch.Tensor) else value for value in values)
