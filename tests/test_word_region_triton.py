"""Triton kernels of the word-region similarity under the Triton interpreter, on CPU tensors.

TRITON_INTERPRET=1 has to be set before the kernels are decorated, and setting it in this
process would turn every Triton kernel of the session into the interpreter's (the GPU tests
included). So, unless the variable is already set, the single test `test_interpreter_suite` runs
this file again in a child process with the variable set (tests/triton_interpreter.py), and the
actual cases are skipped here.
Shapes are tiny: the interpreter runs each program in numpy. torch.compile is tested on the GPU
only (tests/test_word_region_gpu.py): tracing through triton_op needs compiled, not interpreted,
kernels.
"""

import pytest
import torch

from derivative_transforms import DERIVATIVE_TRANSFORMS
from triton_interpreter import interpreted_only, parent_only, run_interpreted


@parent_only
def test_interpreter_suite():
    summary = run_interpreted(__file__)
    assert "skipped" not in summary, summary


def _inputs(num_captions, num_images, num_words, num_regions, dim, lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    words = torch.randn(num_captions, num_words, dim, generator=generator, dtype=torch.float64)
    regions = torch.randn(num_images, num_regions, dim, generator=generator, dtype=torch.float64)
    return words, torch.tensor(lengths, dtype=torch.int64), regions


def _reference_with_grads(words, lengths, regions, grad, **hyper):
    from tgfr import reference

    words, regions = words.clone().requires_grad_(), regions.clone().requires_grad_()
    scores = reference.word_region_scores(words, lengths, regions, **hyper)
    scores.backward(grad)
    return scores.detach(), words.grad, regions.grad


def _triton_with_grads(words, lengths, regions, grad, dtype=torch.float32, **hyper):
    import tgfr.ops

    words, regions = words.to(dtype).requires_grad_(), regions.to(dtype).requires_grad_()
    scores = tgfr.ops.word_region_scores(words, lengths, regions, backend="triton", **hyper)
    scores.backward(grad.float())
    return scores.detach(), words.grad, regions.grad


# (N, M, T, R, D, lengths): odd sizes, N not a multiple of the 2 captions per program, M not a
# multiple of the 2 images per program, R = 21 and 7 (tail chunks of 16 regions only, the last
# ragged), 33 (a whole 32-region chunk and a ragged tail chunk) and 16 (one exact tail chunk),
# lengths 1 and T, T above 16 (two-row-block padding), D not a power of two.
SHAPES = [
    (3, 5, 5, 21, 10, [1, 5, 3]),
    (2, 1, 1, 7, 3, [1, 1]),
    (1, 3, 17, 33, 16, [17]),
    (4, 2, 4, 16, 20, [4, 2, 1, 4]),
]


@interpreted_only
@pytest.mark.parametrize("word_softmax", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape[:5])))
def test_values_and_gradients_match_reference(shape, word_softmax):
    *sizes, lengths = shape
    words, lengths, regions = _inputs(*sizes, lengths)
    grad = torch.randn(sizes[0], sizes[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    hyper = {"gamma1": 4.0, "gamma2": 5.0, "word_softmax": word_softmax}
    expected = _reference_with_grads(words, lengths, regions, grad, **hyper)
    actual = _triton_with_grads(words, lengths, regions, grad, **hyper)
    assert actual[0].dtype == torch.float32 and actual[1].dtype == torch.float32
    for name, got, want in zip(("scores", "grad words", "grad regions"), actual, expected):
        scale = want.abs().max().item() + 1e-6
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5 * scale, msg=lambda m: f"{name}: {m}")
    padded = torch.arange(words.shape[1]) >= lengths[:, None]
    assert (actual[1][padded] == 0).all(), "padded words must get zero gradient"


# Kernel variants the public op reaches only on a GPU (through the autotuner's configs), launched
# here one by one: one caption or two per program, regions in masked 32-region chunks or whole
# chunks plus 16-region tail chunks, products in words-major or regions-major orientation; each
# with the atomics backward and the deterministic two-kernel one.
VARIANTS = [
    {"CAPTIONS": 1, "TAIL_CHUNKS": False, "REGIONS_MAJOR": False},
    {"CAPTIONS": 2, "TAIL_CHUNKS": True, "REGIONS_MAJOR": False},
    {"CAPTIONS": 1, "TAIL_CHUNKS": False, "REGIONS_MAJOR": True},
    {"CAPTIONS": 2, "TAIL_CHUNKS": True, "REGIONS_MAJOR": True},
]


@interpreted_only
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomics", "deterministic"])
@pytest.mark.parametrize("word_softmax", [True, False])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda variant: "-".join(f"{k}={int(v)}" for k, v in variant.items()))
def test_kernel_variants_match_reference(variant, word_softmax, deterministic):
    import triton

    from tgfr.ops import word_region_triton

    words, lengths, regions = _inputs(3, 3, 5, 37, 20, [5, 1, 3], seed=9)
    grad = torch.randn(3, 3, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    hyper = {"gamma1": 4.0, "gamma2": 5.0, "word_softmax": word_softmax}
    expected = _reference_with_grads(words, lengths, regions, grad, **hyper)
    config = triton.Config({"BLOCK_R": 32, "IMAGES": 2, "STAGGER_IMAGES": False, **variant}, num_warps=4)
    arguments = (words.float(), lengths, regions.float(), *hyper.values())
    scores = word_region_triton.launch_forward(*arguments, config=config)
    if deterministic:  # its two kernels take no image groups
        config = triton.Config({"BLOCK_R": 32, **variant}, num_warps=4)
    grad_words, grad_regions = word_region_triton.launch_backward(
        grad.float(), *arguments, deterministic=deterministic, config=config
    )
    for name, got, want in zip(("scores", "grad words", "grad regions"), (scores, grad_words, grad_regions), expected):
        torch.testing.assert_close(
            got.double(), want, rtol=1e-4, atol=1e-5 * want.abs().max().item(), msg=lambda m: f"{name}: {m}"
        )


@interpreted_only
def test_staggered_image_order_matches_reference():
    """STAGGER_IMAGES: programs of consecutive caption blocks start their image group at different
    images (3 images in groups of 2: the second group's one image comes first or second); every
    image must still be visited once per caption block."""
    import triton

    from tgfr.ops import word_region_triton

    words, lengths, regions = _inputs(3, 3, 5, 37, 20, [5, 1, 3], seed=11)
    grad = torch.randn(3, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    expected = _reference_with_grads(words, lengths, regions, grad)
    config = triton.Config(
        {"CAPTIONS": 1, "BLOCK_R": 32, "IMAGES": 2, "TAIL_CHUNKS": False, "REGIONS_MAJOR": False,
         "STAGGER_IMAGES": True}, num_warps=4,
    )
    grad_words, grad_regions = word_region_triton.launch_backward(
        grad.float(), words.float(), lengths, regions.float(), 4.0, 5.0, True, config=config
    )
    for name, got, want in zip(("grad words", "grad regions"), (grad_words, grad_regions), expected[1:]):
        torch.testing.assert_close(
            got.double(), want, rtol=1e-4, atol=1e-5 * want.abs().max().item(), msg=lambda m: f"{name}: {m}"
        )


@interpreted_only
def test_double_backward_raises_instead_of_returning_wrong_gradients():
    import tgfr.ops

    words, lengths, regions = _inputs(2, 3, 4, 9, 6, [4, 2], seed=13)
    words, regions = words.float().requires_grad_(), regions.float().requires_grad_()
    scores = tgfr.ops.word_region_scores(words, lengths, regions, backend="triton")
    grads = torch.autograd.grad(scores.sum(), (words, regions), create_graph=True)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(sum(grad.square().sum() for grad in grads), (words, regions))


@interpreted_only
@pytest.mark.parametrize("transform", ["forward_ad", "jvp", "grad"])
def test_forward_ad_and_func_transforms_raise(transform):
    """The Triton op's own autograd kernel does not refuse tangents (tgfr/ops/first_order.py): without the front
    end's refusal a forward-mode derivative through it was dropped, a tangent of None, without an error."""
    import tgfr.ops

    words, lengths, regions = _inputs(2, 3, 4, 9, 6, [4, 2], seed=13)
    with pytest.raises(NotImplementedError, match="word_region_scores has fused reverse-mode gradients only"):
        DERIVATIVE_TRANSFORMS[transform](
            lambda w: tgfr.ops.word_region_scores(w, lengths, regions.float(), backend="triton"), words.float())


@interpreted_only
def test_other_hyperparameters():
    words, lengths, regions = _inputs(3, 4, 6, 18, 8, [6, 2, 4], seed=3)
    grad = torch.ones(3, 4, dtype=torch.float64)
    hyper = {"gamma1": 10.0, "gamma2": 1.5, "word_softmax": True}
    expected = _reference_with_grads(words, lengths, regions, grad, **hyper)
    actual = _triton_with_grads(words, lengths, regions, grad, **hyper)
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


@interpreted_only
@pytest.mark.parametrize("dtype", [torch.float16])  # bf16: GPU tests only, see below
def test_half_inputs_accumulate_in_fp32(dtype):
    # Not bfloat16 here: the interpreter of Triton 3.9 gets bf16 tl.dot wrong (a plain 16x16
    # bf16 product is off by ~1e10), so bfloat16 is covered by tests/test_word_region_gpu.py.
    words, lengths, regions = _inputs(3, 3, 5, 20, 12, [5, 1, 3], seed=4)
    words, regions = words.to(dtype).double(), regions.to(dtype).double()  # exact in both dtypes
    grad = torch.randn(3, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = _reference_with_grads(words, lengths, regions, grad)
    scores, grad_words, grad_regions = _triton_with_grads(words, lengths, regions, grad, dtype=dtype)
    assert scores.dtype == torch.float32 and grad_words.dtype == dtype and grad_regions.dtype == dtype
    # The probabilities and gradients enter the second products rounded to the input dtype.
    torch.testing.assert_close(scores.double(), expected[0], rtol=2e-2, atol=2e-2)
    for got, want in zip((grad_words, grad_regions), expected[1:]):
        torch.testing.assert_close(got.double(), want, rtol=5e-2, atol=3e-2 * want.abs().max().item())


@interpreted_only
def test_nan_propagates_to_its_caption_only():
    words, lengths, regions = _inputs(3, 2, 4, 9, 6, [4, 4, 2], seed=6)
    words[0, 1, 2] = float("nan")
    import tgfr.ops

    scores = tgfr.ops.word_region_scores(words.float(), lengths, regions.float(), backend="triton")
    assert scores[0].isnan().all() and scores[1:].isfinite().all()


@interpreted_only
def test_noncontiguous_inputs():
    words, lengths, regions = _inputs(3, 2, 5, 11, 7, [5, 3, 1], seed=7)
    import tgfr.ops
    from tgfr import reference

    words_t = words.float().transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    regions_t = regions.float()[:, ::1].transpose(1, 2).contiguous().transpose(1, 2)
    assert not words_t.is_contiguous() and not regions_t.is_contiguous()
    scores = tgfr.ops.word_region_scores(words_t, lengths, regions_t, backend="triton")
    torch.testing.assert_close(scores.double(), reference.word_region_scores(words, lengths, regions), rtol=1e-4, atol=1e-5)


@interpreted_only
def test_deterministic_algorithms_take_the_two_kernel_backward(monkeypatch):
    import tgfr.ops
    from tgfr.ops import word_region_triton

    calls = []

    def spy(*arguments, **options):
        calls.append(arguments[7])  # deterministic
        return launch_backward(*arguments, **options)

    launch_backward = word_region_triton.launch_backward
    monkeypatch.setattr(word_region_triton, "launch_backward", spy)
    words, lengths, regions = _inputs(3, 4, 5, 21, 10, [1, 5, 3], seed=11)
    grad = torch.randn(3, 4, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    expected = _reference_with_grads(words, lengths, regions, grad)
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        actual = _triton_with_grads(words, lengths, regions, grad)
    finally:
        torch.use_deterministic_algorithms(previous)
    actual_default = _triton_with_grads(words, lengths, regions, grad)
    assert calls == [True, False]
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5 * want.abs().max().item())
    for got, other in zip(actual, actual_default):
        torch.testing.assert_close(got, other, rtol=1e-5, atol=1e-6)


@interpreted_only
def test_float64_is_rejected_with_a_clear_error():
    import tgfr.ops

    words, lengths, regions = _inputs(2, 2, 3, 5, 4, [3, 1])
    with pytest.raises(TypeError, match="words must be float32, bfloat16 or float16 for backend 'triton'"):
        tgfr.ops.word_region_scores(words, lengths, regions, backend="triton")


@interpreted_only
@pytest.mark.parametrize("bad_lengths", [[0, 3], [1, 4]])
def test_registered_ops_check_lengths_themselves(bad_lengths):
    # Called directly (as a compiled graph or a user may), past the front end's checks.
    import tgfr.ops  # noqa: F401  (registers the ops)

    words, _, regions = _inputs(2, 2, 3, 5, 8, [1, 3])
    words, regions, lengths = words.float(), regions.float(), torch.tensor(bad_lengths)
    with pytest.raises(RuntimeError, match=r"lengths must lie in \[1, T\] \(T from words.shape\[1\]\)"):
        torch.ops.tgfr.word_region_scores_triton(words, lengths, regions, 4.0, 5.0, True)
    with pytest.raises(RuntimeError, match=r"lengths must lie in \[1, T\] \(T from words.shape\[1\]\)"):
        torch.ops.tgfr.word_region_scores_backward_triton(
            torch.ones(2, 2), words, lengths, regions, 4.0, 5.0, True, False
        )


@interpreted_only
# The scores are float32 for 16-bit inputs too, and the fake kernel must say so (torch.compile, export).
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_registered_op_passes_opcheck(dtype):
    import tgfr.ops  # noqa: F401
    from tgfr.ops import word_region_triton  # noqa: F401  (registers the ops)

    words, lengths, regions = _inputs(3, 2, 4, 17, 8, [4, 1, 2], seed=8)
    words, regions = words.to(dtype).requires_grad_(), regions.to(dtype).requires_grad_()
    torch.library.opcheck(
        torch.ops.tgfr.word_region_scores_triton.default,
        (words, lengths, regions, 4.0, 5.0, True),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )



@interpreted_only
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomics", "deterministic"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "transposed"])
def test_registered_backward_op_passes_opcheck(deterministic, contiguous):
    from tgfr.ops import word_region_triton  # noqa: F401  (registers the ops)

    words, lengths, regions = _inputs(3, 2, 4, 17, 8, [4, 1, 2], seed=13)
    words, regions = words.float(), regions.float()
    if not contiguous:  # the fake kernel must give the real op's (contiguous) strides
        words, regions = words.transpose(1, 2).contiguous().transpose(1, 2), regions.transpose(0, 1).contiguous().transpose(0, 1)
    grad = torch.randn(3, 2, generator=torch.Generator().manual_seed(14))
    torch.library.opcheck(
        torch.ops.tgfr.word_region_scores_backward_triton.default,
        (grad, words, lengths, regions, 4.0, 5.0, True, deterministic),
        test_utils=("test_schema", "test_faketensor"),
    )


@interpreted_only
def test_registered_ops_take_noncontiguous_inputs():
    """Called directly, past the front end's .contiguous(): the kernels assume a unit last stride."""
    import tgfr.ops  # noqa: F401  (registers the ops)

    words, lengths, regions = _inputs(3, 2, 5, 11, 4, [5, 3, 1], seed=15)
    grad = torch.randn(3, 2, generator=torch.Generator().manual_seed(16), dtype=torch.float64)
    expected = _reference_with_grads(words, lengths, regions, grad)
    words_t = words.float().transpose(1, 2).contiguous().transpose(1, 2)  # last stride 5, not 1
    regions_t = regions.float().transpose(0, 1).contiguous().transpose(0, 1)
    scores = torch.ops.tgfr.word_region_scores_triton(words_t, lengths, regions_t, 4.0, 5.0, True)
    gradients = torch.ops.tgfr.word_region_scores_backward_triton(
        grad.float(), words_t, lengths, regions_t, 4.0, 5.0, True, False)
    for got, want in zip((scores, *gradients), expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


# Inputs the C++ ops refuse with a ValueError (or TypeError), as (words, lengths, regions), the
# error type and the argument the Triton ops' message must name. The Triton ops took their sizes
# from words and regions unchecked: a short lengths or a regions of smaller D was read past its end
# (garbage scores here, an illegal memory access on a GPU), an empty side gave an empty result.
BAD_SIZES = {
    "regions D": ((2, 3, 8), [3, 1], (2, 5, 4), torch.float32, ValueError, "regions"),
    "lengths short": ((2, 3, 8), [3], (2, 5, 8), torch.float32, ValueError, "lengths"),
    "N=0": ((0, 3, 8), [], (2, 5, 8), torch.float32, ValueError, "words"),
    "T=0": ((2, 0, 8), [1, 1], (2, 5, 8), torch.float32, ValueError, "words"),
    "M=0": ((2, 3, 8), [3, 1], (0, 5, 8), torch.float32, ValueError, "regions"),
    "R=0": ((2, 3, 8), [3, 1], (2, 0, 8), torch.float32, ValueError, "regions"),
    "regions bfloat16": ((2, 3, 8), [3, 1], (2, 5, 8), torch.bfloat16, TypeError, "regions"),
}


def _bad_sizes_inputs(case):
    words_shape, lengths, regions_shape, regions_dtype, error, name = BAD_SIZES[case]
    generator = torch.Generator().manual_seed(17)
    words = torch.randn(words_shape, generator=generator)
    regions = torch.randn(regions_shape, generator=generator).to(regions_dtype)
    return (words, torch.tensor(lengths, dtype=torch.int64), regions), error, name


@interpreted_only
@pytest.mark.parametrize("case", list(BAD_SIZES))
def test_registered_scores_op_checks_sizes_itself(case):
    from tgfr.ops import word_region_triton  # noqa: F401  (registers the ops)

    inputs, error, name = _bad_sizes_inputs(case)
    with pytest.raises(error):  # the reference: the C++ op refuses these inputs
        torch.ops.tgfr.word_region_scores(*inputs, 4.0, 5.0, True)
    with pytest.raises(error, match=f"^{name} "):
        torch.ops.tgfr.word_region_scores_triton(*inputs, 4.0, 5.0, True)


@interpreted_only
@pytest.mark.parametrize("case", [*BAD_SIZES, "grad_scores N", "grad_scores M", "grad_scores 1-D"])
def test_registered_backward_op_checks_sizes_itself(case):
    from tgfr.ops import word_region_triton  # noqa: F401  (registers the ops)

    if case.startswith("grad_scores"):  # valid words (2, 3, 8) and regions (2, 5, 8), grad_scores not (2, 2)
        words, lengths, regions = _inputs(2, 2, 3, 5, 8, [3, 1], seed=18)
        words, regions = words.float(), regions.float()
        grad_scores = {"grad_scores N": torch.ones(1, 2), "grad_scores M": torch.ones(2, 3),
                       "grad_scores 1-D": torch.ones(4)}[case]
        error, name = ValueError, "grad_scores"
    else:
        (words, lengths, regions), error, name = _bad_sizes_inputs(case)
        grad_scores = torch.ones(words.shape[0], regions.shape[0])
    with pytest.raises(error):  # the reference: the C++ op refuses these inputs
        torch.ops.tgfr.word_region_scores_backward(grad_scores, words, lengths, regions, 4.0, 5.0, True)
    for deterministic in (False, True):
        with pytest.raises(error, match=f"^{name} "):
            torch.ops.tgfr.word_region_scores_backward_triton(
                grad_scores, words, lengths, regions, 4.0, 5.0, True, deterministic)



# An infinite gamma gave NaN scores, a negative or zero one meaningless ones, 1e39 is inf in the kernels' float32.
@interpreted_only
@pytest.mark.parametrize("gamma", [0.0, -1.0, float("nan"), float("inf"), 1e39])
@pytest.mark.parametrize("name", ["gamma1", "gamma2"])
def test_registered_ops_check_gammas_themselves(name, gamma):
    from tgfr.ops import word_region_triton  # noqa: F401  (registers the ops)

    words, lengths, regions = _inputs(2, 2, 3, 5, 8, [3, 1], seed=19)
    words, regions = words.float(), regions.float()
    gammas = {"gamma1": 4.0, "gamma2": 5.0, name: gamma}
    with pytest.raises(ValueError):  # the reference: the C++ op refuses these gammas
        torch.ops.tgfr.word_region_scores(words, lengths, regions, *gammas.values(), True)
    with pytest.raises(ValueError, match=f"^{name} "):
        torch.ops.tgfr.word_region_scores_triton(words, lengths, regions, *gammas.values(), True)
    for deterministic in (False, True):
        with pytest.raises(ValueError, match=f"^{name} "):
            torch.ops.tgfr.word_region_scores_backward_triton(
                torch.ones(2, 2), words, lengths, regions, *gammas.values(), True, deterministic)

@interpreted_only
def test_size_checks_take_symbolic_sizes():
    # torch.compile with dynamic shapes traces the ops with symbolic sizes: the checks read shapes only.
    from torch.fx.experimental.proxy_tensor import make_fx

    from tgfr.ops import word_region_triton

    def check(words, lengths, regions):
        word_region_triton._check_op_inputs(words, lengths, regions, 4.0, 5.0)
        return lengths * regions.shape[0]

    (words, lengths, regions), _, _ = _bad_sizes_inputs("regions D")
    graph = make_fx(check, tracing_mode="symbolic")(words, lengths, regions.new_zeros(3, 5, 8))
    torch.testing.assert_close(graph(words, lengths, torch.randn(4, 2, 8)), lengths * 4)
    with pytest.raises(ValueError, match="^regions "):
        make_fx(check, tracing_mode="symbolic")(words, lengths, regions)
