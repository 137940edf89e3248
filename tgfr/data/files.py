"""Reading the image and caption files a manifest points to (SPEC section 5).

A missing or unreadable file is an error that names it: a wrong sample is worse than none.
"""

import contextlib
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, UnidentifiedImageError


@contextlib.contextmanager
def _opened_image(path: Path) -> Iterator[Image.Image]:
    """Image.open whose every failure, in opening or in what the caller then reads, names the file."""
    if not path.is_file():
        raise ValueError(f"image file {path} does not exist")
    try:
        with Image.open(path) as image:
            yield image
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"image file {path} is corrupt or not an image ({error})") from None


def load_image(path: str | Path) -> Image.Image:
    """Opens an image file fully (so truncation is caught here) as RGB."""
    with _opened_image(Path(path)) as image:
        image.load()
        return image.convert("RGB")


def check_image(path: str | Path) -> None:
    """Raises naming `path` unless it is an image file whose header and structure are sound.

    Cheap enough to run over a whole dataset before training (Image.verify reads the file without
    decoding pixels): it catches missing files, non-images, broken headers and corrupt or truncated
    PNGs. Truncated JPEG scan data is only found by decoding, in load_image.
    """
    with _opened_image(Path(path)) as image:
        image.verify()


def read_text_file(path: str | Path, what: str, encoding: str = "utf-8") -> str:
    """The text of a UTF-8 file; a missing file or a bad byte is an error naming it as `what`.

    Read as bytes, not with read_text: newline translation would turn a quoted "\r" or "\r\n"
    inside a CSV field into "\n".
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist or is not a file")
    try:
        return path.read_bytes().decode(encoding)
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {path} is not valid UTF-8 (byte {error.start})") from None


def read_caption_file(path: str | Path) -> list[str]:
    """Reads one caption per non-empty line of a UTF-8 text file; empty files are an error."""
    path = Path(path)
    text = read_text_file(path, "caption file", encoding="utf-8-sig")
    captions = [line.strip() for line in text.splitlines() if line.strip()]
    if not captions:
        raise ValueError(f"caption file {path} is empty: expected one caption per line")
    return captions
