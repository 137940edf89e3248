"""The package's lazy loading: every advertised submodule and name resolves, and the command
line builds its parser without the heavy imports."""

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
