"""The derivative transforms a test applies to a function f of one tensor w: forward mode
(torch.func.jvp and jacfwd, torch.autograd.forward_ad) and the torch.func reverse-mode ones
(grad, jacrev, grad through vmap). Forward-mode results are the directional derivative along ones."""

import torch
import torch.autograd.forward_ad as forward_ad


def _forward_ad_tangent(f, w):
    with forward_ad.dual_level():
        return forward_ad.unpack_dual(f(forward_ad.make_dual(w, torch.ones_like(w)))).tangent


DERIVATIVE_TRANSFORMS = {
    "jvp": lambda f, w: torch.func.jvp(f, (w,), (torch.ones_like(w),))[1],
    "jacfwd": lambda f, w: torch.func.jacfwd(f)(w),
    "forward_ad": _forward_ad_tangent,
    "grad": lambda f, w: torch.func.grad(lambda a: f(a).sum())(w),
    "jacrev": lambda f, w: torch.func.jacrev(f)(w),
    "grad_of_vmap": lambda f, w: torch.func.grad(lambda a: torch.func.vmap(f)(a[None]).sum())(w),
}
DIRECTIONAL = ("jvp", "forward_ad")  # the transforms that give the derivative along ones
