"""Fused word-region similarity: public front end, fake (meta) kernels and autograd.

The C++ schemas are in csrc/ops.cpp; the CPU kernel in csrc/word_region_cpu.cpp; the CUDA
kernel in kernels/ behind csrc/cuda/; the Triton kernels in tgfr/ops/word_region_triton.py.
"""

import os

import torch

from tgfr import reference
from tgfr.ops import _library  # noqa: F401  (loads tgfr._C, which defines torch.ops.tgfr.*)
from tgfr.ops.autocast import autocast_inputs, promoted_under_autocast, without_autocast
from tgfr.ops.determinism import alert_nondeterministic_backward
from tgfr.ops.first_order import (
    refuse_double_backward,
    refuse_forward_ad_and_transforms,
    register_reverse_mode_autograd,
)
from tgfr.validation import (
    check_flag,
    check_nonempty,
    check_positive,
    check_same_device,
    check_size,
    check_tensor,
    check_word_lengths,
)

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")
# The kernels compute in float32: a larger gamma would be inf there. The bound keeps the scores finite, not the
# gradients: the backward forms gamma1 times a gradient that grows as a context shortens against its regions, and
# no bound on gamma1 alone keeps that product finite (tests/test_word_region.py, the huge-gamma1 xfail).
GAMMA_MAX = torch.finfo(torch.float32).max


