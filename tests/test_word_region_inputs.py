"""Bad input to the word-region ops (SPEC section 5): clear errors naming the argument."""

import math
import re

import numpy as np
import pytest
import torch
import torch._dynamo.testing
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

import tgfr.ops  # registers torch.ops.tgfr, which tests call directly


def valid_inputs():
    return torch.randn(3, 5, 8), torch.tensor([1, 5, 3]), torch.randn(4, 6, 8)


def replace(index, value):
    inputs = list(valid_inputs())
    inputs[index] = value
    return inputs


BAD_INPUTS = {
    "mismatched D": (replace(2, torch.randn(4, 6, 7)), ValueError, "regions"),
    "length zero": (replace(1, torch.tensor([0, 5, 3])), ValueError, "lengths"),
    "length above T": (replace(1, torch.tensor([1, 6, 3])), ValueError, "lengths"),
    "lengths of wrong size": (replace(1, torch.tensor([1, 5])), ValueError, "lengths"),
    "float lengths": (replace(1, torch.tensor([1.0, 5.0, 3.0])), TypeError, "lengths"),
    "words of rank 2": (replace(0, torch.randn(3, 8)), ValueError, "words"),
    "regions of rank 4": (replace(2, torch.randn(4, 6, 8, 1)), ValueError, "regions"),
    "integer words": (replace(0, torch.ones(3, 5, 8, dtype=torch.int64)), TypeError, "words"),
    "dtype mismatch": (replace(2, torch.randn(4, 6, 8, dtype=torch.float64)), TypeError, "regions"),
    "no captions": ([torch.randn(0, 5, 8), torch.zeros(0, dtype=torch.int64), torch.randn(4, 6, 8)], ValueError, "words"),
    "no images": (replace(2, torch.randn(0, 6, 8)), ValueError, "regions"),
    "no regions": (replace(2, torch.randn(4, 0, 8)), ValueError, "regions"),
    "not a tensor": (replace(0, [[1.0]]), TypeError, "words"),
    "different devices": (replace(1, torch.tensor([1, 5, 3], device="meta")), ValueError, "device"),
    "regions on meta": (replace(2, torch.randn(4, 6, 8, device="meta")), ValueError, "regions on meta"),
    # Not "lengths must lie in [1, T=0]": that message blames the lengths for the missing words.
    "no words": (replace(0, torch.randn(3, 0, 8)), ValueError, "words must not be empty along dimension 1"),
}


# The C++ kernel re-checks lengths and sizes; the reference backend has only the front end's checks.
@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_names_the_argument(case, backend):
    inputs, error, name = BAD_INPUTS[case]
    with pytest.raises(error, match=name):
        tgfr.ops.word_region_scores(*inputs, backend=backend)


@pytest.mark.parametrize("case", ["mismatched D", "length zero", "length above T", "words of rank 2"])
def test_attention_checks_the_same_inputs(case):
    inputs, error, name = BAD_INPUTS[case]
    inputs[2] = inputs[2][:3] if inputs[2].dim() == 3 else inputs[2]
    with pytest.raises(error, match=name):
        tgfr.ops.word_region_attention(*inputs)


def test_attention_needs_one_image_per_caption():
    words, lengths, regions = valid_inputs()
    with pytest.raises(ValueError, match="regions"):
        tgfr.ops.word_region_attention(words, lengths, regions)


# 1e39 and 10**400: finite in Python, inf in the kernels' float32 (or beyond float altogether). The C++ kernel
# re-checks the gammas; the reference backend has only the front end's check.
@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("gamma", [0.0, -1.0, float("nan"), float("inf"), 1e39, 10**400])
def test_bad_gamma(gamma, backend):
    with pytest.raises(ValueError, match="gamma1"):
        tgfr.ops.word_region_scores(*valid_inputs(), gamma1=gamma, backend=backend)
    with pytest.raises(ValueError, match="gamma2"):
        tgfr.ops.word_region_scores(*valid_inputs(), gamma2=gamma, backend=backend)
    words, lengths, regions = valid_inputs()
    # The attention has no gamma2: the kernel's own check named one.
    with pytest.raises(ValueError, match="^gamma1 must be"):
        tgfr.ops.word_region_attention(words, lengths, regions[:3], gamma1=gamma)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("gamma", [True, "4.0"])
