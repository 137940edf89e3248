"""GPU backends (cuda, triton) of the word-region similarity against the PyTorch reference.

Every case is marked gpu (skipped without CUDA by tests/conftest.py). The reference runs in
float64 on the same dtype-rounded inputs, so the differences measure the kernels only.
"""

import pytest
import torch

from tgfr import reference

pytestmark = pytest.mark.gpu

# (T, R, D) of SPEC section 1, plus odd sizes: T past 32, R and D off every tile size, D > 256.
REFERENCE_SHAPES = {"tgfr": (22, 196, 256), "attngan-coco": (15, 289, 256), "small": (12, 49, 64)}
ODD_SHAPES = {"odd": (5, 23, 40), "long-caption": (33, 17, 24), "wide": (7, 30, 300)}
# (scores, gradients) tolerances relative to the largest magnitude; half types round the
# probabilities and gradients that enter the second products.
TOLERANCES = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (3e-2, 6e-2), torch.float16: (1e-2, 2e-2)}


def _backends() -> list[str]:
    if not torch.cuda.is_available():
        return ["cuda", "triton"]  # collected, then skipped
    import tgfr.ops

    return [backend for backend in ("cuda", "triton") if backend in tgfr.ops.available_backends()]


def _inputs(num_captions, num_images, num_words, num_regions, dim, dtype, seed=0):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    words = torch.randn(num_captions, num_words, dim, device="cuda", generator=generator).to(dtype)
    regions = torch.randn(num_images, num_regions, dim, device="cuda", generator=generator).to(dtype)
    lengths = torch.randint(1, num_words + 1, (num_captions,), device="cuda", generator=generator)
    lengths[0], lengths[-1] = 1, num_words  # both extremes of the mask
    return words, lengths, regions


