import subprocess
import sys

import pytest

from tgfr.train.checkpoint import rng_state

# A test-only shrink of the quick preset: a 16-identity synthetic set at 32x32, a tiny backbone and
# a few steps per stage (the packaged MiniLM still encodes the captions).
TINY = [
    "data.synthetic_identities=16", "data.synthetic_images_per_identity=4", "data.synthetic_captions_per_image=2",
    "data.image_size=32", "data.identities_per_batch=4", "data.images_per_identity=2",
    "model.width=4", "model.num_features=32", "model.dim=16", "model.fine_dim=8",
    "fr.steps=4", "align.steps=4", "fuse.steps=4", "checkpoint_every=3", "log_every=1", "threads=1",
    "fr.optim.warmup_steps=2", "align.optim.warmup_steps=2", "fuse.optim.warmup_steps=2",
    "evaluation.bootstrap_resamples=20", "evaluation.heatmap_captions=2", "evaluation.max_rank=5",
]


@pytest.fixture(scope="session")
def tiny_overrides(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tgfr-cache")
    return TINY + [f'data.cache_dir="{cache}"']


@pytest.fixture
def checkpoint_state():
    """Factory of a well-formed training checkpoint (every part load_checkpoint requires), parts replaced
    by keyword."""
    def make(**parts):
        return {"stage": "fr", "step": 1, "model": {}, "losses": {}, "optimizer": {"state": {}, "param_groups": []},
                "scheduler": {}, "rng": [rng_state()], **parts}
    return make


@pytest.fixture
def kill_while_writing():
    """kill(path): a process that dies (os._exit: no exception handler runs, as with SIGKILL) halfway
    through save_checkpoint(path), leaving its temporary file beside path; returns that file."""
    def kill(path):
        script = (
            "import os, sys\n"
            "from tgfr.train import checkpoint\n"
            "def die(state, stream):\n"
            "    stream.write(b'half a checkpoint'); stream.flush(); os._exit(9)\n"
            "checkpoint.torch.save = die\n"
            "checkpoint.save_checkpoint(sys.argv[1], {'step': 1})\n")
        result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 9, result.stderr
        (leftover,) = [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
        assert leftover.read_bytes() == b"half a checkpoint" and leftover.name.startswith(f".{path.name}.")
        return leftover
    return kill