def test_gamma_must_be_a_number(gamma, backend):
    # gamma1=True would otherwise quietly be 1.0.
    for name in ("gamma1", "gamma2"):
        with pytest.raises(TypeError, match=f"^{name} must be a number, got"):
            tgfr.ops.word_region_scores(*valid_inputs(), **{name: gamma}, backend=backend)
    words, lengths, regions = valid_inputs()
    with pytest.raises(TypeError, match="^gamma1 must be a number, got"):
        tgfr.ops.word_region_attention(words, lengths, regions[:3], gamma1=gamma)


def test_a_numpy_bool_is_a_flag():
    """A flag read from numpy (a config array, np.bool_) is a bool, as it is to numpy."""
    words, lengths, regions = valid_inputs()
    for word_softmax in (False, True):
        flag = np.bool_(word_softmax)
        torch.testing.assert_close(tgfr.ops.word_region_scores(words, lengths, regions, word_softmax=flag),
                                   tgfr.ops.word_region_scores(words, lengths, regions, word_softmax=word_softmax))


def test_word_softmax_must_be_a_bool():
    # bool("False") is True: a string must not silently turn the word softmax on.
    with pytest.raises(TypeError, match="word_softmax must be a bool"):
        tgfr.ops.word_region_scores(*valid_inputs(), word_softmax="False")
    words, lengths, regions = valid_inputs()
    with pytest.raises(TypeError, match="word_softmax must be a bool"):
        tgfr.ops.word_region_attention(words, lengths, regions[:3], word_softmax=0)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        tgfr.ops.word_region_scores(*valid_inputs(), backend="tpu")


def test_kernel_checks_lengths_itself():
    # The C++ kernel re-checks what the Python front end checks (it is what runs under torch.compile).
    words, _, regions = valid_inputs()
    with pytest.raises(ValueError, match="lengths"):
        torch.ops.tgfr.word_region_scores(words, torch.tensor([1, 9, 3]), regions, 4.0, 5.0, True)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_kernel_refuses_lengths_and_gradients_of_other_dtypes(device):
    """A direct call of the op (the front end checks these first): float lengths (2.9) were cast to 2 by the CUDA
    binding, and an integer grad_scores taken as a gradient; both are refused as the CPU kernel refuses them."""
    words, lengths, regions = (tensor.to(device) for tensor in valid_inputs())
    with pytest.raises(ValueError, match="lengths must be int64, got Float"):
        torch.ops.tgfr.word_region_scores(words, lengths.float() - 0.1, regions, 4.0, 5.0, True)
    grad = torch.ones(words.shape[0], regions.shape[0], dtype=torch.int64, device=device)
    with pytest.raises(TypeError, match="grad_scores must be floating point, got Long"):
        torch.ops.tgfr.word_region_scores_backward(grad, words, lengths, regions, 4.0, 5.0, True)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("bad_lengths", [[0, 5, 3], [1, 6, 3]])
