import colorsys
import os
import re
import zlib
from pathlib import PurePath

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter, ImageOps

import tgfr.data.degrade as degrade_module
from tgfr.cli import main
from tgfr.data.degrade import (add_gaussian_noise, adjust_brightness, adjust_hue, check_recipe_fits, degrade_image,
                               degrade_manifest, degrade_records, degraded_path, down_up, gaussian_blur, image_rng,
                               jpeg)
from tgfr.data.files import load_image
from tgfr.data.manifest import ManifestRecord, read_manifest, write_manifest
from tgfr.data.synthetic import GENERATOR_VERSION
from tgfr.data.synthetic_faces import identity_attributes, image_state, render_face
from tgfr.data.transforms import EvalTransform


def face(identity=3, image=0):
    attributes = identity_attributes(0, identity)
    return render_face(attributes, image_state(0, identity, image, attributes), GENERATOR_VERSION)


def high_frequency_energy(image: Image.Image) -> float:
    """Energy of the discrete Laplacian (a high-pass filter) of the luminance."""
    y = np.asarray(image.convert("L"), dtype=np.float64)
    laplacian = 4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:]
    return float(np.mean(laplacian ** 2))


def mse(a: Image.Image, b: Image.Image) -> float:
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def test_gaussian_blur_matches_2d_convolution():
    image = face()
    sigma, k = 2.5, 5
    x = torch.arange(k, dtype=torch.float64) - k // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    kernel2d = torch.outer(g, g) / g.sum() ** 2
    t = torch.from_numpy(np.asarray(image, np.float64)).permute(2, 0, 1)[:, None]
    expected = F.conv2d(F.pad(t, (2, 2, 2, 2), mode="reflect"), kernel2d[None, None])[:, 0].permute(1, 2, 0)
    got = np.asarray(gaussian_blur(image, k, sigma), np.float64)
    assert np.abs(got - expected.numpy()).max() <= 0.5 + 1e-9  # rounding to uint8 only
    assert high_frequency_energy(gaussian_blur(image, k, sigma)) < 0.3 * high_frequency_energy(image)


def test_down_up_at_16_loses_more_than_at_32():
    image = face()
    errors = {s: mse(image, down_up(image, s)) for s in (16, 24, 32)}
    assert errors[16] > errors[24] > errors[32] > 0
    energy = {s: high_frequency_energy(down_up(image, s)) for s in (16, 32)}
    assert energy[16] < energy[32] < high_frequency_energy(image)
    assert down_up(image, 16).size == image.size


def test_jpeg_quality_orders_error():
    image = face()
    assert mse(image, jpeg(image, 10)) > mse(image, jpeg(image, 50)) > mse(image, jpeg(image, 95))


def test_noise_brightness_and_hue():
    grey = Image.new("RGB", (112, 112), (128, 128, 128))
    noisy = np.asarray(add_gaussian_noise(grey, 0.002 ** 0.5, np.random.default_rng(0)), np.float64) / 255
    assert abs(noisy.std() - 0.002 ** 0.5) < 0.003
    assert np.asarray(adjust_brightness(grey, 1.5))[0, 0, 0] == 192
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    cyan = np.asarray(adjust_hue(red, 0.5))[0, 0]
    assert cyan[0] < 10 and cyan[1] > 245 and cyan[2] > 245
    assert np.array_equal(np.asarray(adjust_hue(red, 0.0)), np.asarray(red))
    # A third of a turn tells the direction, which half a turn cannot: a positive shift adds to the hue (red 0,
    # green 1/3, blue 2/3), as torchvision's adjust_hue does; PIL's 8-bit hue lands within a level of 256 of it.
    for shift in (1 / 3, -1 / 3):
        expected = 255 * np.array(colorsys.hsv_to_rgb(shift % 1, 1.0, 1.0))
        assert np.abs(np.asarray(adjust_hue(red, shift))[0, 0] - expected).max() < 10, shift


@pytest.mark.parametrize("recipe", ["celeba", "face2text", "down24+celeba", "jpeg20"])
def test_recipes_are_seeded_and_change_the_image(recipe):
    image = face()
    a = degrade_image(image, recipe, np.random.default_rng(5))
    b = degrade_image(image, recipe, np.random.default_rng(5))
    c = degrade_image(image, recipe, np.random.default_rng(6))
    assert a.size == image.size
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert mse(a, image) > 50
    if recipe != "jpeg20":
        assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_tgfr_recipes_blur():
    image = face()
    for recipe in ("celeba", "face2text"):
        # A median filter removes the additive noise; what is left of the edges is blurred.
        energies = [high_frequency_energy(degrade_image(image, recipe, np.random.default_rng(s))
                                          .filter(ImageFilter.MedianFilter(3))) for s in range(3)]
        assert max(energies) < 0.6 * high_frequency_energy(image.filter(ImageFilter.MedianFilter(3)))


def tgfr_steps(image, rng, max_angle, kernel_size, sigma, hue, noise_variance, mirror=True):
    """The steps of TGFR's recipes, written out: flip (drawn, and made unless not `mirror`), rotation with white
    fill, blur, brightness, hue, noise."""
    if rng.random() < 0.5 and mirror:
        image = ImageOps.mirror(image)
    image = image.rotate(rng.uniform(-max_angle, max_angle), Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))
    image = gaussian_blur(image, kernel_size, rng.uniform(*sigma))
    image = adjust_brightness(image, rng.uniform(0.6, 1.4))
    image = adjust_hue(image, rng.uniform(-hue, hue))
    return add_gaussian_noise(image, noise_variance ** 0.5, rng)


def tgfr_celeba_recipe(image: Image.Image, rng: np.random.Generator, mirror=True) -> Image.Image:
    """TGFR's CelebA recipe (data/celeba/scripts/transform_fair.py), on an image of TGFR's 112 x 112."""
    assert image.size == (112, 112)
    return tgfr_steps(image, rng, max_angle=5, kernel_size=3, sigma=(2, 9), hue=0.5, noise_variance=0.002,
                      mirror=mirror)


