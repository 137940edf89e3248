"""Local form of the pairwise losses on 2 CPU processes (gloo) equals the single-process loss.

Convention checked (tgfr/distributed.py): the mean of the ranks' losses is the single-process
loss, and each rank's feature gradient is world_size times the single-process gradient of its
rows (DDP's averaging of parameter gradients divides that factor out). Buffers (CoReFace's
margin, the association memory) end equal to the single process's on every rank.
"""

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

# Imported before init_process_group, not in the worker: importing torch._dynamo (tgfr.losses does) after
# it keeps the group alive past destroy_process_group, and a gloo thread that drops the last collective's
# tensors while the interpreter exits aborts the process (SIGABRT after the worker returned, seen in CI).
from tgfr.distributed import gather, gather_with_grad
from tgfr.losses import (ArcFaceHead, CaptionImageContrastiveLoss, CoReFaceLoss, CosFaceHead,
                         DualGranularityAssociationLoss, IntraModalContrastiveLoss, WordRegionContrastiveLoss)

WORLD = 2


def check_local_form(rank, make_loss, inputs, differentiable, steps=1):
    """inputs: full-batch tensors (rows first); each rank gets its half of every one."""
    single, local = make_loss(gather_ranks=False), make_loss(gather_ranks=True)
    n = inputs[0].shape[0] // WORLD
    for _ in range(steps):
        full = [t.clone().requires_grad_(i in differentiable) for i, t in enumerate(inputs)]
        part = [t[rank * n:(rank + 1) * n].clone().requires_grad_(i in differentiable) for i, t in enumerate(inputs)]
        expected, got = single(*full), local(*part)
        expected_grads = torch.autograd.grad(expected, [full[i] for i in differentiable])
        got_grads = torch.autograd.grad(got, [part[i] for i in differentiable])
        mean = got.detach().clone()
        dist.all_reduce(mean)
        torch.testing.assert_close(mean / WORLD, expected.detach(), rtol=1e-9, atol=1e-9)
        for g, e in zip(got_grads, expected_grads):
            torch.testing.assert_close(g / WORLD, e[rank * n:(rank + 1) * n], rtol=1e-9, atol=1e-9)
        inputs = [t.roll(1, 1) if t.is_floating_point() and t.dim() == 2 else t for t in inputs]
    for (name, a), (_, b) in zip(single.named_buffers(), local.named_buffers()):
        torch.testing.assert_close(a, b, msg=f"buffer {name}")


def check_word_region_with_per_rank_caption_lengths(rank, generator):
    """Ranks whose captions are padded to different T (padding="longest" per rank): the local form equals the
    single-process loss on the batch padded to the longest T, and a length past its own rank's T is refused
    on every rank (one rank raising alone would leave the other waiting in a collective)."""
    words_per_rank, n = (3, 5), 4
    words = torch.randn(2 * n, max(words_per_rank), 6, generator=generator, dtype=torch.float64)
    regions = torch.randn(2 * n, 5, 6, generator=generator, dtype=torch.float64)
    lengths = torch.tensor([3, 1, 2, 3, 5, 4, 1, 5])
    labels = torch.tensor([0, 1, 2, 0, 1, 3, 2, 3])
    rows = slice(rank * n, (rank + 1) * n)
    full = [words.clone().requires_grad_(), regions.clone().requires_grad_()]
    part = [words[rows, :words_per_rank[rank]].clone().requires_grad_(), regions[rows].clone().requires_grad_()]
    expected = WordRegionContrastiveLoss()(full[0], lengths, full[1], labels)
    got = WordRegionContrastiveLoss(gather_ranks=True)(part[0], lengths[rows], part[1], labels[rows])
    expected_grads, got_grads = torch.autograd.grad(expected, full), torch.autograd.grad(got, part)
    mean = got.detach().clone()
    dist.all_reduce(mean)
    torch.testing.assert_close(mean / WORLD, expected.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_grads[0] / WORLD, expected_grads[0][rows, :words_per_rank[rank]],
                               rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_grads[1] / WORLD, expected_grads[1][rows], rtol=1e-9, atol=1e-9)
    too_long = lengths[rows].clone()
    too_long[0] = max(words_per_rank) if rank == 0 else too_long[0]
    try:
        WordRegionContrastiveLoss(gather_ranks=True)(part[0], too_long, part[1])
    except ValueError as error:
        assert "on rank 0: lengths must lie in [1, T=3]" in str(error), error
    else:
        raise AssertionError("a length past its rank's T was not refused")


