"""Reading the image and caption files a manifest points to (SPEC section 5).

A missing or unreadable file is an error that names it: a wrong sample is worse than none.
"""

import contextlib
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from tgfr.input_paths import file_problem


# EXIF orientation -> the turn that shows the stored pixels upright (as ImageOps.exif_transpose).
_UPRIGHT_TURN = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                 4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
                 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
# The image metadata from which Image.getexif reads an orientation tag.
_ORIENTATION_METADATA = ("exif", "Raw profile type exif", "XML:com.adobe.xmp", "xmp")


@contextlib.contextmanager
def _opened_image(path: Path) -> Iterator[Image.Image]:
    """Image.open whose every failure, in opening or in what the caller then reads, names the file."""
    if problem := file_problem(path):
        raise ValueError(f"image file {path} {problem}")
    image = None
    try:
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that: a header claiming a huge
        # image would then allocate gigabytes when decoded, so the warning refuses it too.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ValueError(f"image file {path} is too large to decode safely ({error})") from None
    # A damaged JPEG 2000 header's box size (96 GB) is read at once. Only while opening: later, in decoding,
    # a MemoryError may be this process's own, which no image explains.
    except MemoryError:
        if image is not None:
            raise
        raise ValueError(f"image file {path} is corrupt or not an image (MemoryError: its header claims more "
                         "data than memory holds)") from None
    # Pillow's own OSErrors ("image file is truncated") carry no errno; one that does is the system's (a
    # permission, a failing disk), about a file that may be a fine image.
    except OSError as error:
        if error.errno is not None and not isinstance(error, UnidentifiedImageError):
            raise ValueError(f"image file {path} cannot be read ({error.strerror})") from None
        raise ValueError(f"image file {path} is corrupt or not an image ({error})") from None
    # ValueError: Pillow's for a PNG text chunk too large to decompress, or a truncated header chunk.
    except (SyntaxError, ValueError) as error:
        raise ValueError(f"image file {path} is corrupt or not an image ({error})") from None
    # Format plugins reading a damaged header (BLP's BLPFormatError is a NotImplementedError), whose messages
    # alone ("Unknown BLP encoding 63", or none) do not say what failed.
    except (NotImplementedError, EOFError, IndexError, struct.error) as error:
        raise ValueError(f"image file {path} is corrupt or not an image ({type(error).__name__}: {error})") from None


def to_rgb(image: Image.Image, what: str = "image") -> Image.Image:
    """The image as 8-bit RGB (a new image), upright; errors name it as `what` ("image file x.png").

    Upright: turned as its EXIF orientation tag says, as image viewers show it. A phone stores an
    upright portrait as a landscape JPEG tagged "rotate by 90 degrees", which would otherwise be
    trained and evaluated on its side. The turned image has no orientation tag left, so converting
    it again turns nothing.

    Image.convert clips 16-bit greyscale (mode I;16, a 16-bit PNG) at 255 instead of scaling it,
    which turns the face almost white: the top 8 bits are kept instead. 32-bit integer and float
    pixels (modes I and F) have no fixed range to scale from, so they are refused (ValueError).
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"{what} must be a PIL.Image.Image, got {type(image).__name__}")
    turn = _UPRIGHT_TURN.get(image.getexif().get(ExifTags.Base.Orientation, 1))
    if turn is not None:
        # Turned here rather than by ImageOps.exif_transpose, which also re-encodes the EXIF block
        # without the tag and so raises TypeError for a block holding any tag of an unexpected type
        # (a camera's text where a number belongs), which a viewer shows fine. Dropping the metadata
        # of the turned copy (the caller's image keeps its own) leaves no orientation to turn again.
        image = image.transpose(turn)
        for key in _ORIENTATION_METADATA:
            image.info.pop(key, None)
    if image.mode.startswith("I;16"):
        high_bytes = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(high_bytes, mode="L").convert("RGB")
    if image.mode in ("I", "F"):
        raise ValueError(f"{what} has {'32-bit integer' if image.mode == 'I' else 'floating-point'} "
                         f"pixels (mode {image.mode}) of no fixed range; convert it to 8-bit RGB")
    if image.mode == "La":  # premultiplied alpha, which PIL converts to RGB only through LA
        image = image.convert("LA")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Opens an image file fully (so truncation is caught here) as 8-bit RGB, upright (to_rgb)."""
    path = Path(path)
    with _opened_image(path) as image:
        image.load()
    # Outside the block, whose errors are all Pillow's: to_rgb's own already name the file.
    return to_rgb(image, f"image file {path}")


def check_image(path: str | Path) -> Image.Image:
    """Raises naming `path` unless it is an image file that decodes completely; returns the decoded
    image, as load_image gives it (8-bit RGB, upright), for a caller that keeps it.

    Image.verify checks the structure (PNG chunk checksums) without decoding; decoding then
    catches what verify cannot see, such as truncated JPEG scan data, which would otherwise fail
    only when the image is first loaded, in the middle of training. Both together cost about
    0.2 ms (JPEG) to 0.3 ms (PNG) per 112x112 image, verify alone 0.02 ms: a minute per 200k images.

    A warning of Pillow's about the file (a corrupt EXIF block) is warned again once, as "image file
    <path>: <message>", when the file passes.
    """
    path = Path(path)
    # Pillow warns of what it passes over (a corrupt EXIF block: "Tag data larger than file") naming no file,
    # once per opening: each distinct warning is given again once, naming the file. Here only, not in
    # load_image, which the training's prefetch thread runs: catch_warnings swaps process-wide state.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _opened_image(path) as image:
            image.verify()
        decoded = load_image(path)  # verify leaves the image unusable: open it again to decode
    for category, message in dict.fromkeys((warning.category, str(warning.message)) for warning in caught):
        warnings.warn(f"image file {path}: {message}", category, stacklevel=2)
    return decoded


def read_text_file(path: str | Path, what: str, encoding: str = "utf-8") -> str:
    """The text of a UTF-8 file; a missing or unreadable file (permissions, an I/O error) or a bad byte is a
    ValueError naming it as `what` (so that --skip-bad skips a caption file that cannot be read, as an image).

    Read as bytes, not with read_text: newline translation would turn a quoted "\r" or "\r\n"
    inside a CSV field into "\n".
    """
    path = Path(path)
    if problem := file_problem(path):
        raise ValueError(f"{what} {path} {problem}")
    try:
        return path.read_bytes().decode(encoding)
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {path} is not valid UTF-8 (byte {error.start})") from None
    except OSError as error:
        raise ValueError(f"{what} {path} cannot be read ({error.strerror})") from None


def text_lines(text: str) -> list[str]:
    """The lines of `text`, ended by "\n" or "\r\n" only.

    str.splitlines also ends a line at a form feed, U+2028, U+0085 and other characters that a
    caption or a file name may hold, which would cut one line into two.
    """
    return [line.removesuffix("\r") for line in text.split("\n")]


def read_caption_file(path: str | Path) -> list[str]:
    """Reads one caption per non-empty line of a UTF-8 text file; empty files are an error."""
    path = Path(path)
    text = read_text_file(path, "caption file", encoding="utf-8-sig")
    captions = [line.strip() for line in text_lines(text) if line.strip()]
    if not captions:
        raise ValueError(f"caption file {path} is empty: expected one caption per line")
    return captions
