"""Builds tgfr._C: the C++ op schemas and CPU kernels always, CUDA kernels when possible.

CUDA sources (csrc/cuda/*.cpp bindings and kernels/*.cu) are compiled only when the installed
torch is a CUDA build and a CUDA toolkit is found; set TGFR_NO_CUDA=1 to skip them anyway.
TGFR_CPU_ARCH sets -march for the CPU kernels (default: native, since every install compiles
on the machine that runs it).
"""

import glob
import os

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as error:  # pragma: no cover - build-time guidance only
    raise SystemExit(
        f"tgfr builds against the installed torch, and importing it failed ({error}): install torch "
        "first (pip install torch==2.13.0 on CPU machines), then `pip install --no-build-isolation -e .`"
    ) from error

ROOT = os.path.dirname(os.path.abspath(__file__))


def sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, pattern)))


def build_cuda() -> bool:
    if os.environ.get("TGFR_NO_CUDA") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None and bool(sources("kernels/*.cu"))


cpu_arch = os.environ.get("TGFR_CPU_ARCH", "native")
# -fno-math-errno and -fno-trapping-math let GCC vectorize the exp loops of csrc/vector_math.h
# (with trapping math, its floor and float-to-int conversion keep every loop that stores an exp
# scalar); neither changes a value, NaN or inf, only errno and the floating-point status flags.
cxx_flags = ["-O3", "-std=c++20", "-fopenmp", f"-march={cpu_arch}", "-fno-math-errno", "-fno-trapping-math"]
link_flags = ["-fopenmp"]

if build_cuda():
    extension = CUDAExtension(
        name="tgfr._C",
        sources=sources("csrc/*.cpp") + sources("csrc/cuda/*.cpp") + sources("kernels/*.cu"),
        include_dirs=[os.path.join(ROOT, "kernels")],
        define_macros=[("TGFR_WITH_CUDA", "1")],
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": [
                "-O3",
                "--use_fast_math",
                "-lineinfo",
                "-gencode=arch=compute_80,code=sm_80",
                "-gencode=arch=compute_90a,code=sm_90a",
            ],
        },
        extra_link_args=link_flags,
    )
else:
    extension = CppExtension(
        name="tgfr._C",
        sources=sources("csrc/*.cpp"),
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )

setup(ext_modules=[extension], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
