"""Triton kernels of the word-region similarity (SPEC section 2), forward and backward.

Tiling. A program takes CAPTIONS captions (each padded to T_PAD rows, so a tile has
CAPTIONS * T_PAD word rows) against a group of IMAGES images, and streams each image's regions in
chunks of BLOCK_R rows with the full feature size D_PAD in registers. Per chunk it computes
S = W V^T with tl.dot, the softmax over words (a per-region column operation, so it is local to
the chunk; the rows are reshaped to (CAPTIONS, T_PAD, BLOCK_R) to normalize each caption on its
own), and an online (flash-attention style) softmax over regions whose context C = alpha V is
accumulated with a second tl.dot. The T x R tile of a pair never leaves the chip; the log-sum-exp
over words follows per caption. Only the (N, M) scores are written.

Backward by recomputation. Per pair, pass A repeats the forward to get C, the row statistics of
the region softmax, cos and beta = softmax_t(gamma2 cos); from them dc (the gradient of the
context) and delta_t = <dc_t, c_t> = sum_r alpha_tr dalpha_tr. Pass B streams the chunks again and
forms dalpha = dc V^T, dz = alpha (dalpha - delta), ds (through the word softmax), then
d(words) += ds V and d(regions) += alpha^T dc + ds^T W. Two schedules:
- Default, one kernel with atomics (_backward_kernel): a program takes a caption block against an
  image group, keeps d(words) in registers over its images and adds d(regions) chunk by chunk with
  fp32 atomics. The d(regions) tile of an image (R x D, fp32) cannot stay on chip across captions,
  so any schedule writes it back once per caption block; atomics let one kernel produce both
  gradients with 7 products per pair instead of 11. The price is a run-to-run varying summation
  order, so the last bits of the gradients can differ between runs.
- Deterministic, under torch.use_deterministic_algorithms(True): two kernels, a d(words) pass
  (_word_gradient_kernel: a caption block over every image, in order) and a d(regions) pass
  (_region_gradient_kernel: an image over every caption block, in order, adding each chunk's sum
  with a plain load-add-store that only its program makes). No atomics and a fixed summation
  order, so bitwise reproducible; pass A runs twice (the 11 products).
On an H100 (bf16, `tgfr` shape, N=M=1024) the forward takes 37.5 ms (124 useful TFLOP/s) and the
atomics backward about 235 ms (39 useful TFLOP/s): the backward, not the forward, is where the
time goes. The deterministic backward has not run on a GPU yet.

Variants, chosen per config (constexpr flags, so the autotuner and the tuning script compare
them like tile sizes):
- TAIL_CHUNKS: regions past the last whole BLOCK_R chunk go in 16-region chunks instead of one
  masked BLOCK_R chunk (R = 196 with BLOCK_R = 64: 208 rows of products instead of 256).
- REGIONS_MAJOR: the products whose M side would be the word rows run transposed, with regions
  or features on the M side (S^T = V W^T, C^T = V^T P^T, ...), and the context and d(words)
  accumulate transposed. Hopper's wgmma needs M >= 64, which one caption (32 padded rows) does not
  fill: compiled for sm_90a by Triton 3.9, the measured-best backward (one caption) has mma.sync
  products only, and its regions-major form with 64-region chunks wgmma only
  (benchmarks/results/word_region_triton_resources_sm90a.jsonl, benchmarks/triton_resources.py,
  benchmarks/test_triton_resources.py). Which is faster is for the GPU to say.
- STAGGER_IMAGES (the kernels with image groups; it matters to the atomics backward): each
  program walks its image group starting at a different image. The programs resident at one time are consecutive caption blocks of one image group, so
  in the plain order they all add their d(regions) to the same image's chunks at about the same
  time, and same-address atomics are serialized in L2; staggered, they spread over the group's
  IMAGES images (the group's d(regions), 8 x 196 x 256 fp32 = 1.6 MB at the tgfr shape, still
  fits in L2). Same products, a different summation order.

Products run on tensor cores in the input dtype (bf16/fp16; fp32 as tf32 only when torch allows
TF32 in CUDA matmuls, see triton_precision.py, else full fp32) with fp32 accumulation;
softmax, norms and the log-sum-exp are fp32.

With TRITON_INTERPRET=1 set before triton is imported, the same kernels run on CPU tensors
(tests/test_word_region_triton.py).
"""

import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from tgfr.ops.first_order import refuse_double_backward
from tgfr.ops.triton_precision import dot_input_precision
from tgfr.ops.word_region import GAMMA_MAX, check_input_shapes
from tgfr.validation import check_positive, check_same_device, check_size, check_tensor

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
_SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _tile(
    captions: int, block_r: int, warps: int, stages: int, tail_chunks=False, regions_major=False, images=8,
    stagger_images=False,
) -> triton.Config:
    kwargs = {"CAPTIONS": captions, "BLOCK_R": block_r, "TAIL_CHUNKS": tail_chunks, "REGIONS_MAJOR": regions_major}
    if images is not None:  # the image group of the forward and the atomics backward; the deterministic kernels take none
        kwargs["IMAGES"] = images
        kwargs["STAGGER_IMAGES"] = stagger_images
    return triton.Config(kwargs, num_warps=warps, num_stages=stages)


