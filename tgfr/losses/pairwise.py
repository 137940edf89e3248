"""The symmetric embedding-contrastive loss shared by CICL and the intra-modal loss, in the
single-process form or the distributed local form (tgfr.distributed)."""

import torch

from tgfr.distributed import gather, gather_with_grad, is_distributed
from tgfr.ops.contrastive import FLOAT_DTYPES, LABEL_DTYPES, contrastive_loss
from tgfr.validation import check_nonempty, check_same_device, check_size, check_tensor


def check_pairs(x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor | None, names: tuple[str, str]) -> None:
    """Bad input named as the calling loss names it: the fused op only knows x and y (and row_labels,
    column_labels), and would report a batch mismatch as an out-of-range target offset. Callers check
    before any state update (CoReFace's margin), which would meet a device mismatch first."""
    x_name, y_name = names
    check_tensor(x_name, x, ndim=2, dtypes=FLOAT_DTYPES)
    check_tensor(y_name, y, ndim=2, dtypes=FLOAT_DTYPES)
    check_nonempty(x_name, x, 0)
    check_nonempty(x_name, x, 1)
    check_size(y_name, y, 0, x.shape[0], f"one row per row of {x_name}")
    check_size(y_name, y, 1, x.shape[1], f"the embedding size of {x_name}")
    if y.dtype != x.dtype:
        raise TypeError(f"{y_name} must have the dtype of {x_name} ({x.dtype}), got {y.dtype}")
    if labels is not None:
        check_tensor("labels", labels, ndim=1, dtypes=LABEL_DTYPES)
        check_size("labels", labels, 0, x.shape[0], f"one label per row of {x_name}")
    check_same_device(**{x_name: x, y_name: y}, **({} if labels is None else {"labels": labels}))


def check_state_device(name: str, tensor: torch.Tensor, **state: torch.Tensor) -> None:
    """Refuses a loss's own state (parameters, buffers, keyword-named as the message names them) on another
    device than its input `tensor`, called `name`: a state left on meta (moved there, or built under
    torch.device("meta") and never materialised) met real inputs with uninitialised memory, a finite garbage
    loss. Meta inputs are shape inference, which takes the state on any device."""
    if tensor.is_meta:
        return
    for state_name, value in state.items():
        if value.device != tensor.device:
            raise ValueError(f"the loss's {state_name} is on {value.device}, its input {name} on {tensor.device}: "
                             f"move the loss to its inputs' device (loss.to({str(tensor.device)!r}))")


def refuse_state_update_under_transforms(state: str) -> None:
    """Raises RuntimeError naming a loss's running state (`state`, e.g. "CoReFaceLoss's margin") when a
    training-mode call, which updates it, runs under a torch.func transform (grad, vjp, jvp, vmap, and jacrev,
    jacfwd, hessian built on them). There the update cannot be what a plain call's is: grad, vjp and jvp refused
    the in-place one with an error naming neither the loss nor a way out, a new tensor stored as the state was
    the transform's wrapper (dead once the transform returned: a later copy.deepcopy failed), and under vmap it
    would be one update per item. In eval mode the state is only read, which the transforms take."""
    if torch._C._functorch.maybe_current_level() is not None:
        raise RuntimeError(f"{state} is updated by every training-mode call, which a torch.func transform (grad, "
                           "vjp, jvp, vmap) cannot do: call the loss in eval mode (loss.eval()) under the transform, "
                           "and update the state by training-mode calls outside it")


def symmetric_contrastive_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    labels: torch.Tensor | None,
    scale: float,
    same_identity: str,
    gather_ranks: bool,
    backend: str,
    names: tuple[str, str],
) -> torch.Tensor:
    """Mean CE of x_i over all y plus mean CE of y_j over all x, target the matching index.

    x, y (n, D) matched pairs, labels (n,) or None; names: the caller's names of x and y, used
    in the messages about bad input. With gather_ranks inside a process group, this rank's rows
    go against the columns of all ranks (local form).
    """
    check_pairs(x, y, labels, names)
    if not (gather_ranks and is_distributed()):
        return contrastive_loss(x, y, scale, row_labels=labels, same_identity=same_identity, backend=backend)
    all_x, offset = gather_with_grad(x)
    all_y, _ = gather_with_grad(y)
    all_labels = None if labels is None else gather(labels)
    common = dict(scale=scale, same_identity=same_identity, direction="rows", offset=offset, backend=backend)
    rows = contrastive_loss(x, all_y, row_labels=labels, column_labels=all_labels, **common)
    columns = contrastive_loss(y, all_x, row_labels=labels, column_labels=all_labels, **common)
    return rows + columns
