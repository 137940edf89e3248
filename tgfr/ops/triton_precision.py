"""Precision of the tl.dot products in tgfr's Triton kernels."""

import torch


def dot_input_precision(dtype: torch.dtype) -> str:
    """"tf32" for float32 inputs only when torch allows TF32 matmuls (as torch.matmul would use),
    else "ieee", so that float32 results match the reference; 16-bit inputs are unaffected."""
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"
