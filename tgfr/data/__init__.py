"""Data for text-guided face recognition: manifests, datasets, samplers, protocols,
degradations, converters of the released layouts and the synthetic face-caption set.

Names load lazily (like the `tgfr` package), so worker processes that render or degrade
images do not import torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "ManifestRecord": "manifest", "read_manifest": "manifest", "write_manifest": "manifest",
    "select_split": "manifest", "identity_labels": "manifest",
    "load_image": "files", "check_image": "files", "read_caption_file": "files", "to_rgb": "files",
    "TrainTransform": "transforms", "EvalTransform": "transforms", "IMAGE_SIZE": "transforms",
    "FaceCaptionDataset": "dataset", "CaptionCollator": "dataset",
    "IdentityBalancedBatchSampler": "sampler", "ShuffledBatchSampler": "sampler",
    "VerificationPair": "protocol", "make_verification_pairs": "protocol",
    "make_identification_split": "protocol", "write_verification_pairs": "protocol",
    "read_verification_pairs": "protocol", "write_identification_split": "protocol",
    "read_identification_split": "protocol",
    "degrade_image": "degrade", "degrade_records": "degrade", "degrade_manifest": "degrade",
    "parse_recipe": "degrade",
    "convert_tgfr_tree": "convert", "convert_celeba_dialog": "convert", "read_split_list": "convert",
    "SyntheticConfig": "synthetic", "SYNTHETIC_PRESETS": "synthetic", "DEFAULT_DEGRADATION": "synthetic",
    "generate_synthetic_dataset": "synthetic", "ensure_synthetic_dataset": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"tgfr.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'tgfr.data' has no attribute {name!r}")
