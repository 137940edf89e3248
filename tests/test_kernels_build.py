"""CI checks of the CUDA code without a GPU: the torch-free kernels of kernels/ compile with nvcc
through CMake (sm_80 and sm_90a, and compute_90 PTX, CMakeLists.txt; about a minute on 2 cores), the CMake target of
tgfr/_C gets setup.py's C++ flags and source hash, and the csrc/cuda binding parses against this
torch's headers (seconds)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tgfr._source_hash import source_hash

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not on PATH")
def test_kernels_compile_with_cmake_and_nvcc(tmp_path):
    build = tmp_path / "build"
    configure = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), "-DTGFR_KERNELS_ONLY=ON", "-DTGFR_BUILD_KERNEL_TEST=ON"],
        capture_output=True, text=True, timeout=300,
    )
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    flags = (build / "CMakeFiles" / "tgfr_kernels.dir" / "flags.make").read_text()
    assert "code=[sm_80]" in flags and "code=[sm_90a]" in flags, flags
    assert "arch=compute_90,code=[compute_90]" in flags, flags  # PTX for a GPU newer than sm_90, as setup.py's
    compile_ = subprocess.run(
        ["cmake", "--build", str(build), "-j2"], capture_output=True, text=True, timeout=600
    )
    assert compile_.returncode == 0, compile_.stdout[-4000:] + compile_.stderr[-4000:]
    assert "warning" not in compile_.stdout.lower(), compile_.stdout[-4000:]
    assert (build / "libtgfr_kernels.a").stat().st_size > 0
    assert (build / "word_region_kernel_test").exists()
    _check_layout_mirror(build / "word_region_shared_memory_bytes")


def _check_layout_mirror(program: Path) -> None:
    """backend="auto" and word_region_attention decide from tgfr.ops.backends' copy of the CUDA block layout
    whether a block fits; it must give the compiled kernels' bytes, which refuse a launch past the limit."""
    import torch

    from tgfr.ops.backends import cuda_shared_memory_bytes

    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
    shapes = [(t, r, d, name, backward) for t, r, d in [(22, 196, 256), (22, 196, 768), (65, 196, 256), (1, 1, 1),
                                                         (17, 49, 33), (33, 200, 401), (128, 7, 624)]
              for name in dtypes for backward in (0, 1)]
    run = subprocess.run([str(program), *(str(part) for shape in shapes for part in shape)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    compiled = [int(line) for line in run.stdout.split()]
    mirrored = [cuda_shared_memory_bytes(t, r, d, dtypes[name], bool(backward)) for t, r, d, name, backward in shapes]
    assert mirrored == compiled
    assert compiled[shapes.index((22, 196, 768, "bf16", 1))] == 401_792  # the figure backends.py's doc quotes


def _cuda_include_dirs() -> list[str]:
    """The CUDA toolkit's include folders, as nvcc itself passes them to the host compiler."""
    dryrun = subprocess.run(["nvcc", "--dryrun", "-x", "cu", "-c", "/dev/null", "-o", "/dev/null"],
                            capture_output=True, text=True, timeout=60)
    line = next(line for line in dryrun.stderr.splitlines() if "INCLUDES=" in line and "SYSTEM" not in line)
    return re.findall(r'-I"?([^"\s]+)', line)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not on PATH")
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")
def test_cuda_binding_compiles_against_this_torch(tmp_path):
    # The csrc/cuda binding is only built where torch has CUDA, which CI's torch does not; a
    # syntax-only compile against this torch's headers still catches its C++ and API errors
    # before a GPU machine does. A CPU wheel lacks one header that its CUDA build generates
    # (macros only): an empty stand-in is enough to parse.
    from torch.utils.cpp_extension import include_paths

    includes = [*include_paths(), *_cuda_include_dirs(), str(ROOT / "kernels")]
    if not any((Path(path) / "c10/cuda/impl/cuda_cmake_macros.h").exists() for path in includes):
        (tmp_path / "c10/cuda/impl").mkdir(parents=True)
        (tmp_path / "c10/cuda/impl/cuda_cmake_macros.h").write_text("")
        includes.append(str(tmp_path))
    for source in sorted((ROOT / "csrc" / "cuda").glob("*.cpp")):
        result = subprocess.run(
            ["g++", "-std=c++20", "-fsyntax-only", *(f"-I{path}" for path in includes), str(source)],
            capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, f"{source.name}:\n{result.stderr[-4000:]}"


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not on PATH")
def test_cmake_extension_target_gets_setup_py_flags_and_source_hash(tmp_path):
    # The _C target needs a CUDA torch to link, but configures against this one, which is enough
    # to read its compile flags and build csrc/ops.cpp (the only file that needs the hash header).
    build = tmp_path / "build"
    env = os.environ | {"TGFR_CPU_ARCH": "x86-64-v2"}
    configure = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), "-G", "Unix Makefiles", "-DTGFR_KERNELS_ONLY=OFF",
         f"-DPython3_EXECUTABLE={sys.executable}"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    flags = (build / "CMakeFiles" / "_C.dir" / "flags.make").read_text()
    cxx_flags = next(line for line in flags.splitlines() if line.startswith("CXX_FLAGS")).split()
    for flag in ["-O3", "-std=c++20", "-fopenmp", "-march=x86-64-v2", "-fno-math-errno", "-fno-trapping-math"]:
        assert flag in cxx_flags, flags
    assert "-fopenmp" in (build / "CMakeFiles" / "_C.dir" / "link.txt").read_text().split()
    kernel_flags = (build / "CMakeFiles" / "tgfr_kernels.dir" / "flags.make").read_text()
    assert "-fopenmp" not in kernel_flags and "-march" not in kernel_flags, kernel_flags

    header = build / "generated" / "tgfr_source_hash.h"
    assert header.read_text() == f'#define TGFR_SOURCE_HASH "{source_hash(ROOT)}"\n'
    compile_ = subprocess.run(["make", "-C", str(build), "csrc/ops.cpp.o"], capture_output=True, text=True, timeout=300)
    assert compile_.returncode == 0, compile_.stdout[-3000:] + compile_.stderr[-3000:]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not on PATH")
def test_cmake_build_follows_an_added_source_and_a_changed_cpu_arch(tmp_path):
    """A header added after configuring changes the sources' hash: the build must reconfigure, or the
    _C it builds is refused as out of date. TGFR_CPU_ARCH is read at each configure, as setup.py reads it."""
    tree = tmp_path / "tree"
    for part in ("csrc", "kernels"):
        shutil.copytree(ROOT / part, tree / part)
    (tree / "tgfr").mkdir()
    shutil.copy(ROOT / "tgfr" / "_source_hash.py", tree / "tgfr")
    shutil.copy(ROOT / "CMakeLists.txt", tree)
    build = tmp_path / "build"

    def configure(arch: str) -> str:
        result = subprocess.run(
            ["cmake", "-S", str(tree), "-B", str(build), "-G", "Unix Makefiles", "-DTGFR_KERNELS_ONLY=OFF",
             f"-DPython3_EXECUTABLE={sys.executable}"],
            capture_output=True, text=True, timeout=300, env=os.environ | {"TGFR_CPU_ARCH": arch},
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return (build / "CMakeFiles" / "_C.dir" / "flags.make").read_text()

    assert "-march=x86-64-v2" in configure("x86-64-v2").split()
    assert "-march=x86-64-v3" in configure("x86-64-v3").split()
    (tree / "csrc" / "added.h").write_text("#pragma once\n")
    check = subprocess.run(["make", "-C", str(build), "cmake_check_build_system"], capture_output=True, text=True,
                           timeout=300)
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    header = build / "generated" / "tgfr_source_hash.h"
    assert header.read_text() == f'#define TGFR_SOURCE_HASH "{source_hash(tree)}"\n'
