"""Training of text-guided face recognition: configuration, stages (fr, align, fuse), loop,
checkpoints and the `tgfr train` command."""

from tgfr.train.config import TrainConfig, load_config, to_toml
from tgfr.train.run import train

__all__ = ["TrainConfig", "load_config", "to_toml", "train"]