# Fastest first. The first three of each list are the fastest of per-config timings on an H100
# (bf16, tgfr shape, N=M=1024; benchmarks/results/word_region_triton_configs_NVIDIA_H100_80GB_HBM3.jsonl,
# made with the prototype of benchmarks/tune_word_region_triton.py): forward 37.0 / 38.4 / 39.1 ms,
# backward 235 / 313 / 317 ms. The other 21 forward and 12 backward configs timed there were slower; 4
# captions with 16 warps in the backward fails register allocation in ptxas. The configs after
# them are candidates not yet timed on a GPU (tail chunks, regions-major products, staggered image
# order); the autotuner times them with the rest, and the tuning script reports them one by one.
# (Those timings predate the 64-bit offsets of commit db68253, which the compiler report shows to
# add 16 B of spill stores to the measured-best backward.)
_FORWARD_CONFIGS = [
    _tile(2, 64, 4, 2), _tile(2, 32, 4, 2), _tile(4, 64, 8, 2),
    _tile(2, 64, 4, 2, tail_chunks=True), _tile(1, 64, 8, 2, regions_major=True),
]
_BACKWARD_CONFIGS = [
    _tile(1, 32, 4, 1), _tile(2, 64, 4, 1), _tile(2, 32, 8, 1),
    _tile(1, 32, 4, 1, tail_chunks=True), _tile(1, 64, 8, 1, regions_major=True),
    _tile(1, 64, 8, 1, tail_chunks=True, regions_major=True), _tile(1, 32, 4, 1, stagger_images=True),
]
# The deterministic backward's two kernels (one caption block over every image, one image over every
# caption block; no IMAGES): not yet timed on a GPU, so the measured-best backward tile comes first,
# then the least-spilling ones of benchmarks/results/word_region_triton_resources_sm90a.jsonl (8 warps:
# no spills in the d(words) kernel, 44 B in the d(regions) one). For the atomics kernel fewer spills
# did not mean faster: with 8 warps it compiles spill-free and took 368 ms, against 235 ms for 4 warps
# and 572 B of spills (588 B since the 64-bit offsets).
_DETERMINISTIC_CONFIGS = [
    _tile(1, 32, 4, 1, images=None), _tile(1, 32, 8, 1, images=None), _tile(2, 64, 4, 1, images=None),
    _tile(1, 64, 8, 1, regions_major=True, images=None),
]
# Problems of other sizes take the first config that fits (see _launch): tuning a few thousand
# pairs is not worth its compilations, and tuning a large one runs every config at full size (over
# a minute per backward run at N=M=16384).
_TUNED_PAIRS = (64 * 64, 2048 * 2048)


def _configs(configs: list[triton.Config]) -> list[triton.Config]:
    if _INTERPRETED:
        # One small config that still exercises caption packing, image groups, whole R chunks and
        # the 16-region tail chunks; tests/test_word_region_triton.py launches the other variants.
        return [_tile(2, 32, 4, 1, tail_chunks=True, images=2 if "IMAGES" in configs[0].kwargs else None)]
    return configs


def _prune_configs(configs, named_args, **kwargs):
    """Drops tiles whose fp32 word-row accumulators (rows x D_PAD) would spill badly."""
    arguments = {**named_args, **kwargs}  # constexpr launch arguments arrive in kwargs

    def accumulator_size(config):
        return config.kwargs["CAPTIONS"] * arguments["T_PAD"] * arguments["D_PAD"]

    kept = [config for config in configs if accumulator_size(config) <= 64 * 256]
    return kept or [min(configs, key=accumulator_size)]


_AUTOTUNE_KEY = ["T_PAD", "R", "D_PAD", "WORD_SOFTMAX"]
# With TAIL_CHUNKS, the regions past the last whole BLOCK_R chunk go in chunks of 16 (the smallest
# tl.dot side): R = 196 then costs 208 rows of products, not the 256 of four masked 64-row chunks,
# at the price of a second copy of the loop body.
_TAIL_CHUNK = tl.constexpr(16)


@triton.jit
def _caption_rows(pid_caption, lengths_ptr, N, CAPTIONS: tl.constexpr, T_PAD: tl.constexpr):
    """Caption index, word index and validity of each of the CAPTIONS * T_PAD tile rows."""
    rows = tl.arange(0, CAPTIONS * T_PAD)
    caption = pid_caption * CAPTIONS + rows // T_PAD
    word = rows % T_PAD
    length = tl.load(lengths_ptr + caption, mask=caption < N, other=0)
    return caption, word, word < length


@triton.jit
def _caption_block_rows(
    block, lengths_ptr, N, D, stride_wn, stride_wt, CAPTIONS: tl.constexpr, T_PAD: tl.constexpr,
    D_PAD: tl.constexpr,
):
    """A caption block's rows in words (and in grad_words, same strides): caption and validity per
    row, the block's first element as a 64-bit offset, the tile's offsets from it (int32) and mask.
    64-bit because the offsets pass 2^31 once N * T * D does (N = 381301 at T=22, D=256); one
    64-bit scalar, not a 64-bit tile, keeps the offsets that the backward holds to its end at 32
    bits."""
    caption, word, valid_word = _caption_rows(block, lengths_ptr, N, CAPTIONS, T_PAD)
    first = block * CAPTIONS
    block_offset = tl.cast(first, tl.int64) * stride_wn  # tl.cast: see _image_offset
    dims = tl.arange(0, D_PAD)
    offsets = (caption - first)[:, None] * stride_wn + word[:, None] * stride_wt + dims[None, :]
    return caption, valid_word, block_offset, offsets, valid_word[:, None] & (dims[None, :] < D)


@triton.jit
def _image_offset(image, stride_rm):
    """Offset of an image in regions (and grad_regions), 64-bit: image * stride_rm passes 2^31
    once M * R * D does (M = 42800 at R=196, D=256). The chunk offsets within the image stay int32,
    so the hot loops add one scalar, not a 64-bit tile. tl.cast, not .to: the interpreter gives
    loop indices (the deterministic kernels' images and caption blocks) as Python ints."""
    return tl.cast(image, tl.int64) * stride_rm


@triton.jit
def _group_image(offset, IMAGES: tl.constexpr, STAGGER_IMAGES: tl.constexpr):
    """The image a program of an image-group kernel takes at step `offset` of its group: in order,
    or (STAGGER_IMAGES) starting at a different image for consecutive caption blocks."""
    if STAGGER_IMAGES:
        return tl.program_id(1) * IMAGES + (offset + tl.program_id(0)) % IMAGES
    else:
        return tl.program_id(1) * IMAGES + offset


