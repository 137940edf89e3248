import io
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from tgfr.data.convert import convert_tgfr_tree
from tgfr.data.degrade import degrade_manifest
from tgfr.data.files import check_image, load_image, read_caption_file, to_rgb
from tgfr.data.image_cache import DecodedImageCache
from tgfr.data.manifest import ManifestRecord, read_manifest, write_manifest
from tgfr.data.transforms import EvalTransform, TrainTransform


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
    records, skipped, _ = convert_tgfr_tree(tmp_path, bad_files="skip")
    assert [r.path for r in records] == ["images/test/1/1_1.png"]
    assert len(skipped) == 1 and "1_0.png is too large" in skipped[0]


# I;16 as a 16-bit PNG stores it (little-endian in memory), I;16B as a big-endian TIFF does.
@pytest.mark.parametrize(("mode", "byte_order", "file_name"), [("I;16", "<", "grey16.png"),
                                                               ("I;16B", ">", "grey16.tif")])
def test_16_bit_greyscale_is_scaled_to_8_bits(tmp_path, mode, byte_order, file_name):
    values = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / file_name
    Image.frombytes(mode, (64, 64), values.astype(f"{byte_order}u2").tobytes()).save(path)
    assert Image.open(path).mode == mode
    check_image(path)
    rgb = np.asarray(load_image(path))
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


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.mark.parametrize("damage", ["text_chunk_bomb", "truncated_header"])
@pytest.mark.parametrize("read", [check_image, load_image])
def test_pillows_value_errors_name_the_image(tmp_path, damage, read):
    """Pillow raises a plain ValueError for these, which escaped naming no file (SPEC section 5)."""
    path = tmp_path / "face.png"
    if damage == "text_chunk_bomb":
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * (8 << 20)))
        Image.new("RGB", (16, 16)).save(path, pnginfo=info)
    else:
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", b"\0\0\0\x10\0") + png_chunk(b"IEND", b""))
    with pytest.raises(ValueError, match=f"^image file {re.escape(str(path))} is corrupt or not an image"):
        read(path)


def test_the_check_refuses_a_png_whose_chunk_checksum_is_wrong(tmp_path):
    """Decoding alone takes it (load_image does); the check verifies the file, as its docstring says."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.find(b"IDAT")
    length = struct.unpack(">I", data[start - 4:start])[0]
    data[start + 4 + length] ^= 0xFF  # the first byte of IDAT's CRC
    path = tmp_path / "crc.png"
    path.write_bytes(bytes(data))
    load_image(path)
    with pytest.raises(ValueError, match=f"^image file {re.escape(str(path))} is corrupt or not an image"):
        check_image(path)


def test_truncated_jpeg_fails_the_check(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((112, 112, 3)) * 255).astype(np.uint8)).save(buffer, "JPEG")
    (tmp_path / "whole.jpg").write_bytes(buffer.getvalue())
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    check_image(tmp_path / "whole.jpg")
    with pytest.raises(ValueError, match=r"image file .*cut.jpg is corrupt .*truncated"):
        check_image(tmp_path / "cut.jpg")


@pytest.mark.parametrize("read", [load_image, check_image])
def test_a_missing_image_and_a_folder_in_its_place_are_named_as_such(tmp_path, read):
    with pytest.raises(ValueError, match=r"image file .*gone.png does not exist"):
        read(tmp_path / "gone.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ValueError, match=r"image file .*folder.png is a folder, not a file"):
        read(tmp_path / "folder.png")


# EXIF orientation -> the turn that shows the stored pixels upright, as numpy.rot90/flips give it.
UPRIGHT = {2: lambda a: a[:, ::-1], 3: lambda a: np.rot90(a, 2), 4: lambda a: a[::-1],
           5: lambda a: np.rot90(a, 1)[::-1], 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, -1)[::-1],
           8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_images_load_upright_as_their_exif_orientation_says(tmp_path, orientation):
    # A phone stores an upright portrait as landscape pixels tagged "turn 90 degrees" (orientation 6).
    stored = np.random.default_rng(orientation).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.png"  # lossless, so that pixels compare exactly
    Image.fromarray(stored).save(path, exif=exif)
    upright = UPRIGHT[orientation](stored)
    assert np.array_equal(np.asarray(load_image(path)), upright)
    assert np.array_equal(np.asarray(check_image(path)), upright)
    for budget in (1 << 20, 0):  # the decoded-image cache holds it upright, or reads it upright
        cache = DecodedImageCache(budget)
        cache.check(path)
        assert len(cache) == (budget > 0)
        assert np.array_equal(np.asarray(cache.load(path)), upright)


def test_transforms_turn_a_caller_opened_image_upright_as_load_image_does(tmp_path):
    """The transforms of an image the caller opened equal those of the file read by load_image, and of
    the stored pixels turned as orientation 6 says, once (load_image's image is not turned again)."""
    stored = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    with Image.open(path) as decoded:
        upright = Image.fromarray(np.rot90(np.asarray(decoded.convert("RGB")), -1).copy())
    for transform in (EvalTransform(32), TrainTransform(32)):
        with Image.open(path) as opened:
            results = [transform(image, np.random.default_rng(3)) for image in (opened, load_image(path), upright)]
            assert opened.size == (60, 40)  # the caller's image is left as it was
        assert results[0].shape == (3, 32, 32)
        assert torch.equal(results[0], results[2]) and torch.equal(results[1], results[2])


def test_a_degraded_copy_of_a_turned_image_is_upright(tmp_path):
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:, :30] = 255  # the stored left half, the upright top half
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    write_manifest(tmp_path / "m.jsonl", [ManifestRecord("phone.jpg", "1", "test", ("a face",))])
    manifest, _ = degrade_manifest(tmp_path / "m.jsonl", recipe="jpeg95")
    degraded = [r for r in read_manifest(manifest) if r.split == "test_degraded"][0]
    pixels = np.asarray(Image.open(tmp_path / degraded.path).convert("L")).astype(int)
    assert pixels.shape == (60, 40)
    assert pixels[:28].min() > 200 and pixels[32:].max() < 55



