"""Which implementations of the fused ops can run here, and which one `backend="auto"` picks.

Rule of backend="auto" for CUDA tensors: "triton" when Triton is installed and the padded word tile
(T and D rounded up to powers of two, at least 16) is at most 32 x 512 elements with D at most 512
(the fp32 accumulators of a tile live in registers), else "cuda" when the CUDA kernels are compiled
in and their block fits (below), else "triton" if installed, else "reference". Measured on an H100 (torch 2.11 + CUDA 13, Triton
3.6), `tgfr` shape, bf16, N=M=1024 (benchmarks/results/word_region_gpu_*.jsonl): forward 37.5 ms
with Triton vs 594 ms with the CUDA kernel, forward+backward 274 ms vs 2.84 s; Triton also ran
N=M=16384 (9.2 s forward, 69.7 s forward+backward). The limits are the largest tiles the GPU tests
ran (T=22 with D=300, T=33 with D=24); larger ones were not run on a GPU and need more registers
than any measured tile (a 4-caption backward tile with 16 warps already fails register allocation
in ptxas at D=256). Under torch.use_deterministic_algorithms(True), "triton" whenever Triton is
installed: its backward then runs without atomics, while the CUDA kernel's backward adds gradients
with fp32 atomics and raises (tgfr/ops/determinism.py).

The CUDA kernel keeps a caption's padded words, the logits of all R regions and fp32 contexts in shared
memory per block (kernels/word_region.cu, make_layout), its backward also fp32 gradient buffers, and a
block must fit the device's opt-in limit per block (227 KB on an H100 or H200, 163 KB on an A100). At
T=22, R=196 the backward passes 227 KB past D=400 in bf16 (D=304 in float32), the forward past D=896
(624): at D=768, bf16, 202,112 and 401,792 bytes. So "cuda" is taken only where its block fits, the
backward's when the inputs need gradients, else the forward's; a shape past that goes to "triton" when
installed (unmeasured at such tiles), else to "reference". Sizes computed from make_layout (mirrored
below, checked against it by tests/test_kernels_build.py), not run on a GPU; the presets project words to
D=64 and the benchmarks' `tgfr` shape to D=256, well within both.
"""

import importlib.util
import os

import torch

from tgfr.ops import _library  # noqa: F401  (registers torch.ops.tgfr.*, CUDA kernels included)

# Fixed for the life of the process (the extension is loaded above), and plain constants so that
# torch.compile can trace the backend choice.
_CUDA_KERNELS_BUILT = torch._C._dispatch_has_kernel_for_dispatch_key("tgfr::word_region_scores", "CUDA")
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_TRITON_MAX_WORD_TILE = 32 * 512
_TRITON_MAX_DIM = 512
# kernels/word_region.cu's kTile, kChunk and kAlign: what make_layout pads T, D and R to, and aligns buffers to.
_CUDA_TILE = 16
_CUDA_CHUNK = 16
_CUDA_ALIGN = 128
# The dynamic shared memory any block may use without opting in (CUDA's default limit, sm_80 and sm_90 alike).
_DEFAULT_SHARED_MEMORY_PER_BLOCK = 48 * 1024


def _triton_usable() -> bool:
    return _TRITON_INSTALLED and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


def available_backends() -> list[str]:
    """Subset of ["reference", "cpu", "triton", "cuda"] that can run in this process."""
    backends = ["reference", "cpu"]
    if _triton_usable():
        backends.append("triton")
    if _CUDA_KERNELS_BUILT and torch.cuda.is_available():
        backends.append("cuda")
    return backends


def auto_cuda_backend(num_words: int, num_regions: int, dim: int, dtype: torch.dtype, device: torch.device,
                      backward: bool) -> str:
    """Backend for CUDA tensors of T=num_words, R=num_regions, D=dim under backend="auto" (rule in the
    module doc); backward: whether the inputs need gradients."""
    padded_words, padded_dim = max(16, _next_power_of_2(num_words)), max(16, _next_power_of_2(dim))
    triton_tile_fits = padded_dim <= _TRITON_MAX_DIM and padded_words * padded_dim <= _TRITON_MAX_WORD_TILE
    deterministic = torch.are_deterministic_algorithms_enabled()  # only Triton has a deterministic backward
    if _TRITON_INSTALLED and (triton_tile_fits or deterministic or not _CUDA_KERNELS_BUILT):
        return "triton"
    if _CUDA_KERNELS_BUILT and cuda_kernel_fits(num_words, num_regions, dim, dtype, device, backward):
        return "cuda"
    return "triton" if _TRITON_INSTALLED else "reference"


def cuda_shared_memory_bytes(num_words: int, num_regions: int, dim: int, dtype: torch.dtype, backward: bool) -> int:
    """Dynamic shared memory (bytes) of one block of the CUDA kernels for T=num_words, R=num_regions, D=dim
    inputs of `dtype` (float32, bfloat16 or float16): of the backward, or of the forward and the attention
    (backward=False). kernels/word_region.cu's make_layout: each buffer rounded up to _CUDA_ALIGN."""
    element = 4 if dtype == torch.float32 else 2
    t, r, d = _round_up(num_words, _CUDA_TILE), _round_up(num_regions, _CUDA_CHUNK), _round_up(dim, _CUDA_TILE)
    chunk = _CUDA_CHUNK
    buffers = [t * d * element, chunk * d * element, t * r * 4, r * 4, r * 4, *[t * 4] * 5, t * chunk * element,
               t * d * 4]
    if backward:
        buffers += [t * d * element, t * chunk * 4, t * chunk * element, t * d * 4, chunk * d * 4]
    return sum(_round_up(size, _CUDA_ALIGN) for size in buffers)


def cuda_kernel_fits(num_words: int, num_regions: int, dim: int, dtype: torch.dtype, device: torch.device,
                     backward: bool) -> bool:
    """Whether a block of the CUDA kernels for these sizes (cuda_shared_memory_bytes) fits `device`'s shared
    memory; the kernels refuse to launch one that does not."""
    needed = cuda_shared_memory_bytes(num_words, num_regions, dim, dtype, backward)
    return needed <= _shared_memory_per_block(device.index)


@torch.compiler.assume_constant_result
def _shared_memory_per_block(device_index: int | None) -> int:
    """The opt-in limit of dynamic shared memory per block of a CUDA device (a constant to torch.compile); torch
    before 2.7 reports neither it nor the default limit, and then that default, 48 KB on every GPU the kernels
    are built for, stands in for it."""
    properties = torch.cuda.get_device_properties(device_index)
    opt_in = getattr(properties, "shared_memory_per_block_optin", None)
    return _DEFAULT_SHARED_MEMORY_PER_BLOCK if opt_in is None else opt_in


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _next_power_of_2(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()