@triton.jit
def _word_rows_product(word_rows, other, INPUT_PRECISION: tl.constexpr, REGIONS_MAJOR: tl.constexpr):
    """word_rows @ other, with REGIONS_MAJOR computed as (other^T word_rows^T)^T: Hopper's wgmma
    needs 64 rows on the M side, more than one caption's padded words."""
    if REGIONS_MAJOR:
        return tl.trans(tl.dot(tl.trans(other), tl.trans(word_rows), input_precision=INPUT_PRECISION))
    else:
        return tl.dot(word_rows, other, input_precision=INPUT_PRECISION)


@triton.jit
def _region_logits(
    words_tile, regions_chunk, valid_word, region_in_range,
    gamma1, WORD_SOFTMAX: tl.constexpr, CAPTIONS: tl.constexpr, T_PAD: tl.constexpr,
    BLOCK_R: tl.constexpr, INPUT_PRECISION: tl.constexpr, REGIONS_MAJOR: tl.constexpr,
):
    """a (after the optional softmax over each caption's valid words) and z = gamma1 * a for one
    chunk of regions; z is -inf at regions past R so that they drop out of the region softmax."""
    dots = _word_rows_product(words_tile, tl.trans(regions_chunk), INPUT_PRECISION, REGIONS_MAJOR)
    if WORD_SOFTMAX:
        masked = tl.where(valid_word[:, None], dots, float("-inf"))
        per_caption = tl.reshape(masked, (CAPTIONS, T_PAD, BLOCK_R))
        column_max = tl.max(per_caption, axis=1)
        column_max = tl.where(column_max == float("-inf"), 0.0, column_max)  # captions past N
        exps = tl.exp(per_caption - column_max[:, None, :])
        total = tl.sum(exps, axis=1)
        attn = tl.reshape(exps / tl.where(total == 0.0, 1.0, total)[:, None, :], (CAPTIONS * T_PAD, BLOCK_R))
    else:
        attn = dots
    logits = tl.where(region_in_range[None, :], gamma1 * attn, float("-inf"))
    return attn, logits


@triton.jit
def _whole_chunks_end(R, BLOCK_R: tl.constexpr, TAIL_CHUNKS: tl.constexpr):
    """Where the BLOCK_R-region chunks stop: at R (the last chunk masked), or with TAIL_CHUNKS
    after the last whole chunk, the rest going in _TAIL_CHUNK-region chunks."""
    if TAIL_CHUNKS:
        return R - R % BLOCK_R
    else:
        return R


@triton.jit
def _context_step(
    words_tile, regions_ptr, image, start, R, D, stride_rm, stride_rr, valid_word, row_max, row_sum, context,
    gamma1, WORD_SOFTMAX: tl.constexpr, CAPTIONS: tl.constexpr, T_PAD: tl.constexpr,
    BLOCK: tl.constexpr, D_PAD: tl.constexpr, INPUT_PRECISION: tl.constexpr, REGIONS_MAJOR: tl.constexpr,
):
    """Folds regions start .. start + BLOCK of one image into the online softmax over regions;
    with REGIONS_MAJOR the context accumulates transposed, (D_PAD, rows)."""
    dims = tl.arange(0, D_PAD)
    region = start + tl.arange(0, BLOCK)
    region_in_range = region < R
    chunk = tl.load(
        regions_ptr + _image_offset(image, stride_rm) + region[:, None] * stride_rr + dims[None, :],
        mask=region_in_range[:, None] & (dims[None, :] < D), other=0.0,
    )
    _, logits = _region_logits(
        words_tile, chunk, valid_word, region_in_range,
        gamma1, WORD_SOFTMAX, CAPTIONS, T_PAD, BLOCK, INPUT_PRECISION, REGIONS_MAJOR,
    )
    new_max = tl.maximum(row_max, tl.max(logits, axis=1))
    probs = tl.exp(logits - new_max[:, None])
    rescale = tl.exp(row_max - new_max)
    row_sum = row_sum * rescale + tl.sum(probs, axis=1)
    if REGIONS_MAJOR:
        context = tl.dot(
            tl.trans(chunk), tl.trans(probs.to(chunk.dtype)), context * rescale[None, :], input_precision=INPUT_PRECISION
        )
    else:
        context = context * rescale[:, None] + tl.dot(probs.to(chunk.dtype), chunk, input_precision=INPUT_PRECISION)
    return new_max, row_sum, context


@triton.jit
def _pair_context(
    words_tile, regions_ptr, image, R, D, stride_rm, stride_rr, valid_word,
    gamma1, WORD_SOFTMAX: tl.constexpr, CAPTIONS: tl.constexpr, T_PAD: tl.constexpr,
    BLOCK_R: tl.constexpr, D_PAD: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    TAIL_CHUNKS: tl.constexpr, REGIONS_MAJOR: tl.constexpr,
):
    """Pass A: context C (rows x D_PAD, fp32) of every word row against one image, with the
    running max and sum of the online softmax over regions (alpha = exp(z - max) / sum)."""
    row_max = tl.full((CAPTIONS * T_PAD,), float("-inf"), tl.float32)
    row_sum = tl.zeros((CAPTIONS * T_PAD,), tl.float32)
    if REGIONS_MAJOR:
        context = tl.zeros((D_PAD, CAPTIONS * T_PAD), tl.float32)
    else:
        context = tl.zeros((CAPTIONS * T_PAD, D_PAD), tl.float32)
    for start in range(0, _whole_chunks_end(R, BLOCK_R, TAIL_CHUNKS), BLOCK_R):
        row_max, row_sum, context = _context_step(
            words_tile, regions_ptr, image, start, R, D, stride_rm, stride_rr, valid_word, row_max, row_sum, context,
            gamma1, WORD_SOFTMAX, CAPTIONS, T_PAD, BLOCK_R, D_PAD, INPUT_PRECISION, REGIONS_MAJOR,
        )
    if TAIL_CHUNKS:
        for start in range(_whole_chunks_end(R, BLOCK_R, TAIL_CHUNKS), R, _TAIL_CHUNK):
            row_max, row_sum, context = _context_step(
                words_tile, regions_ptr, image, start, R, D, stride_rm, stride_rr, valid_word, row_max, row_sum,
                context, gamma1, WORD_SOFTMAX, CAPTIONS, T_PAD, _TAIL_CHUNK, D_PAD, INPUT_PRECISION, REGIONS_MAJOR,
            )
    if REGIONS_MAJOR:
        context = tl.trans(context)
    return context / row_sum[:, None], row_max, row_sum


