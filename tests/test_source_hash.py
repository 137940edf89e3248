"""A tgfr._C built from other C++/CUDA sources than the checkout's, or before builds carried a
source hash, is refused at import with an ImportError that says how to rebuild, instead of failing
on a missing operator or running old kernels; an install without sources beside the package (a
wheel) has nothing to compare the hash with."""

import hashlib
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tgfr import _C
from tgfr._source_hash import source_hash

ROOT = Path(__file__).resolve().parents[1]
REBUILD = "pip install --no-build-isolation -e ."


def _import_ops(pythonpath: Path, before: str = "") -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(pythonpath)}
    code = f"{before}import tgfr.ops, tgfr; print(tgfr.__file__)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=pythonpath.parent, timeout=120)


def _copy_checkout(destination: Path, with_sources: bool = True) -> Path:
    """The tgfr package with its built extension, and the build's sources when `with_sources`."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "tgfr", destination / "tgfr", ignore=ignore)
    if with_sources:
        shutil.copytree(ROOT / "csrc", destination / "csrc", ignore=ignore)
        shutil.copytree(ROOT / "kernels", destination / "kernels", ignore=ignore)
        shutil.copy(ROOT / "setup.py", destination / "setup.py")
    return destination


def test_the_built_extension_carries_the_hash_of_these_sources():
    assert _C.source_hash == source_hash(ROOT)


def test_source_hash_covers_the_build_sources_by_path_and_content(tmp_path):
    files = {"csrc/ops.cpp": b"int a;", "csrc/x.h": b"#pragma once", "csrc/cuda/b.cpp": b"int b;",
             "csrc/cuda/b.h": b"void b();", "kernels/k.cu": b"__global__ void k() {}", "kernels/k.cuh": b"void k();"}
    ignored = {"kernels/tests/t.cu": b"int main() {}", "csrc/notes.txt": b"notes", "setup.py": b""}
    for name, content in (files | ignored).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(content)
    expected = hashlib.sha256()
    for name in sorted(files):
        encoded = name.encode()
        expected.update(len(encoded).to_bytes(8, "little") + encoded
                        + len(files[name]).to_bytes(8, "little") + files[name])
    assert source_hash(tmp_path) == expected.hexdigest()
    # CMakeLists.txt reconfigures (and rewrites the hash header) when one of the files listed changes.
    listed = subprocess.run([sys.executable, str(ROOT / "tgfr" / "_source_hash.py"), str(tmp_path), "--files"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == ";".join((tmp_path.resolve() / name).as_posix() for name in sorted(files)) + "\n"
    # A rename with the same contents is a different build (the file sets differ).
    (tmp_path / "csrc/x.h").rename(tmp_path / "csrc/y.h")
    assert source_hash(tmp_path) != expected.hexdigest()


def test_setup_py_rewrites_the_hash_header_when_the_sources_change(tmp_path, monkeypatch):
    """An incremental build (`build_ext --inplace` after a `git pull`) must compile the new hash in,
    and an unchanged one must leave the header's timestamp alone (ninja rebuilds on it)."""
    import setuptools

    checkout = _copy_checkout(tmp_path / "checkout")
    options = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: options.update(kwargs))
    runpy.run_path(str(checkout / "setup.py"))
    build_ext = options["cmdclass"]["build_ext"]
    monkeypatch.setattr(build_ext.__mro__[1], "build_extensions", lambda self: None)  # no compile
    header = tmp_path / "build" / "generated" / "tgfr_source_hash.h"

    def build() -> str:
        command = build_ext.__new__(build_ext)
        command.build_temp, command.extensions = str(tmp_path / "build"), []
        command.build_extensions()
        return header.read_text()

    assert build() == f'#define TGFR_SOURCE_HASH "{source_hash(checkout)}"\n'
    os.utime(header, ns=(0, 0))
    assert build() == f'#define TGFR_SOURCE_HASH "{source_hash(checkout)}"\n'
    assert header.stat().st_mtime_ns == 0, "an unchanged hash must not rewrite the header"
    with open(checkout / "csrc" / "ops.cpp", "a") as source:
        source.write("// pulled after the build\n")
    assert build() == f'#define TGFR_SOURCE_HASH "{source_hash(checkout)}"\n'


def test_checkout_with_unchanged_sources_imports(tmp_path):
    checkout = _copy_checkout(tmp_path / "checkout")
    result = _import_ops(checkout)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(checkout / "tgfr" / "__init__.py")


@pytest.mark.parametrize("change", ["edit", "new_header"])
def test_checkout_whose_sources_changed_since_the_build_is_refused(tmp_path, change):
    checkout = _copy_checkout(tmp_path / "checkout")
    if change == "edit":
        with open(checkout / "csrc" / "ops.cpp", "a") as source:
            source.write("// pulled after the build\n")
    else:
        (checkout / "csrc" / "pulled_after_the_build.h").write_text("#pragma once\n")
    result = _import_ops(checkout)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: tgfr's compiled extension"), result.stderr[-2000:]
    assert "is out of date" in last_line and REBUILD in last_line and str(checkout) in last_line


@pytest.mark.parametrize("with_sources", [True, False])
def test_extension_without_a_source_hash_is_refused(tmp_path, with_sources):
    # What an extension built before the check existed looks like (torch first: _C links to it);
    # without sources beside the package (a wheel's layout) it is still known to be out of date.
    package = _copy_checkout(tmp_path / "checkout", with_sources)
    result = _import_ops(package, before="import torch, tgfr._C; del tgfr._C.source_hash; ")
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError:") and "is out of date" in last_line and REBUILD in last_line


def test_install_without_sources_does_not_compare_hashes(tmp_path):
    # An installed wheel has no csrc/ beside the package to compare with: an extension whose hash
    # differs from the checkout's (refused there, above) imports.
    package = _copy_checkout(tmp_path / "site-packages", with_sources=False)
    result = _import_ops(package, before="import torch, tgfr._C; tgfr._C.source_hash = '0' * 64; ")
    assert result.returncode == 0, result.stderr[-2000:]