def _compare(backend, words, lengths, regions, word_softmax=True, seed=1, gamma2=5.0):
    import tgfr.ops

    grad = torch.randn(words.shape[0], regions.shape[0], device="cuda", dtype=torch.float64,
                       generator=torch.Generator(device="cuda").manual_seed(seed))
    w64, v64 = words.double().requires_grad_(), regions.double().requires_grad_()
    expected = reference.word_region_scores(w64, lengths, v64, gamma2=gamma2, word_softmax=word_softmax)
    expected.backward(grad)
    w, v = words.clone().requires_grad_(), regions.clone().requires_grad_()
    scores = tgfr.ops.word_region_scores(w, lengths, v, gamma2=gamma2, word_softmax=word_softmax, backend=backend)
    scores.backward(grad.float())
    assert scores.dtype == torch.float32 and w.grad.dtype == words.dtype and v.grad.dtype == regions.dtype
    score_tolerance, grad_tolerance = TOLERANCES[words.dtype]
    for name, got, want, tolerance in (
        ("scores", scores, expected, score_tolerance),
        ("grad words", w.grad, w64.grad, grad_tolerance),
        ("grad regions", v.grad, v64.grad, grad_tolerance),
    ):
        scale = want.abs().max().item()
        torch.testing.assert_close(got.double(), want, rtol=tolerance, atol=tolerance * scale,
                                   msg=lambda message: f"{backend} {name}: {message}")
    padded = torch.arange(words.shape[1], device="cuda") >= lengths[:, None]
    assert (w.grad[padded] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", list(REFERENCE_SHAPES), ids=str)
@pytest.mark.parametrize("backend", _backends())
def test_reference_shapes(backend, shape, dtype):
    words, lengths, regions = _inputs(7, 5, *REFERENCE_SHAPES[shape], dtype)
    _compare(backend, words, lengths, regions)


@pytest.mark.parametrize("word_softmax", [True, False])
@pytest.mark.parametrize("shape", list(ODD_SHAPES), ids=str)
@pytest.mark.parametrize("backend", _backends())
def test_odd_sizes_and_no_word_softmax(backend, shape, word_softmax):
    words, lengths, regions = _inputs(9, 3, *ODD_SHAPES[shape], torch.float32, seed=2)
    _compare(backend, words, lengths, regions, word_softmax=word_softmax)


@pytest.mark.parametrize("gamma2", [1e3, 1e5])
@pytest.mark.parametrize("backend", _backends())
def test_a_large_gamma2_keeps_the_word_weights_accurate(backend, gamma2):
    """The weights exp(gamma2 cos[t] - score) rounded gamma2 cos[t] and the score apart: a relative error
    growing as gamma2 * 2^-24; the kernels take the cosines' difference first."""
    words, lengths, regions = _inputs(9, 3, 12, 49, 64, torch.float32, seed=4)
    _compare(backend, words, lengths, regions, gamma2=gamma2)


@pytest.mark.parametrize("backend", _backends())
def test_nan_stays_in_its_caption(backend):
    import tgfr.ops

    words, lengths, regions = _inputs(4, 3, 12, 49, 64, torch.bfloat16, seed=3)
    words[2, 0, 5] = float("nan")
    scores = tgfr.ops.word_region_scores(words, lengths, regions, backend=backend)
    assert scores[2].isnan().all()
    assert scores[[0, 1, 3]].isfinite().all()


@pytest.mark.parametrize("backend", _backends())
def test_memory_stays_linear_in_the_pairs(backend):
    """Peak extra memory of forward+backward at N=M=512, tgfr shape, bf16: the naive tensors would
    need N*M*T*R*4 bytes = 4.5 GB each; SPEC allows O(N*M + (N*T + M*R)*D)."""
    import tgfr.ops

    size, (num_words, num_regions, dim) = 512, REFERENCE_SHAPES["tgfr"]
    words, lengths, regions = _inputs(size, size, num_words, num_regions, dim, torch.bfloat16)
    words.requires_grad_()
    regions.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    tgfr.ops.word_region_scores(words, lengths, regions, backend=backend).sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - baseline
    # fp32 gradient buffers and their bf16 copies, contiguous input copies, a few N x M matrices.
    allowed = 8 * (words.numel() + regions.numel()) * 2 + 16 * size * size + (64 << 20)
    assert extra < allowed, f"{backend}: {extra / 2**20:.0f} MiB extra, allowed {allowed / 2**20:.0f} MiB"


@pytest.mark.parametrize("backend", _backends())
def test_torch_compile_matches_eager(backend):
    import tgfr.ops

    words, lengths, regions = _inputs(6, 5, 12, 49, 64, torch.bfloat16, seed=4)

    def loss(w, v):
        return (tgfr.ops.word_region_scores(w, lengths, v, backend=backend) * 10.0).logsumexp(1).sum()

    compiled = torch.compile(loss, fullgraph=True)
    results = []
    for function in (loss, compiled):
        w, v = words.clone().requires_grad_(), regions.clone().requires_grad_()
        value = function(w, v)
        value.backward()
        results.append((value.detach(), w.grad, v.grad))
    for eager, traced in zip(*results):
        torch.testing.assert_close(traced.float(), eager.float(), rtol=2e-2, atol=2e-2)


def test_attention_on_cuda_matches_reference():
    """With the CUDA kernels compiled, theirs; without them (an install without nvcc), the reference's:
    the op had no CUDA implementation then, and `tgfr evaluate` failed at its heatmaps."""
    import tgfr.ops

    words, lengths, regions = _inputs(6, 6, 15, 289, 256, torch.float32, seed=5)
    alpha = tgfr.ops.word_region_attention(words, lengths, regions)
    expected = reference.word_region_attention(words.double(), lengths, regions.double())
    torch.testing.assert_close(alpha.double(), expected, rtol=1e-4, atol=1e-6)


def test_autocast_runs_the_16_bit_kernels():
    """tgfr train's bf16 autocast hands the op float32 features: they must reach the bf16 kernels."""
    import tgfr.ops

    words, lengths, regions = _inputs(8, 8, 22, 196, 256, torch.float32, seed=3)
    for dtype in (torch.bfloat16, torch.float16):
        expected = tgfr.ops.word_region_scores(words.to(dtype), lengths, regions.to(dtype))
        with torch.autocast("cuda", dtype=dtype):
            got = tgfr.ops.word_region_scores(words, lengths, regions)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_auto_picks_a_gpu_kernel():
    from tgfr.ops.backends import auto_cuda_backend

    assert auto_cuda_backend(22, 196, 256, torch.bfloat16, torch.device("cuda"), backward=True) in _backends()


@pytest.mark.skipif("triton" not in _backends(), reason="Triton not installed")
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomics", "deterministic"])
def test_triton_autotuned_sizes_match_reference(deterministic):
    # N*M = 6400 pairs is inside the autotuned range (tgfr.ops.word_region_triton._TUNED_PAIRS): every
    # shipped config is compiled and timed, then the fastest runs on gradients reset to zero.
    words, lengths, regions = _inputs(80, 80, 22, 49, 64, torch.bfloat16, seed=5)
    # warn_only: the float64 reference's cuBLAS products would raise without CUBLAS_WORKSPACE_CONFIG.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        _compare("triton", words, lengths, regions)
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.skipif("cuda" not in _backends(), reason="CUDA kernels not compiled")
def test_cuda_backward_alerts_under_deterministic_algorithms():
    import tgfr.ops

    words, lengths, regions = _inputs(3, 4, 5, 9, 16, torch.float32)
    words.requires_grad_()
    try:
        torch.use_deterministic_algorithms(True)
        scores = tgfr.ops.word_region_scores(words, lengths, regions, backend="cuda")  # the forward is deterministic
        with pytest.raises(RuntimeError, match=r"backend='cuda'\)'s backward .* not deterministic"):
            scores.sum().backward()
        torch.use_deterministic_algorithms(True, warn_only=True)
        scores = tgfr.ops.word_region_scores(words, lengths, regions, backend="cuda")
        with pytest.warns(UserWarning, match="not deterministic"):
            scores.sum().backward()
        assert words.grad.isfinite().all()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.skipif("triton" not in _backends(), reason="Triton not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_deterministic_backward_is_reproducible(dtype):
    import tgfr.ops

    words, lengths, regions = _inputs(40, 36, 22, 49, 64, dtype)
    grad = torch.randn(40, 36, device="cuda", generator=torch.Generator(device="cuda").manual_seed(3))

    def gradients():
        inputs = (words.clone().requires_grad_(), regions.clone().requires_grad_())
        scores = tgfr.ops.word_region_scores(inputs[0], lengths, inputs[1], backend="auto")
        return torch.autograd.grad(scores, inputs, grad)

    try:
        torch.use_deterministic_algorithms(True)
        first, second = gradients(), gradients()
    finally:
        torch.use_deterministic_algorithms(False)
    for one, other in zip(first, second):
        assert torch.equal(one, other), "deterministic mode must give bitwise identical gradients"
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2
    for got, want in zip(first, gradients()):  # the default (atomics) backward agrees
        torch.testing.assert_close(got.float(), want.float(), rtol=tolerance, atol=tolerance * want.abs().max().item())