@triton.jit
def _caption_scores(cos, valid_word, gamma2, CAPTIONS: tl.constexpr, T_PAD: tl.constexpr):
    """Per caption, score = log sum_t exp(gamma2 cos_t) over its valid rows, (CAPTIONS,), and each
    row's softmax_t(gamma2 cos), (CAPTIONS * T_PAD,), 0 at invalid rows. gamma2 scales differences
    to the largest cosine, not the cosines: with gamma2 * cos_t - max fused into an FMA, exp would
    see the max's rounding error, gamma2 * |cos| * 2^-24, not small for a large gamma2."""
    per_caption = tl.reshape(tl.where(valid_word, cos, float("-inf")), (CAPTIONS, T_PAD))
    top = tl.max(per_caption, axis=1)
    safe_top = tl.where(top == float("-inf"), 0.0, top)  # captions past N have no valid row
    scaled = gamma2 * (per_caption - safe_top[:, None])
    total = tl.sum(tl.exp(scaled), axis=1)
    log_total = tl.log(tl.where(total == 0.0, 1.0, total))  # 0, not -inf, for captions past N
    probabilities = tl.reshape(tl.exp(scaled - log_total[:, None]), (CAPTIONS * T_PAD,))
    return gamma2 * safe_top + log_total, probabilities


@triton.autotune(
    configs=_configs(_FORWARD_CONFIGS), key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune_configs}
)
@triton.jit
def _forward_kernel(
    words_ptr, lengths_ptr, regions_ptr, scores_ptr,
    N, M, R, D,
    stride_wn, stride_wt, stride_rm, stride_rr, stride_sn,
    gamma1, gamma2,
    T_PAD: tl.constexpr, D_PAD: tl.constexpr, WORD_SOFTMAX: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    CAPTIONS: tl.constexpr, BLOCK_R: tl.constexpr, IMAGES: tl.constexpr,
    TAIL_CHUNKS: tl.constexpr, REGIONS_MAJOR: tl.constexpr, STAGGER_IMAGES: tl.constexpr,
):
    caption, valid_word, block_offset, word_offsets, word_mask = _caption_block_rows(
        tl.program_id(0), lengths_ptr, N, D, stride_wn, stride_wt, CAPTIONS, T_PAD, D_PAD,
    )
    words_tile = tl.load(words_ptr + block_offset + word_offsets, mask=word_mask, other=0.0)
    words_f32 = words_tile.to(tl.float32)
    word_norm = tl.sqrt(tl.sum(words_f32 * words_f32, axis=1))
    first_caption = tl.program_id(0) * CAPTIONS + tl.arange(0, CAPTIONS)
    for offset in range(IMAGES):
        image = _group_image(offset, IMAGES, STAGGER_IMAGES)
        if image < M:
            context, _, _ = _pair_context(
                words_tile, regions_ptr, image, R, D, stride_rm, stride_rr, valid_word,
                gamma1, WORD_SOFTMAX, CAPTIONS, T_PAD, BLOCK_R, D_PAD, INPUT_PRECISION, TAIL_CHUNKS, REGIONS_MAJOR,
            )
            context_norm = tl.sqrt(tl.sum(context * context, axis=1))
            cos = tl.sum(context * words_f32, axis=1) / tl.maximum(context_norm * word_norm, 1e-8)
            scores, _ = _caption_scores(cos, valid_word, gamma2, CAPTIONS, T_PAD)
            # 64-bit: caption * stride_sn passes 2^31 once (N - 1) * M does (N = M = 46342).
            tl.store(scores_ptr + first_caption.to(tl.int64) * stride_sn + image, scores, mask=first_caption < N)


@triton.jit
def _gradient_step(
    words_tile, regions_ptr, grad_regions_ptr, image, start, R, D, stride_rm, stride_rr, valid_word,
    row_max, row_sum, grad_context_in, delta, grad_words,
    gamma1, WORD_SOFTMAX: tl.constexpr, CAPTIONS: tl.constexpr, T_PAD: tl.constexpr,
    BLOCK: tl.constexpr, D_PAD: tl.constexpr, INPUT_PRECISION: tl.constexpr, REGIONS_MAJOR: tl.constexpr,
    REGION_GRADIENT: tl.constexpr, WORD_GRADIENT: tl.constexpr,
):
    """Pass B over regions start .. start + BLOCK of one image: adds their d(regions) to
    grad_regions (REGION_GRADIENT "atomic": with atomics; "owned": load, add, store, for the one
    program that owns the image; "none": not at all) and returns grad_words plus their d(words)
    (when WORD_GRADIENT); with REGIONS_MAJOR grad_words is transposed, (D_PAD, rows)."""
    dims = tl.arange(0, D_PAD)
    region = start + tl.arange(0, BLOCK)
    region_in_range = region < R
    image_offset = _image_offset(image, stride_rm)
    chunk_offsets = region[:, None] * stride_rr + dims[None, :]  # within the image
    chunk_mask = region_in_range[:, None] & (dims[None, :] < D)
    chunk = tl.load(regions_ptr + image_offset + chunk_offsets, mask=chunk_mask, other=0.0)
    attn, logits = _region_logits(
        words_tile, chunk, valid_word, region_in_range,
        gamma1, WORD_SOFTMAX, CAPTIONS, T_PAD, BLOCK, INPUT_PRECISION, REGIONS_MAJOR,
    )
    alpha = tl.exp(logits - row_max[:, None]) / row_sum[:, None]
    grad_alpha = _word_rows_product(grad_context_in, tl.trans(chunk), INPUT_PRECISION, REGIONS_MAJOR)
    grad_attn = gamma1 * alpha * (grad_alpha - delta[:, None])
    if WORD_SOFTMAX:
        weighted = tl.reshape(attn * grad_attn, (CAPTIONS, T_PAD, BLOCK))
        column = tl.reshape(
            tl.broadcast_to(tl.sum(weighted, axis=1)[:, None, :], (CAPTIONS, T_PAD, BLOCK)),
            (CAPTIONS * T_PAD, BLOCK),
        )
        grad_dots = attn * (grad_attn - column)
    else:
        grad_dots = grad_attn
    grad_dots_in = grad_dots.to(words_tile.dtype)
    if WORD_GRADIENT:
        if REGIONS_MAJOR:
            grad_words = tl.dot(tl.trans(chunk), tl.trans(grad_dots_in), grad_words, input_precision=INPUT_PRECISION)
        else:
            grad_words += tl.dot(grad_dots_in, chunk, input_precision=INPUT_PRECISION)
    if REGION_GRADIENT != "none":
        grad_chunk = tl.dot(tl.trans(alpha.to(words_tile.dtype)), grad_context_in, input_precision=INPUT_PRECISION)
        grad_chunk += tl.dot(tl.trans(grad_dots_in), words_tile, input_precision=INPUT_PRECISION)
        if REGION_GRADIENT == "atomic":
            tl.atomic_add(grad_regions_ptr + image_offset + chunk_offsets, grad_chunk, mask=chunk_mask, sem="relaxed")
        else:
            image_grad_ptr = grad_regions_ptr + image_offset
            total = tl.load(image_grad_ptr + chunk_offsets, mask=chunk_mask, other=0.0) + grad_chunk
            tl.store(image_grad_ptr + chunk_offsets, total, mask=chunk_mask)
            # The next caption block reads these sums back: make the block's writes visible to all its threads.
            tl.debug_barrier()
    return grad_words


