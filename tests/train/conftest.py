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