def test_compiled_graph_checks_lengths_when_it_runs(backend, bad_lengths):
    # While torch.compile traces, lengths are not data yet; the graph asserts on them instead,
    # so a bad value is an error at run time, not a silent -inf or a read past T.
    words, lengths, regions = valid_inputs()
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda w, n, v: tgfr.ops.word_region_scores(w, n, v, backend=backend), fullgraph=True, dynamic=False
    )
    torch.testing.assert_close(compiled(words, lengths, regions), tgfr.ops.word_region_scores(words, lengths, regions))
    with pytest.raises(RuntimeError, match=r"lengths must lie in \[1, T\] \(T from words.shape\[1\]\)"):
        compiled(words, torch.tensor(bad_lengths), regions)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_make_fx_real_mode_traces_and_the_graph_checks_lengths_when_it_runs(backend):
    # make_fx's default tracing_mode="real" traces real tensors, whose values it refuses to read
    # (that would bake this call's lengths into the graph): the lengths check must become an
    # assertion in the graph, as under torch.compile, not fail the trace.
    words, lengths, regions = valid_inputs()
    graph = make_fx(lambda w, n, v: tgfr.ops.word_region_scores(w, n, v, backend=backend))(words, lengths, regions)
    other_words, other_regions = torch.randn(3, 5, 8), torch.randn(4, 6, 8)  # real mode fixes the shapes
    other_lengths = torch.tensor([5, 2, 4])
    torch.testing.assert_close(graph(other_words, other_lengths, other_regions),
                               tgfr.reference.word_region_scores(other_words, other_lengths, other_regions))
    with pytest.raises(RuntimeError, match=r"lengths must lie in \[1, T\]"):
        graph(words, torch.tensor([1, 6, 3]), regions)


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shapes_are_inferred_on_meta_and_fake_tensors(backend, dtype):
    """Meta and fake tensors have no values for the lengths check to read: the front end must give the
    shape and dtype the op gives on real tensors (N, M), not fail reading them."""
    words, lengths, regions = (tensor.to(dtype) if tensor.is_floating_point() else tensor for tensor in valid_inputs())
    expected = tgfr.ops.word_region_scores(words, lengths, regions, backend=backend)
    meta = tgfr.ops.word_region_scores(words.to("meta"), lengths.to("meta"), regions.to("meta"), backend=backend)
    assert (meta.device.type, meta.shape, meta.dtype) == ("meta", expected.shape, expected.dtype)
    with FakeTensorMode() as mode:
        fake_inputs = [mode.from_tensor(tensor) for tensor in (words, lengths, regions)]
        fake = tgfr.ops.word_region_scores(*fake_inputs, backend=backend)
    assert (fake.shape, fake.dtype) == (expected.shape, expected.dtype)
    assert expected.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    # Each alone: fake tensors used outside their mode (the op's; the reference's own arange, made outside the mode, is
    # a real tensor their mode refuses), and real tensors inside an active mode, whose results are fake. Reading the
    # lengths there raised DataDependentOutputException.
    if backend == "auto":
        outside = tgfr.ops.word_region_scores(*fake_inputs, backend=backend)
        assert (outside.shape, outside.dtype) == (expected.shape, expected.dtype)
    with FakeTensorMode(allow_non_fake_inputs=True):
        inside = tgfr.ops.word_region_scores(words, lengths, regions, backend=backend)
    assert (inside.shape, inside.dtype) == (expected.shape, expected.dtype)