def check_margin_head(rank, head_class, focal):
    """A margin head with gather_ranks: every rank's loss is the single-process loss on the concatenated batch
    (focal of the whole batch's mean cross-entropy, not of each rank's), and DDP's averaging of the ranks' weight
    gradients gives the single-process weight gradient. Rank 1's rows lie farther from their class centres, so
    the ranks' own mean cross-entropies differ (focal of each would be another loss)."""
    n, classes = 6, 5
    torch.manual_seed(3)
    single = head_class(8, classes, scale=16.0, margin=0.3, focal=focal).double()
    local = head_class(8, classes, scale=16.0, margin=0.3, focal=focal, gather_ranks=True).double()
    local.load_state_dict(single.state_dict())
    generator = torch.Generator().manual_seed(4)
    labels = torch.arange(2 * n) % classes
    spread = torch.tensor([0.2] * n + [1.5] * n, dtype=torch.float64)[:, None]
    embeddings = 20 * single.weight.detach()[labels] + spread * torch.randn(2 * n, 8, generator=generator,
                                                                              dtype=torch.float64)
    rows = slice(rank * n, (rank + 1) * n)
    full, part = embeddings.clone().requires_grad_(), embeddings[rows].clone().requires_grad_()
    expected, got = single(full, labels), local(part, labels[rows])
    expected_grads = torch.autograd.grad(expected, [full, single.weight])
    got_grads = torch.autograd.grad(got, [part, local.weight])
    torch.testing.assert_close(got.detach(), expected.detach(), rtol=1e-9, atol=1e-9)
    weight_grad = got_grads[1].clone()
    dist.all_reduce(weight_grad)
    torch.testing.assert_close(weight_grad / WORLD, expected_grads[1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_grads[0] / WORLD, expected_grads[0][rows], rtol=1e-9, atol=1e-9)


class AssociationLoss(torch.nn.Module):
    """DualGranularityAssociationLoss without its stats, its memory drawn from one seed: the same in
    the single-process and the local form, as the training loop makes it on every rank."""

    def __init__(self, **kwargs):
        super().__init__()
        torch.manual_seed(5)
        self.loss = DualGranularityAssociationLoss(6, 3, temperature=0.2, min_confidence=0.8, **kwargs).double()

    def forward(self, image, caption):
        return self.loss(image, caption)[0]


def check_gather_leaves_the_incoming_gradient_alone(rank):
    """Autograd hands one gradient tensor to both addends of `gathered + bias`: a gather backward that
    all-reduced it in place gave bias (whose backward runs later, as it was made first) the sum over ranks."""
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(2 * WORLD, 3, generator=generator, dtype=torch.float64)
    weight = torch.randn(2 * WORLD, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    own = rows[2 * rank:2 * rank + 2].clone().requires_grad_()
    bias = weight * 2.0
    gathered, _ = gather_with_grad(own)
    (((gathered + bias) ** 2).sum() * (rank + 1)).backward()
    expected = 2.0 * 2.0 * (rows + 2.0 * weight.detach()) * (rank + 1)  # d/dweight of the loss on this rank
    torch.testing.assert_close(weight.grad, expected, rtol=1e-12, atol=1e-12)


def worker(rank, store_file):
    # A file store: a port picked free by the parent can be taken by another process before rank 0 binds it.
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(12, 6, generator=generator, dtype=torch.float64)
        b = torch.randn(12, 6, generator=generator, dtype=torch.float64)
        labels = torch.randint(0, 4, (12,), generator=generator)
        check_local_form(rank, lambda **kw: CaptionImageContrastiveLoss(**kw), [a, b, labels], [0, 1])
        check_local_form(rank, lambda **kw: IntraModalContrastiveLoss(scale=3.0, **kw), [a, b, labels], [0, 1])
        check_local_form(rank, lambda **kw: CoReFaceLoss(**kw), [a, a + 0.5 * b, labels], [0, 1], steps=3)
        # Clustered images: some share a confident pseudo-identity (across the ranks' halves too), others are
        # unconfident and have one of their own.
        image = torch.randn(3, 6, generator=generator, dtype=torch.float64)[torch.arange(12) % 3] + 0.3 * a
        check_local_form(rank, AssociationLoss, [image, b], [0, 1], steps=3)
        words = torch.randn(8, 4, 6, generator=generator, dtype=torch.float64)
        regions = torch.randn(8, 5, 6, generator=generator, dtype=torch.float64)
        lengths = torch.tensor([4, 1, 3, 2, 4, 4, 2, 3])
        check_local_form(rank, lambda **kw: WordRegionContrastiveLoss(**kw), [words, lengths, regions, labels[:8]],
                         [0, 2])
        check_word_region_with_per_rank_caption_lengths(rank, generator)
        check_gather_leaves_the_incoming_gradient_alone(rank)
        for head_class in (ArcFaceHead, CosFaceHead):
            for focal in (False, True):
                check_margin_head(rank, head_class, focal)
        # Unequal shares: all_gather itself would abort the process (gloo) or hang (nccl).
        rows = 3 + rank
        try:
            CaptionImageContrastiveLoss(gather_ranks=True)(a[:rows], b[:rows])
        except ValueError as error:
            assert "got shapes [(3, 6), (4, 6)] and dtypes ['float64', 'float64'] on ranks 0..1" in str(error), error
        else:
            raise AssertionError("unequal shares were not refused")
        # Labels of another integer dtype on one rank: gloo aborts the process or reads the bytes of one dtype as
        # the other's.
        rank_labels = labels[:4].to(torch.int32 if rank == 1 else torch.int64)
        try:
            CaptionImageContrastiveLoss(gather_ranks=True)(a[:4], b[:4], rank_labels)
        except ValueError as error:
            assert "got shapes [(4,), (4,)] and dtypes ['int64', 'int32'] on ranks 0..1" in str(error), error
        else:
            raise AssertionError("labels of different dtypes were not refused")
    finally:
        dist.destroy_process_group()


def test_local_form_on_two_gloo_processes_equals_single_process(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "store"),), nprocs=WORLD, join=True)


