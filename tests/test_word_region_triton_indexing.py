"""Index arithmetic of the Triton word-region kernels past int32, without tensors that large.

Offsets into words, regions, scores and their gradients are products like caption * stride_wn,
which Triton computes in int32 when the stride fits: (N - 1) * M >= 2^31 overflows the (N, M)
scores (N = M = 46342), M * R * D > 2^31 the regions (M = 42800 at the `tgfr` shape). The kernels
are launched here under the Triton interpreter on a few rows laid out with a row stride near 2^30
in a mostly virtual buffer (torch.empty does not touch its pages; only the rows used are written),
so that one caption, image or score row lies past 2^31 elements, and compared with the same
launch on the compact rows. Old int32 offsets wrap to negative ones there: the interpreter then
reads or writes 4-8 GB below the buffer (wrong values, or a crash of the child process). Like
tests/test_word_region_triton.py, the interpreted cases run in a child process with
TRITON_INTERPRET=1.

The grid limits (image groups on the grid's second axis, programs per launch) are checked on meta
tensors in this process: they raise before any launch.
"""

import gc

import pytest
import torch

from triton_interpreter import HAS_TRITON, INTERPRETED, interpreted_only, parent_only, run_interpreted

GAMMA1, GAMMA2 = 4.0, 5.0
# Captions per block and images per group of the launches below: the large offsets fall on the first
# caption of a block and on an image of a group, the positions whose offsets the kernels compute.
TILE = {"CAPTIONS": 2, "BLOCK_R": 32, "TAIL_CHUNKS": True, "REGIONS_MAJOR": False}

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton missing")


@parent_only
def test_interpreter_suite():
    summary = run_interpreted(__file__)
    assert "skipped" in summary, summary


def _spread(rows: torch.Tensor, stride: int, dtype: torch.dtype) -> torch.Tensor:
    """A flat buffer holding rows[i] (flattened) at element i * stride; the rest is never touched."""
    row_size = rows[0].numel()
    assert row_size <= stride
    buffer = torch.empty(stride * (rows.shape[0] - 1) + row_size, dtype=dtype)
    for index, row in enumerate(rows):
        buffer[index * stride:index * stride + row_size] = row.flatten()
    return buffer


def _gather(buffer: torch.Tensor, stride: int, like: torch.Tensor) -> torch.Tensor:
    """The rows _spread put there, back in the shape of `like`."""
    row_size = like[0].numel()
    return torch.stack([buffer[i * stride:i * stride + row_size].view(like.shape[1:]) for i in range(like.shape[0])])


def _problem(num_captions: int, num_images: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    # T = 5, R = 21 (two 16-region tail chunks, the second masked), D = 16; fp16 keeps the
    # 2^31-element input buffers at 4 GB of address space (the fp32 outputs take 8 GB).
    words = torch.randn(num_captions, 5, 16, generator=generator).half()
    regions = torch.randn(num_images, 21, 16, generator=generator).half()
    lengths = torch.tensor([5, 2, 4, 1][:num_captions], dtype=torch.int64)
    grad_scores = torch.randn(num_captions, num_images, generator=generator)
    return words, lengths, regions, grad_scores


def _run(words, lengths, regions, grad_scores, layout, deterministic):
    """Scores and gradients of one launch of each kernel, with words, regions and the scores laid
    out by `layout` ({"words" | "regions" | "scores": row stride}; others compact)."""
    import triton

    from tgfr.ops import word_region_triton as kernels

    num_captions, num_words, dim = words.shape
    num_images, num_regions, _ = regions.shape
    stride_wn = layout.get("words", num_words * dim)
    stride_rm = layout.get("regions", num_regions * dim)
    stride_sn = layout.get("scores", num_images)
    words_buffer = _spread(words, stride_wn, words.dtype)
    regions_buffer = _spread(regions, stride_rm, regions.dtype)
    scores_buffer = _spread(torch.zeros(num_captions, num_images), stride_sn, torch.float32)
    sizes = (num_captions, num_images, num_regions, dim)
    constexprs = kernels._constexprs(words, True)
    pairs = num_captions * num_images
    config = triton.Config({**TILE, "IMAGES": 2, "STAGGER_IMAGES": False}, num_warps=4)

    def pair_grid(meta):
        return triton.cdiv(num_captions, meta["CAPTIONS"]), triton.cdiv(num_images, meta["IMAGES"])

    kernels._launch(
        kernels._forward_kernel, config, pairs, pair_grid, words_buffer, lengths, regions_buffer, scores_buffer,
        *sizes, stride_wn, dim, stride_rm, dim, stride_sn, GAMMA1, GAMMA2, **constexprs,
    )
    scores = _gather(scores_buffer, stride_sn, grad_scores)
    del scores_buffer
    gc.collect()
    # The backward reads grad_scores with the scores' row stride.
    grad_scores_buffer = _spread(grad_scores, stride_sn, torch.float32)
    grad_words_buffer = _spread(torch.zeros(words.shape), stride_wn, torch.float32)
    grad_regions_buffer = _spread(torch.zeros(regions.shape), stride_rm, torch.float32)
    arguments = (
        grad_scores_buffer, words_buffer, lengths, regions_buffer, grad_words_buffer, grad_regions_buffer,
        *sizes, stride_sn, stride_wn, dim, stride_rm, dim, GAMMA1, GAMMA2,
    )
    if deterministic:
        config = triton.Config(TILE, num_warps=4)
        kernels._launch(kernels._word_gradient_kernel, config, pairs,
                        lambda meta: (triton.cdiv(num_captions, meta["CAPTIONS"]),), *arguments, **constexprs)
        kernels._launch(kernels._region_gradient_kernel, config, pairs, (num_images,), *arguments, **constexprs)
    else:
        kernels._launch(kernels._backward_kernel, config, pairs, pair_grid, *arguments, **constexprs)
    return (
        scores,
        _gather(grad_words_buffer, stride_wn, torch.zeros(words.shape)),
        _gather(grad_regions_buffer, stride_rm, torch.zeros(regions.shape)),
    )


# Row strides that put the first caption of a block, an image or a caption's score row past 2^31
# elements (the strides fit int32, so the launch specializes them as int32 like a real one does).
# In each case the product caption * stride or image * stride itself passes 2^31: the old forward
# added the offsets within a row to a pointer, so only that product could overflow there.
# - words: caption 2 (the first of the second block of 2 captions) at 2 * (2^30 + 64) = 2^31 + 128;
# - regions: image 2 (the first of the second group of 2 images) at 2^31 + 128;
# - scores (and grad_scores): caption 2's row at 2 * (2^30 + 16) = 2^31 + 32.
LAYOUTS = {
    "words": ({"words": 2**30 + 64}, 3, 2),
    "regions": ({"regions": 2**30 + 64}, 2, 3),
    "scores": ({"scores": 2**30 + 16}, 3, 2),
}


@interpreted_only
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomics", "deterministic"])
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_offsets_past_int32_address_the_right_rows(name, deterministic):
    layout, num_captions, num_images = LAYOUTS[name]
    words, lengths, regions, grad_scores = _problem(num_captions, num_images)
    expected = _run(words, lengths, regions, grad_scores, {}, deterministic)
    actual = _run(words, lengths, regions, grad_scores, layout, deterministic)
    gc.collect()  # the 4-8 GB buffers (address space only) go before the next case
    for what, got, want in zip(("scores", "grad words", "grad regions"), actual, expected):
        assert want.abs().sum() > 0, what
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=lambda m: f"{name} layout, {what}: {m}")


