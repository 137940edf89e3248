"""Which tl.dot precision the Triton kernels take for each dtype under each of torch's TF32 switches.
Each run is a fresh process: torch refuses to read its legacy switch once the new one was set, and
the switches are global."""

import subprocess
import sys

import pytest

# Each case: the settings, then the expected precision for float32 (16-bit inputs are always "ieee").
LEGACY_API = [
    ("", "ieee"),
    ("torch.backends.cuda.matmul.allow_tf32 = True", "tf32"),
    ("torch.backends.cuda.matmul.allow_tf32 = False", "ieee"),
    ("torch.set_float32_matmul_precision('high')", "tf32"),
    ("torch.set_float32_matmul_precision('highest')", "ieee"),
]
NEW_API = [  # torch >= 2.9
    ("torch.backends.fp32_precision = 'tf32'", "tf32"),  # inherited by cuda.matmul, which says "none"
    ("torch.backends.cuda.matmul.fp32_precision = 'ieee'", "ieee"),  # overrides the inherited tf32
    ("torch.backends.cuda.matmul.fp32_precision = 'tf32'", "tf32"),
]

CHECK = """
import torch
from tgfr.ops.triton_precision import dot_input_precision
for setting, expected in {cases!r}:
    exec(setting)
    got = [dot_input_precision(dtype) for dtype in (torch.float32, torch.bfloat16, torch.float16)]
    assert got == [expected, "ieee", "ieee"], (setting, got)
"""


@pytest.mark.parametrize("cases", [LEGACY_API, NEW_API], ids=["legacy allow_tf32", "fp32_precision"])
def test_dot_precision_follows_torch_tf32_switch(cases):
    import torch

    if cases is NEW_API and not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("torch before 2.9 has no fp32_precision")
    result = subprocess.run([sys.executable, "-c", CHECK.format(cases=cases)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
