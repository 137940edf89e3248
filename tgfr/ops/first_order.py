"""The fused ops have reverse-mode, first-order autograd only: double backward through their
backward ops, forward-mode AD and the torch.func derivative transforms are errors, not zeros.

Forward-mode AD is refused twice: by the front ends (refuse_forward_ad_and_transforms, before any
work) and, for the C++ ops, by their autograd kernels (register_reverse_mode_autograd), which also
run inside torch.compile's graphs (the eager and aot_eager backends; inductor drops the
torch.autograd.forward_ad tangents of any graph before they reach an op, PyTorch's arithmetic too,
unless the op takes the input itself, while torch.func.jvp still reaches the front ends' refusal).
The Triton ops (torch.library.triton_op) keep the autograd kernel triton_op registers for them (a
Python kernel, which torch.library refuses to override): a graph compiled for backend="triton"
drops a tangent without a word."""

from collections.abc import Callable

import torch
import torch.autograd.forward_ad as forward_ad

# Holds the autograd kernels of register_reverse_mode_autograd (a Library unregisters its kernels
# when it is garbage-collected).
_AUTOGRAD_KERNELS = torch.library.Library("tgfr", "IMPL")


def refuse_double_backward(backward_op: str, front_end: str) -> None:
    """Gives the backward op `backward_op` ("tgfr::...") an autograd formula that raises.

    Without one, gradients taken with create_graph=True would treat the fused backward as a
    constant (PyTorch only warns), so second-order gradients would silently come out zero or
    partial; first-order gradients under create_graph=True are unaffected.
    """

    def refuse(ctx, *grads):
        raise RuntimeError(
            f"{front_end} supports first-order gradients only: its fused backward ({backward_op}) has no "
            "derivative of its own, so double backward (differentiating gradients taken with "
            "create_graph=True) is not available; use backend='reference' for higher-order gradients"
        )

    torch.library.register_autograd(backward_op, refuse)


def _tracked_by_a_derivative_transform(tensor: torch.Tensor) -> bool:
    """Whether torch.func.grad/vjp/jvp (or jacrev, jacfwd, hessian, built on them) tracks `tensor`
    for a gradient, at any level of nesting; vmap's batching alone does not count, nor does a tensor
    detached from the transform's inputs."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(tensor):
        if functorch.is_gradtrackingtensor(tensor) and tensor.requires_grad:
            return True
        tensor = functorch.get_unwrapped(tensor)
    return False


def _unsupported_derivative(front_end: str) -> NotImplementedError:
    """The error for a forward-mode tangent or a torch.func derivative transform reaching `front_end`."""
    return NotImplementedError(
        f"{front_end} has fused reverse-mode gradients only: forward-mode AD (torch.autograd.forward_ad, "
        "torch.func.jvp/jacfwd) and the torch.func derivative transforms (grad, vjp, jacrev) are not "
        "supported by its fused backends; use backend='reference' for them"
    )


def refuse_forward_ad_and_transforms(front_end: str, *tensors: torch.Tensor) -> None:
    """Raises NotImplementedError naming `front_end` when an input carries a forward-mode tangent
    (torch.autograd.forward_ad) or is tracked by a torch.func derivative transform.

    The fused ops register reverse-mode autograd only. PyTorch drops a forward-mode tangent through
    them without a word (the JVP comes out zero), and refuses torch.func.grad with an error about
    setup_context that names neither the op nor a way out; the reference backend supports both.
    vmap alone gives correct values and is let through, and so is a tracked tensor that no gradient
    flows from here (under no_grad, or detached). Not checked while torch.compile traces, where
    these wrappers do not reach the op: there the autograd kernel of register_reverse_mode_autograd
    refuses a tangent when the compiled graph runs.
    """
    if torch.compiler.is_compiling():
        return
    for tensor in tensors:
        # A tracked tensor whose gradient does not flow here (under no_grad, or detached: a hard-negative
        # search inside a differentiated loss) runs the fused op as any constant does.
        tracked = torch.is_grad_enabled() and _tracked_by_a_derivative_transform(tensor)
        if forward_ad.unpack_dual(tensor).tangent is not None or tracked:
            raise _unsupported_derivative(front_end)


def register_reverse_mode_autograd(op: str, backward: Callable, setup_context: Callable, front_end: str) -> None:
    """torch.library.register_autograd(op, backward, setup_context=setup_context) for the C++ op `op`
    ("tgfr::..."), whose autograd kernel also raises NotImplementedError naming `front_end` when a
    tensor argument carries a forward-mode tangent (torch.autograd.forward_ad, torch.func.jvp).

    refuse_forward_ad_and_transforms does not run inside torch.compile's graphs, which the eager and
    aot_eager backends (and inductor's fallback to the op) run on the caller's dual tensors: without
    this check PyTorch's kernel, reverse-mode only, would drop their tangents there without a word.
    It is the kernel register_autograd builds, wrapped: fake tensors while tracing carry no tangent,
    so compiling, export and the reverse-mode gradients are as before.
    """
    # What torch.library.register_autograd registers, built by the same private helper: torch.library
    # has no public way to add a check to an op's autograd kernel.
    reverse_mode_kernel = torch._library.autograd.make_autograd_impl(
        torch._library.utils.lookup_op(op), torch._library.autograd.Info(backward, setup_context)
    )

    # Not compiled: after a graph break Dynamo would trace this frame too, on fake tensors, which carry
    # no tangent, and the check would pass whatever the op gets.
    @torch.compiler.disable
    def autograd_kernel(keyset: torch._C.DispatchKeySet, *args: object) -> object:
        if any(isinstance(arg, torch.Tensor) and forward_ad.unpack_dual(arg).tangent is not None for arg in args):
            raise _unsupported_derivative(front_end)
        return reverse_mode_kernel(keyset, *args)

    _AUTOGRAD_KERNELS.impl(op.split("::")[1], autograd_kernel, "Autograd", with_keyset=True)
