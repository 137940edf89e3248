"""All-gather that carries gradients, for the "local" form of the pairwise losses.

In the local form (open_clip's `local_loss` + `gather_with_grad`) every rank gathers the
features of all ranks, computes its own rows against all columns (row i's target sits at
column i + rank_offset) and returns the mean over its rows. The mean of the ranks' losses is the
single-process loss on the concatenated batch of the same features; the backward of
`gather_with_grad` sums the gradients of all ranks, so each rank's features get world_size times
the gradient of that mean, and DDP's averaging of parameter gradients brings it back to the
single-process gradient. The features themselves match a single process's only where no
BatchNorm in training mode computes them: BatchNorm normalizes each rank's rows with that rank's
batch statistics (there is no SyncBatchNorm; in tgfr: the backbone in the fr stage, the image
head's region-map BatchNorm in the align stage), so there the losses and gradients differ from a
single process's on the whole batch.
Every rank must hold a tensor of the same shape and dtype (checked: a CollectiveCheckError, a ValueError,
on every rank, where the collective would abort the process, hang or mix bytes of different dtypes).
"""

import os
from typing import Any

import torch
import torch.distributed as dist


def launch_variable(name: str, default: int, minimum: int = 0) -> int:
    """The integer environment variable `name` that torchrun sets (WORLD_SIZE, RANK, LOCAL_RANK), `default`
    where it is unset. ValueError naming it unless it is an integer >= `minimum`: a stray value left in a
    cluster job's environment otherwise failed with int()'s message, which names no variable."""
    text = os.environ.get(name)
    if text is None:
        return default
    if not text.strip().isdecimal() or int(text) < minimum:
        raise ValueError(f"{name}={text} in the environment must be an integer >= {minimum} (torchrun sets it; "
                         f"unset it to run without torchrun)")
    return int(text)


def is_distributed() -> bool:
    """True inside an initialized process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class CollectiveCheckError(ValueError):
    """An error every rank raises together, with the same message (where raising on one rank alone would leave
    the others waiting in a collective): a failed check of every rank's values, or rank 0's error in what it
    alone does, raised on the other ranks too."""


_MAX_GATHER_DIMS = 8
# Every dtype of this torch in a fixed order (every rank runs the same torch): the descriptor sends a
# dtype as its index here.
_DTYPES = tuple(sorted({value for value in vars(torch).values() if isinstance(value, torch.dtype)}, key=str))


def _check_gatherable(tensor: torch.Tensor) -> None:
    """Refuses a tensor without rows (0 dimensions: torch.cat of the parts failed naming nothing, on every rank)
    or of more dimensions than the shape descriptor holds; in one process too, so that a call is refused
    whatever the number of ranks."""
    if not 1 <= tensor.dim() <= _MAX_GATHER_DIMS:
        raise ValueError(f"tensor must have 1 to {_MAX_GATHER_DIMS} dimensions (rows first) to be gathered across "
                         f"ranks, got {tensor.dim()}")


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """(n, ...) on each rank -> (world_size * n, ...) in rank order, after checking that every
    rank holds the same shape and dtype (all_gather needs both, and fails without a Python error
    otherwise)."""
    padding = [0] * (_MAX_GATHER_DIMS - tensor.dim())
    descriptor = torch.tensor([_DTYPES.index(tensor.dtype), tensor.dim(), *tensor.shape, *padding],
                              dtype=torch.int64, device=tensor.device)
    descriptors = [torch.empty_like(descriptor) for _ in range(dist.get_world_size())]
    dist.all_gather(descriptors, descriptor)
    if any(not torch.equal(other, descriptors[0]) for other in descriptors):
        shapes = [tuple(other[2:2 + int(other[1])].tolist()) for other in descriptors]
        dtypes = [str(_DTYPES[int(other[0])]).replace("torch.", "") for other in descriptors]
        raise CollectiveCheckError(f"every rank must gather a tensor of the same shape (the same number of rows "
                                   f"per rank) and dtype, got shapes {shapes} and dtypes {dtypes} on ranks "
                                   f"0..{len(descriptors) - 1}")
    parts = [torch.empty_like(tensor) for _ in descriptors]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows = tensor.shape[0]
        return _all_gather(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss depends on every rank's rows: sum the gradients, keep our slice. Summed in a copy:
        # autograd may hand the same gradient tensor to another input (both addends of a sum), whose backward
        # must still see this rank's gradient.
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad.narrow(0, dist.get_rank() * ctx.rows, ctx.rows)


def gather_with_grad(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(n, ...) on each rank -> ((world_size * n, ...) in rank order, offset of this rank's rows).

    Differentiable. Outside a multi-rank process group: (tensor, 0).
    """
    _check_gatherable(tensor)
    if not is_distributed():
        return tensor, 0
    return _GatherWithGrad.apply(tensor), row_offset(tensor.shape[0])


def row_offset(rows: int) -> int:
    """Index of this rank's first row in a gathered batch of `rows` rows per rank (0 outside a
    process group)."""
    return dist.get_rank() * rows if is_distributed() else 0


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient (labels, lengths): (n, ...) -> (world_size * n, ...)."""
    _check_gatherable(tensor)
    if not is_distributed():
        return tensor
    return _all_gather(tensor)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """Average of a detached tensor over ranks (identity outside a process group)."""
    if not is_distributed():
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def gather_objects(value: Any, group: dist.ProcessGroup | None = None) -> list[Any]:
    """Every rank's `value` (picklable; exchanged between the job's own processes, never read from
    a file), in rank order, on every rank; [value] outside a process group. group: the process group
    to exchange in (None: the default one)."""
    if not is_distributed():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value, group=group)
    return values