def tgfr_face2text_recipe(image: Image.Image, rng: np.random.Generator, mirror=True) -> Image.Image:
    """TGFR's Face2Text recipe (data/face2text/scripts/transform.py): at 144 x 144, then back to the input size."""
    image_144 = image.resize((144, 144), Image.Resampling.BILINEAR)
    degraded = tgfr_steps(image_144, rng, max_angle=30, kernel_size=5, sigma=(1, 5), hue=0.2, noise_variance=0.005,
                          mirror=mirror)
    return degraded.resize(image.size, Image.Resampling.BILINEAR)


def test_down_up_is_bicubic_down_and_back():
    image = face()
    expected = image.resize((24, 24), Image.Resampling.BICUBIC, reducing_gap=None).resize(
        image.size, Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(down_up(image, 24)), np.asarray(expected))


def test_noise_and_brightness_round_to_the_nearest_level():
    """Truncating instead would darken every pixel by half a level on average."""
    grey = Image.new("RGB", (256, 256), (128, 128, 128))
    noisy = np.asarray(add_gaussian_noise(grey, 0.05, np.random.default_rng(0)), np.float64)
    assert abs(noisy.mean() - 128) < 0.2  # standard error about 0.04
    assert np.asarray(adjust_brightness(Image.new("RGB", (2, 2), (3, 3, 3)), 1.3))[0, 0, 0] == 4  # 3.9


@pytest.mark.parametrize("recipe", ["celeba", "face2text"])
def test_tgfr_recipes_are_their_steps_written_out(recipe):
    """celeba on a 112 x 112 image is TGFR's recipe unresized; face2text works at 144 and comes back."""
    image, written_out = face(), {"celeba": tgfr_celeba_recipe, "face2text": tgfr_face2text_recipe}[recipe]
    for seed in range(3):
        got = degrade_image(image, recipe, np.random.default_rng(seed))
        assert np.array_equal(np.asarray(got), np.asarray(written_out(image, np.random.default_rng(seed))))


@pytest.mark.parametrize("recipe", ["celeba", "face2text"])
def test_tgfr_recipes_without_their_flip_draw_it_and_make_the_other_steps(recipe):
    """mirror=False (images paired with captions that say left and right) leaves out the flip but still draws
    it: the other steps draw what they draw with the flip. Seeds 0-7 flip some images (checked)."""
    image, written_out = face(), {"celeba": tgfr_celeba_recipe, "face2text": tgfr_face2text_recipe}[recipe]
    flips = [np.random.default_rng(seed).random() < 0.5 for seed in range(8)]
    assert any(flips) and not all(flips)
    for seed in range(8):
        got = degrade_image(image, recipe, np.random.default_rng(seed), mirror=False)
        expected = written_out(image, np.random.default_rng(seed), mirror=False)
        assert np.array_equal(np.asarray(got), np.asarray(expected)), seed


def test_celeba_recipe_runs_at_112_whatever_the_source_size():
    big = face().resize((1024, 1024), Image.Resampling.BICUBIC)
    got = degrade_image(big, "celeba", np.random.default_rng(4))
    expected = tgfr_celeba_recipe(big.resize((112, 112), Image.Resampling.BILINEAR), np.random.default_rng(4))
    assert np.array_equal(np.asarray(got), np.asarray(expected))