def test_an_image_whose_exif_holds_a_tag_of_the_wrong_type_still_loads_upright(tmp_path):
    """Orientation 6 plus an ASCII Make tag relabelled as tag 0x013e (WhitePoint, a rational): Pillow
    cannot re-encode that EXIF block, which ImageOps.exif_transpose does, but the pixels are fine."""
    stored = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010f] = "Cam"
    encoded = io.BytesIO()
    Image.fromarray(stored).save(encoded, format="JPEG", exif=exif, quality=95)  # JPEG: no checksum to fix
    (tmp_path / "phone.jpg").write_bytes(encoded.getvalue().replace(b"\x01\x0f\x00\x02", b"\x01\x3e\x00\x02", 1))
    with Image.open(tmp_path / "phone.jpg") as opened:
        assert opened.getexif()[0x013e] == "Cam"
        upright = np.rot90(np.asarray(opened.convert("RGB")), -1)  # the decoded pixels as stored, turned
    assert np.array_equal(np.asarray(load_image(tmp_path / "phone.jpg")), upright)
    assert np.array_equal(np.asarray(check_image(tmp_path / "phone.jpg")), upright)
    assert np.array_equal(np.asarray(to_rgb(load_image(tmp_path / "phone.jpg"))), upright)  # not turned twice
    write_manifest(tmp_path / "m.jsonl", [ManifestRecord("phone.jpg", "1", "test", ("a face",))])
    manifest, skipped = degrade_manifest(tmp_path / "m.jsonl", recipe="jpeg95", bad_images="skip")
    degraded = [r for r in read_manifest(manifest) if r.split == "test_degraded"]
    assert not skipped and len(degraded) == 1
    assert Image.open(tmp_path / degraded[0].path).size == (40, 60)


def test_a_caption_file_reads_without_its_byte_order_mark_and_its_lines_outer_white_space(tmp_path):
    """Notepad saves UTF-8 with a byte-order mark, which stayed at the start of the first caption; spaces and tabs
    around a line are not part of its caption (a TGFR caption line is one sentence)."""
    captions = ["The man has brown hair.", "He is smiling."]
    path = tmp_path / "4_1.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(f" \t{caption}  \t\r\n\n" for caption in captions).encode("utf-8"))
    assert read_caption_file(path) == captions