def test_a_dynamic_compiled_graph_takes_every_caption_length():
    # The lengths check formatted the symbolic T into its message, which fixed T: every new T compiled
    # again, until the recompile limit sent the op back to eager.
    counter = torch._dynamo.testing.CompileCounter()
    torch._dynamo.reset()
    compiled = torch.compile(lambda w, n, v: tgfr.ops.word_region_scores(w, n, v, backend="cpu"), backend=counter,
                             fullgraph=True, dynamic=True)
    generator = torch.Generator().manual_seed(0)
    for num_words in (5, 7, 9, 12):
        words = torch.randn(3, num_words, 8, generator=generator)
        lengths = torch.tensor([1, num_words, num_words // 2])
        regions = torch.randn(4, 6, 8, generator=generator)
        torch.testing.assert_close(compiled(words, lengths, regions),
                                   tgfr.ops.word_region_scores(words, lengths, regions), rtol=1e-6, atol=1e-6)
    assert counter.frame_count == 1
    with pytest.raises(RuntimeError, match=r"lengths must lie in \[1, T\]"):
        compiled(words, torch.tensor([1, 13, 2]), regions)


def test_kernel_checks_sizes_itself():
    words, lengths, regions = valid_inputs()
    with pytest.raises(ValueError, match="regions must have R >= 1"):
        torch.ops.tgfr.word_region_scores(words, lengths, regions[:, :0], 4.0, 5.0, True)
    with pytest.raises(ValueError, match="D >= 1"):
        torch.ops.tgfr.word_region_scores(words[..., :0], lengths, regions[..., :0], 4.0, 5.0, True)


# The registered ops called directly, past the front end's checks: each kernel checks for itself. They share
# one signature; the attention takes no gamma2 nor gradient.
def raw_scores(words, lengths, regions, gamma1=4.0, gamma2=5.0, grad=None):
    return torch.ops.tgfr.word_region_scores(words, lengths, regions, gamma1, gamma2, True)


def raw_scores_backward(words, lengths, regions, gamma1=4.0, gamma2=5.0, grad=None):
    grad = torch.ones(words.shape[0], regions.shape[0]) if grad is None else grad
    return torch.ops.tgfr.word_region_scores_backward(grad, words, lengths, regions, gamma1, gamma2, True)


def raw_attention(words, lengths, regions, gamma1=4.0, gamma2=None, grad=None):
    return torch.ops.tgfr.word_region_attention(words, lengths, regions, gamma1, True)


RAW_OPS = (raw_scores, raw_scores_backward, raw_attention)


EMPTY_SIDES = {
    "N=0": ((torch.randn(0, 5, 8), torch.zeros(0, dtype=torch.int64), torch.randn(4, 6, 8)),
            "words must have N >= 1 captions"),
    "M=0": ((torch.randn(3, 5, 8), torch.tensor([1, 5, 3]), torch.randn(0, 6, 8)),
            "regions must have M >= 1 images"),
    "T=0": ((torch.randn(3, 0, 8), torch.tensor([1, 1, 1]), torch.randn(4, 6, 8)),
            "words must have T >= 1 words per caption"),
}


# The attention pairs caption i with image i (M is N), so it has no case "M=0" of its own.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "case,op",
    [(case, op) for case in EMPTY_SIDES for op in (raw_scores, raw_scores_backward, raw_attention)
     if not (op is raw_attention and case == "M=0")],
)
def test_kernel_refuses_empty_sides(case, op, dtype):
    # The registered ops can be called directly: bf16 with N=0 used to raise std::bad_alloc, and
    # other empty sides a RuntimeError or nothing; the front end's ValueError is the answer.
    (words, lengths, regions), message = EMPTY_SIDES[case]
    if op is raw_attention:
        regions = regions[: words.shape[0]]
    with pytest.raises(ValueError, match=message):
        op(words.to(dtype), lengths, regions.to(dtype))


@pytest.mark.parametrize("gamma1, gamma2", [(0.0, 5.0), (-1.0, 5.0), (math.nan, 5.0), (math.inf, 5.0), (4.0, 0.0),
                                            (4.0, -1.0), (4.0, math.nan), (4.0, math.inf)])
def test_kernel_checks_gammas_itself(gamma1, gamma2):
    """An infinite gamma gave NaN scores."""
    words, lengths, regions = valid_inputs()
    for op in RAW_OPS if gamma1 != 4.0 else (raw_scores, raw_scores_backward):  # the attention takes no gamma2
        with pytest.raises(ValueError, match="gamma1 and gamma2 must be finite and positive"):
            op(words, lengths, regions[:3], gamma1, gamma2)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64])
def test_kernel_refuses_inputs_that_are_not_floating_point(dtype):
    """Integers were converted and their gradients truncated back; complex numbers cut to their real parts."""
    words, lengths, regions = valid_inputs()
    for op in RAW_OPS:
        with pytest.raises(TypeError, match=re.escape("words and regions must be float32, float64, float16 or "
                                                      "bfloat16, got")):
            op(words.to(dtype), lengths, regions[:3].to(dtype))


@pytest.mark.parametrize("lengths, index", [([0, 5, 3], 0), ([1, 0, 3], 1), ([1, 5, 0], 2), ([1, 5, 6], 2)])
def test_kernel_refuses_a_length_outside_1_to_t_in_any_place(lengths, index):
    """A caption of no word gave a score of -inf; the last caption too is checked."""
    words, _, regions = valid_inputs()
    for op in RAW_OPS:
        with pytest.raises(ValueError, match=re.escape(f"lengths must lie in [1, T=5], got lengths[{index}] = "
                                                       f"{lengths[index]}")):
            op(words, torch.tensor(lengths), regions[:3])


def test_kernel_checks_dtypes_and_the_gradients_shape_itself():
    words, lengths, regions = valid_inputs()
    for op in RAW_OPS:
        with pytest.raises(TypeError, match="words and regions must share a dtype"):
            op(words, lengths, regions[:3].double())
    for grad in (torch.ones(4, 3), torch.ones(3), torch.ones(3, 4, 1), torch.ones(3, 5)):
        with pytest.raises(ValueError, match=re.escape("grad_scores must have shape (N, M) = (3, 4)")):
            raw_scores_backward(words, lengths, regions, grad=grad)


