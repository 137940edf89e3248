"""The symmetric embedding-contrastive loss shared by CICL and the intra-modal loss, in the
single-process form or the distributed local form (tgfr.distributed)."""

import torch

from tgfr.distributed import gather, gather_with_grad, is_distributed
from tgfr.ops.contrastive import contrastive_loss


def symmetric_contrastive_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    labels: torch.Tensor | None,
    scale: float,
    same_identity: str,
    gather_ranks: bool,
    backend: str,
) -> torch.Tensor:
    """Mean CE of x_i over all y plus mean CE of y_j over all x, target the matching index.

    x, y (n, D) matched pairs, labels (n,) or None. With gather_ranks inside a process group,
    this rank's rows go against the columns of all ranks (local form).
    """
    if not (gather_ranks and is_distributed()):
        return contrastive_loss(x, y, scale, row_labels=labels, same_identity=same_identity, backend=backend)
    all_x, offset = gather_with_grad(x)
    all_y, _ = gather_with_grad(y)
    all_labels = None if labels is None else gather(labels)
    common = dict(scale=scale, same_identity=same_identity, direction="rows", offset=offset, backend=backend)
    rows = contrastive_loss(x, all_y, row_labels=labels, column_labels=all_labels, **common)
    columns = contrastive_loss(y, all_x, row_labels=labels, column_labels=all_labels, **common)
    return rows + columns
