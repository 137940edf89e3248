"""Precision of the tl.dot products in tgfr's Triton kernels."""

import torch


def dot_input_precision(dtype: torch.dtype) -> str:
    """"tf32" for float32 inputs only when torch allows TF32 in CUDA matmuls (as torch.matmul would
    use), else "ieee", so that float32 results match the reference; 16-bit inputs are unaffected."""
    if dtype != torch.float32:
        return "ieee"
    matmul = torch.backends.cuda.matmul
    # torch >= 2.9 switches TF32 with fp32_precision (set on matmul or inherited from torch.backends);
    # reading the legacy allow_tf32 raises once that API has been used. fp32_precision also follows
    # allow_tf32 and set_float32_matmul_precision.
    if hasattr(matmul, "fp32_precision"):
        return "tf32" if matmul.fp32_precision == "tf32" else "ieee"
    return "tf32" if matmul.allow_tf32 else "ieee"
