"""The hash of the C++/CUDA sources that tgfr._C is built from.

setup.py and CMakeLists.txt compile it into tgfr._C (as `tgfr._C.source_hash`), and
tgfr/ops/_library.py recomputes it from a source checkout to refuse an extension built from
other sources. Standard library only: setup.py loads this file by path, before tgfr can be
imported, and CMake runs it as a script (`python _source_hash.py ROOT [--files]`).
"""

import hashlib
import sys
from pathlib import Path

# Every file the build of tgfr._C reads, CPU or CUDA (kernels/tests/ is not part of it). A CPU
# build hashes the CUDA sources too, so one checkout has one hash whatever the machine.
SOURCE_PATTERNS = ("csrc/**/*.cpp", "csrc/**/*.h", "kernels/*.cu", "kernels/*.cuh")


def source_files(root: Path) -> list[Path]:
    """The extension's source files under the repository root `root`, sorted by relative path."""
    files = {path for pattern in SOURCE_PATTERNS for path in root.glob(pattern) if path.is_file()}
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def source_hash(root: Path) -> str:
    """SHA-256 (hex) of the relative paths and contents of `source_files(root)`."""
    digest = hashlib.sha256()
    for path in source_files(root):
        name = path.relative_to(root).as_posix().encode()
        content = path.read_bytes()
        # Length prefixes keep two different file sets from hashing the same concatenation.
        digest.update(len(name).to_bytes(8, "little") + name + len(content).to_bytes(8, "little") + content)
    return digest.hexdigest()


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["--files"]):
        sys.exit("usage: python _source_hash.py ROOT [--files]")
    root = Path(sys.argv[1]).resolve()
    if sys.argv[2:]:
        # CMake list syntax: CMakeLists.txt reconfigures when one of these files changes.
        print(";".join(path.as_posix() for path in source_files(root)))
    else:
        print(source_hash(root))