@triton.jit
def _pair_backward(
    grad_scores_ptr, regions_ptr, grad_regions_ptr, words_tile, words_f32, word_norm, caption, valid_word, image,
    grad_words, R, D, stride_gn, stride_rm, stride_rr, gamma1, gamma2,
    T_PAD: tl.constexpr, D_PAD: tl.constexpr, WORD_SOFTMAX: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    CAPTIONS: tl.constexpr, BLOCK_R: tl.constexpr, TAIL_CHUNKS: tl.constexpr, REGIONS_MAJOR: tl.constexpr,
    REGION_GRADIENT: tl.constexpr, WORD_GRADIENT: tl.constexpr,
):
    """Both passes of one (caption block, image) pair; d(regions) and d(words) as in _gradient_step."""
    # Pass A: forward quantities of the pair, then the gradient of each word's context.
    context, row_max, row_sum = _pair_context(
        words_tile, regions_ptr, image, R, D, stride_rm, stride_rr, valid_word,
        gamma1, WORD_SOFTMAX, CAPTIONS, T_PAD, BLOCK_R, D_PAD, INPUT_PRECISION, TAIL_CHUNKS, REGIONS_MAJOR,
    )
    context_norm = tl.sqrt(tl.sum(context * context, axis=1))
    norms = context_norm * word_norm
    cos = tl.sum(context * words_f32, axis=1) / tl.maximum(norms, 1e-8)
    _, beta = _caption_scores(cos, valid_word, gamma2, CAPTIONS, T_PAD)
    grad_score = tl.load(grad_scores_ptr + caption.to(tl.int64) * stride_gn + image, mask=valid_word, other=0.0)
    grad_cos = tl.where(valid_word, grad_score * gamma2 * beta, 0.0)
    unclamped = norms > 1e-8
    scale = grad_cos / tl.where(unclamped, norms, 1e-8)
    grad_context = scale[:, None] * words_f32 - tl.where(
        unclamped, grad_cos * cos / tl.where(unclamped, context_norm * context_norm, 1.0), 0.0
    )[:, None] * context
    if WORD_GRADIENT:
        grad_words_direct = scale[:, None] * context - tl.where(
            unclamped, grad_cos * cos / tl.where(unclamped, word_norm * word_norm, 1.0), 0.0
        )[:, None] * words_f32
        if REGIONS_MAJOR:
            grad_words += tl.trans(grad_words_direct)
        else:
            grad_words += grad_words_direct
    delta = tl.sum(grad_context * context, axis=1)  # sum_r alpha_tr dalpha_tr
    grad_context_in = grad_context.to(words_tile.dtype)
    # Pass B: attention again, chunk by chunk, and the products of the gradients.
    for start in range(0, _whole_chunks_end(R, BLOCK_R, TAIL_CHUNKS), BLOCK_R):
        grad_words = _gradient_step(
            words_tile, regions_ptr, grad_regions_ptr, image, start, R, D, stride_rm, stride_rr, valid_word,
            row_max, row_sum, grad_context_in, delta, grad_words,
            gamma1, WORD_SOFTMAX, CAPTIONS, T_PAD, BLOCK_R, D_PAD, INPUT_PRECISION, REGIONS_MAJOR,
            REGION_GRADIENT, WORD_GRADIENT,
        )
    if TAIL_CHUNKS:
        for start in range(_whole_chunks_end(R, BLOCK_R, TAIL_CHUNKS), R, _TAIL_CHUNK):
            grad_words = _gradient_step(
                words_tile, regions_ptr, grad_regions_ptr, image, start, R, D, stride_rm, stride_rr, valid_word,
                row_max, row_sum, grad_context_in, delta, grad_words,
                gamma1, WORD_SOFTMAX, CAPTIONS, T_PAD, _TAIL_CHUNK, D_PAD, INPUT_PRECISION, REGIONS_MAJOR,
                REGION_GRADIENT, WORD_GRADIENT,
            )
    return grad_words