@pytest.mark.parametrize("name", ["words", "lengths", "regions", "grad_scores"])
def test_kernels_refuse_one_input_on_another_device(name):
    """With one input on meta among CPU ones, the dispatcher runs the op's Meta kernel (its fake function), which
    returned uninitialized CPU memory as the result, with no error."""
    words, lengths, regions = valid_inputs()
    inputs = {"words": words, "lengths": lengths, "regions": regions[:3], "grad": torch.ones(3, 3)}
    key = "grad" if name == "grad_scores" else name
    inputs[key] = inputs[key].to("meta")
    for op in (raw_scores_backward,) if name == "grad_scores" else RAW_OPS:
        with pytest.raises(ValueError, match=f"all inputs must be on one device, got .*{name} on meta"):
            op(**inputs)


def test_kernel_checks_shapes_itself():
    """A wrong count of lengths, regions of another D, or (for the attention) not one image per caption: each
    kernel read past its buffers or with a wrong stride without its own check."""
    words, lengths, regions = valid_inputs()
    regions = regions[:3]  # one image per caption, for the attention
    for op in RAW_OPS:
        for bad_lengths in (lengths[:2], torch.tensor([1, 5, 3, 2])):
            with pytest.raises(ValueError, match="lengths must have N=3 entries"):
                op(words, bad_lengths, regions)
        with pytest.raises(ValueError, match="regions must have D=8, got 7"):
            op(words, lengths, regions[..., :7])
    for images in (2, 4):
        with pytest.raises(ValueError, match=f"regions must have N=3 images, got {images}"):
            raw_attention(words, lengths, torch.randn(images, 6, 8))
    # Each argument of another rank is named with the shape it came in (one message for all three named none).
    for op in RAW_OPS:
        with pytest.raises(ValueError, match=re.escape("words must be (N, T, D), got shape [3, 8]")):
            op(words[:, 0], lengths, regions)
        with pytest.raises(ValueError, match=re.escape("lengths must be (N,), got shape [1, 3]")):
            op(words, lengths[None], regions)
        with pytest.raises(ValueError, match=re.escape("regions must be (M, R, D), got shape [3, 6, 8, 1]")):
            op(words, lengths, regions[..., None])


def test_kernel_reads_strided_inputs_as_their_values():
    """Views with other strides (lengths every other entry, words and regions transposed in memory, a
    transposed gradient) give exactly what their contiguous copies give."""
    words, lengths, regions = valid_inputs()
    regions, grad = regions[:3], torch.randn(3, 3)  # one image per caption, for the attention
    strided = (words.transpose(1, 2).contiguous().transpose(1, 2), torch.stack([lengths, 5 - lengths], 1)[:, 0],
               regions.transpose(0, 1).contiguous().transpose(0, 1))
    strided_grad = grad.t().contiguous().t()
    assert not any(tensor.is_contiguous() for tensor in (*strided, strided_grad))
    for op in RAW_OPS:
        got, expected = op(*strided, grad=strided_grad), op(words, lengths, regions, grad=grad)
        for got_part, expected_part in zip(torch.utils._pytree.tree_leaves(got),
                                           torch.utils._pytree.tree_leaves(expected)):
            assert torch.equal(got_part, expected_part), op.__name__


def test_auto_sends_float64_cuda_tensors_to_the_reference():
    """Neither GPU kernel takes float64: "auto" picked Triton for them, whose error then suggested 'cpu', which
    refuses CUDA tensors. (Fake CUDA tensors: the choice reads only device, dtype and shape.)"""
    from tgfr.ops.backends import auto_cuda_backend
    from tgfr.ops.word_region import _resolve_backend

    with FakeTensorMode(allow_non_fake_inputs=True):
        words64 = torch.empty(3, 22, 300, dtype=torch.float64, device="cuda")
        words32 = torch.empty(3, 22, 300, dtype=torch.float32, device="cuda")
    regions = words32.new_empty(4, 49, 300)
    assert _resolve_backend("auto", words64, regions.double()) == "reference"
    assert _resolve_backend("auto", words32, regions) == auto_cuda_backend(22, 49, 300, torch.float32, words32.device,
                                                                           backward=False)


