"""Image transforms for face crops, written with PIL/numpy/torch (no torchvision).

Both transforms map a PIL image of any mode to a float32 tensor (3, size, size) in [-1, 1]
(mean = std = 0.5 per channel, as arcface_torch). They first convert it to upright 8-bit RGB as
`load_image` does (`tgfr.data.files.to_rgb`: turned as its EXIF orientation tag says, 16-bit
greyscale keeps its top 8 bits, 32-bit integer and float pixels are refused), so an image opened
by the caller gives what the file read by `load_image` gives. They draw their randomness from the
numpy Generator they are given, so a dataset can make every sample reproducible.
"""

import numpy as np
import torch
from PIL import Image, ImageOps

from tgfr.data.degrade import check_generator
from tgfr.data.files import to_rgb
from tgfr.validation import check_count, check_finite_number

IMAGE_SIZE = 112


def _normalized_tensor(rgb: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image (H, W) -> float32 tensor (3, H, W) with (x / 255 - 0.5) / 0.5."""
    array = np.asarray(rgb, dtype=np.float32)
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return tensor.div_(127.5).sub_(1.0)


def _resized(image: Image.Image, size: int) -> Image.Image:
    if image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BILINEAR)


class EvalTransform:
    """Resize to size x size and normalize; deterministic."""

    def __init__(self, size: int = IMAGE_SIZE):
        self.size = check_count("size", size)  # else PIL's error at the first image, or 1 x 1 for True

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        """PIL image (any size and mode) -> (3, size, size) float32 in [-1, 1]; TypeError for
        anything but a PIL image, ValueError for 32-bit integer or float pixels."""
        return _normalized_tensor(_resized(to_rgb(image), self.size))


class TrainTransform:
    """Resize, horizontal flip (p=0.5), grayscale (p=0.2, kept 3-channel), normalize."""

    def __init__(self, size: int = IMAGE_SIZE, flip_p: float = 0.5, grayscale_p: float = 0.2):
        for name, value in (("flip_p", flip_p), ("grayscale_p", grayscale_p)):
            if not 0.0 <= check_finite_number(name, value) <= 1.0:  # NaN would silently never flip
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        self.size, self.flip_p, self.grayscale_p = check_count("size", size), float(flip_p), float(grayscale_p)

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        """As EvalTransform, with the random flip and greyscale drawn from `rng` (None: a fresh generator)."""
        rng = rng if rng is not None else np.random.default_rng()
        check_generator(rng)
        image = _resized(to_rgb(image), self.size)
        if rng.random() < self.flip_p:
            image = ImageOps.mirror(image)
        if rng.random() < self.grayscale_p:
            image = image.convert("L").convert("RGB")
        return _normalized_tensor(image)
