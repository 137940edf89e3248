"""Training of text-guided face recognition: configuration, stages (fr, align, fuse), loop,
checkpoints and the `tgfr train` command.

Names load lazily (like the `tgfr` package), so the command line parses its options, and
`tgfr.train.config` checks a config, without importing the models, torch or transformers.
"""

import importlib
from typing import Any

_EXPORTS = {"TrainConfig": "config", "load_config": "config", "to_toml": "config", "train": "run"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"tgfr.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'tgfr.train' has no attribute {name!r}")
