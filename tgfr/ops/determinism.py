"""PyTorch's determinism switch for the fused ops whose backward adds with atomics.

The Triton and CUDA backwards of the word-region similarity add d(regions) and d(words) with fp32
atomics, so the summation order, and with it the last bits of the gradients, can change from run
to run. Like PyTorch's own nondeterministic kernels, they raise under
torch.use_deterministic_algorithms(True), and warn with warn_only=True. The forward passes and
the CPU kernels are deterministic.
"""

import warnings

import torch


def alert_nondeterministic_backward(op: str) -> None:
    """Raises (or warns, with warn_only=True) when deterministic algorithms are requested."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = (
        f"{op}'s backward adds gradients with floating-point atomics and is not deterministic, but "
        "torch.use_deterministic_algorithms(True) is set. For deterministic gradients use "
        "backend='cpu' (CPU tensors) or backend='reference' (keeps the N*M*T*R tensors: much more "
        "memory); torch.use_deterministic_algorithms(True, warn_only=True) makes this a warning."
    )
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, stacklevel=3)
    else:
        raise RuntimeError(message)
