"""Fused CPU word-region similarity against the PyTorch reference (SPEC section 2)."""

import warnings

import pytest
import torch

import tgfr
import tgfr.ops.autocast
from derivative_transforms import DERIVATIVE_TRANSFORMS, DIRECTIONAL
from tgfr import reference

# Scaled-down reference shapes: T, R and D as in SPEC section 1, few captions and images.
SHAPES = {
    "tgfr": dict(num_captions=5, num_images=4, num_words=22, num_regions=196, dim=256),
    "attngan-coco": dict(num_captions=4, num_images=5, num_words=15, num_regions=289, dim=256),
    "small": dict(num_captions=9, num_images=7, num_words=12, num_regions=49, dim=64),
    # Odd R and D: the bf16 products pad their inner sizes to even (bf16_products.h).
    "odd": dict(num_captions=6, num_images=5, num_words=7, num_regions=9, dim=33),
}
# (values rtol, gradients rtol) against the reference run on the same (rounded) inputs in fp32/fp64.
TOLERANCES = {torch.float32: (1e-4, 1e-3), torch.float64: (1e-10, 1e-9), torch.bfloat16: (2e-3, 2e-2)}


def make_inputs(num_captions, num_images, num_words, num_regions, dim, dtype=torch.float32, scale=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    words = scale * torch.randn(num_captions, num_words, dim, generator=generator)
    regions = scale * torch.randn(num_images, num_regions, dim, generator=generator)
    lengths = torch.randint(1, num_words + 1, (num_captions,), generator=generator)
    lengths[0], lengths[-1] = 1, num_words
    return words.to(dtype), lengths, regions.to(dtype)


def assert_close_relative(actual, expected, rtol, what):
    """Max abs error relative to the largest reference magnitude (robust for values near 0)."""
    error = (actual.double() - expected.double()).abs().max().item()
    magnitude = expected.double().abs().max().item()
    assert error <= rtol * max(magnitude, 1e-12), f"{what}: max error {error:.3e} vs magnitude {magnitude:.3e}"


def fused_scores_and_gradients(words, lengths, regions, grad, **hyper):
    """Scores (N, M) of the CPU op and the gradients (of words, of regions) that `grad` (N, M) takes back."""
    fused_inputs = [words.clone().requires_grad_(), regions.clone().requires_grad_()]
    fused = tgfr.ops.word_region_scores(fused_inputs[0], lengths, fused_inputs[1], backend="cpu", **hyper)
    return (fused, *torch.autograd.grad(fused, fused_inputs, grad.to(fused.dtype)))


def fused_and_reference(words, lengths, regions, grad_seed=1, **hyper):
    """Scores and gradients of the fused op and of the reference (on fp32/fp64 copies of the inputs)."""
    reference_dtype = reference.accumulation_dtype(words.dtype)
    ref_inputs = [words.to(reference_dtype).requires_grad_(), regions.to(reference_dtype).requires_grad_()]
    expected = reference.word_region_scores(ref_inputs[0], lengths, ref_inputs[1], **hyper)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=expected.dtype)
    expected_grads = torch.autograd.grad(expected, ref_inputs, grad)
    return fused_scores_and_gradients(words, lengths, regions, grad, **hyper), (expected, *expected_grads)


# bf16 inputs take bf16 products on CPUs with bf16 matrix units (csrc/bf16_products.h) unless
# TGFR_CPU_BF16_PRODUCTS=0: both ways are checked where the CPU has them; elsewhere the default case would run
# the fp32 products a second time, and is skipped saying so.
BF16_PRODUCTS = bool(tgfr._C.cpu_bf16_products)
WITH_BF16_PRODUCTS = pytest.mark.skipif(
    not BF16_PRODUCTS, reason="this CPU takes no bf16 products (tgfr._C.cpu_bf16_products = 0): its bf16 inputs take "
                              "the fp32 products, which the bfloat16-fp32-products case checks")
DTYPES = [pytest.param(torch.float32, None, id="float32"),
          pytest.param(torch.bfloat16, None, id="bfloat16", marks=WITH_BF16_PRODUCTS),
          pytest.param(torch.bfloat16, "0", id="bfloat16-fp32-products")]


def test_bf16_inputs_take_bf16_products_exactly_where_the_cpu_has_them(monkeypatch):
    """The two settings give other bits where tgfr._C.cpu_bf16_products says the CPU takes bf16 products (the
    backward rounds its probabilities to bf16 there), the same bits elsewhere: the flag the skips above read is
    the kernel's own choice."""
    words, lengths, regions = make_inputs(**SHAPES["odd"], dtype=torch.bfloat16)

    def scores_and_gradients():
        inputs = [words.clone().requires_grad_(), regions.clone().requires_grad_()]
        scores = tgfr.ops.word_region_scores(inputs[0], lengths, inputs[1], backend="cpu")
        return (scores, *torch.autograd.grad(scores.sum(), inputs))

    default = scores_and_gradients()
    monkeypatch.setenv("TGFR_CPU_BF16_PRODUCTS", "0")
    fp32_products = scores_and_gradients()
    assert all(torch.equal(a, b) for a, b in zip(default, fp32_products)) == (not BF16_PRODUCTS)


@pytest.fixture
def products(monkeypatch):
    """Applies the test's TGFR_CPU_BF16_PRODUCTS setting (None: the default)."""
    def use(setting):
        if setting is not None:
            monkeypatch.setenv("TGFR_CPU_BF16_PRODUCTS", setting)
    return use


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("word_softmax", [True, False])
@pytest.mark.parametrize("dtype, bf16_products", DTYPES)
def test_matches_reference(shape, word_softmax, dtype, bf16_products, products):
    products(bf16_products)
    words, lengths, regions = make_inputs(**SHAPES[shape], dtype=dtype)
    fused, expected = fused_and_reference(words, lengths, regions, word_softmax=word_softmax)
    value_rtol, grad_rtol = TOLERANCES[dtype]
    assert fused[0].dtype == torch.float32 and fused[0].shape == (words.shape[0], regions.shape[0])
    assert fused[1].dtype == dtype and fused[2].dtype == dtype
    assert_close_relative(fused[0], expected[0], value_rtol, "scores")
    assert_close_relative(fused[1], expected[1], grad_rtol, "d(words)")
    assert_close_relative(fused[2], expected[2], grad_rtol, "d(regions)")


