"""Linear memory of the fused contrastive op: N = M = 16384 forward+backward on CPU.

A float32 logits matrix of that batch alone takes 1 GiB (the full-matrix backward several);
the fused op must stay under 256 MiB above the baseline: the rise of the RSS high-water mark in a
fresh interpreter after torch is loaded, the inputs exist and one small call has warmed the
allocator and thread pool (tgfr.memory). The 65536 run is in benchmarks/test_contrastive_baselines.py.
"""

from tgfr.memory import measure_peak_rss_rise

SETUP = """
import torch, tgfr.ops
n, d = 16384, 32
x = torch.randn(n, d, requires_grad=True)
y = torch.randn(n, d, requires_grad=True)
labels = torch.randint(0, n // 4, (n,))
tgfr.ops.contrastive_loss(x[:256], y[:256], row_labels=labels[:256], same_identity="exclude").backward()
x.grad = y.grad = None
"""
RUN = """
loss = tgfr.ops.contrastive_loss(x, y, 10.0, row_labels=labels, same_identity="exclude")
loss.backward()
assert torch.isfinite(loss) and x.grad.abs().sum() > 0
"""


def test_fused_op_at_16384_stays_far_below_one_logits_matrix():
    rise_mib = measure_peak_rss_rise(SETUP, RUN).rise_bytes / 2**20
    assert rise_mib < 256, f"{rise_mib:.0f} MiB above baseline"
