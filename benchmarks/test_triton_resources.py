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


def test_compiles_with_the_specialization_of_a_benchmark_launch():
    from benchmarks.triton_resources import _launch_specialization
    from benchmarks.word_region_steps import DIM, NUM_REGIONS
    from tgfr.ops import word_region_triton as kernels

    signature, constexprs, attrs = _launch_specialization("_backward_kernel")
    names = kernels._backward_kernel.fn.arg_names
    divisible = {names[index] for (index,) in attrs}
    # Pointers and every size or stride that is a multiple of 16 (R = 196 is not) are marked.
    assert {"words_ptr", "regions_ptr", "grad_regions_ptr", "N", "M", "D", "stride_wn", "stride_rm"} <= divisible
    assert "R" not in divisible and "gamma1" not in divisible
    assert signature["words_ptr"] == "*bf16" and signature["grad_regions_ptr"] == "*fp32"
    assert signature["lengths_ptr"] == "*i64" and signature["R"] == "i32" and signature["gamma2"] == "fp32"
    assert constexprs["T_PAD"] == 32 and constexprs["D_PAD"] == DIM
    assert NUM_REGIONS % 16 != 0  # so that R's missing mark is a real check


def test_backward_adds_four_floats_per_atomic_at_the_benchmark_shape():
    """Knowing the strides are multiples of 16, the compiler vectorizes the d(regions) and d(words)
    atomic adds: one red.global.add.v4.f32 per four floats, not one instruction per float."""
    from benchmarks.triton_resources import compile_report

    report = compile_report("_backward_kernel", _shipped("backward", CAPTIONS=1, BLOCK_R=32, TAIL_CHUNKS=False), 90)
    assert report["atomic_add_v4_f32"] > 0
    assert report["atomic_add_f32"] == report["atomic_add_v2_f32"] == 0


@pytest.mark.parametrize("kind", ["forward", "backward", "deterministic_backward"])
def test_the_tuning_check_runs_the_binary_it_times(kind):
    """benchmarks/tune_word_region_triton.py compiles and checks each config at N=M=CHECK_SIZE and
    times it at 1024: Triton's launch specialization (argument kinds, constexprs, divisibility
    attributes) must be the same at both, else the check tests another binary."""
    from unittest import mock

    from benchmarks import triton_resources
    from benchmarks.tune_word_region_triton import CHECK_SIZE
    from tgfr.ops import word_region_triton as kernels

    def specializations(size):
        with mock.patch.object(triton_resources, "SIZE", size):
            arguments = triton_resources._arguments(kind)
        return {name: triton_resources._specialized(getattr(kernels, name).fn, arguments[name])
                for name in triton_resources.KERNELS[kind]}

    assert specializations(CHECK_SIZE) == specializations(1024)
    assert specializations(40) != specializations(1024)  # what the check used to run at


@pytest.mark.parametrize("dtype, normalize, same_identity", [
    ("bfloat16", True, "exclude"), ("float16", True, "positive"), ("float32", False, "zero"),
    ("bfloat16", False, "none"),
])
def test_contrastive_kernels_compile_for_sm90a(dtype, normalize, same_identity):
    """The interpreter runs what the GPU compiler refuses: the forward kernel reused `_` for an int and,
    in its loop, for a tile, which no GPU could compile (a loop-carried variable must keep its type)."""
    import torch

    from benchmarks.triton_resources import _specialized, compile_kernel, contrastive_launches

    launches = contrastive_launches(getattr(torch, dtype), 256, normalize, same_identity)
    assert sorted(kernel.__name__ for kernel, _ in launches) == ["_backward_rows_kernel", "_forward_rows_kernel"]
    for kernel, arguments in launches:
        # Triton's launch defaults for CUDA, which these kernels are launched with.
        report = compile_kernel(kernel, *_specialized(kernel, arguments), num_warps=4, num_stages=3, capability=90)
        assert "error" not in report, (kernel.__name__, report)
        assert 0 < report["registers"] <= 255
        assert (report["mma_sync"] + report["wgmma"] > 0) == (dtype != "float32")  # fp32 without TF32: no MMA
