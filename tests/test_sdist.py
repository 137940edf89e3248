"""The source distribution holds everything a build of tgfr._C reads and the folders README.md's
Layout lists, and no build output: `pip install tgfr-*.tar.gz` compiles from it, and a CUDA build
compiles the kernels only when kernels/*.cu are there. setup.py names a setuptools too old to build."""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_FOLDERS = ("csrc", "kernels", "tests", "benchmarks")
# Too big or unrelated to copy; build outputs that an sdist must leave out (*.so, __pycache__)
# stay in the copy so that the test sees them left out.
NOT_COPIED = (".git", ".venv", "build", "dist", "runs", "*.egg-info", ".pytest_cache", ".benchmarks")


def _files_under(root: Path, folder: str) -> set[str]:
    return {path.relative_to(root).as_posix() for path in (root / folder).rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".so"}


def test_sdist_holds_the_build_inputs_and_no_build_outputs(tmp_path):
    # Built from a copy: the hook writes tgfr.egg-info beside setup.py.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_COPIED))
    build = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))",
         str(tmp_path / "dist")],
        cwd=source, capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    with tarfile.open(tmp_path / "dist" / build.stdout.split()[-1]) as sdist:
        members = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
        metadata = sdist.extractfile(f"{sdist.getnames()[0].split('/')[0]}/PKG-INFO").read().decode()
    # An SPDX expression: setuptools deprecates the `license = { text = ... }` table and plans to
    # refuse it after 2027-02-18.
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "license" not in build.stderr.lower(), build.stderr[-3000:]

    expected = {"CMakeLists.txt", "setup.py", "pyproject.toml", "README.md", "tgfr/_source_hash.py"}
    expected |= {f"tgfr/train/presets/{path.name}" for path in (ROOT / "tgfr/train/presets").glob("*.toml")}
    for folder in SHIPPED_FOLDERS:
        expected |= _files_under(ROOT, folder)
    assert {"csrc/ops.cpp", "kernels/word_region.cu", "tests/conftest.py"} <= expected
    assert sorted(expected - members) == []
    assert [name for name in members if name.endswith((".so", ".pyc")) or "__pycache__" in name] == []


@pytest.mark.parametrize("version", ["65.5.0", "76.1.0"])
def test_setup_py_names_a_setuptools_too_old_for_the_license_expression(tmp_path, version):
    """pip does not enforce [build-system] requires under --no-build-isolation (README's install), and
    setuptools < 77 rejects pyproject's SPDX license with a schema dump that names no fix."""
    stub = tmp_path / "stub" / "setuptools"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(f"__version__ = {version!r}\ndef setup(**options):\n    print('setup called')\n")
    result = subprocess.run([sys.executable, str(ROOT / "setup.py"), "--version"], capture_output=True, text=True,
                            timeout=120, env=os.environ | {"PYTHONPATH": str(tmp_path / "stub")})
    assert result.returncode == 1 and "setup called" not in result.stdout
    assert result.stderr.strip().endswith(f"tgfr builds with setuptools>=77, found {version}: pip install -U "
                                          "setuptools, then `pip install --no-build-isolation -e .` again")


def test_setup_py_runs_with_the_installed_setuptools():
    result = subprocess.run([sys.executable, str(ROOT / "setup.py"), "--version"], capture_output=True, text=True,
                            timeout=300, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "0.1.0", result.stderr[-2000:]
