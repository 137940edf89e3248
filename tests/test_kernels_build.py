"""CI check that the torch-free CUDA kernels of kernels/ compile with nvcc through CMake
(sm_80 and sm_90a, CMakeLists.txt). Needs no GPU; takes about a minute on 2 cores."""

import shutil
import subprocess
from pathlib import Path

import pytest

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
    compile_ = subprocess.run(
        ["cmake", "--build", str(build), "-j2"], capture_output=True, text=True, timeout=600
    )
    assert compile_.returncode == 0, compile_.stdout[-4000:] + compile_.stderr[-4000:]
    assert "warning" not in compile_.stdout.lower(), compile_.stdout[-4000:]
    assert (build / "libtgfr_kernels.a").stat().st_size > 0
    assert (build / "word_region_kernel_test").exists()