@triton.jit
def _caption_block_words(
    block, words_ptr, lengths_ptr, N, D, stride_wn, stride_wt, CAPTIONS: tl.constexpr, T_PAD: tl.constexpr,
    D_PAD: tl.constexpr,
):
    """A caption block's word rows: caption and validity per row, the block's 64-bit offset and
    the rows' offsets from it and mask in words (see _caption_block_rows), the tile in the input
    dtype and in fp32, and each row's norm."""
    caption, valid_word, block_offset, offsets, mask = _caption_block_rows(
        block, lengths_ptr, N, D, stride_wn, stride_wt, CAPTIONS, T_PAD, D_PAD,
    )
    words_tile = tl.load(words_ptr + block_offset + offsets, mask=mask, other=0.0)
    words_f32 = words_tile.to(tl.float32)
    return (
        caption, valid_word, block_offset, offsets, mask, words_tile, words_f32,
        tl.sqrt(tl.sum(words_f32 * words_f32, axis=1)),
    )


@triton.jit
def _empty_word_gradient(CAPTIONS: tl.constexpr, T_PAD: tl.constexpr, D_PAD: tl.constexpr, REGIONS_MAJOR: tl.constexpr):
    if REGIONS_MAJOR:
        return tl.zeros((D_PAD, CAPTIONS * T_PAD), tl.float32)
    else:
        return tl.zeros((CAPTIONS * T_PAD, D_PAD), tl.float32)


@triton.autotune(
    configs=_configs(_BACKWARD_CONFIGS), key=_AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune_configs},
    reset_to_zero=["grad_words_ptr", "grad_regions_ptr"],
)
@triton.jit
def _backward_kernel(
    grad_scores_ptr, words_ptr, lengths_ptr, regions_ptr, grad_words_ptr, grad_regions_ptr,
    N, M, R, D,
    stride_gn, stride_wn, stride_wt, stride_rm, stride_rr,
    gamma1, gamma2,
    T_PAD: tl.constexpr, D_PAD: tl.constexpr, WORD_SOFTMAX: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    CAPTIONS: tl.constexpr, BLOCK_R: tl.constexpr, IMAGES: tl.constexpr,
    TAIL_CHUNKS: tl.constexpr, REGIONS_MAJOR: tl.constexpr, STAGGER_IMAGES: tl.constexpr,
):
    """Adds this program's share to grad_words (N, T, D) and grad_regions (M, R, D), both fp32,
    zeroed, contiguous (strides stride_wn/stride_wt and stride_rm/stride_rr of the inputs)."""
    caption, valid_word, block_offset, word_offsets, word_mask, words_tile, words_f32, word_norm = _caption_block_words(
        tl.program_id(0), words_ptr, lengths_ptr, N, D, stride_wn, stride_wt, CAPTIONS, T_PAD, D_PAD,
    )
    grad_words = _empty_word_gradient(CAPTIONS, T_PAD, D_PAD, REGIONS_MAJOR)
    for offset in range(IMAGES):
        image = _group_image(offset, IMAGES, STAGGER_IMAGES)
        if image < M:
            grad_words = _pair_backward(
                grad_scores_ptr, regions_ptr, grad_regions_ptr, words_tile, words_f32, word_norm, caption, valid_word,
                image, grad_words, R, D, stride_gn, stride_rm, stride_rr, gamma1, gamma2,
                T_PAD, D_PAD, WORD_SOFTMAX, INPUT_PRECISION, CAPTIONS, BLOCK_R, TAIL_CHUNKS, REGIONS_MAJOR,
                "atomic", True,
            )
    if REGIONS_MAJOR:
        grad_words = tl.trans(grad_words)
    tl.atomic_add(grad_words_ptr + block_offset + word_offsets, grad_words, mask=word_mask, sem="relaxed")


@triton.autotune(
    configs=_configs(_DETERMINISTIC_CONFIGS), key=_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _prune_configs},
)
@triton.jit
def _word_gradient_kernel(
    grad_scores_ptr, words_ptr, lengths_ptr, regions_ptr, grad_words_ptr, grad_regions_ptr,
    N, M, R, D,
    stride_gn, stride_wn, stride_wt, stride_rm, stride_rr,
    gamma1, gamma2,
    T_PAD: tl.constexpr, D_PAD: tl.constexpr, WORD_SOFTMAX: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    CAPTIONS: tl.constexpr, BLOCK_R: tl.constexpr, TAIL_CHUNKS: tl.constexpr, REGIONS_MAJOR: tl.constexpr,
):
    """Deterministic backward, first kernel: writes grad_words (N, T, D) fp32 of one caption block,
    summed over all images in order."""
    caption, valid_word, block_offset, word_offsets, word_mask, words_tile, words_f32, word_norm = _caption_block_words(
        tl.program_id(0), words_ptr, lengths_ptr, N, D, stride_wn, stride_wt, CAPTIONS, T_PAD, D_PAD,
    )
    grad_words = _empty_word_gradient(CAPTIONS, T_PAD, D_PAD, REGIONS_MAJOR)
    for image in range(0, M):
        grad_words = _pair_backward(
            grad_scores_ptr, regions_ptr, grad_regions_ptr, words_tile, words_f32, word_norm, caption, valid_word,
            image, grad_words, R, D, stride_gn, stride_rm, stride_rr, gamma1, gamma2,
            T_PAD, D_PAD, WORD_SOFTMAX, INPUT_PRECISION, CAPTIONS, BLOCK_R, TAIL_CHUNKS, REGIONS_MAJOR,
            "none", True,
        )
    if REGIONS_MAJOR:
        grad_words = tl.trans(grad_words)
    tl.store(grad_words_ptr + block_offset + word_offsets, grad_words, mask=word_mask)