def test_kernel_checks_gammas_in_its_own_precision():
    """A gamma past float32's range is inf in the float32 kernel (NaN scores); the float64 kernel holds it."""
    words, lengths, regions = valid_inputs()
    for op in RAW_OPS:
        with pytest.raises(ValueError, match=re.escape("gamma1 and gamma2 must be finite and positive in the "
                                                       "kernel's float32, got 1e+39 and")):
            op(words, lengths, regions[:3], 1e39)
    assert torch.isfinite(raw_scores(words.double(), lengths, regions.double(), 1e39, 1e39)).all()


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64])
def test_kernel_refuses_a_gradient_that_is_not_floating_point(dtype):
    words, lengths, regions = valid_inputs()
    with pytest.raises(TypeError, match="grad_scores must be floating point, got"):
        raw_scores_backward(words, lengths, regions, grad=torch.ones(3, 4).to(dtype))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gamma_may_be_float32s_maximum(backend):
    """The bound is inclusive: float32's maximum is finite in the kernels' float32, and so are the scores, in
    [-gamma2, gamma2 + log T] (float32's maximum again once rounded); the next float64 above it is refused.
    Gradients at such a gamma1 are another matter (tests/test_word_region.py)."""
    largest = torch.finfo(torch.float32).max
    scores = tgfr.ops.word_region_scores(*valid_inputs(), gamma1=largest, gamma2=largest, backend=backend)
    assert scores.shape == (3, 4) and scores.isfinite().all()
    above = math.nextafter(largest, math.inf)
    for name in ("gamma1", "gamma2"):
        with pytest.raises(ValueError, match=f"^{name} must be a finite positive number of at most 3.40282e"):
            tgfr.ops.word_region_scores(*valid_inputs(), **{name: above}, backend=backend)


@pytest.mark.parametrize(("dim", "expected"), [(624, "kernel"), (640, "reference")])
def test_attention_on_cuda_takes_the_reference_where_the_kernel_block_does_not_fit(monkeypatch, dim, expected):
    """The CUDA attention kernel holds a caption's fp32 context in shared memory: past D=624 at T=22, R=196 its
    block passes an H100's 227 KB and the launch failed, ending `tgfr evaluate` before its report. (Fake CUDA
    tensors, the input checks that read values skipped: the choice reads only device, dtype and shape.)"""
    from tgfr import reference
    from tgfr.ops import backends, word_region

    monkeypatch.setattr(backends, "_CUDA_KERNELS_BUILT", True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backends, "_shared_memory_per_block", lambda index: 232_448)
    monkeypatch.setattr(word_region, "_check_inputs", lambda *inputs: inputs)
    monkeypatch.setattr(reference, "word_region_attention", lambda *args: "reference")
    with FakeTensorMode():
        words = torch.empty(3, 22, dim, device="cuda")
        got = word_region.word_region_attention(words, torch.empty(3, dtype=torch.int64, device="cuda"),
                                                torch.empty(3, 196, dim, device="cuda"))
    assert ("reference" if got == "reference" else "kernel") == expected


def test_auto_judges_the_cuda_block_by_whether_gradients_are_needed(monkeypatch):
    """At T=33, R=196, D=300 in bf16 the CUDA forward's block fits an H100 (141,824 bytes) and its backward's
    does not (253,440): "auto" takes the kernel only for inputs that will need no backward."""
    from tgfr.ops import backends
    from tgfr.ops.word_region import _resolve_backend

    monkeypatch.setattr(backends, "_CUDA_KERNELS_BUILT", True)
    monkeypatch.setattr(backends, "_TRITON_INSTALLED", False)
    monkeypatch.setattr(backends, "_shared_memory_per_block", lambda index: 232_448)
    with FakeTensorMode():
        words = torch.empty(3, 33, 300, dtype=torch.bfloat16, device="cuda")
        regions = torch.empty(4, 196, 300, dtype=torch.bfloat16, device="cuda")
        trained = regions.clone().requires_grad_()
        assert _resolve_backend("auto", words, regions) == "cuda"
        assert _resolve_backend("auto", words, trained) == "reference"
        with torch.no_grad():
            assert _resolve_backend("auto", words, trained) == "cuda"
