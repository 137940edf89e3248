"""Evaluation of text-guided face recognition: embeddings, protocols, plots and the report.

`evaluate` loads lazily (like the `tgfr` package), so the command line parses its options
without importing the models, torch or transformers.
"""

import importlib
from typing import Any

__all__ = ["evaluate"]


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        return importlib.import_module("tgfr.evaluation.run").evaluate
    raise AttributeError(f"module 'tgfr.evaluation' has no attribute {name!r}")
