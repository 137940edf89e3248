"""The package's lazy loading: every advertised submodule and name resolves, `import tgfr.ops` registers every
op, and the command line builds its parser without the heavy imports."""

import importlib.util
import os
import subprocess
import sys
import types

import pytest

import tgfr
import tgfr.evaluation
import tgfr.train


@pytest.mark.parametrize("name", tgfr._SUBMODULES)
def test_every_listed_submodule_loads(name):
    module = getattr(tgfr, name)
    assert isinstance(module, types.ModuleType) and module.__name__ == f"tgfr.{name}"


@pytest.mark.parametrize("package", [tgfr, tgfr.train, tgfr.evaluation])
def test_lazy_names_resolve_and_unknown_names_fail(package):
    for name in getattr(package, "__all__", ()):
        assert getattr(package, name) is not None
    with pytest.raises(AttributeError, match="no_such_name"):
        package.no_such_name


def test_command_line_parser_skips_models_and_transformers():
    # `tgfr --help` and usage errors should answer in about a second, not after loading
    # transformers and the models (several seconds).
    heavy = ("transformers", "tgfr.models", "tgfr.train.run", "tgfr.evaluation.run")
    code = ("import sys, tgfr.cli; tgfr.cli.build_parser(); "
            f"print(','.join(name for name in {heavy!r} if name in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


@pytest.mark.parametrize("environment, expected", [({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE")])
def test_command_line_sets_omp_wait_policy_before_torch_loads(environment, expected):
    # libgomp reads OMP_WAIT_POLICY once, when torch loads it: the command must set it first.
    code = ("import os, sys, tgfr.cli; torch_loaded = 'torch' in sys.modules; import torch; "
            "print(torch_loaded, os.environ['OMP_WAIT_POLICY'])")
    base = {name: value for name, value in os.environ.items() if name != "OMP_WAIT_POLICY"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=base | environment)
    assert result.stdout.split() == ["False", expected]


_EXPORT = """
import sys, torch, tgfr.ops
class Scores(torch.nn.Module):
    def forward(self, words, lengths, regions):
        return tgfr.ops.word_region_scores(words, lengths, regions, backend="triton")
class Loss(torch.nn.Module):
    def forward(self, x, y):
        return tgfr.ops.contrastive_loss(x, y, backend="triton")
words, regions, lengths = torch.randn(3, 5, 4), torch.randn(2, 6, 4), torch.tensor([5, 2, 1])
torch.export.save(torch.export.export(Scores(), (words, lengths, regions)), sys.argv[1] + "/scores.pt2")
torch.export.save(torch.export.export(Loss(), (words[:, 0], words[:, 1])), sys.argv[1] + "/loss.pt2")
"""
_LOAD = """
import sys, torch, tgfr.ops
words, regions, lengths = torch.randn(3, 5, 4), torch.randn(2, 6, 4), torch.tensor([5, 2, 1])
scores = torch.export.load(sys.argv[1] + "/scores.pt2").module()(words, lengths, regions)
torch.testing.assert_close(scores, tgfr.ops.word_region_scores(words, lengths, regions, backend="reference"))
loss = torch.export.load(sys.argv[1] + "/loss.pt2").module()(words[:, 0], words[:, 1])
torch.testing.assert_close(loss, tgfr.ops.contrastive_loss(words[:, 0], words[:, 1], backend="reference"))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton missing")
def test_a_program_exported_with_the_triton_backend_loads_in_a_process_that_imported_tgfr_ops(tmp_path):
    """The Triton ops were registered at the first backend="triton" call only: a program exported where "auto"
    took Triton (on CUDA) failed to load after `import tgfr.ops`, "Please import the custom op to register it"."""
    environment = {**os.environ, "TRITON_INTERPRET": "1"}
    for program in (_EXPORT, _LOAD):
        result = subprocess.run([sys.executable, "-c", program, str(tmp_path)], env=environment,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
