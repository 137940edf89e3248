"""Loads the compiled extension, which registers the torch.ops.tgfr.* operators.

In a source checkout or an editable install (csrc/ beside the tgfr package), the extension must
have been built from the C++/CUDA sources there: one built before a `git pull` would otherwise
fail on an operator it lacks or run old kernels. An installed wheel ships no sources and is
consistent by construction, so it skips the check.
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

if (_REPOSITORY_ROOT / "csrc").is_dir() and (_REPOSITORY_ROOT / "setup.py").is_file():
    _built_from = getattr(_C, "source_hash", None)
    if _built_from != source_hash(_REPOSITORY_ROOT):
        raise ImportError(
            f"tgfr's compiled extension {_C.__file__} is out of date: it was built from other C++/CUDA "
            f"sources than those in {_REPOSITORY_ROOT} (csrc/, kernels/), e.g. before a `git pull`. "
            f"Rebuild it: in {_REPOSITORY_ROOT}, `pip install --no-build-isolation -e .` "
            "or `python setup.py build_ext --inplace` (see README.md)"
        )