def spec_batch_margin(view1, view2, labels):
    """SPEC section 3's batch margin in float64: mean_i(C_ii - max_{j != i} C_ij), C the clamped cosines with the
    off-diagonal entries of one identity set to 0."""
    eye = torch.eye(len(labels), dtype=torch.bool)
    cosine = (F.normalize(view1.double(), dim=1) @ F.normalize(view2.double(), dim=1).T).clamp(-1, 1)
    cosine = cosine.masked_fill((labels[:, None] == labels[None, :]) & ~eye, 0.0)
    return (cosine.diagonal() - cosine.masked_fill(eye, float("-inf")).amax(1)).mean().item()


def own_margin_worker(rank, store_file):
    """CoReFaceLoss(gather_ranks=False) in a process group: each rank's margin follows its own batches, and no
    collective runs (one would pair with whatever collective another rank runs next, or wait for it forever)."""
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    torch.set_num_threads(1)
    collectives = []
    all_reduce = dist.all_reduce

    def counting_all_reduce(*args, **kwargs):
        collectives.append("all_reduce")
        return all_reduce(*args, **kwargs)

    dist.all_reduce = counting_all_reduce
    try:
        # Different batches on the two ranks, so that an average over ranks differs from either rank's own margin.
        generator = torch.Generator().manual_seed(10 + rank)
        loss, expected = CoReFaceLoss(momentum=0.7), 0.0
        for _ in range(2):
            view1 = torch.randn(6, 8, generator=generator, dtype=torch.float64)
            view2 = view1 + (0.2 + rank) * torch.randn(6, 8, generator=generator, dtype=torch.float64)
            labels = torch.tensor([0, 1, 2, 0, 1, 3])
            loss(view1, view2, labels)
            expected = 0.7 * spec_batch_margin(view1, view2, labels) + 0.3 * expected
            assert abs(loss.margin.item() - expected) < 1e-12, (rank, loss.margin.item(), expected)
        assert collectives == [], collectives
    finally:
        dist.all_reduce = all_reduce
        dist.destroy_process_group()


def test_coreface_without_gather_ranks_keeps_each_ranks_own_margin(tmp_path):
    mp.spawn(own_margin_worker, args=(str(tmp_path / "store"),), nprocs=WORLD, join=True)


@pytest.mark.parametrize("dims", [0, 9])
def test_a_tensor_without_rows_or_of_too_many_dimensions_is_refused_in_one_process_too(dims):
    tensor = torch.zeros((1,) * dims)
    for gather_rows in (gather, lambda tensor: gather_with_grad(tensor)[0]):
        with pytest.raises(ValueError, match=rf"^tensor must have 1 to 8 dimensions \(rows first\) to be gathered "
                                             rf"across ranks, got {dims}$"):
            gather_rows(tensor)

