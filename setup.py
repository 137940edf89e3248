"""Builds tgfr._C: the C++ op schemas and CPU kernels always, CUDA kernels when possible.

CUDA sources (csrc/cuda/*.cpp bindings and kernels/*.cu) are compiled only when the installed
torch is a CUDA build and a CUDA toolkit is found; set TGFR_NO_CUDA=1 to skip them anyway.
TGFR_CPU_ARCH sets -march for the CPU kernels (default: native, since every install compiles
on the machine that runs it).

The hash of the sources (tgfr/_source_hash.py) is compiled into the extension, so that importing
tgfr.ops from a checkout whose C++/CUDA sources changed since the build asks for a rebuild.
"""

import glob
import importlib.util
import os
from pathlib import Path

import setuptools
from setuptools import setup

# pyproject.toml's license = "MIT" (an SPDX expression) needs setuptools 77, and pip does not
# enforce [build-system] requires under --no-build-isolation: an older one fails with a schema dump.
if int(setuptools.__version__.split(".")[0]) < 77:
    raise SystemExit(f"tgfr builds with setuptools>=77, found {setuptools.__version__}: "
                     "pip install -U setuptools, then `pip install --no-build-isolation -e .` again")

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as error:  # pragma: no cover - build-time guidance only
    raise SystemExit(
        f"tgfr builds against the installed torch, and importing it failed ({error}): install torch "
        "first (pip install torch==2.13.0 on CPU machines), then `pip install --no-build-isolation -e .`"
    ) from error

ROOT = os.path.dirname(os.path.abspath(__file__))

# Loaded by file path, not imported: `import tgfr` would run the package's __init__ (and could
# find another installed tgfr) just to hash this checkout's sources.
_hash_spec = importlib.util.spec_from_file_location("_source_hash", os.path.join(ROOT, "tgfr", "_source_hash.py"))
_source_hash = importlib.util.module_from_spec(_hash_spec)
_hash_spec.loader.exec_module(_source_hash)


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

# Machine code for sm_80 (A100) and sm_90a (H100, H200), and compute_90 PTX that the driver compiles for a
# newer GPU, which would otherwise find no kernel image. A TORCH_CUDA_ARCH_LIST chooses instead: torch
# derives its flags from it only when no -gencode is given.
cuda_arch_flags = [] if os.environ.get("TORCH_CUDA_ARCH_LIST") else [
    "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a",
    "-gencode=arch=compute_90,code=compute_90"]

if build_cuda():
    extension = CUDAExtension(
        name="tgfr._C",
        sources=sources("csrc/*.cpp") + sources("csrc/cuda/*.cpp") + sources("kernels/*.cu"),
        include_dirs=[os.path.join(ROOT, "kernels")],
        define_macros=[("TGFR_WITH_CUDA", "1")],
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": ["-O3", "--use_fast_math", "-lineinfo", *cuda_arch_flags],
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


class BuildExtensionWithSourceHash(BuildExtension.with_options(use_ninja=True)):
    """Writes TGFR_SOURCE_HASH into a header of the build folder before compiling.

    Only csrc/ops.cpp includes it, so a source change recompiles that one file more; the header
    is rewritten only when the hash changes, since ninja rebuilds on its timestamp.
    """

    def build_extensions(self) -> None:
        generated = Path(self.build_temp).resolve() / "generated"
        header = generated / "tgfr_source_hash.h"
        content = f'#define TGFR_SOURCE_HASH "{_source_hash.source_hash(Path(ROOT))}"\n'
        if not header.exists() or header.read_text() != content:
            generated.mkdir(parents=True, exist_ok=True)
            header.write_text(content)
        for built in self.extensions:
            built.include_dirs.append(str(generated))
        super().build_extensions()


setup(ext_modules=[extension], cmdclass={"build_ext": BuildExtensionWithSourceHash})
