"""The fused backward ops have no derivative of their own: double backward through them is an error."""

import torch


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