def seen_at_112(image: Image.Image) -> np.ndarray:
    """What the model sees of an image: the evaluation transform's resize to 112."""
    return ((EvalTransform(112)(image).permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.float64)


@pytest.mark.parametrize("side", [218, 1024])
def test_celeba_noise_and_blur_seen_at_112_do_not_depend_on_the_source_size(side):
    def strength(side: int) -> tuple[float, float]:
        grey = Image.new("RGB", (side, side), (128, 128, 128))
        step = np.full((side, side, 3), 64, np.uint8)
        step[:, side // 2:] = 192
        noise, sharpness = [], []
        for seed in range(6):
            noise.append(seen_at_112(degrade_image(grey, "celeba", np.random.default_rng(seed)))[40:72, 40:72].std())
            profile = seen_at_112(degrade_image(Image.fromarray(step), "celeba", np.random.default_rng(seed)))
            profile = profile[48:64, 20:92].mean(axis=(0, 2))
            # Largest one-pixel change across the edge as a fraction of the step: 1 unblurred.
            sharpness.append(np.abs(np.diff(profile)).max() / abs(profile[-10:].mean() - profile[:10].mean()))
        return float(np.mean(noise)), float(np.mean(sharpness))

    noise, sharpness = strength(side)
    reference_noise, reference_sharpness = strength(112)
    # The recipe's noise std is sqrt(0.002) on the [0, 1] scale (brightness acts before it).
    assert abs(reference_noise - 255 * 0.002 ** 0.5) < 0.05 * 255 * 0.002 ** 0.5
    assert abs(noise - reference_noise) < 0.05 * reference_noise
    assert reference_sharpness < 0.45  # blurred: a sharp step moves by the whole step in one pixel
    assert abs(sharpness - reference_sharpness) < 0.05


def test_unknown_recipe():
    with pytest.raises(ValueError, match="unknown recipe step 'blurry'"):
        degrade_image(face(), "down16+blurry", np.random.default_rng(0))
    with pytest.raises(ValueError, match="JPEG quality"):
        degrade_image(face(), "jpeg0", np.random.default_rng(0))
    with pytest.raises(ValueError, match="recipe step 'down0': size must be positive"):
        degrade_image(face(), "down0", np.random.default_rng(0))


def test_down_sampling_to_a_size_no_smaller_than_the_image_is_refused():
    """down<S> with S at or above a side would hand back a near-clean (or up-sampled) "degraded" image."""
    image = face().crop((0, 0, 112, 100))
    for size in (100, 112, 240):
        with pytest.raises(ValueError, match=rf"recipe step 'down{size}': {size} must be below both sides of the "
                                             r"image, 112 x 100"):
            degrade_image(image, f"down{size}", np.random.default_rng(0))
    assert degrade_image(image, "down99", np.random.default_rng(0)).size == (112, 100)


@pytest.mark.parametrize("recipe", ["down111", "down112", "celeba+down111", "celeba+down112", "face2text+down150",
                                    "face2text+down160", "down150+celeba+down100", "jpeg30+down159"])
@pytest.mark.parametrize("size", [(112, 112), (160, 200)])
def test_a_recipe_is_checked_against_an_image_size_as_degrading_such_an_image_would_refuse_it(recipe, size):
    """check_recipe_fits (run before any image is read) refuses exactly the recipes that degrading an image of
    that size refuses, following the named recipes' resizing (celeba works at 112, face2text restores the size)."""
    image = Image.new("RGB", size, (120, 90, 70))
    try:
        degrade_image(image, recipe, np.random.default_rng(0))
    except ValueError as error:
        with pytest.raises(ValueError, match=re.escape(str(error))):
            check_recipe_fits(recipe, *size)
    else:
        check_recipe_fits(recipe, *size)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_down_sampling_too_large_for_the_images_stops_the_copy_naming_an_image(tmp_path, workers, capsys):
    manifest = make_manifest(tmp_path)
    before = manifest.read_bytes()
    with pytest.raises(ValueError, match=r"image .*images/test/\d/\d_0\.png: recipe step 'down112': 112 must be "
                                         r"below both sides of the image, 112 x 112"):
        degrade_manifest(manifest, "test", "down112", workers=workers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "manifest.jsonl"]
    assert manifest.read_bytes() == before
    assert main(["data", "degrade", "--manifest", str(manifest), "--recipe", "down240"]) == 2
    assert "recipe step 'down240': 240 must be below both sides" in capsys.readouterr().err


def test_image_generator_is_seeded_by_the_seed_and_the_crc32_of_the_path():
    """(seed, CRC32 of the path's UTF-8 bytes); a path that is not UTF-8 (a lone surrogate, as Python reads
    such a file name) gives the CRC32 of its bytes on disk."""
    for seed, path, data in [(0, "images/é/1.png", "images/é/1.png".encode()), (7, "a.png", b"a.png"),
                             (3, "\udcff.png", b"\xff.png")]:
        expected = np.random.default_rng((seed, zlib.crc32(data))).random(4)
        assert np.array_equal(image_rng(seed, path).random(4), expected)


def make_manifest(tmp_path, n=4):
    records = []
    for i in range(n):
        path = f"images/test/{i}/{i}_0.png"
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        face(i).save(tmp_path / path)
        records.append(ManifestRecord(path, str(i), "test", (f"caption {i}",)))
    records.append(ManifestRecord("images/train/9/9_0.png", "9", "train", ("c",)))
    return write_manifest(tmp_path / "manifest.jsonl", records)


def test_degrade_manifest_writes_split_reproducibly(tmp_path):
    manifest = make_manifest(tmp_path)
    out, skipped = degrade_manifest(manifest, "test", "down16", seed=1)
    records = read_manifest(out)
    degraded = [r for r in records if r.split == "test_degraded"]
    assert out.name == "manifest_test_degraded.jsonl" and not skipped
    assert len(records) == 9 and len(degraded) == 4
    for record in degraded:
        source = next(r for r in records if r.path == record.meta["source"])
        assert (record.identity, record.captions) == (source.identity, source.captions)
        expected = down_up(Image.open(tmp_path / source.path).convert("RGB"), 16)
        assert np.array_equal(np.asarray(Image.open(tmp_path / record.path)), np.asarray(expected))
    first = [(tmp_path / r.path).read_bytes() for r in degraded]
    again, _ = degrade_manifest(out, "test", "celeba", name="test_degraded", seed=1, out_manifest=out)
    records_again = read_manifest(again)
    assert len(records_again) == 9  # the earlier test_degraded records were replaced, not duplicated
    third, _ = degrade_manifest(manifest, "test", "down16", seed=1, workers=2)
    assert [(tmp_path / r.path).read_bytes() for r in read_manifest(third) if r.split == "test_degraded"] == first


def test_degraded_copies_of_images_outside_the_manifest_folder_stay_in_the_copy(tmp_path):
    # `tgfr data convert --out` into another folder writes "../" paths; "test_degraded/../data/..."
    # would land beside the manifest, here over a training image.
    (tmp_path / "data").mkdir()
    (tmp_path / "m/data").mkdir(parents=True)
    records = []
    for i in range(2):
        face(i).save(tmp_path / f"data/{i}.jpg", quality=95)
        records.append(ManifestRecord(f"../data/{i}.jpg", str(i), "test", ("c",)))
    face(7).save(tmp_path / "m/data/0.png")
    records.append(ManifestRecord("data/0.png", "7", "train", ("c",)))
    train_image = (tmp_path / "m/data/0.png").read_bytes()
    out, _ = degrade_manifest(write_manifest(tmp_path / "m/manifest.jsonl", records), "test", "down16")
    degraded = [r for r in read_manifest(out) if r.split == "test_degraded"]
    assert len(degraded) == 2 and (tmp_path / "m/data/0.png").read_bytes() == train_image
    for record in degraded:
        target = (tmp_path / "m" / record.path).resolve()
        assert target.is_relative_to((tmp_path / "m/test_degraded").resolve())
        expected = down_up(Image.open(tmp_path / "m" / record.meta["source"]).convert("RGB"), 16)
        assert np.array_equal(np.asarray(Image.open(target)), np.asarray(expected))


def test_degraded_images_depend_on_the_seed_and_the_path(tmp_path):
    """celeba draws from the image's generator: another --seed, or the same face at another path, gives
    another image (down16 and jpeg30, which draw nothing, cannot show it)."""
    records = []
    for i, folder in enumerate(("a", "b")):
        (tmp_path / folder).mkdir()
        face(3).save(tmp_path / folder / "face.png")
        records.append(ManifestRecord(f"{folder}/face.png", str(i), "test", ("c",)))
    manifest = write_manifest(tmp_path / "manifest.jsonl", records)
    copies = {}
    for seed in (0, 1):
        out, _ = degrade_manifest(manifest, "test", "celeba", name=f"seed{seed}", seed=seed)
        copies[seed] = [(tmp_path / r.path).read_bytes() for r in read_manifest(out) if r.split == f"seed{seed}"]
    assert copies[0][0] != copies[1][0] and copies[0][1] != copies[1][1]
    assert copies[0][0] != copies[0][1]  # the same face at paths a/ and b/


def test_a_degraded_copy_degraded_again_records_every_recipe_since_the_clean_image(tmp_path):
    """Its images are celeba then jpeg30: meta "recipe" said jpeg30 alone, and so did `tgfr evaluate`'s report.
    "source" stays the image degraded (protocol.py maps degraded pairs through it), and the image is jpeg30 of it."""
    manifest = make_manifest(tmp_path)
    degrade_manifest(manifest, "test", "celeba", seed=2, out_manifest=manifest)
    degrade_manifest(manifest, "test_degraded", "jpeg30", name="twice", seed=5, out_manifest=manifest)
    records = {r.path: r for r in read_manifest(manifest)}
    twice = [r for r in records.values() if r.split == "twice"]
    assert len(twice) == 4
    for record in twice:
        source = records[record.meta["source"]]
        assert source.split == "test_degraded" and source.meta["recipe"] == "celeba"
        assert record.meta == {"source": source.path, "recipe": "celeba+jpeg30", "seed": 5}
        expected = degrade_image(load_image(tmp_path / source.path), "jpeg30", image_rng(5, source.path))
        assert np.array_equal(np.asarray(Image.open(tmp_path / record.path)), np.asarray(expected))


def test_degrade_missing_image(tmp_path):
    manifest = make_manifest(tmp_path)
    (tmp_path / "images/test/2/2_0.png").unlink()
    with pytest.raises(ValueError, match=r"images/test/2/2_0.png does not exist"):
        degrade_manifest(manifest, "test", "down16")
    out, skipped = degrade_manifest(manifest, "test", "down16", bad_images="skip")
    assert len(skipped) == 1 and "2_0.png" in skipped[0]
    assert len([r for r in read_manifest(out) if r.split == "test_degraded"]) == 3


def test_an_image_that_breaks_after_its_check_stops_the_copy(tmp_path, monkeypatch):
    """Every image is checked before any is written, and again as it is degraded: an image that broke in
    between (here the check is made to pass a corrupt file) is an error naming it, not a record left out."""
    manifest = make_manifest(tmp_path)
    (tmp_path / "images/test/2/2_0.png").write_bytes(b"not an image any more")
    monkeypatch.setattr(degrade_module, "_check_one", lambda source: None)
    with pytest.raises(ValueError, match=r"images/test/2/2_0.png is corrupt or not an image .*\(1 image\(s\) failed"):
        degrade_manifest(manifest, "test", "down16")
    assert not (tmp_path / "manifest_test_degraded.jsonl").exists() and not (tmp_path / "test_degraded").exists()


def test_degrade_skip_bad_names_the_skipped_images(tmp_path, capsys):
    manifest = make_manifest(tmp_path, n=25)
    bad = [1, 3, *range(5, 25)]  # 22 images, in the manifest's order
    for i in bad[1:]:
        (tmp_path / f"images/test/{i}/{i}_0.png").write_bytes(b"not an image")
    (tmp_path / "images/test/1/1_0.png").unlink()
    assert main(["data", "degrade", "--manifest", str(manifest), "--recipe", "down16", "--skip-bad"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"wrote {tmp_path / 'manifest_test_degraded.jsonl'}; skipped 22 unreadable image(s)"
    # The first 20, one line each with the error that skipped it, then a count of the rest, which were named
    # nowhere: all 22 are in a file beside the manifest written, which that line names.
    listing = tmp_path / "manifest_test_degraded.jsonl.skipped.txt"
    assert len(lines) == 22 and lines[-1] == f"  ... and 2 more skipped; all 22 are listed in {listing}"
    for i, line in zip(bad[:20], lines[1:21]):
        assert line.startswith("  skipped: ") and str(tmp_path / f"images/test/{i}/{i}_0.png") in line
        assert ("does not exist" if i == 1 else "corrupt") in line
    listed = listing.read_text().splitlines()
    assert [f"  {line}" for line in listed[:20]] == lines[1:21] and len(listed) == 22
    for i, line in zip(bad, listed):
        assert line.startswith("skipped: ") and str(tmp_path / f"images/test/{i}/{i}_0.png") in line


@pytest.mark.parametrize("split, name", [("test", "train"),   # would move degraded test images into train
                                         ("test", "test"),    # would relabel the clean test split
                                         ("train", "test_degraded")])  # a degraded copy of another split
def test_degrade_refuses_an_existing_split_name(tmp_path, split, name):
    manifest = make_manifest(tmp_path)
    if name == "test_degraded":
        manifest, _ = degrade_manifest(manifest, "test", "down16", out_manifest=manifest)
        (tmp_path / "images/train/9").mkdir(parents=True)
        face(9).save(tmp_path / "images/train/9/9_0.png")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    with pytest.raises(ValueError, match=f"name '{name}' is already a split of .*manifest.jsonl that is not a "
                                         f"degraded copy of split '{split}'"):
        degrade_manifest(manifest, split, "down16", name=name, out_manifest=manifest)
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before  # nothing written


def test_an_earlier_copy_is_replaced_only_in_the_manifest_that_lists_it(tmp_path):
    """Degrading into the name of an earlier copy overwrites its images: only allowed when the
    manifest that lists them is the one rewritten."""
    manifest, _ = degrade_manifest(make_manifest(tmp_path), "test", "down16", out_manifest=tmp_path / "manifest.jsonl")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    with pytest.raises(ValueError, match="earlier degraded copy whose images would be overwritten"):
        degrade_manifest(manifest, "test", "jpeg30")
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before
    # celeba draws from the image's generator, seeded by the manifest path (not the folder's absolute one)
    replaced, _ = degrade_manifest(manifest, "test", "celeba", seed=5, out_manifest=manifest)
    for record in (r for r in read_manifest(replaced) if r.split == "test_degraded"):
        source = Image.open(tmp_path / record.meta["source"]).convert("RGB")
        expected = degrade_image(source, "celeba", image_rng(5, record.meta["source"]))
        assert record.meta["recipe"] == "celeba" and record.meta["seed"] == 5
        assert np.array_equal(np.asarray(Image.open(tmp_path / record.path)), np.asarray(expected))


def files_under(folder):
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("interrupted_after", [0, 2])
def test_a_degrade_cut_short_leaves_the_earlier_copy_whole_and_a_rerun_finishes(tmp_path, monkeypatch,
                                                                                 interrupted_after):
    """Ctrl-C after some images: the copy being replaced and its manifest are as they were (no image of
    the new recipe, none cut short), nothing is left behind, and the same command then runs through."""
    manifest, _ = degrade_manifest(make_manifest(tmp_path), "test", "down16", out_manifest=tmp_path / "manifest.jsonl")
    before = files_under(tmp_path)
    written = []
    degrade_one = degrade_module._degrade_one

    def interrupting(task):
        if len(written) == interrupted_after:
            raise KeyboardInterrupt
        written.append(task)
        return degrade_one(task)

    monkeypatch.setattr(degrade_module, "_degrade_one", interrupting)
    with pytest.raises(KeyboardInterrupt):
        degrade_manifest(manifest, "test", "jpeg30", out_manifest=manifest)
    assert files_under(tmp_path) == before
    monkeypatch.setattr(degrade_module, "_degrade_one", degrade_one)
    degrade_manifest(manifest, "test", "jpeg30", out_manifest=manifest)
    for record in (r for r in read_manifest(manifest) if r.split == "test_degraded"):
        assert record.meta["recipe"] == "jpeg30"
        source = Image.open(tmp_path / record.meta["source"])
        expected = degrade_image(source, "jpeg30", image_rng(0, record.meta["source"]))
        assert np.array_equal(np.asarray(Image.open(tmp_path / record.path)), np.asarray(expected))
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


def test_a_first_degrade_cut_short_leaves_nothing_that_refuses_the_rerun(tmp_path, monkeypatch):
    manifest = make_manifest(tmp_path)
    before = files_under(tmp_path)
    degrade_one = degrade_module._degrade_one
    written = []

    def failing_at_the_third(task):  # a full disk, say
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        written.append(task)
        return degrade_one(task)

    monkeypatch.setattr(degrade_module, "_degrade_one", failing_at_the_third)
    with pytest.raises(OSError):
        degrade_manifest(manifest, "test", "down16")
    assert files_under(tmp_path) == before and not (tmp_path / "test_degraded").exists()
    monkeypatch.setattr(degrade_module, "_degrade_one", degrade_one)
    out, _ = degrade_manifest(manifest, "test", "down16")
    assert sum(r.split == "test_degraded" for r in read_manifest(out)) == 4


def full_disk(path, records):
    raise OSError(28, "No space left on device", str(path))


@pytest.mark.parametrize("in_place", [False, True])
def test_a_degrade_whose_manifest_fails_to_write_leaves_the_copy_as_it_was_and_reruns(tmp_path, monkeypatch,
                                                                                        in_place):
    """The manifest is written after every image is moved into place: a full disk there left the new recipe's
    images under a manifest recording the old one (in place), or a first copy's images listed by no manifest,
    which refused the same command run again. Now the images are taken away again (the earlier ones put back)."""
    manifest = make_manifest(tmp_path)
    if in_place:
        manifest, _ = degrade_manifest(manifest, "test", "down16", out_manifest=manifest)
    before, paths_before = files_under(tmp_path), sorted(tmp_path.rglob("*"))
    monkeypatch.setattr(degrade_module, "write_manifest", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        degrade_manifest(manifest, "test", "jpeg30", out_manifest=manifest if in_place else None)
    assert files_under(tmp_path) == before and sorted(tmp_path.rglob("*")) == paths_before  # no folder left
    monkeypatch.setattr(degrade_module, "write_manifest", write_manifest)
    out, _ = degrade_manifest(manifest, "test", "jpeg30", out_manifest=manifest if in_place else None)
    degraded = [r for r in read_manifest(out) if r.split == "test_degraded"]
    assert len(degraded) == 4 and {r.meta["recipe"] for r in degraded} == {"jpeg30"}
    for record in degraded:
        source = record.meta["source"]
        expected = degrade_image(Image.open(tmp_path / source), "jpeg30", image_rng(0, source))
        assert np.array_equal(np.asarray(Image.open(tmp_path / record.path)), np.asarray(expected))


def test_a_dangling_link_where_a_degraded_image_goes_is_put_back_when_the_manifest_fails_to_write(tmp_path,
                                                                                                   monkeypatch):
    """A link to no file is no file to os.path.exists: it was neither set aside nor put back, and a failed copy
    left nothing at its place."""
    manifest = make_manifest(tmp_path)
    link = tmp_path / "test_degraded/images/test/0/0_0.png"
    link.parent.mkdir(parents=True)
    link.symlink_to("gone.png")
    monkeypatch.setattr(degrade_module, "write_manifest", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        degrade_manifest(manifest, "test", "down16")
    assert link.is_symlink() and os.readlink(link) == "gone.png"
    assert sorted(path.name for path in (tmp_path / "test_degraded").rglob("*")) == ["0", "0_0.png", "images", "test"]


def test_a_degrade_cut_short_among_its_moves_into_place_puts_the_earlier_copy_back(tmp_path, monkeypatch):
    """A Ctrl-C after some images of an in-place replacement were moved into place: they are taken away again
    and the earlier images put back, under the manifest that still records their recipe."""
    manifest, _ = degrade_manifest(make_manifest(tmp_path), "test", "down16", out_manifest=tmp_path / "manifest.jsonl")
    before, paths_before = files_under(tmp_path), sorted(tmp_path.rglob("*"))
    move, moves = degrade_module.shutil.move, []

    def interrupted_at_the_fourth(source, destination):  # an earlier image aside, a new one in: twice, then
        moves.append(source)
        if len(moves) == 4:
            raise KeyboardInterrupt
        return move(source, destination)

    monkeypatch.setattr(degrade_module.shutil, "move", interrupted_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        degrade_manifest(manifest, "test", "jpeg30", out_manifest=manifest)
    assert files_under(tmp_path) == before and sorted(tmp_path.rglob("*")) == paths_before


def test_a_put_back_cut_short_leaves_the_earlier_images_in_the_staging_folder(tmp_path, monkeypatch):
    """A second Ctrl-C while the earlier copy's images are put back: the staging folder, where the rest of them
    wait, was deleted with them. Now it is left, and every earlier image is in place or under its old/."""
    manifest, _ = degrade_manifest(make_manifest(tmp_path), "test", "down16", out_manifest=tmp_path / "manifest.jsonl")
    earlier = {path.relative_to("test_degraded"): data for path, data in files_under(tmp_path).items()
               if path.parts[0] == "test_degraded"}
    assert earlier
    move = degrade_module.shutil.move

    def interrupted_putting_back(source, destination):
        if "old" in PurePath(source).parts:  # the first earlier image on its way back
            raise KeyboardInterrupt
        return move(source, destination)

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(degrade_module, "write_manifest", full_disk)
    monkeypatch.setattr(degrade_module.shutil, "move", interrupted_putting_back)
    with pytest.raises(KeyboardInterrupt):
        degrade_manifest(manifest, "test", "jpeg30", out_manifest=manifest)
    [staging] = tmp_path.glob(".*.tmp")
    for path, data in earlier.items():
        kept = [where / path for where in (tmp_path / "test_degraded", staging / "old")
                if (where / path).is_file() and (where / path).read_bytes() == data]
        assert kept, path


def test_cli_degrade_refuses_an_existing_split_name(tmp_path, capsys):
    manifest = make_manifest(tmp_path)
    assert main(["data", "degrade", "--manifest", str(manifest), "--recipe", "down16", "--name", "train"]) == 2
    assert "name 'train' is already a split" in capsys.readouterr().err
    assert not (tmp_path / "manifest_train.jsonl").exists() and not (tmp_path / "train").exists()


def files_of(folder):
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("name", ["../escaped", "/abs/copy", ".", "..", "a/b", "a\\b"])
def test_degrade_name_must_be_one_plain_folder_name(tmp_path, name):
    manifest = make_manifest(tmp_path / "m")
    before = files_of(tmp_path)
    with pytest.raises(ValueError, match=r"name \(--name\) must be one plain name"):
        degrade_manifest(manifest, "test", "down16", name=name, out_manifest=tmp_path / "m/out.jsonl")
    assert files_of(tmp_path) == before


@pytest.mark.parametrize("folder", ["../escaped", "absolute", ".", "a/b"])
def test_degrade_records_folder_must_be_one_plain_name(tmp_path, folder):
    """degrade_records is public: its `folder` is checked itself, since a target counts as inside the copy's
    folder wherever that folder is ("../escaped" wrote beside root, "." among the source images)."""
    records = read_manifest(make_manifest(tmp_path / "m"))[:2]
    folder = str(tmp_path / "elsewhere") if folder == "absolute" else folder
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=rf"^folder must be one plain name \(no '/', '\\', '.' or '..'\), "
                                         rf"got {re.escape(repr(folder))}$"):
        degrade_records(records, tmp_path / "m", "down16", "copy", folder=folder)
    assert sorted(tmp_path.rglob("*")) == before


def test_degrade_refuses_an_out_manifest_outside_the_input_manifests_folder(tmp_path):
    """The new records' image paths are relative to the input manifest's folder: written elsewhere, the
    manifest would list images that are not there."""
    manifest = make_manifest(tmp_path / "m")
    (tmp_path / "other").mkdir()
    before = files_of(tmp_path)
    with pytest.raises(ValueError, match=rf"^out_manifest {re.escape(str(tmp_path / 'other/out.jsonl'))} must be in "
                                         rf"the input manifest's folder {re.escape(str(tmp_path / 'm'))} "):
        degrade_manifest(manifest, "test", "down16", out_manifest=tmp_path / "other/out.jsonl")
    assert files_of(tmp_path) == before and not (tmp_path / "m/test_degraded").exists()
    assert not (tmp_path / "other/out.jsonl").exists()


def test_degrade_refuses_to_replace_a_split_that_is_only_partly_a_degraded_copy(tmp_path):
    """An earlier copy plus a record added by hand under its split name (a real low-quality photo, no
    meta "source"): replacing the split would drop that record from the manifest."""
    manifest, _ = degrade_manifest(make_manifest(tmp_path), "test", "down16", out_manifest=tmp_path / "manifest.jsonl")
    face(8).save(tmp_path / "images/real_low_quality.png")
    write_manifest(manifest, [*read_manifest(manifest),
                              ManifestRecord("images/real_low_quality.png", "8", "test_degraded", ("c",))])
    before = files_of(tmp_path)
    with pytest.raises(ValueError, match="name 'test_degraded' is already a split of .*manifest.jsonl that is not a "
                                         "degraded copy of split 'test'"):
        degrade_manifest(manifest, "test", "jpeg30", out_manifest=manifest)
    assert files_of(tmp_path) == before


def test_cli_degrade_refuses_a_name_that_leaves_the_folder(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "m")
    assert main(["data", "degrade", "--manifest", str(manifest), "--name", "../escaped", "--recipe", "down16",
                 "--out-manifest", str(tmp_path / "m/a.jsonl")]) == 2
    error = capsys.readouterr().err
    assert "name (--name) must be one plain name" in error and "'../escaped'" in error
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "m/a.jsonl").exists()


def test_cli_degrade_refuses_a_name_the_manifest_cannot_hold_before_degrading(tmp_path, capsys):
    """A --name with a byte that is not UTF-8 (a lone surrogate in Python) cannot be written into the manifest as
    its split and paths: refused before any image is degraded, where it failed at the manifest after them all."""
    manifest = make_manifest(tmp_path / "m")
    before = files_of(tmp_path)
    name = os.fsdecode(b"copy\xff")
    assert main(["data", "degrade", "--manifest", str(manifest), "--name", name, "--recipe", "down16"]) == 2
    assert capsys.readouterr().err.endswith(
        f"tgfr data degrade: error: name (--name) must be encodable as UTF-8, as the manifest that lists the copy "
        f"is, got {name!r} (a lone surrogate at position 4: a non-UTF-8 byte of a file name? choose a UTF-8 "
        f"--name)\n")
    assert files_of(tmp_path) == before


@pytest.mark.parametrize("split, complaint", [(os.fsdecode(b"t\xff"), "must be encodable as UTF-8"),
                                               ("a/b", "must be one plain name")])
def test_cli_degrade_says_a_bad_default_name_comes_from_split(tmp_path, capsys, split, complaint):
    """Without --name the copy is named after --split: an error about that name points at --split, rather than
    at a --name the user never gave."""
    manifest = make_manifest(tmp_path / "m")
    before = files_of(tmp_path)
    assert main(["data", "degrade", "--manifest", str(manifest), "--split", split, "--recipe", "down16"]) == 2
    assert (f"error: name (--name; by default --split + '_degraded') {complaint}"
            in capsys.readouterr().err)
    assert files_of(tmp_path) == before


def test_degrade_refuses_a_target_that_a_symlink_leads_out_of_the_copy(tmp_path):
    manifest = make_manifest(tmp_path)
    (tmp_path / "test_degraded").mkdir()
    (tmp_path / "test_degraded/images").symlink_to(tmp_path / "images")  # would write over the sources
    before = files_of(tmp_path)
    with pytest.raises(ValueError, match=r"would be written to .*images/test/0/0_0.png, outside the copy's folder"):
        degrade_manifest(manifest, "test", "down16")
    assert files_of(tmp_path) == before


def test_degrade_records_refuses_to_overwrite_a_listed_image(tmp_path):
    records = read_manifest(make_manifest(tmp_path))[:2]
    listed = "test_degraded/images/test/1/1_0.png"
    with pytest.raises(ValueError, match=f"copy of image images/test/1/1_0.png would overwrite image {listed}"):
        degrade_records(records, tmp_path, "down16", "test_degraded", listed=[listed])
    assert not (tmp_path / "test_degraded").exists()


def test_a_degraded_path_is_that_of_the_normalized_path():
    """"a/../b.jpg" is the image "b.jpg": its copy is the same file, and protocol.py matches the copy of a gallery
    image by this name. Unnormalized, ".." became "__" inside: "copy/a/__/b.png"."""
    for path, same in (("a/../b.jpg", "b.jpg"), ("a/./b.jpg", "a/b.jpg"), ("a//b.jpg", "a/b.jpg")):
        assert degraded_path("copy", path) == degraded_path("copy", same) == f"copy/{same[:-4]}.png"
    assert degraded_path("copy", "../data/x.jpg") == "copy/__/data/x.png"


def test_degrade_refuses_two_images_with_one_degraded_path(tmp_path):
    (tmp_path / "img").mkdir()
    face(0).save(tmp_path / "img/1.jpg")
    face(1).save(tmp_path / "img/1.png")
    manifest = write_manifest(tmp_path / "m.jsonl", [ManifestRecord("img/1.jpg", "0", "test"),
                                                     ManifestRecord("img/1.png", "1", "test")])
    with pytest.raises(ValueError, match="images img/1.jpg and img/1.png would both be degraded to "
                                         "test_degraded/img/1.png"):
        degrade_manifest(manifest, "test", "down16")
    assert not (tmp_path / "test_degraded").exists()


def test_degrade_refuses_a_folder_holding_another_manifests_copy(tmp_path):
    manifest = make_manifest(tmp_path)
    first, _ = degrade_manifest(manifest, "test", "celeba")
    before = files_of(tmp_path)
    with pytest.raises(ValueError, match=r"folder .*test_degraded already holds 4 file\(s\) that .*down.jsonl does "
                                         r"not list under split 'test_degraded'"):
        degrade_manifest(manifest, "test", "down16", out_manifest=tmp_path / "down.jsonl")
    assert files_of(tmp_path) == before
    # Rewriting the manifest that lists them keeps images and recorded recipe in step.
    again, _ = degrade_manifest(manifest, "test", "down16")
    assert again == first
    for record in (r for r in read_manifest(again) if r.split == "test_degraded"):
        expected = down_up(Image.open(tmp_path / record.meta["source"]).convert("RGB"), 16)
        assert record.meta["recipe"] == "down16"
        assert np.array_equal(np.asarray(Image.open(tmp_path / record.path)), np.asarray(expected))


def test_degrade_refuses_a_folder_whose_files_the_out_manifest_lists_under_another_split(tmp_path):
    """--out-manifest, about to be replaced, lists the folder's file as a training image, not as the copy: the
    copy would overwrite that manifest, which then lists the file nowhere."""
    manifest = make_manifest(tmp_path)
    (tmp_path / "test_degraded").mkdir()
    face(8).save(tmp_path / "test_degraded/8.png")
    other = write_manifest(tmp_path / "other.jsonl", [ManifestRecord("test_degraded/8.png", "8", "train", ("c",))])
    before = files_of(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"folder {tmp_path / 'test_degraded'} already holds 1 file(s) that "
                                                   f"{other} does not list under split 'test_degraded'")):
        degrade_manifest(manifest, "test", "down16", out_manifest=other)
    assert files_of(tmp_path) == before


def test_in_place_replacement_checks_every_source_before_writing(tmp_path):
    manifest, _ = degrade_manifest(make_manifest(tmp_path), "test", "celeba", out_manifest=tmp_path / "manifest.jsonl")
    (tmp_path / "images/test/2/2_0.png").write_bytes(b"junk")
    before = files_of(tmp_path)
    for workers in (1, 2):
        with pytest.raises(ValueError, match=r"images/test/2/2_0.png is corrupt .*\(1 image\(s\) failed"):
            degrade_manifest(manifest, "test", "down16", out_manifest=manifest, workers=workers)
        assert files_of(tmp_path) == before  # the other copies still match the recipe "celeba" recorded


def test_an_in_place_copy_that_skips_an_image_leaves_no_unlisted_file_and_reruns(tmp_path):
    """Replaced in place with --skip-bad, the earlier copy's image of a skipped source (of the earlier recipe)
    is removed with its record: kept, it would lie unlisted in the folder and refuse the next degrade."""
    manifest, _ = degrade_manifest(make_manifest(tmp_path), "test", "down16", out_manifest=tmp_path / "manifest.jsonl")
    source = tmp_path / "images/test/2/2_0.png"
    clean = source.read_bytes()
    source.write_bytes(b"junk")
    _, skipped = degrade_manifest(manifest, "test", "jpeg30", out_manifest=manifest, bad_images="skip")
    assert len(skipped) == 1 and "2_0.png" in skipped[0]
    listed = {tmp_path / r.path for r in read_manifest(manifest) if r.split == "test_degraded"}
    assert len(listed) == 3 and {path for path in (tmp_path / "test_degraded").rglob("*") if path.is_file()} == listed
    source.write_bytes(clean)
    degrade_manifest(manifest, "test", "jpeg30", out_manifest=manifest)
    assert sum(r.split == "test_degraded" for r in read_manifest(manifest)) == 4


@pytest.mark.parametrize("in_place", [False, True])
def test_a_degrade_that_skips_every_image_is_an_error_and_writes_nothing(tmp_path, in_place):
    manifest = make_manifest(tmp_path)
    if in_place:
        manifest, _ = degrade_manifest(manifest, "test", "down16", out_manifest=manifest)
    for i in range(4):
        (tmp_path / f"images/test/{i}/{i}_0.png").write_bytes(b"junk")
    before = files_of(tmp_path)
    with pytest.raises(ValueError, match=r"every image of split 'test' was skipped, nothing was written; the first: "
                                         r".*images/test/0/0_0.png is corrupt"):
        degrade_manifest(manifest, "test", "jpeg30", out_manifest=manifest if in_place else None, bad_images="skip")
    assert files_of(tmp_path) == before


def test_a_copy_named_up_to_the_longest_folder_name_is_replaced_in_place(tmp_path):
    """The staging folder is not named after the copy: a 250-byte name left no room for its prefix and suffix."""
    name = "n" * 250
    manifest, _ = degrade_manifest(make_manifest(tmp_path), "test", "down16", name=name,
                                   out_manifest=tmp_path / "manifest.jsonl")
    degrade_manifest(manifest, "test", "jpeg30", name=name, out_manifest=manifest)
    assert [r.meta["recipe"] for r in read_manifest(manifest) if r.split == name] == ["jpeg30"] * 4


def test_a_file_where_the_copys_folder_goes_is_refused_before_any_work(tmp_path, monkeypatch):
    manifest = make_manifest(tmp_path)
    (tmp_path / "test_degraded").write_text("notes")
    monkeypatch.setattr(degrade_module, "degrade_records", lambda *arguments, **options: pytest.fail("work began"))
    with pytest.raises(ValueError, match=r"test_degraded, where the degraded copy's images go, is a file, not a "
                                         r"folder; remove it or choose another name \(--name"):
        degrade_manifest(manifest, "test", "down16")


def test_degrade_seed_must_be_non_negative(tmp_path):
    manifest = make_manifest(tmp_path)
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        degrade_manifest(manifest, "test", "down16", seed=-1)
    assert not (tmp_path / "test_degraded").exists()


@pytest.mark.parametrize("workers", [0, -2, 1.5, True])
def test_degrade_workers_must_be_a_positive_integer(tmp_path, workers):
    manifest = make_manifest(tmp_path)
    with pytest.raises(ValueError, match=f"workers must be a positive integer, got {workers!r}"):
        degrade_manifest(manifest, "test", "down16", workers=workers)
    assert not (tmp_path / "test_degraded").exists()


def test_a_degrade_waits_for_another_writing_into_the_manifests_folder(tmp_path, capsys, calls_after_release):
    """Two degrades into one folder at once (two recipes under one name, say): the second reads the
    manifest and writes its images once the first is done, so no copy mixes images of two recipes."""
    manifest = make_manifest(tmp_path)
    assert calls_after_release(tmp_path, degrade_module, "degrade_records",
                               lambda: degrade_manifest(manifest, "test", "down16")) == [True]
    assert capsys.readouterr().err == f"tgfr data degrade: waiting for another process writing into {tmp_path} to end\n"


def test_an_image_is_degraded_as_the_transforms_read_it_and_a_bad_generator_is_named(tmp_path):
    """16-bit greyscale kept its clipped-white values and an EXIF-turned photo stayed on its side through
    degrade_image's own conversion: it now degrades what load_image reads, whatever mode the image has."""
    grey = Image.fromarray(np.asarray(face().convert("L"), np.uint16) * 257)  # mode I;16
    turned = face().transpose(Image.Transpose.ROTATE_90)
    exif = turned.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    turned.save(tmp_path / "turned.jpg", exif=exif)
    grey.save(tmp_path / "grey.png")
    for name in ("grey.png", "turned.jpg"):
        opened, loaded = Image.open(tmp_path / name), load_image(tmp_path / name)
        got = degrade_image(opened, "celeba", np.random.default_rng(3))
        assert np.array_equal(np.asarray(got), np.asarray(degrade_image(loaded, "celeba", np.random.default_rng(3))))
    with pytest.raises(TypeError, match="^rng must be a numpy.random.Generator"):
        degrade_image(face(), "celeba", 3)


def test_an_earlier_copy_record_outside_the_copy_folder_is_never_deleted(tmp_path):
    """A replaced copy's image whose source is skipped this time is removed, but only inside the copy's folder:
    a hand-edited record of the earlier copy that points at another image (here images/keep.png) keeps it."""
    (tmp_path / "images").mkdir()
    for name in ("a", "b", "keep"):
        Image.fromarray(np.full((16, 16, 3), 100, np.uint8)).save(tmp_path / f"images/{name}.png")
    records = [ManifestRecord("images/a.png", "1", "test", ("c",)), ManifestRecord("images/b.png", "2", "test", ("c",)),
               ManifestRecord("images/keep.png", "2", "test_degraded", ("c",),
                              {"source": "images/b.png", "recipe": "down8", "seed": 0})]
    manifest = write_manifest(tmp_path / "m.jsonl", records)
    (tmp_path / "images/b.png").write_bytes(b"junk")  # skipped this time
    _, skipped = degrade_manifest(manifest, "test", "down8", out_manifest=manifest, bad_images="skip")
    assert len(skipped) == 1 and (tmp_path / "images/keep.png").is_file()


@pytest.mark.parametrize("option, value, error", [
    ("name", "", "name (--name) must be one plain name"),
    ("out_manifest", "", "out_manifest (--out-manifest) is empty"),
    ("out_manifest", "copy/", "out_manifest (--out-manifest) copy/ ends in '/'")])
def test_an_empty_name_or_out_manifest_is_refused_not_taken_for_the_default(tmp_path, monkeypatch, option, value,
                                                                            error):
    """`--name ""` (an unset shell variable) wrote <split>_degraded, and `--out-manifest ""` the default
    <stem>_<name>.jsonl; `--out-manifest copy/` a file named copy."""
    manifest = make_manifest(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=f"^{re.escape(error)}"):
        degrade_manifest(manifest, "test", "down16", **{option: value})
    assert sorted(tmp_path.rglob("*")) == before
