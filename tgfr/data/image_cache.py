"""Decoded training images kept in memory, up to a byte budget.

A dataset checks every image at construction by decoding it completely (files.check_image), so
keeping what fits of those decodings costs no extra reads: every later epoch then skips the file
read and decode (PNG: about 0.6 ms per 112 x 112 image on one Xeon core) for the kept images and
reads the others from disk as before. The images are kept in the order they are checked until the
budget is spent; with an epoch touching every image once, no eviction policy would hit more often.
The cache is filled once and only read afterwards, so a prefetch thread and forked loader workers
(which inherit it) can share it without locks. Workers started otherwise (spawn, forkserver) get
the dataset pickled, and a pickled cache arrives empty: they read the files, as without a cache,
rather than receive a copy of every kept image each epoch.
"""

from pathlib import Path

from PIL import Image

from tgfr.data.files import check_image, load_image

# Pillow holds an RGB pixel in 4 bytes (RGBX), not 3.
_BYTES_PER_PIXEL = 4
# What `tgfr train` keeps per process: the whole training split of the embedded synthetic datasets
# (112 x 112 PNGs, 49 KiB each decoded), or 4096 faces of 256 x 256.
DEFAULT_IMAGE_CACHE_BYTES = 1 << 30


class DecodedImageCache:
    """Images decoded by `check`, kept while their pixels fit in `budget_bytes` (0 keeps none).

    One cache can serve several datasets over the same files (the stages of a training run): an
    image it holds is not decoded again by `check`.
    """

    def __init__(self, budget_bytes: int):
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int) or budget_bytes < 0:
            # Worded for every caller: train()'s image_cache_bytes arrives here as it is.
            raise ValueError(f"the image cache's budget must be an integer number of bytes >= 0, got {budget_bytes!r}")
        self.budget_bytes = budget_bytes
        self.used_bytes = 0
        self._images: dict[Path, Image.Image] = {}
        self.sizes: dict[Path, tuple[int, int]] = {}  # (width, height) of every image checked, kept or not

    def __len__(self) -> int:
        return len(self._images)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": {}, "used_bytes": 0, "sizes": {}}

    def check(self, path: Path) -> None:
        """files.check_image(path), keeping the decoded image if it still fits the budget."""
        if path in self._images:
            return
        image = check_image(path)
        self.sizes[path] = image.size
        size = image.width * image.height * _BYTES_PER_PIXEL
        if self.used_bytes + size <= self.budget_bytes:
            self._images[path] = image
            self.used_bytes += size

    def load(self, path: Path) -> Image.Image:
        """The image as files.load_image(path) gives it: a copy of the kept one (a transform may
        change the image it gets in place), or read from disk."""
        kept = self._images.get(path)
        return kept.copy() if kept is not None else load_image(path)
