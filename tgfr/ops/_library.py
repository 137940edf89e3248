"""Loads the compiled extension, which registers the torch.ops.tgfr.* operators.

The extension must have been built from the C++/CUDA sources of this version of tgfr: one built
before a `git pull` would otherwise fail on an operator it lacks or run old kernels. Every build
carries the hash of its sources (tgfr/_source_hash.py); in a source checkout or an editable
install (csrc/ beside the tgfr package) it must match the sources there. An installed wheel ships
no sources and is consistent by construction, so there only a build without a hash (older than
this check) is refused.
"""

from pathlib import Path

try:
    from tgfr import _C
except ImportError as error:  # pragma: no cover - guidance for a broken install
    raise ImportError(
        "tgfr's compiled extension tgfr._C is missing or broken: reinstall with "
        "`pip install --no-build-isolation -e .` (see README.md)"
    ) from error

from tgfr._source_hash import source_hash

_REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
_IN_CHECKOUT = (_REPOSITORY_ROOT / "csrc").is_dir() and (_REPOSITORY_ROOT / "setup.py").is_file()
_BUILT_FROM = getattr(_C, "source_hash", None)

if _BUILT_FROM is None or (_IN_CHECKOUT and _BUILT_FROM != source_hash(_REPOSITORY_ROOT)):
    _sources = f"those in {_REPOSITORY_ROOT} (csrc/, kernels/)" if _IN_CHECKOUT else "this version of tgfr"
    _checkout = str(_REPOSITORY_ROOT) if _IN_CHECKOUT else "tgfr's checkout"
    raise ImportError(
        f"tgfr's compiled extension {_C.__file__} is out of date: it was built from other C++/CUDA "
        f"sources than {_sources}, e.g. before a `git pull`. Rebuild it: in {_checkout}, "
        "`pip install --no-build-isolation -e .` or `python setup.py build_ext --inplace` (see README.md)"
    )
