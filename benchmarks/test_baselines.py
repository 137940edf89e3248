"""Each op's named implementations in benchmarks/baselines.py are what their names say, so that a
benchmark never times one implementation under another's name (values alone cannot tell)."""

import pytest
import torch

import tgfr.ops
from benchmarks import baselines
from tgfr import reference

# op: (the name in tgfr.ops, the baselines' lookup, their cached torch.compile, the reference they compile)
OPS = {
    "word_region": ("word_region_scores", baselines.word_region_function, baselines.compiled_word_region_scores,
                    reference.word_region_scores),
    "contrastive": ("contrastive_loss", baselines.contrastive_function, baselines.compiled_contrastive_loss,
                    baselines.reference_contrastive_loss),
}


@pytest.mark.parametrize("op", OPS)
def test_fused_implementation_is_the_ops_cpu_backend(op, monkeypatch):
    """"fused" times the op's fused CPU kernel (backend "cpu"), not its reference backend."""
    name, lookup, _, _ = OPS[op]
    backends = []
    monkeypatch.setattr(tgfr.ops, name, lambda *inputs, backend, **options: backends.append(backend))
    lookup("fused")(torch.zeros(1), torch.zeros(1), torch.zeros(1))
    assert backends == ["cpu"]


@pytest.mark.parametrize("op", OPS)
def test_compiled_reference_is_torch_compile_of_the_reference(op, monkeypatch):
    """"compiled_reference" is what torch.compile (dynamic shapes) makes of the reference, not the
    reference itself."""
    _, lookup, compiled_cache, reference_function = OPS[op]
    compiled = object()
    compile_calls = []
    monkeypatch.setattr(torch, "compile",
                        lambda function, **options: compile_calls.append((function, options)) or compiled)
    compiled_cache.cache_clear()
    try:
        assert lookup("compiled_reference") is compiled
    finally:
        compiled_cache.cache_clear()  # so that later callers compile for real
    assert compile_calls == [(reference_function, {"dynamic": True})]