@triton.autotune(
    configs=_configs(_DETERMINISTIC_CONFIGS), key=_AUTOTUNE_KEY,
    prune_configs_by={"early_config_prune": _prune_configs}, reset_to_zero=["grad_regions_ptr"],
)
@triton.jit
def _region_gradient_kernel(
    grad_scores_ptr, words_ptr, lengths_ptr, regions_ptr, grad_words_ptr, grad_regions_ptr,
    N, M, R, D,
    stride_gn, stride_wn, stride_wt, stride_rm, stride_rr,
    gamma1, gamma2,
    T_PAD: tl.constexpr, D_PAD: tl.constexpr, WORD_SOFTMAX: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    CAPTIONS: tl.constexpr, BLOCK_R: tl.constexpr, TAIL_CHUNKS: tl.constexpr, REGIONS_MAJOR: tl.constexpr,
):
    """Deterministic backward, second kernel: adds into grad_regions (M, R, D) fp32, zeroed, the
    d(regions) of one image, summed over all caption blocks in order."""
    image = tl.program_id(0)
    for block in range(0, tl.cdiv(N, CAPTIONS)):
        caption, valid_word, _, _, _, words_tile, words_f32, word_norm = _caption_block_words(
            block, words_ptr, lengths_ptr, N, D, stride_wn, stride_wt, CAPTIONS, T_PAD, D_PAD,
        )
        _pair_backward(
            grad_scores_ptr, regions_ptr, grad_regions_ptr, words_tile, words_f32, word_norm, caption, valid_word,
            image, tl.zeros((1,), tl.float32), R, D, stride_gn, stride_rm, stride_rr, gamma1, gamma2,
            T_PAD, D_PAD, WORD_SOFTMAX, INPUT_PRECISION, CAPTIONS, BLOCK_R, TAIL_CHUNKS, REGIONS_MAJOR,
            "owned", False,
        )


def _constexprs(words: torch.Tensor, word_softmax: bool) -> dict:
    num_words, dim = words.shape[1], words.shape[2]
    return {
        "T_PAD": max(16, triton.next_power_of_2(num_words)),
        "D_PAD": max(16, triton.next_power_of_2(dim)),
        "WORD_SOFTMAX": word_softmax,
        "INPUT_PRECISION": dot_input_precision(words.dtype),
    }


# CUDA's limit on a grid's second dimension (the image groups).
_MAX_GRID_Y = 65535
# Triton's launcher (3.9, backends/nvidia/driver.c) tests `gridX * gridY * gridZ > 0` in C int
# and silently skips the launch when the product overflows: scores left uninitialized, zero
# gradients. Hence at most 2^31 - 1 programs per launch.
_MAX_PROGRAMS = 2**31 - 1


def _check_grid(kernel, config: triton.Config, grid: tuple[int, ...], arguments: tuple) -> None:
    """Raises a ValueError naming the batch size that puts the grid past _MAX_GRID_Y or
    _MAX_PROGRAMS, instead of a CUDA launch error or a silently skipped launch."""
    sizes = dict(zip(kernel.fn.arg_names, arguments))
    num_captions, num_images = sizes["N"], sizes["M"]
    if len(grid) > 1 and grid[1] > _MAX_GRID_Y:
        images = config.kwargs["IMAGES"]
        raise ValueError(
            f"regions must have at most {_MAX_GRID_Y * images} images (M) for backend 'triton' "
            f"({_MAX_GRID_Y} groups of {images} images, CUDA's grid limit), got M={num_images}: "
            "split the images over several calls"
        )
    if grid[0] * (grid[1] if len(grid) > 1 else 1) > _MAX_PROGRAMS:
        raise ValueError(
            f"words (N={num_captions} captions) and regions (M={num_images} images) need {grid} programs "
            f"of {kernel.fn.__name__}, more than the {_MAX_PROGRAMS} one Triton launch can take: "
            "split the captions over several calls"
        )


def _launch(kernel, config, pairs: int, grid, *arguments, **constexprs) -> None:
    """Runs an autotuned kernel with `config` if given, else tuned for problem sizes (N*M pairs)
    inside _TUNED_PAIRS and with the first config that fits (the fastest one measured) outside."""
    def check(config):
        _check_grid(kernel, config, grid(config.kwargs) if callable(grid) else grid, arguments)

    if config is None and _TUNED_PAIRS[0] < pairs <= _TUNED_PAIRS[1]:
        for candidate in kernel.configs:  # the autotuner may run any of them (N = 1, M = 2048^2 is tuned too)
            check(candidate)
        wrap_triton(kernel)[grid](*arguments, **constexprs)
        return
    if config is None:
        config = _prune_configs(kernel.configs, {}, **constexprs)[0]
    check(config)
    # Only the tile sizes, warps and stages: torch.compile refuses other launch options (num_ctas).
    launch_options = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    wrap_triton(kernel.fn)[grid](*arguments, **constexprs, **launch_options)


def launch_forward(
    words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor,
    gamma1: float, gamma2: float, word_softmax: bool, config: triton.Config | None = None,
) -> torch.Tensor:
    """The forward kernel on contiguous inputs -> scores (N, M) float32. `config` (tile sizes,
    TAIL_CHUNKS, REGIONS_MAJOR, warps, stages) forces one variant, for tuning and tests; None
    lets the op choose."""
    num_captions, num_images = words.shape[0], regions.shape[0]
    scores = torch.empty((num_captions, num_images), dtype=torch.float32, device=words.device)
    def grid(meta):
        return triton.cdiv(num_captions, meta["CAPTIONS"]), triton.cdiv(num_images, meta["IMAGES"])

    _launch(
        _forward_kernel, config, num_captions * num_images, grid,
        words, lengths, regions, scores,
        num_captions, num_images, regions.shape[1], words.shape[2],
        words.stride(0), words.stride(1), regions.stride(0), regions.stride(1), scores.stride(0),
        gamma1, gamma2, **_constexprs(words, word_softmax),
    )
    return scores


