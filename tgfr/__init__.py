"""tgfr: fused kernels and training for text-guided face recognition.

Submodules load on first use, so `import tgfr.data` works without the compiled extension and
`tgfr.ops` loads `tgfr._C` (the C++ operators) only when asked for.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = ("ops", "reference", "losses", "models", "data", "metrics", "train", "evaluation")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"tgfr.{name}")
    raise AttributeError(f"module 'tgfr' has no attribute {name!r}")