# Large gamma2: the log-sum-exp over words must not put gamma2 * cos rounding errors inside exp.
@pytest.mark.parametrize("gamma1,gamma2", [(0.5, 0.5), (4.0, 5.0), (20.0, 20.0), (0.5, 20.0), (20.0, 0.5),
                                           (4.0, 1e6), (4.0, 1e10)])
def test_gamma_range(gamma1, gamma2):
    words, lengths, regions = make_inputs(**SHAPES["small"], seed=2)
    fused, expected = fused_and_reference(words, lengths, regions, gamma1=gamma1, gamma2=gamma2)
    for actual, wanted, what in zip(fused, expected, ("scores", "d(words)", "d(regions)")):
        assert_close_relative(actual, wanted, 1e-4 if what == "scores" else 1e-3, what)


def float64_scores(words, lengths, regions, gamma1, gamma2, word_softmax):
    """SPEC section 2 written out pair by pair in float64: (N, T, D), (N,), (M, R, D) -> (N, M)."""
    rows = []
    for caption, length in zip(words.double(), lengths.tolist()):
        w = caption[:length]  # (L, D)
        a = torch.einsum("ld,mrd->mlr", w, regions.double())  # (M, L, R)
        if word_softmax:
            a = a.softmax(dim=1)
        alpha = (gamma1 * a).softmax(dim=2)
        context = torch.einsum("mlr,mrd->mld", alpha, regions.double())  # (M, L, D)
        cos = (context * w).sum(-1) / (context.norm(dim=-1) * w.norm(dim=-1)).clamp_min(1e-8)
        rows.append((gamma2 * cos).logsumexp(dim=1))
    return torch.stack(rows)


@pytest.mark.parametrize("word_softmax", [True, False])
@pytest.mark.parametrize("gamma1", [1e37, 1e38])
def test_huge_gamma1_gradients_match_a_float64_formula(gamma1, word_softmax):
    # At such gamma1 every softmax over regions is one-hot and the attention passes no gradient;
    # the backward's gamma1 * alpha * (...) needs the tails of alpha to be exactly 0. The CPU exp
    # floored them at ~1.2e-38, which gamma1 turned into gradient errors of 14% (1e37) and 140%
    # (1e38). rtol 1e-4 of the largest gradient entry; the float32 reference is within 2e-7.
    words, lengths, regions = make_inputs(num_captions=4, num_images=3, num_words=5, num_regions=7, dim=17)
    fused_inputs = [words.clone().requires_grad_(), regions.clone().requires_grad_()]
    exact_inputs = [words.double().requires_grad_(), regions.double().requires_grad_()]
    fused = tgfr.ops.word_region_scores(fused_inputs[0], lengths, fused_inputs[1], gamma1, 5.0,
                                        word_softmax=word_softmax, backend="cpu")
    exact = float64_scores(exact_inputs[0], lengths, exact_inputs[1], gamma1, 5.0, word_softmax)
    assert_close_relative(fused, exact, 1e-5, "scores")
    for actual, wanted, what in zip(torch.autograd.grad(fused.sum(), fused_inputs),
                                    torch.autograd.grad(exact.sum(), exact_inputs), ("d(words)", "d(regions)")):
        assert_close_relative(actual, wanted, 1e-4, what)


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="known: the backward multiplies by gamma1 before the word softmax's backward "
                          "(csrc/word_region_cpu.cpp, tgfr/reference.py), and that product overflows to inf, then NaN")
@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("gamma1", [1e35, torch.finfo(torch.float32).max])
def test_gradients_at_huge_gamma1_stay_finite_where_the_attention_passes_none(gamma1, backend):
    """A one-word caption: its softmax over words is 1 at every region, so alpha = 1/R for every gamma1, and the
    scores and gradients are those at gamma1 = 4. The backward forms gamma1 * alpha * (g_r - mean g), g_r about
    gamma2 * |v_r| / |context|, before the word softmax's backward takes it to 0: with two regions that nearly
    cancel (|context| 1e-6 of theirs) it overflows far below GAMMA_MAX, so no bound on gamma1 alone keeps it
    finite."""
    generator = torch.Generator().manual_seed(0)
    u, e = torch.randn(2, 8, generator=generator)
    words, lengths = torch.randn(1, 1, 8, generator=generator), torch.tensor([1])
    regions = torch.stack([u + 1e-6 * e, -u + 1e-6 * e])[None]
    results = []
    for g1 in (4.0, gamma1):
        inputs = [words.clone().requires_grad_(), regions.clone().requires_grad_()]
        scores = tgfr.ops.word_region_scores(inputs[0], lengths, inputs[1], gamma1=g1, backend=backend)
        results.append((scores, *torch.autograd.grad(scores.sum(), inputs)))
    assert results[0][2].abs().max() > 1e5  # d(regions), as large as g_r, which gamma1 multiplies
    for actual, wanted, what in zip(results[1], results[0], ("scores", "d(words)", "d(regions)")):
        assert actual.isfinite().all(), what
        torch.testing.assert_close(actual, wanted, rtol=1e-6, atol=0, msg=what)


@pytest.mark.parametrize("word_softmax", [True, False])
def test_large_magnitude_inputs_are_stable(word_softmax):
    # Products of ~1e4: any softmax without max-subtraction overflows to inf/NaN here.
    words, lengths, regions = make_inputs(**SHAPES["small"], scale=100.0, seed=3, dtype=torch.float64)
    expected = reference.word_region_scores(words, lengths, regions, word_softmax=word_softmax)
    fused = tgfr.ops.word_region_scores(words.float(), lengths, regions.float(), word_softmax=word_softmax)
    assert torch.isfinite(fused).all()
    assert_close_relative(fused, expected, 1e-4, "scores")