def launch_backward(
    grad_scores: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor,
    gamma1: float, gamma2: float, word_softmax: bool, deterministic: bool = False,
    config: triton.Config | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward on contiguous inputs -> (d words, d regions), float32; `config` as in
    launch_forward. deterministic=False: one kernel, gradients added with fp32 atomics.
    deterministic=True: two kernels, each gradient summed in a fixed order by the one program
    that owns it (a caption block over every image, an image over every caption block), at the
    price of a second pass A: bitwise reproducible."""
    num_captions, num_images = words.shape[0], regions.shape[0]
    grad_words = torch.zeros(words.shape, dtype=torch.float32, device=words.device)
    grad_regions = torch.zeros(regions.shape, dtype=torch.float32, device=words.device)
    arguments = (
        grad_scores, words, lengths, regions, grad_words, grad_regions,
        num_captions, num_images, regions.shape[1], words.shape[2],
        grad_scores.stride(0), words.stride(0), words.stride(1), regions.stride(0), regions.stride(1),
        gamma1, gamma2,
    )
    constexprs = _constexprs(words, word_softmax)
    pairs = num_captions * num_images
    if not deterministic:
        def grid(meta):
            return triton.cdiv(num_captions, meta["CAPTIONS"]), triton.cdiv(num_images, meta["IMAGES"])

        _launch(_backward_kernel, config, pairs, grid, *arguments, **constexprs)
    else:
        _launch(_word_gradient_kernel, config, pairs, lambda meta: (triton.cdiv(num_captions, meta["CAPTIONS"]),),
                *arguments, **constexprs)
        _launch(_region_gradient_kernel, config, pairs, (num_images,), *arguments, **constexprs)
    return grad_words, grad_regions


def _check_op_inputs(words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor, gamma1: float,
                     gamma2: float) -> None:
    """The registered ops' own checks of words (N, T, D), lengths (N,), regions (M, R, D) and the
    gammas: the ops can be called directly (as a compiled graph or a user may), past the front end's
    checks, and the kernels take N, T, R and D from words and regions, so a short lengths or a smaller
    D of regions would have them read past a tensor, and a gamma that is not positive or is inf in
    their float32 gives NaN or meaningless scores. Sizes, dtypes and the gammas (Python floats) are
    known while torch.compile traces too, and raise here."""
    check_input_shapes(words, lengths, regions)
    check_positive("gamma1", gamma1, GAMMA_MAX)
    check_positive("gamma2", gamma2, GAMMA_MAX)
    if words.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(
            f"words must be float32, bfloat16 or float16 for backend 'triton', got {words.dtype} "
            "(use backend='cpu' or 'reference' for float64)"
        )
    # The kernels mask words by `word < length` alone: a length past T would read the next caption's
    # words or past the tensor. The values are data: an assertion on the device (no synchronization)
    # stops that. No T in the message: torch.compile traces this body, and a symbolic T put into a
    # string would be fixed to its value (a recompile per T).
    torch._assert_async(((lengths >= 1) & (lengths <= words.shape[1])).all(),
                        "lengths must lie in [1, T] (T from words.shape[1])")


@triton_op("tgfr::word_region_scores_triton", mutates_args=())
def _scores_op(
    words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor,
    gamma1: float, gamma2: float, word_softmax: bool,
) -> torch.Tensor:
    _check_op_inputs(words, lengths, regions, gamma1, gamma2)
    # The kernels take the strides of the first two dimensions and assume the last is 1; the
    # public front end passes contiguous tensors, a direct call of torch.ops.tgfr.* may not.
    return launch_forward(words.contiguous(), lengths.contiguous(), regions.contiguous(), gamma1, gamma2,
                          word_softmax)


@triton_op("tgfr::word_region_scores_backward_triton", mutates_args=())
def _scores_backward_op(
    grad_scores: torch.Tensor, words: torch.Tensor, lengths: torch.Tensor, regions: torch.Tensor,
    gamma1: float, gamma2: float, word_softmax: bool, deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_op_inputs(words, lengths, regions, gamma1, gamma2)
    # The kernels index grad_scores (N, M) by caption and image of words and regions.
    check_tensor("grad_scores", grad_scores, ndim=2)
    check_same_device(words=words, grad_scores=grad_scores)
    check_size("grad_scores", grad_scores, 0, words.shape[0], "the number of captions N of words")
    check_size("grad_scores", grad_scores, 1, regions.shape[0], "the number of images M of regions")
    grad_words, grad_regions = launch_backward(
        grad_scores.contiguous(), words.contiguous(), lengths.contiguous(), regions.contiguous(), gamma1, gamma2,
        word_softmax, deterministic,
    )
    return grad_words.to(words.dtype), grad_regions.to(regions.dtype)


# Explicit fake kernels: the ones triton_op derives by tracing the launches do not work when the
# kernels are interpreted (TRITON_INTERPRET=1) rather than compiled.
@_scores_op.register_fake
def _scores_fake(words, lengths, regions, gamma1, gamma2, word_softmax):
    return words.new_empty((words.shape[0], regions.shape[0]), dtype=torch.float32)


@_scores_backward_op.register_fake
def _scores_backward_fake(grad_scores, words, lengths, regions, gamma1, gamma2, word_softmax, deterministic):
    return words.new_empty(words.shape), regions.new_empty(regions.shape)  # contiguous, as the op's


def _setup_context(ctx, inputs, output):
    words, lengths, regions, gamma1, gamma2, word_softmax = inputs
    ctx.save_for_backward(words, lengths, regions)
    ctx.hyperparameters = (gamma1, gamma2, word_softmax)


def _backward(ctx, grad_scores):
    words, lengths, regions = ctx.saved_tensors
    # torch.use_deterministic_algorithms(True) gets the two-kernel backward without atomics.
    grad_words, grad_regions = _scores_backward_op(
        grad_scores.contiguous(), words, lengths, regions, *ctx.hyperparameters,
        torch.are_deterministic_algorithms_enabled(),
    )
    return grad_words, None, grad_regions, None, None, None


_scores_op.register_autograd(_backward, setup_context=_setup_context)
refuse_double_backward("tgfr::word_region_scores_backward_triton", "word_region_scores (backend 'triton')")


def word_region_scores(
    words: torch.Tensor,
    lengths: torch.Tensor,
    regions: torch.Tensor,
    gamma1: float,
    gamma2: float,
    word_softmax: bool,
) -> torch.Tensor:
    """Triton word-region scores; inputs checked and made contiguous by tgfr.ops.word_region (the
    op checks their sizes and dtypes again, for direct calls).

    words (N, T, D) float32/bfloat16/float16, lengths (N,) int64 in [1, T], regions (M, R, D)
    -> (N, M) float32, differentiable in words and regions.
    """
    return _scores_op(words, lengths, regions, gamma1, gamma2, word_softmax)