@pytest.fixture
def no_launch(monkeypatch):
    """The word-region Triton module with its launches replaced by no-ops: the checks before them
    run on meta tensors, nothing reaches a GPU."""
    from tgfr.ops import word_region_triton as kernels

    class NoLaunch:
        def __getitem__(self, grid):
            return lambda *arguments, **constexprs: None

    monkeypatch.setattr(kernels, "wrap_triton", lambda kernel: NoLaunch())
    return kernels


def _meta_problem(num_captions: int, num_images: int):
    words = torch.empty(num_captions, 22, 256, dtype=torch.bfloat16, device="meta")
    regions = torch.empty(num_images, 196, 256, dtype=torch.bfloat16, device="meta")
    lengths = torch.empty(num_captions, dtype=torch.int64, device="meta")
    return words, lengths, regions


@needs_triton
@pytest.mark.skipif(INTERPRETED, reason="the GPU configs' limits; checked in the parent process")
@pytest.mark.parametrize("num_captions", [1, 2048], ids=["tuned", "untuned"])
def test_too_many_image_groups_raise_a_value_error_naming_regions(no_launch, num_captions):
    # 65535 groups of 8 images at most on the grid's second axis (CUDA's limit), whichever path
    # (N = 1: inside the autotuned pair counts; N = 2048: the first config) picks the config.
    words, lengths, regions = _meta_problem(num_captions, 65535 * 8 + 1)
    with pytest.raises(ValueError, match=r"regions must have at most 524280 images \(M\).*got M=524281"):
        no_launch.launch_forward(words, lengths, regions, GAMMA1, GAMMA2, True)
    grad_scores = torch.empty(words.shape[0], regions.shape[0], device="meta")
    with pytest.raises(ValueError, match=r"regions must have at most 524280 images"):
        no_launch.launch_backward(grad_scores, words, lengths, regions, GAMMA1, GAMMA2, True)


@needs_triton
@pytest.mark.skipif(INTERPRETED, reason="the GPU configs' limits; checked in the parent process")
def test_launches_of_2_to_the_31_programs_raise_instead_of_being_skipped(no_launch):
    # The backward takes one caption per program and 8 images per group: N = 2^17 captions and
    # M = 2^17 images make 2^17 * 2^14 = 2^31 programs, which Triton's launcher would skip silently.
    words, lengths, regions = _meta_problem(2**17, 2**17)
    grad_scores = torch.empty(2**17, 2**17, device="meta")
    with pytest.raises(ValueError, match=r"words \(N=131072 captions\) and regions \(M=131072 images\)"):
        no_launch.launch_backward(grad_scores, words, lengths, regions, GAMMA1, GAMMA2, True)
    # One fewer caption fits; the forward (2 captions per program) fits up to 2^32 - 2 pairs.
    words, lengths, _ = _meta_problem(2**17 - 1, 2**17)
    no_launch.launch_forward(words, lengths, regions, GAMMA1, GAMMA2, True)
    with pytest.raises(ValueError, match=r"_forward_kernel"):
        words, lengths, _ = _meta_problem(2**18, 2**17)
        no_launch.launch_forward(words, lengths, regions, GAMMA1, GAMMA2, True)
