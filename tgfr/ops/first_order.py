"""The fused ops have reverse-mode, first-order autograd only: double backward through their
backward ops, forward-mode AD and the torch.func derivative transforms are errors, not zeros."""

import torch
import torch.autograd.forward_ad as forward_ad


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


def refuse_forward_ad_and_transforms(front_end: str, *tensors: torch.Tensor) -> None:
    """Raises NotImplementedError naming `front_end` when an input carries a forward-mode tangent
    (torch.autograd.forward_ad) or is tracked by a torch.func derivative transform.

    The fused ops register reverse-mode autograd only. PyTorch drops a forward-mode tangent through
    them without a word (the JVP comes out zero), and refuses torch.func.grad with an error about
    setup_context that names neither the op nor a way out; the reference backend supports both.
    vmap alone gives correct values and is let through, and so is a tracked tensor that no gradient
    flows from here (under no_grad, or detached). Not checked while torch.compile traces,
    where these wrappers do not reach the op.
    """
    if torch.compiler.is_compiling():
        return
    for tensor in tensors:
        # A tracked tensor whose gradient does not flow here (under no_grad, or detached: a hard-negative
        # search inside a differentiated loss) runs the fused op as any constant does.
        tracked = torch.is_grad_enabled() and _tracked_by_a_derivative_transform(tensor)
        if forward_ad.unpack_dual(tensor).tangent is not None or tracked:
            raise NotImplementedError(
                f"{front_end} has fused reverse-mode gradients only: forward-mode AD (torch.autograd.forward_ad, "
                "torch.func.jvp/jacfwd) and the torch.func derivative transforms (grad, vjp, jacrev) are not "
                "supported by its fused backends; use backend='reference' for them"
            )