def check_input_shapes(words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor) -> None:
    """Checks everything but the values of lengths: words (N, T, D) and regions (M, R, D) of one
    float dtype, no size 0, lengths (N,) int64/int32, all on one device. Metadata only, so it holds
    for fake tensors and while torch.compile traces; the registered Triton ops check with it too."""
    check_tensor("words", words, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("regions", regions, ndim=3, dtypes=FLOAT_DTYPES)
    check_tensor("lengths", lengths, ndim=1, dtypes=(torch.int64, torch.int32))
    check_same_device(words=words, lengths=lengths, regions=regions)
    if regions.dtype != words.dtype:
        raise TypeError(f"regions must have the dtype of words ({words.dtype}), got {regions.dtype}")
    check_nonempty("words", words, 0)
    check_nonempty("words", words, 1)
    check_nonempty("words", words, 2)
    check_nonempty("regions", regions, 0)
    check_nonempty("regions", regions, 1)
    check_size("regions", regions, 2, words.shape[2], "the feature size D of words")
    check_size("lengths", lengths, 0, words.shape[0], "the number of captions N")


def _check_inputs(
    words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_input_shapes(words, lengths, regions)
    check_word_lengths(lengths, words.shape[0], words.shape[1])
    return words.contiguous(), lengths.to(torch.int64).contiguous(), regions.contiguous()


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _resolve_backend(backend: str, words: torch.Tensor, regions: torch.Tensor) -> str:
    from tgfr.ops.backends import available_backends, auto_cuda_backend

    device = words.device
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type != "cuda":
            return "cpu"
        # The GPU kernels compute in fp32 and take no float64 (gradcheck): the reference keeps its precision.
        if words.dtype == torch.float64:
            return "reference"
        backward = torch.is_grad_enabled() and (words.requires_grad or regions.requires_grad)
        return auto_cuda_backend(words.shape[1], regions.shape[1], words.shape[2], words.dtype, device, backward)
    if backend not in available_backends():
        raise ValueError(f"backend {backend!r} is not available here; available: {available_backends()}")
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend 'cpu' needs CPU tensors, got tensors on {device}")
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"backend 'cuda' needs CUDA tensors, got tensors on {device}")
    if backend == "triton" and device.type != "cuda" and not _triton_interpreted():
        raise ValueError(f"backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), got {device}")
    return backend


def word_region_scores(
    words: torch.Tensor,
    lengths: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    word_softmax: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Word-region similarity of every caption with every image, fused (SPEC section 2).

    Args:
        words: (N, T, D) word features, float32/bfloat16/float16 (float64 on CPU).
        lengths: (N,) int64 number of valid words of each caption, in [1, T].
        regions: (M, R, D) region features, same dtype and device as words.
        gamma1: sharpness of the softmax over regions. The Triton backward's word gradients lose precision
            in proportion to it (it subtracts a sum formed in another order: an error of about float32's
            epsilon times gamma1, relative); the CPU kernel's do not.
        gamma2: sharpness of the log-sum-exp over words.
        word_softmax: normalize the raw products over the caption's words first (AttnGAN).
        backend: "auto", "reference", "cpu", "triton" or "cuda".

    Returns:
        (N, M) float32 scores (float64 for float64 inputs); differentiable in words and regions.
        No N*M*T*R or N*M*T*D tensor is allocated: the backward recomputes per pair.

    Under torch.autocast on CUDA, words and regions are taken in the autocast dtype (bf16 or fp16),
    as a matmul's inputs are (tgfr/ops/autocast.py); gradients return in their own dtypes. Backend
    "reference", the float32 baseline, runs with autocast off on every device, and there takes a mix of
    float32 and 16-bit inputs in float32.

    Norms are float32 sums of squares (float64 for float64 inputs) on every backend, the
    reference's included: below a norm of about 1e-19 a word's or a context's square underflows,
    the 1e-8 clamp of SPEC's cosine takes over from the true product of norms, and a cosine can pass
    1; above about 1.8e19 it overflows to inf and every cosine of that word is 0 (it adds exp(0) to each score
    of its caption), without an error; where every word of a caption, or the regions of an image, overflow,
    those scores are log(lengths[i]) with a zero gradient. Words times s and regions over s give the same
    products and scores: an s that brings both norms near 1 avoids both. Through the clamp, an all-zero
    caption's or image's gradient is about 1e8 times the other side's features: in float16 it overflows to
    inf on every backend, and the GPU kernels, which round it to float16 before their second products, also
    give NaN word gradients to the captions paired with an all-zero image (Triton's checked under its
    interpreter; CUDA's read from its code, not run).
    """
    words, regions = (autocast_inputs if backend != "reference" else promoted_under_autocast)(words, regions)
    words, lengths, regions = _check_inputs(words, lengths, regions)
    gamma1, gamma2 = check_positive("gamma1", gamma1, GAMMA_MAX), check_positive("gamma2", gamma2, GAMMA_MAX)
    word_softmax = check_flag("word_softmax", word_softmax)
    backend = _resolve_backend(backend, words, regions)
    if backend == "reference":
        # The float32 baseline under CPU autocast too, whose bf16 products would round what it computes.
        with without_autocast(words.device.type):
            return reference.word_region_scores(words, lengths, regions, gamma1, gamma2, word_softmax)
    refuse_forward_ad_and_transforms("word_region_scores", words, regions)
    if backend == "triton":
        from tgfr.ops import word_region_triton

        return word_region_triton.word_region_scores(words, lengths, regions, gamma1, gamma2, word_softmax)
    return torch.ops.tgfr.word_region_scores(words, lengths, regions, gamma1, gamma2, word_softmax)


def word_region_attention(
    words: torch.Tensor,
    lengths: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float = 4.0,
    word_softmax: bool = True,
) -> torch.Tensor:
    """Attention of each caption's words over the regions of its own image (pairs (i, i)).

    words (N, T, D), lengths (N,), regions (N, R, D) -> alpha (N, T, R) float32 (float64 for
    float64 inputs), each valid row summing to 1 over regions, zeros at padded words. For
    pictures; not differentiable. Under autocast on CUDA a mix of float32 and 16-bit inputs is taken in float32.
    """
    words, regions = promoted_under_autocast(words, regions)
    words, lengths, regions = _check_inputs(words, lengths, regions)
    check_size("regions", regions, 0, words.shape[0], "one image per caption: N of words")
    gamma1, word_softmax = check_positive("gamma1", gamma1, GAMMA_MAX), check_flag("word_softmax", word_softmax)
    from tgfr.ops.backends import available_backends, cuda_kernel_fits

    words, regions = words.detach(), regions.detach()
    if words.is_cuda and ("cuda" not in available_backends() or words.dtype == torch.float64 or not cuda_kernel_fits(
            words.shape[1], regions.shape[1], words.shape[2], words.dtype, words.device, backward=False)):
        # Only the compiled CUDA kernels implement the op on CUDA (an install without nvcc has none), not in
        # float64, and for blocks that fit the device's shared memory; the reference's memory is O(N*T*R) for
        # these pairs, as the op's.
        with torch.no_grad():
            return reference.word_region_attention(words, lengths, regions, gamma1, word_softmax)
    return torch.ops.tgfr.word_region_attention(words, lengths, regions, gamma1, word_softmax)


# The fake kernels are the ops' Meta kernels too: a direct call with one input on meta among CPU ones runs them,
# and without the device check they returned uninitialized CPU memory as the result.
@torch.library.register_fake("tgfr::word_region_scores")
def _word_region_scores_fake(words, lengths, regions, gamma1, gamma2, word_softmax):
    check_same_device(words=words, lengths=lengths, regions=regions)
    dtype = reference.accumulation_dtype(words.dtype)
    return words.new_empty((words.shape[0], regions.shape[0]), dtype=dtype)


@torch.library.register_fake("tgfr::word_region_scores_backward")
def _word_region_scores_backward_fake(grad_scores, words, lengths, regions, gamma1, gamma2, word_softmax):
    check_same_device(grad_scores=grad_scores, words=words, lengths=lengths, regions=regions)
    return words.new_empty(words.shape), regions.new_empty(regions.shape)  # contiguous, as the kernels' are


@torch.library.register_fake("tgfr::word_region_attention")
def _word_region_attention_fake(words, lengths, regions, gamma1, word_softmax):
    check_same_device(words=words, lengths=lengths, regions=regions)
    dtype = reference.accumulation_dtype(words.dtype)
    return words.new_empty((words.shape[0], words.shape[1], regions.shape[1]), dtype=dtype)


def _setup_context(ctx, inputs, output):
    words, lengths, regions, gamma1, gamma2, word_softmax = inputs
    ctx.save_for_backward(words, lengths, regions)
    ctx.hyperparameters = (gamma1, gamma2, word_softmax)


def _backward(ctx, grad_scores):
    words, lengths, regions = ctx.saved_tensors
    if words.device.type == "cuda":
        alert_nondeterministic_backward("word_region_scores(backend='cuda')")
    grad_words, grad_regions = torch.ops.tgfr.word_region_scores_backward(
        grad_scores.contiguous(), words, lengths, regions, *ctx.hyperparameters
    )
    return grad_words, None, grad_regions, None, None, None


register_reverse_mode_autograd("tgfr::word_region_scores", _backward, _setup_context, "word_region_scores")

refuse_double_backward("tgfr::word_region_scores_backward", "word_region_scores")
