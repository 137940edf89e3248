"""benchmarks/triton_resources.py on this machine (no GPU): the sm_90a compiler facts that the
kernel module's docstring cites, checked against the installed Triton."""

import importlib.util
import os

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") == "1",
    reason="needs Triton's CUDA compiler (not the interpreter)",
)


def _shipped(kind: str, **match) -> dict:
    from benchmarks.tune_word_region_triton import candidate_configs

    return next(
        config for config in candidate_configs(kind, "shipped")
        if all(config[key] == value for key, value in match.items())
    )


def test_forward_config_compiles_to_warpgroup_mma():
    from benchmarks.triton_resources import compile_report

    report = compile_report("_forward_kernel", _shipped("forward", CAPTIONS=2, REGIONS_MAJOR=False), 90)
    assert 0 < report["registers"] <= 255
    assert report["wgmma"] > 0 and report["mma_sync"] == 0
    assert report["spill_store_bytes"] >= 0 and report["shared_bytes"] > 0


def test_regions_major_backward_moves_one_caption_onto_wgmma():
    from benchmarks.triton_resources import compile_report

    words_major = compile_report("_backward_kernel", _shipped("backward", CAPTIONS=1, BLOCK_R=32, TAIL_CHUNKS=False), 90)
    regions_major = compile_report(
        "_backward_kernel", _shipped("backward", CAPTIONS=1, REGIONS_MAJOR=True, TAIL_CHUNKS=False), 90
    )
    assert words_major["wgmma"] == 0 and words_major["mma_sync"] > 0
    assert regions_major["wgmma"] > 0 and regions_major["mma_sync"] == 0


def test_deterministic_backward_kernels_compile_for_sm90a():
    from benchmarks.triton_resources import KERNELS, compile_report

    config = _shipped("deterministic_backward")
    for kernel in KERNELS["deterministic_backward"]:
        report = compile_report(kernel, config, 90)
        assert "error" not in report, report
        assert 0 < report["registers"] <= 255 and report["mma_sync"] + report["wgmma"] > 0
