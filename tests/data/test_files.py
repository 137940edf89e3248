import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tgfr.data.convert import convert_tgfr_tree
from tgfr.data.files import check_image, load_image


def png_header_only(width: int, height: int) -> bytes:
    """A greyscale PNG whose header claims width x height pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 10))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("pixels", [150, 300])  # between the limit and twice it Pillow only warns
def test_decompression_bomb_is_an_error_naming_the_file(tmp_path, monkeypatch, pixels):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(pixels, 1))
    for read in (check_image, load_image):
        with pytest.raises(ValueError, match=r"image file .*bomb.png is too large to decode safely"):
            read(path)


def test_convert_skips_a_decompression_bomb(tmp_path):
    (tmp_path / "images/test/1").mkdir(parents=True)
    (tmp_path / "text/1").mkdir(parents=True)
    (tmp_path / "images/test/1/1_0.png").write_bytes(png_header_only(20000, 20000))  # over 2 * MAX_IMAGE_PIXELS
    Image.new("RGB", (8, 8)).save(tmp_path / "images/test/1/1_1.png")
    for k in range(2):
        (tmp_path / f"text/1/1_{k}.txt").write_text("a face\n")
    records, skipped = convert_tgfr_tree(tmp_path, bad_files="skip")
    assert [r.path for r in records] == ["images/test/1/1_1.png"]
    assert len(skipped) == 1 and "1_0.png is too large" in skipped[0]


def test_16_bit_greyscale_is_scaled_to_8_bits(tmp_path):
    values = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode == "I;16"
    check_image(tmp_path / "grey16.png")
    rgb = np.asarray(load_image(tmp_path / "grey16.png"))
    assert rgb.shape == (64, 64, 3)
    for channel in range(3):
        assert np.array_equal(rgb[..., channel], values >> 8)


@pytest.mark.parametrize("array", [np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8),
                                   np.arange(64, dtype=np.int32).reshape(8, 8) * 1000])
def test_pixels_of_no_fixed_range_are_refused(tmp_path, array):
    path = tmp_path / "wide.tif"
    Image.fromarray(array).save(path)
    mode = Image.open(path).mode
    assert mode in ("F", "I")
    for read in (check_image, load_image):
        with pytest.raises(ValueError, match=rf"image file .*wide.tif has .* pixels \(mode {mode}\)"):
            read(path)


def test_truncated_jpeg_fails_the_check(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((112, 112, 3)) * 255).astype(np.uint8)).save(buffer, "JPEG")
    (tmp_path / "whole.jpg").write_bytes(buffer.getvalue())
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    check_image(tmp_path / "whole.jpg")
    with pytest.raises(ValueError, match=r"image file .*cut.jpg is corrupt .*truncated"):
        check_image(tmp_path / "cut.jpg")
