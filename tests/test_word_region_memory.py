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
