"""Loads the compiled extension, which registers the torch.ops.tgfr.* operators."""

try:
    from tgfr import _C  # noqa: F401
except ImportError as error:  # pragma: no cover - guidance for a broken install
    raise ImportError(
        "tgfr's compiled extension tgfr._C is missing or broken: reinstall with "
        "`pip install --no-build-isolation -e .` (see README.md)"
    ) from error
