"""The fused word-region op never allocates the N*M*T*R or N*M*T*D tensors (SPEC section 2)."""

from tgfr.memory import measure_peak_rss_rise

SETUP = """
import torch, tgfr
torch.manual_seed(0)
N, T, R, D = {n}, 22, 196, 32
words = torch.randn(N, T, D, requires_grad=True)
regions = torch.randn(N, R, D, requires_grad=True)
lengths = torch.full((N,), T)
tgfr.ops.word_region_scores(words[:8], lengths[:8], regions[:8]).sum().backward()  # warm-up
"""
RUN = "tgfr.ops.word_region_scores(words, lengths, regions).sum().backward()"


def test_fused_forward_backward_memory_is_linear():
    n, num_words, num_regions, dim = 256, 22, 196, 32
    measured = measure_peak_rss_rise(SETUP.format(n=n), RUN)
    # What the reference materializes at this shape: the N*M*T*R attention and N*M*T*D contexts.
    reference_pairwise_bytes = 4 * n * n * num_words * (num_regions + dim)
    # The fused op may hold O(N*M + (N*T + M*R)*D) floats: scores, packed copies, gradients.
    linear_bytes = 4 * (n * n + (n * num_words + n * num_regions) * dim)
    assert reference_pairwise_bytes > 1.3e9
    assert measured.rise_bytes < 8 * linear_bytes + 32 * 2**20, (
        f"fused op raised peak RSS by {measured.rise_bytes / 2**20:.1f} MiB; the reference's pairwise tensors "
        f"alone would take {reference_pairwise_bytes / 2**30:.2f} GiB"
    )


BF16_SETUP = """
import torch, tgfr
torch.manual_seed(0)
words = torch.randn({n}, 22, {d}).bfloat16()
regions = torch.randn({m}, {r}, {d}).bfloat16()
lengths = torch.full(({n},), 22)
tgfr.ops.word_region_scores(words, lengths, regions[:8])  # warm-up
"""


def test_bf16_inputs_hold_no_float32_copy_of_the_images():
    # Few captions against many images, so that what the op holds of the images dominates: with
    # bf16 products, the images packed both ways round (two bf16 copies, padded to 64-column
    # blocks); otherwise, one float32 copy. A float32 copy besides the packed ones would pass 3x.
    n, m, num_regions, dim = 8, 1024, 196, 256
    measured = measure_peak_rss_rise(BF16_SETUP.format(n=n, m=m, r=num_regions, d=dim),
                                     "tgfr.ops.word_region_scores(words, lengths, regions)")
    bf16_image_bytes = 2 * m * num_regions * dim
    assert measured.rise_bytes < 3 * bf16_image_bytes, (
        f"bf16 forward raised peak RSS by {measured.rise_bytes / 2**20:.1f} MiB, "
        f"{measured.rise_bytes / bf16_image_bytes:.2f}x the bf16 images"
    )