def test_padded_words_take_no_part():
    words, lengths, regions = make_inputs(**SHAPES["small"], seed=4)
    garbage = words.clone()
    for i, length in enumerate(lengths.tolist()):
        garbage[i, length:] = 1e6 * torch.randn_like(garbage[i, length:])
    words.requires_grad_()
    garbage.requires_grad_()
    clean_scores = tgfr.ops.word_region_scores(words, lengths, regions)
    garbage_scores = tgfr.ops.word_region_scores(garbage, lengths, regions)
    torch.testing.assert_close(clean_scores, garbage_scores, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(garbage_scores.sum(), garbage)
    for i, length in enumerate(lengths.tolist()):
        assert (grad[i, length:] == 0).all()


def test_lengths_one_and_full():
    words, _, regions = make_inputs(**SHAPES["small"], seed=5)
    num_words = words.shape[1]
    for lengths in (torch.ones(words.shape[0], dtype=torch.int64), torch.full((words.shape[0],), num_words)):
        fused, expected = fused_and_reference(words, lengths, regions)
        assert_close_relative(fused[0], expected[0], 1e-4, "scores")
        assert_close_relative(fused[1], expected[1], 1e-3, "d(words)")


@pytest.mark.parametrize("threads", [1, 3, 4])
def test_many_captions_cross_thread_groups(threads):
    """More captions and images than threads and blocks: exercises the race-free backward schedule, which
    splits the work into min(threads, N, M) groups, at thread counts besides the machine's (CI's two
    cores left a schedule past two groups untested)."""
    words, lengths, regions = make_inputs(num_captions=67, num_images=33, num_words=12, num_regions=16, dim=24, seed=6)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fused, expected = fused_and_reference(words, lengths, regions)
    finally:
        torch.set_num_threads(before)
    for actual, wanted, what in zip(fused, expected, ("scores", "d(words)", "d(regions)")):
        assert_close_relative(actual, wanted, 1e-4 if what == "scores" else 1e-3, what)


@pytest.mark.parametrize("threads", [2, 4])
def test_backward_schedule_gives_no_two_threads_one_image(threads):
    """Few images, T <= 2 and a large R * D make each task's additions into an image's gradient long: a schedule
    that gave two tasks of one step the same image group loses updates in most runs here, where the shapes of the
    other thread tests left such a race to chance. Every run is bitwise the first and as close to the reference
    as float64 allows."""
    words, lengths, regions = make_inputs(num_captions=64, num_images=4, num_words=2, num_regions=196, dim=256,
                                          dtype=torch.float64, seed=3)
    grad = torch.randn(words.shape[0], regions.shape[0], generator=torch.Generator().manual_seed(4),
                       dtype=torch.float64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs = [fused_scores_and_gradients(words, lengths, regions, grad) for _ in range(20)]
    finally:
        torch.set_num_threads(before)
    for run in runs[1:]:
        for run_part, first_part in zip(run, runs[0]):
            assert torch.equal(run_part, first_part), "the CPU backward must give bitwise identical results"
    reference_inputs = [words.clone().requires_grad_(), regions.clone().requires_grad_()]
    expected = reference.word_region_scores(reference_inputs[0], lengths, reference_inputs[1])
    for actual, wanted in zip(runs[0], (expected, *torch.autograd.grad(expected, reference_inputs, grad))):
        torch.testing.assert_close(actual, wanted, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("word_softmax", [True, False])
@pytest.mark.parametrize("scaled", ["words", "regions"])
@pytest.mark.parametrize("factor", [0.0, 1e-11], ids=["zero", "tiny"])
def test_zero_and_tiny_vectors_hit_the_cosine_clamp(factor, scaled, word_softmax):
    """A zero caption zeroes the words of the cosine, a zero image their contexts: each side's gradient through
    the clamped cosine is checked (with zero words the term of d(words) that the clamp changes vanishes). There
    |c| |w| is exactly 0, where every threshold of the clamp gives the same; a tiny caption or image puts it
    strictly between 0 and the clamp's 1e-8, where a threshold moved in the forward or the backward does not."""
    words, lengths, regions = make_inputs(**SHAPES["small"], seed=7, dtype=torch.float64)
    (words if scaled == "words" else regions)[0] *= factor
    if factor:
        # A context is a convex combination of its image's regions: its norm is at most their largest.
        largest_words, largest_regions = words.norm(dim=2).amax(dim=1), regions.norm(dim=2).amax(dim=1)
        largest_product = largest_words[0] * largest_regions.max() if scaled == "words" else \
            largest_words.max() * largest_regions[0]
        assert 0 < largest_product < 1e-9
    fused, expected = fused_and_reference(words, lengths, regions, word_softmax=word_softmax)
    for actual, wanted in zip(fused, expected):
        torch.testing.assert_close(actual, wanted, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("word_softmax", [True, False])
def test_gradcheck_float64(word_softmax):
    words, lengths, regions = make_inputs(num_captions=3, num_images=2, num_words=4, num_regions=5, dim=6, dtype=torch.float64)
    words.requires_grad_()
    regions.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda w, v: tgfr.ops.word_region_scores(w, lengths, v, 2.0, 3.0, word_softmax), (words, regions)
    )


def test_double_backward_raises_instead_of_returning_wrong_gradients():
    # The fused backward has no derivative: second-order gradients through it were silently zero.
    words, lengths, regions = make_inputs(num_captions=3, num_images=2, num_words=4, num_regions=5, dim=6, dtype=torch.float64)
    words.requires_grad_()
    regions.requires_grad_()
    scores = tgfr.ops.word_region_scores(words, lengths, regions, backend="cpu")
    grad_words, grad_regions = torch.autograd.grad(scores.sum(), (words, regions), create_graph=True)
    # First-order gradients taken with create_graph=True stay those of the reference.
    expected = torch.autograd.grad(reference.word_region_scores(words, lengths, regions).sum(), (words, regions))
    torch.testing.assert_close(grad_words, expected[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad_regions, expected[1], rtol=1e-9, atol=1e-12)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(grad_words.square().sum() + grad_regions.square().sum(), (words, regions))


@pytest.mark.parametrize("transform", DERIVATIVE_TRANSFORMS)
def test_forward_ad_and_func_transforms_raise_or_take_the_reference(transform):
    # PyTorch dropped forward tangents through the fused op without a word (zero JVPs) and refused
    # torch.func.grad with an error naming neither the op nor the reference backend.
    words, lengths, regions = make_inputs(num_captions=3, num_images=2, num_words=4, num_regions=5, dim=6,
                                          dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="word_region_scores has fused reverse-mode gradients only.*"
                                                  "use backend='reference'"):
        DERIVATIVE_TRANSFORMS[transform](lambda w: tgfr.ops.word_region_scores(w, lengths, regions, backend="cpu"),
                                         words)
    # The reference backend gives the derivative: here its directional derivative along ones, against
    # central differences.
    result = DERIVATIVE_TRANSFORMS[transform](
        lambda w: tgfr.ops.word_region_scores(w, lengths, regions, backend="reference"), words)
    if transform in DIRECTIONAL:
        step = 1e-6
        ahead, behind = (reference.word_region_scores(words + sign * step, lengths, regions) for sign in (1, -1))
        torch.testing.assert_close(result, (ahead - behind) / (2 * step), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("compiler", ["eager", "aot_eager"])
@pytest.mark.parametrize("transform", DIRECTIONAL)
def test_forward_ad_through_torch_compile_raises(compiler, transform):
    # The front end's check is skipped while Dynamo traces, and these backends run the graph on the dual
    # tensors: the op's autograd kernel dropped the tangent (a None or zero JVP) until it refused it too.
    words, lengths, regions = make_inputs(num_captions=3, num_images=2, num_words=4, num_regions=5, dim=6,
                                          dtype=torch.float64)

    def compiled(backend):
        torch._dynamo.reset()
        return torch.compile(lambda w: tgfr.ops.word_region_scores(w, lengths, regions, backend=backend),
                             backend=compiler)

    with pytest.raises(NotImplementedError, match="word_region_scores has fused reverse-mode gradients only"):
        DERIVATIVE_TRANSFORMS[transform](compiled("cpu"), words)
    # The same compiled graph carries the reference backend's tangent, as eager code does.
    torch.testing.assert_close(
        DERIVATIVE_TRANSFORMS[transform](compiled("reference"), words),
        DERIVATIVE_TRANSFORMS[transform](lambda w: reference.word_region_scores(w, lengths, regions), words),
    )


def test_a_derivative_transform_whose_gradient_bypasses_the_op_still_runs_it():
    # Hard-negative mining inside a differentiated loss: the scores weight the loss but take no gradient,
    # so the only gradient is the one of the square term, 2 w.
    words, lengths, regions = make_inputs(num_captions=3, num_images=2, num_words=4, num_regions=5, dim=6,
                                          dtype=torch.float64)

    def loss(w):
        with torch.no_grad():
            weight = tgfr.ops.word_region_scores(w, lengths, regions, backend="cpu").softmax(1)
        return (weight * tgfr.ops.word_region_scores(w.detach(), lengths, regions, backend="cpu")).sum() \
            + w.square().sum()

    torch.testing.assert_close(torch.func.grad(loss)(words), 2 * words, rtol=1e-12, atol=1e-12)


def test_vmap_alone_still_runs_the_fused_op():
    words, lengths, regions = make_inputs(num_captions=3, num_images=2, num_words=4, num_regions=5, dim=6,
                                          dtype=torch.float64)
    stacked = torch.stack([words, words.flip(0)])
    batched = torch.func.vmap(lambda w: tgfr.ops.word_region_scores(w, lengths, regions, backend="cpu"))(stacked)
    for scores, w in zip(batched, stacked):
        torch.testing.assert_close(scores, reference.word_region_scores(w, lengths, regions), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_vmap_takes_lengths_batched_with_the_words(backend):
    """Each vmapped item its own captions and lengths: the lengths check read the values with int(), which vmap
    refuses (it raised vmap's own ".item()" error); values and gradients are those of a loop over the batch."""
    items = [make_inputs(num_captions=3, num_images=2, num_words=4, num_regions=5, dim=6, dtype=torch.float64,
                         seed=seed) for seed in range(3)]
    words, lengths, regions = (torch.stack(parts).requires_grad_(parts[0].is_floating_point())
                               for parts in zip(*items))
    assert len({tuple(item_lengths.tolist()) for item_lengths in lengths}) > 1

    def scores(w, n, v):
        return tgfr.ops.word_region_scores(w, n, v, backend=backend)

    batched = torch.func.vmap(scores)(words, lengths, regions)
    looped = torch.stack([scores(*item) for item in zip(words, lengths, regions)])
    torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)
    weights = torch.randn(looped.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for got, expected in zip(torch.autograd.grad((weights * batched).sum(), (words, regions)),
                             torch.autograd.grad((weights * looped).sum(), (words, regions))):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    # A bad length in one item only is named, with the range of the whole batch's lengths.
    bad = lengths.clone()
    bad[1, 2] = 5
    with pytest.raises(ValueError, match=r"^lengths must lie in \[1, T=4\] \(T from words.shape\[1\]\), "
                                         r"got values in \[1, 5\]$"):
        torch.func.vmap(scores)(words, bad, regions)


def test_autocast_gives_the_op_its_dtype_where_its_kernels_take_it(monkeypatch):
    """Under autocast on CUDA the fused op received float32 (training casts its features to float32
    first): the kernels' unmeasured float32 form, on CUDA cores, instead of the bf16 one. The rule is
    per device (CUDA: bf16, fp16); here the CPU stands in for CUDA."""
    words, lengths, regions = make_inputs(num_captions=4, num_images=3, num_words=6, num_regions=9, dim=16)
    words.requires_grad_()
    in_fp32 = tgfr.ops.word_region_scores(words, lengths, regions, backend="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # on CPU: left in float32
        assert torch.equal(tgfr.ops.word_region_scores(words, lengths, regions, backend="cpu"), in_fp32)
    monkeypatch.setitem(tgfr.ops.autocast._KERNEL_DTYPES, "cpu", (torch.bfloat16,))
    in_bf16 = tgfr.ops.word_region_scores(words.bfloat16(), lengths, regions.bfloat16(), backend="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = tgfr.ops.word_region_scores(words, lengths, regions, backend="cpu")
        mixed = tgfr.ops.word_region_scores(words.bfloat16(), lengths, regions, backend="cpu")  # as a matmul takes
        from_fp16 = tgfr.ops.word_region_scores(words.detach().half(), lengths, regions, backend="cpu")
        with pytest.raises(TypeError, match="regions must have the dtype of words .*float64.*, got torch.float32"):
            tgfr.ops.word_region_scores(words.double(), lengths, regions, backend="cpu")  # the caller's dtypes
    assert torch.equal(autocast, in_bf16) and torch.equal(mixed, in_bf16)
    # float16 is taken in bf16 too, as a matmul takes it.
    expected_from_fp16 = tgfr.ops.word_region_scores(words.detach().half().bfloat16(), lengths, regions.bfloat16(),
                                                     backend="cpu")
    assert torch.equal(from_fp16, expected_from_fp16)
    (gradient,) = torch.autograd.grad(autocast.sum(), words)
    assert gradient.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.float16):  # a dtype the device's kernels do not take
        assert torch.equal(tgfr.ops.word_region_scores(words, lengths, regions, backend="cpu"), in_fp32)


def test_reference_backend_is_float32_under_cpu_autocast(monkeypatch):
    """The reference is the float32 baseline, and the backend for double backward and forward AD: under CPU
    autocast its products ran in bf16, its scores about 1e-2 off the float32 ones and backend "cpu"'s. Nor does
    it take its inputs in the autocast dtype as the kernels do on CUDA, for which the CPU stands in here."""
    words, lengths, regions = make_inputs(num_captions=4, num_images=3, num_words=6, num_regions=9, dim=16)
    words.requires_grad_()
    expected = tgfr.ops.word_region_scores(words, lengths, regions, backend="reference")
    monkeypatch.setitem(tgfr.ops.autocast._KERNEL_DTYPES, "cpu", (torch.bfloat16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = tgfr.ops.word_region_scores(words, lengths, regions, backend="reference")
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert torch.equal(torch.autograd.grad(got.sum(), words)[0], torch.autograd.grad(expected.sum(), words)[0])


def test_float32_paths_take_a_mix_of_float32_and_bf16_under_autocast_as_the_kernels_do(monkeypatch):
    """Under autocast on CUDA (the CPU stands in) the fused backends take bf16 words with float32 regions, as a
    matmul does; the reference, which every first-order error sends users to, and word_region_attention refused
    the mix with a TypeError. They take it in float32; a float64 among the inputs is still refused."""
    words, lengths, regions = make_inputs(num_captions=4, num_images=3, num_words=6, num_regions=9, dim=16)
    words = words.bfloat16().requires_grad_()
    promoted = words.detach().float().requires_grad_()
    expected = tgfr.ops.word_region_scores(promoted, lengths, regions, backend="reference")
    expected_attention = tgfr.ops.word_region_attention(promoted.detach()[:3], lengths[:3], regions)
    monkeypatch.setitem(tgfr.ops.autocast._KERNEL_DTYPES, "cpu", (torch.bfloat16,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = tgfr.ops.word_region_scores(words, lengths, regions, backend="reference")
        attention = tgfr.ops.word_region_attention(words.detach()[:3], lengths[:3], regions)
        with pytest.raises(TypeError, match=r"^regions must have the dtype of words \(torch.bfloat16\), got "
                                            r"torch.float64$"):
            tgfr.ops.word_region_scores(words, lengths, regions.double(), backend="reference")
    assert torch.equal(got, expected) and torch.equal(attention, expected_attention)
    (gradient,) = torch.autograd.grad(got.sum(), words)
    assert gradient.dtype == torch.bfloat16
    assert torch.equal(gradient, torch.autograd.grad(expected.sum(), promoted)[0].bfloat16())
    with pytest.raises(TypeError, match="regions must have the dtype of words"):  # no autocast: the caller's dtypes
        tgfr.ops.word_region_scores(words, lengths, regions, backend="reference")


# bfloat16: the fake kernels must give the float32 the CPU kernels return for 16-bit inputs; with the input's dtype
# a compiled bf16 graph read the float32 output as bf16 (values of 1e37), and float32 tests cannot tell.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    words, lengths, regions = make_inputs(num_captions=3, num_images=4, num_words=5, num_regions=6, dim=8, dtype=dtype)
    torch.library.opcheck(
        torch.ops.tgfr.word_region_scores.default,
        (words.requires_grad_(), lengths, regions.requires_grad_(), 4.0, 5.0, True),
    )
    # Transposed inputs: the backward's fake kernel must give the kernel's contiguous strides.
    words_t = words.detach().transpose(1, 2).contiguous().transpose(1, 2)
    regions_t = regions.detach().transpose(0, 1).contiguous().transpose(0, 1)
    torch.library.opcheck(torch.ops.tgfr.word_region_scores_backward.default,
                          (torch.randn(3, 4), words_t, lengths, regions_t, 4.0, 5.0, True))
    assert torch.ops.tgfr.word_region_attention.default(words.detach(), lengths, regions[:3].detach(), 4.0,
                                                        True).dtype == torch.float32
    torch.library.opcheck(torch.ops.tgfr.word_region_attention.default, (words.detach(), lengths, regions[:3].detach(), 4.0, True))


def test_torch_compile_fullgraph():
    words, lengths, regions = make_inputs(**SHAPES["small"], seed=8)

    def loss(w, v):
        return tgfr.ops.word_region_scores(w, lengths, v).logsumexp(dim=1).mean()

    compiled = torch.compile(loss, fullgraph=True)
    eager_w, compiled_w = words.clone().requires_grad_(), words.clone().requires_grad_()
    eager = loss(eager_w, regions)
    result = compiled(compiled_w, regions)
    torch.testing.assert_close(result, eager)
    torch.testing.assert_close(torch.autograd.grad(result, compiled_w)[0], torch.autograd.grad(eager, eager_w)[0])


def test_non_contiguous_inputs():
    words, lengths, regions = make_inputs(**SHAPES["small"], seed=9)
    words_t = words.transpose(0, 1).contiguous().transpose(0, 1)
    regions_t = regions.transpose(1, 2).contiguous().transpose(1, 2)
    assert not words_t.is_contiguous() and not regions_t.is_contiguous()
    torch.testing.assert_close(
        tgfr.ops.word_region_scores(words_t, lengths, regions_t), tgfr.ops.word_region_scores(words, lengths, regions)
    )


@pytest.mark.parametrize("dtype, bf16_products", DTYPES)
def test_nan_propagates_to_its_row_and_column(dtype, bf16_products, products):
    products(bf16_products)
    words, lengths, regions = make_inputs(**SHAPES["small"], seed=10, dtype=dtype)
    words[2, 0, 0] = float("nan")
    regions[3, 5, 1] = float("nan")
    scores = tgfr.ops.word_region_scores(words, lengths, regions)
    assert scores[2].isnan().all() and scores[:, 3].isnan().all()
    others = torch.ones_like(scores, dtype=torch.bool)
    others[2], others[:, 3] = False, False
    assert torch.isfinite(scores[others]).all()


@pytest.mark.parametrize("word_softmax", [True, False])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 3e-5), (torch.float64, 1e-12)])
def test_attention_matches_reference(word_softmax, dtype, atol):
    """Against the float64 reference. float32's atol is about 3x the worst error seen over 300 seeds:
    the softmax over regions scales the cosines' rounding by gamma1."""
    words, lengths, _ = make_inputs(**SHAPES["small"], dtype=dtype, seed=11)
    regions = torch.randn(words.shape[0], 49, words.shape[2], generator=torch.Generator().manual_seed(12)).to(dtype)
    attention = tgfr.ops.word_region_attention(words, lengths, regions, word_softmax=word_softmax)
    exact_inputs = words.double(), lengths, regions.double()
    expected = reference.word_region_attention(*exact_inputs, word_softmax=word_softmax)
    torch.testing.assert_close(attention.double(), expected, rtol=0, atol=atol)
    # The diagonal of the all-pairs reference, independently.
    all_pairs = reference.word_region_attention_all_pairs(*exact_inputs, word_softmax=word_softmax)
    diagonal = all_pairs[torch.arange(words.shape[0]), torch.arange(words.shape[0])]
    valid = torch.arange(words.shape[1]) < lengths[:, None]
    torch.testing.assert_close(attention.double()[valid], diagonal[valid], rtol=0, atol=atol)
    assert (attention[~valid] == 0).all()


@pytest.mark.parametrize("bf16_products", [pytest.param(None, marks=WITH_BF16_PRODUCTS), "0"])
def test_bf16_attention_matches_reference(bf16_products, products):
    """alpha needs only the first product, exact in either way for bf16 inputs (fp32 accumulation)."""
    products(bf16_products)
    words, lengths, _ = make_inputs(**SHAPES["odd"], dtype=torch.bfloat16, seed=12)
    regions = torch.randn(words.shape[0], 9, words.shape[2], generator=torch.Generator().manual_seed(13)).bfloat16()
    attention = tgfr.ops.word_region_attention(words, lengths, regions)
    expected = reference.word_region_attention(words.float(), lengths, regions.float())
    torch.testing.assert_close(attention, expected, rtol=1e-5, atol=1e-6)


def test_available_backends():
    backends = tgfr.ops.available_backends()
    assert {"reference", "cpu"} <= set(backends) <= {"reference", "cpu", "triton", "cuda"}


H100_SHARED_MEMORY = 232_448  # opt-in bytes per block (227 KB); an A100's is 166,912
A100_SHARED_MEMORY = 166_912


@pytest.mark.parametrize(
    ("triton", "cuda", "deterministic", "shape", "dtype", "backward", "limit", "expected"),
    [
        (True, True, False, (22, 196, 256), torch.bfloat16, True, H100_SHARED_MEMORY, "triton"),  # the tgfr shape:
        # Triton measured 10x faster
        (True, True, False, (22, 196, 300), torch.bfloat16, True, H100_SHARED_MEMORY, "triton"),  # 32 x 512 tile,
        # the largest the GPU tests ran
        (True, True, False, (32, 196, 512), torch.bfloat16, True, H100_SHARED_MEMORY, "triton"),  # powers of two
        (True, True, False, (33, 24, 24), torch.bfloat16, True, H100_SHARED_MEMORY, "triton"),  # 64 x 32
        # Past Triton's register tile: CUDA where its block fits (bytes from cuda_shared_memory_bytes).
        (True, True, False, (33, 49, 300), torch.bfloat16, True, H100_SHARED_MEMORY, "cuda"),  # 224,512
        (True, True, False, (33, 49, 300), torch.bfloat16, True, A100_SHARED_MEMORY, "triton"),
        (True, True, False, (33, 49, 300), torch.bfloat16, False, A100_SHARED_MEMORY, "cuda"),  # 112,896
        (True, True, False, (33, 196, 300), torch.bfloat16, True, H100_SHARED_MEMORY, "triton"),  # 253,440
        (True, True, False, (33, 196, 300), torch.bfloat16, False, H100_SHARED_MEMORY, "cuda"),  # 141,824
        (True, True, False, (5, 49, 768), torch.bfloat16, True, H100_SHARED_MEMORY, "cuda"),  # 228,480
        (True, True, False, (5, 49, 768), torch.float32, True, H100_SHARED_MEMORY, "triton"),  # 303,232
        (True, True, False, (22, 196, 768), torch.bfloat16, False, H100_SHARED_MEMORY, "cuda"),  # 202,112
        (True, True, False, (22, 196, 768), torch.float32, False, H100_SHARED_MEMORY, "triton"),  # 276,864
        (False, True, False, (33, 196, 300), torch.bfloat16, True, H100_SHARED_MEMORY, "reference"),
        (True, False, False, (5, 49, 768), torch.bfloat16, True, H100_SHARED_MEMORY, "triton"),  # nothing else built
        (False, True, False, (22, 196, 256), torch.bfloat16, True, H100_SHARED_MEMORY, "cuda"),
        (False, False, False, (22, 196, 256), torch.bfloat16, True, H100_SHARED_MEMORY, "reference"),
        (True, True, True, (33, 49, 300), torch.bfloat16, True, H100_SHARED_MEMORY, "triton"),  # only Triton has a
        # deterministic backward
        (False, True, True, (22, 196, 256), torch.bfloat16, True, H100_SHARED_MEMORY, "cuda"),  # whose backward
        # then raises
    ],
)
def test_auto_rule_for_cuda_tensors(monkeypatch, triton, cuda, deterministic, shape, dtype, backward, limit,
                                    expected):
    from tgfr.ops import backends

    monkeypatch.setattr(backends, "_TRITON_INSTALLED", triton)
    monkeypatch.setattr(backends, "_CUDA_KERNELS_BUILT", cuda)
    monkeypatch.setattr(backends, "_shared_memory_per_block", lambda index: limit)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: deterministic)
    assert backends.auto_cuda_backend(*shape, dtype, torch.device("cuda", 0), backward) == expected


def test_cuda_block_bytes_grow_as_the_kernel_layout_does():
    """The mirror of kernels/word_region.cu's layout (checked against the compiled function by
    tests/test_kernels_build.py where nvcc is): the figures backends.py's doc gives, and each buffer's rounding."""
    from tgfr.ops.backends import cuda_shared_memory_bytes

    assert cuda_shared_memory_bytes(22, 196, 768, torch.bfloat16, backward=False) == 202_112
    assert cuda_shared_memory_bytes(22, 196, 768, torch.bfloat16, backward=True) == 401_792
    assert cuda_shared_memory_bytes(22, 196, 768, torch.float16, True) == cuda_shared_memory_bytes(
        22, 196, 768, torch.bfloat16, True)
    # T, R and D pad to 16: sizes within one padding step need the same block.
    assert cuda_shared_memory_bytes(17, 1, 1, torch.float32, True) == cuda_shared_memory_bytes(32, 16, 16,
                                                                                               torch.float32, True)


def test_an_older_torch_without_the_opt_in_limit_takes_the_default_one(monkeypatch):
    """torch 2.4 to 2.6 (which pyproject.toml admits) report no shared memory limits (both came in 2.7): reading
    one raised AttributeError at every CUDA word_region_attention call. CUDA's default limit per block (48 KB)
    stands in."""
    from tgfr.ops import backends

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: type("Props", (), {"name": "old"}))
    assert backends._shared_memory_per_block(0) == 49_152
    monkeypatch.setattr(backends, "_CUDA_KERNELS_BUILT", True)
    monkeypatch.setattr(backends, "_TRITON_INSTALLED", False)
    assert backends.auto_cuda_backend(33, 196, 300, torch.bfloat16, torch.device("cuda", 0), False) == "reference"
    assert backends.auto_cuda_backend(33, 1, 16, torch.bfloat16, torch.device("cuda", 0), False) == "cuda"


def test_auto_rule_traces_into_one_graph(monkeypatch):
    """The device's shared memory is read once at compile time (a constant to torch.compile), so a compiled
    caller of the rule needs no graph break."""
    from tgfr.ops import backends

    monkeypatch.setattr(backends, "_TRITON_INSTALLED", False)
    monkeypatch.setattr(backends, "_CUDA_KERNELS_BUILT", True)
    calls = []
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index: calls.append(index) or type("Props", (), {"shared_memory_per_block_optin": 0}))

    @torch.compile(fullgraph=True, backend="eager")
    def scaled(x):
        chosen = backends.auto_cuda_backend(22, 196, 256, torch.bfloat16, torch.device("cuda", 0), True)
        return x * (2 if chosen == "reference" else 3)

    torch.testing.assert_close(scaled(torch.ones(2)), torch.full((2,), 2.0))
    assert calls == [0]


def test_tile_padding_rounds_up_to_a_power_of_two():
    from tgfr.ops.backends import _next_power_of_2

    assert [_next_power_of_2(value) for value in (1, 2, 16, 17, 300, 512, 513)] == [1, 2, 16, 32, 512, 512, 1024]


def test_reference_backend_is_the_reference():
    words, lengths, regions = make_inputs(**SHAPES["small"], seed=12)
    torch.testing.assert_close(
        tgfr.ops.word_region_scores(words, lengths, regions, backend="reference"),
        reference.word_region_scores(words, lengths, regions),
        rtol=0,
        atol=0,
    )


def test_cpu_backward_is_deterministic_and_allowed_in_deterministic_mode():
    words, lengths, regions = make_inputs(**SHAPES["small"])
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [fused_and_reference(words, lengths, regions)[0] for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(previous)
    for first, second in zip(*runs):
        assert torch.equal(first, second), "the CPU kernel must give bitwise identical results"


def test_cuda_backward_alert_follows_use_deterministic_algorithms():
    """The CUDA kernel's backward (fp32 atomics) calls the alert, which must be silent by default,
    raise under torch.use_deterministic_algorithms(True) and warn once with warn_only=True, as
    PyTorch's own nondeterministic kernels do (the GPU tests run it through the kernel)."""
    from tgfr.ops.determinism import alert_nondeterministic_backward

    op = "word_region_scores(backend='cuda')"
    message = r"backend='cuda'\)'s backward adds gradients with floating-point atomics and is not deterministic"
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            alert_nondeterministic_backward(op)
        torch.use_deterministic_algorithms(True)
        with pytest.raises(RuntimeError, match=message):
            alert_nondeterministic_backward(op)
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match=message) as seen:
            alert_nondeterministic_backward(op)
        assert len(seen) == 1
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_padded_words_take_no_part_even_when_nan(backend):
    # SPEC section 2: padded words take no part in anything, gradients included (0 * NaN is NaN).
    words, lengths, regions = make_inputs(**SHAPES["small"], seed=13)
    padded = torch.arange(words.shape[1]) >= lengths[:, None]
    assert padded.any()
    results = []
    for fill in (0.0, float("nan")):
        w = words.masked_fill(padded[..., None], fill).requires_grad_()
        v = regions.clone().requires_grad_()
        scores = tgfr.ops.word_region_scores(w, lengths, v, backend=backend)
        scores.sum().backward()
        results.append((scores, w.grad, v.grad))
    for clean, poisoned in zip(*results):
        assert torch.isfinite(poisoned).all()
        torch.testing.assert_close(poisoned, clean, rtol=0, atol=0)


@pytest.mark.parametrize("transform", DERIVATIVE_TRANSFORMS)
def test_derivative_transforms_on_regions_raise_too(transform):
    """A review's mutation: the refusal checked words alone, and a transform on regions passed with every test
    green (aot_eager then gave a None tangent)."""
    words, lengths, regions = make_inputs(num_captions=3, num_images=2, num_words=4, num_regions=5, dim=6,
                                          dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="word_region_scores has fused reverse-mode gradients only"):
        DERIVATIVE_TRANSFORMS[transform](lambda r: tgfr.ops.word_region_scores(words, lengths, r, backend="cpu"),
                                         regions)
    torch._dynamo.reset()
    compiled = torch.compile(lambda r: tgfr.ops.word_region_scores(words, lengths, r, backend="cpu"),
                             backend="aot_eager")
    if transform in DIRECTIONAL:
        with pytest.raises(NotImplementedError, match="word_region_scores has fused reverse-mode gradients only"):
            DERIVATIVE_TRANSFORMS[transform](compiled, regions)


def test_attention_is_not_differentiable():
    """word_region_attention has no backward: its output must not require grad (with a grad_fn, backward left
    words.grad None, with a warning only)."""
    words, lengths, regions = make_inputs(num_captions=3, num_images=3, num_words=4, num_regions=5, dim=6)
    assert not tgfr.ops.word_region_attention(words.requires_grad_(), lengths, regions.requires_grad_()).requires_grad


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_int32_lengths_are_taken_as_int64(backend):
    words, lengths, regions = make_inputs(num_captions=3, num_images=3, num_words=4, num_regions=5, dim=6,
                                          dtype=torch.float64)
    torch.testing.assert_close(tgfr.ops.word_region_scores(words, lengths.int(), regions, backend=backend),
                               reference.word_region_scores(words, lengths, regions))
    torch.testing.assert_close(tgfr.ops.word_region_attention(words, lengths.int(), regions[:3]),
                               tgfr.ops.word_region_attention(words, lengths, regions[:3]))


def test_empty_feature_dimension_is_named():
    words, lengths, regions = make_inputs(num_captions=3, num_images=2, num_words=4, num_regions=5, dim=6)
    for backend in ("cpu", "reference"):
        with pytest.raises(ValueError, match=r"words must not be empty along dimension 2"):
            tgfr.ops.word_region_scores(words[..., :0], lengths, regions[..., :0], backend=backend)


def test_autocast_off_leaves_float32_inputs_alone(monkeypatch):
    """A review's mutation: autocast_inputs cast without checking that autocast is on, and every float32 call on
    CUDA ran in float16 outside any autocast region, with every test green. The CPU stands in for CUDA here (in
    bf16, the mutant's scores were 3e-3 off)."""
    words, lengths, regions = make_inputs(num_captions=4, num_images=3, num_words=6, num_regions=9, dim=16)
    in_fp32 = tgfr.ops.word_region_scores(words, lengths, regions, backend="cpu")
    monkeypatch.setitem(tgfr.ops.autocast._KERNEL_DTYPES, "cpu", (torch.bfloat16,))
    assert not torch.is_autocast_enabled("cpu")
    assert torch.equal(tgfr.ops.word_region_scores(words, lengths, regions, backend="cpu"), in_fp32)


@pytest.mark.parametrize("overflowing", ["caption", "image"])
def test_overflowing_norms_give_zero_gradients_on_every_backend(overflowing):
    """The docstring's promise for norms past float32's range: scores of log(lengths[i]) with a zero gradient.
    The reference's gradient was NaN for every caption and image (its product of norms multiplied a zero
    gradient by inf), and the reference is where double backward and forward AD are sent."""
    words, lengths, regions = make_inputs(num_captions=3, num_images=2, num_words=4, num_regions=6, dim=5)
    if overflowing == "caption":
        words[1] *= 1e20
    else:
        regions[0] *= 1e20
    weights = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))
    results = {}
    for backend in ("cpu", "reference"):
        inputs = [words.clone().requires_grad_(), regions.clone().requires_grad_()]
        scores = tgfr.ops.word_region_scores(inputs[0], lengths, inputs[1], backend=backend)
        overflowed = scores[1] if overflowing == "caption" else scores[:, 0]
        expected = lengths[1].log().expand(2) if overflowing == "caption" else lengths.log()
        torch.testing.assert_close(overflowed, expected.float(), rtol=1e-6, atol=1e-6, msg=backend)
        for gradient in torch.autograd.grad(overflowed.sum(), inputs, retain_graph=True):
            assert torch.equal(gradient, torch.zeros_like(gradient)), backend
        gradients = torch.autograd.grad((weights * scores).sum(), inputs)
        assert all(gradient.isfinite().all() for gradient in gradients), backend
        results[backend] = (scores, *gradients)
    for got, expected in zip(results["reference"], results["cpu"]):
        assert_close_relative(got, expected, 1e-4, overflowing)