# 48 bytes of a JPEG 2000 file with one corrupt header byte: a box claiming 96 GB, which Pillow reads at once.
JP2_HEADER_OF_96_GB = bytes.fromhex("0000000c6a5020200d0a870a0000001466748c706a703220000000006a703220000000016a703268"
                                    "0000001669686472")


def damaged_blp() -> bytes:
    """A BLP2 file whose encoding byte is 63, which no BLP encoding is: Pillow's BLPFormatError, a
    NotImplementedError, while decoding."""
    buffer = io.BytesIO()
    Image.new("P", (24, 24)).save(buffer, "BLP")
    data = bytearray(buffer.getvalue())
    assert data[:4] == b"BLP2"
    data[8] = 63
    return bytes(data)


@pytest.mark.parametrize("name", ["face.jp2", "face.blp"])
def test_damaged_headers_that_pillow_fails_on_otherwise_are_corrupt_images_named_and_skipped(tmp_path, name):
    """A MemoryError (JPEG 2000) and a NotImplementedError (BLP) escaped naming no file, and bad_images="skip" and
    --skip-bad, which skip ValueErrors, stopped on them. On a machine whose memory holds 96 GB Pillow reads the
    header's few bytes and fails with an error already caught."""
    from tgfr.data.dataset import FaceCaptionDataset

    path = tmp_path / name
    path.write_bytes(JP2_HEADER_OF_96_GB if name.endswith(".jp2") else damaged_blp())
    for read in (check_image, load_image):
        with pytest.raises(ValueError, match=f"^image file {re.escape(str(path))} is corrupt or not an image"):
            read(path)
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    manifest = write_manifest(tmp_path / "m.jsonl", [ManifestRecord(name, "1", "train", ("a face",)),
                                                     ManifestRecord("good.png", "1", "train", ("a face",))])
    dataset = FaceCaptionDataset(manifest, split="train", bad_images="skip")
    assert len(dataset) == 1 and len(dataset.skipped) == 1 and str(path) in dataset.skipped[0]


def test_a_memory_error_while_decoding_is_not_blamed_on_the_image(tmp_path, monkeypatch):
    """Only a header read at open is the file's fault; while decoding, a MemoryError may be the process's own."""
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")

    def out_of_memory(image):
        raise MemoryError
    monkeypatch.setattr(Image.Image, "load", out_of_memory)
    with pytest.raises(MemoryError):
        load_image(tmp_path / "good.png")


@pytest.mark.parametrize("read", [check_image, load_image])
@pytest.mark.parametrize("error, reason", [(PermissionError(13, "Permission denied"), "Permission denied"),
                                           (OSError(5, "Input/output error"), "Input/output error")])
def test_an_image_the_system_cannot_read_is_named_so_not_called_corrupt(tmp_path, monkeypatch, read, error, reason):
    """A dataset copied with the wrong permissions, or a failing disk, was reported as "corrupt or not an image"
    (--skip-bad counted it so); caption files already say "cannot be read"."""
    path = tmp_path / "face.png"
    Image.new("RGB", (8, 8)).save(path)

    def unreadable(file, *arguments, **options):
        raise type(error)(error.errno, error.strerror, str(file))
    monkeypatch.setattr(Image, "open", unreadable)
    with pytest.raises(ValueError, match=f"^image file {re.escape(str(path))} cannot be read \\({reason}\\)$"):
        read(path)


def test_a_pillow_warning_of_the_check_names_the_image_once(tmp_path):
    """A corrupt EXIF block makes Pillow warn "Tag data larger than file" naming no file, at each of the check's
    two openings of it."""
    tiff = (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHII", 0x010E, 2, 100, 26)
            + struct.pack("<I", 0))  # ImageDescription, 100 bytes at an offset past the block's end
    path = tmp_path / "face.jpg"
    Image.new("RGB", (8, 8)).save(path, exif=b"Exif\x00\x00" + tiff)
    with pytest.warns(UserWarning) as caught:
        check_image(path)
    assert [str(warning.message) for warning in caught] == [
        f"image file {path}: Tag data larger than file. Skipping tag 270"]
