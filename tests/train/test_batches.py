"""The batches of each stage: under align.supervision = "weak" the align stage's batches are a seeded
shuffle of the training images that no label shapes; the fr and fuse stages keep identity-balanced
batches. Both streams resume at any step, and an image that fails in a loader worker gives the error
it gives without workers."""

import dataclasses
import itertools
import math
import multiprocessing
import os
import re
import shutil
import signal
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from tgfr.data import CaptionCollator, EvalTransform
from tgfr.data.manifest import read_manifest, write_manifest
from tgfr.data.image_cache import DecodedImageCache
from tgfr.data.synthetic import SyntheticConfig
from tgfr.train.batches import (DegradingTransform, StepBatches, _unwrapped_worker_error, resolve_manifest,
                                synthetic_config)
from tgfr.train.config import DataConfig, load_config
from tgfr.train.run import stage_batches, train

COLLATE = CaptionCollator(None, tokenize_batches=False)


def weak_config(overrides, *extra):
    return load_config("quick", overrides + ["align.supervision=weak", *extra])


def plan(batches, steps, start=0):
    """The image indices of `steps` batches of the stream from step `start`."""
    return [batch["indices"].tolist() for _, batch in zip(range(steps), batches.from_step(start))]


def relabeled_manifest(source, folder):
    """source's records under other identities (record i of the training split becomes identity i mod 5),
    the images' paths made relative to `folder`."""
    records = read_manifest(source)
    train = iter(range(len(records)))
    relabeled = [dataclasses.replace(r, identity=f"x{next(train) % 5}" if r.split == "train" else r.identity,
                                     path=os.path.relpath(source.parent / r.path, folder)) for r in records]
    return write_manifest(folder / "manifest.jsonl", relabeled)


def test_weak_align_batches_are_a_seeded_shuffle_that_ignores_labels(tmp_path, tiny_overrides):
    config = weak_config(tiny_overrides)
    manifest = resolve_manifest(config.data)
    batches = stage_batches(config, "align", manifest, COLLATE)
    size = config.data.identities_per_batch * config.data.images_per_identity
    count = len(batches.dataset)
    epoch_length = count // size
    assert len(batches.sampler) == epoch_length
    # Independent reconstruction of the documented rule, over two epochs: the align stage's seed is
    # mixed from (config.seed, 1: its index in stages) in the data stream (spawn key 1).
    stage_seed = int(np.random.SeedSequence((config.seed, 1), spawn_key=(1,)).generate_state(1)[0])
    expected = []
    for epoch in (0, 1):
        seeds = np.random.SeedSequence((stage_seed, epoch), spawn_key=(2,))
        order = np.random.default_rng(seeds).permutation(count)
        expected += [order[b * size:(b + 1) * size].tolist() for b in range(epoch_length)]
    assert plan(batches, 2 * epoch_length) == expected
    # Identity-balanced batches hold K images of each of P identities; these hold whatever the shuffle
    # gives, so some batch has an identity with other than K images.
    labels = batches.dataset.labels.tolist()
    assert any(set(Counter(labels[i] for i in batch).values()) != {config.data.images_per_identity}
               for batch in expected)
    # Other labels, the same images: the same batches.
    other = load_config("quick", tiny_overrides + ["align.supervision=weak",
                                                   f'data.manifest="{relabeled_manifest(manifest, tmp_path)}"'])
    relabeled = stage_batches(other, "align", resolve_manifest(other.data), COLLATE)
    assert relabeled.dataset.labels.tolist() != labels
    assert plan(relabeled, 2 * epoch_length) == expected


def test_fr_and_fuse_batches_stay_identity_balanced_under_weak_supervision(tiny_overrides):
    config = weak_config(tiny_overrides)
    manifest = resolve_manifest(config.data)
    for name in ("fr", "fuse"):
        batches = stage_batches(config, name, manifest, COLLATE)
        labels = batches.dataset.labels.tolist()
        for indices in plan(batches, 3):
            counts = Counter(labels[i] for i in indices)
            assert len(counts) == config.data.identities_per_batch
            assert set(counts.values()) == {config.data.images_per_identity}


def test_runs_of_other_seeds_share_no_stage_stream(tiny_overrides):
    """Seeds 0, 1, 2 are independent replicates: no stage of one replays a stage of another (with the
    stage's index added to the seed, seed 2's fr stage was seed 0's fuse stage, batch for batch)."""
    first_images = {}
    for seed in (0, 1, 2):
        config = load_config("quick", tiny_overrides + [f"seed={seed}"])
        manifest = resolve_manifest(config.data)
        for name in config.stages:
            batch = next(stage_batches(config, name, manifest, COLLATE).from_step(0))
            first_images[seed, name] = batch["images"]
    assert len(first_images) == 9
    for (one, first), (other, second) in itertools.combinations(first_images.items(), 2):
        assert not torch.equal(first, second), (one, other)


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_the_synthetic_dataset_takes_each_of_its_data_settings(version):
    """Versions before 4 degrade test alone, as they did when each was the newest; from 4 val as well."""
    settings = DataConfig(synthetic_identities=7, synthetic_images_per_identity=3, synthetic_captions_per_image=2,
                          synthetic_seed=11, degradation="down16", synthetic_version=version)
    degradations = {"test_degraded": "down16", **({"val_degraded": "down16"} if version >= 4 else {})}
    assert synthetic_config(settings) == SyntheticConfig(identities=7, images_per_identity=3, captions_per_image=2,
                                                         seed=11, degradations=degradations, version=version)


def test_every_epoch_draws_each_image_its_own_augmentation_and_captions(tiny_overrides):
    """The stream's items in epoch e are the dataset's items for epoch e, so an image seen again in the next
    epoch comes with another augmentation and other captions, not a repeat of the first epoch's."""
    config = weak_config(tiny_overrides)
    manifest = resolve_manifest(config.data)
    batches = stage_batches(config, "align", manifest, COLLATE)
    dataset = stage_batches(config, "align", manifest, COLLATE).dataset  # the items, drawn one by one
    epoch_length = len(batches.sampler)
    seen: dict[int, list] = {}
    for step, batch in zip(range(2 * epoch_length), batches.from_step(0)):
        dataset.set_epoch(step // epoch_length)
        for image, caption, index in zip(batch["images"], batch["captions"], batch["indices"].tolist()):
            item = dataset[index]
            assert torch.equal(image, item["image"]) and caption == item["caption"]
            seen.setdefault(index, []).append((image, caption))
    again = [draws for draws in seen.values() if len(draws) == 2]
    assert len(again) > 10
    assert sum(not torch.equal(first[0], second[0]) for first, second in again) > len(again) // 2
    assert sum(first[1] != second[1] for first, second in again) > 0


def test_weak_align_stream_resumes_at_any_step_and_ranks_share_each_batch(tiny_overrides):
    config = weak_config(tiny_overrides)
    manifest = resolve_manifest(config.data)
    batches = stage_batches(config, "align", manifest, COLLATE)
    epoch_length = len(batches.sampler)
    whole = [batch for _, batch in zip(range(2 * epoch_length + 1), batches.from_step(0))]
    for start in (1, epoch_length - 1, epoch_length, epoch_length + 2):
        resumed = stage_batches(config, "align", manifest, COLLATE)
        for expected, batch in zip(whole[start:], resumed.from_step(start)):
            assert batch["indices"].tolist() == expected["indices"].tolist()
            assert torch.equal(batch["images"], expected["images"])
    ranks = [stage_batches(config, "align", manifest, COLLATE, rank=rank, world_size=2) for rank in (0, 1)]
    half = len(whole[0]["indices"]) // 2
    for step, parts in enumerate(zip(*(plan(r, epoch_length + 1) for r in ranks))):
        assert [len(part) for part in parts] == [half, half]
        assert parts[0] + parts[1] == whole[step]["indices"].tolist()


@pytest.mark.parametrize("stage", ["fr", "align"])
def test_identity_balanced_ranks_share_each_batch(tiny_overrides, stage):
    """The identity-balanced stream (fr, fuse, identity-supervised align) split over two ranks: together
    they take the single process's batch, each a different half (a sampler given rank 0 on every rank
    would train every rank on the same half and never read the other)."""
    config = load_config("quick", tiny_overrides)
    manifest = resolve_manifest(config.data)
    steps = len(stage_batches(config, stage, manifest, COLLATE).sampler) + 1
    whole = plan(stage_batches(config, stage, manifest, COLLATE), steps)
    ranks = [plan(stage_batches(config, stage, manifest, COLLATE, rank=rank, world_size=2), steps) for rank in (0, 1)]
    for batch, first, second in zip(whole, *ranks, strict=True):
        assert len(first) == len(second) == len(batch) // 2
        assert sorted(first + second) == sorted(batch) and not set(first) & set(second)


def test_weak_align_refuses_a_split_smaller_than_a_batch(tiny_overrides):
    config = weak_config(tiny_overrides)
    manifest = resolve_manifest(config.data)
    images = sum(r.split == "train" for r in read_manifest(manifest))
    # One identity per batch is fine without labels (more images than one identity has).
    small = weak_config(tiny_overrides, "data.identities_per_batch=1", f"data.images_per_identity={images}")
    assert len(stage_batches(small, "align", manifest, COLLATE).sampler) == 1
    large = weak_config(tiny_overrides, "data.identities_per_batch=1", f"data.images_per_identity={images + 1}")
    with pytest.raises(ValueError, match=re.escape(
            f"data.identities_per_batch x data.images_per_identity = 1 x {images + 1} = {images + 1} exceeds the "
            f"{images} images of split 'train' in manifest {manifest} (a batch takes that many images)")):
        stage_batches(large, "align", manifest, COLLATE)


@pytest.mark.parametrize("supervision", ["identity", "weak"])
def test_loader_workers_serve_every_epoch_the_batches_of_no_workers(tiny_overrides, supervision):
    """One loader spans the epochs: its workers, started once, still draw each epoch's augmentation and
    captions (the keys carry the epoch), from a step in the middle of an epoch on. (Without workers the
    stream draws each epoch's items: test_every_epoch_draws_each_image_its_own_augmentation_and_captions.)"""
    config = weak_config(tiny_overrides) if supervision == "weak" else load_config("quick", tiny_overrides)
    manifest = resolve_manifest(config.data)
    streams = []
    for workers in (0, 2):
        data = dataclasses.replace(config.data, loader_workers=workers)
        batches = StepBatches(manifest, data, COLLATE, seed=3, identity_balanced=supervision == "identity")
        epoch_length = len(batches.sampler)
        streams.append([batch for _, batch in zip(range(2 * epoch_length), batches.from_step(epoch_length - 1))])
    for without, with_workers in zip(*streams):
        assert without["indices"].tolist() == with_workers["indices"].tolist()
        assert without["captions"] == with_workers["captions"]
        assert torch.equal(without["images"], with_workers["images"])


def test_an_image_that_fails_in_a_loader_worker_gives_the_error_line_of_no_workers(tmp_path, tiny_overrides):
    """A loader worker's ValueError reaches the main process as a ValueError holding "Caught ValueError in
    DataLoader worker process 0." and the worker's traceback; the stream raises the worker's own message."""
    config = load_config("quick", tiny_overrides)
    shutil.copytree(resolve_manifest(config.data).parent, tmp_path / "data")
    manifest = tmp_path / "data" / "manifest.jsonl"
    messages = []
    for workers in (0, 1):
        data = dataclasses.replace(config.data, loader_workers=workers)
        batches = StepBatches(manifest, data, COLLATE, seed=1, image_cache=DecodedImageCache(0))
        first = batches.dataset.records[next(iter(batches.sampler))[0]]
        (manifest.parent / first.path).rename(tmp_path / "moved.png")  # gone after the check at the start
        with pytest.raises(ValueError) as error:
            next(batches.from_step(0))
        (tmp_path / "moved.png").rename(manifest.parent / first.path)
        messages.append(str(error.value))
    assert messages[0] == messages[1]
    assert re.fullmatch(re.escape(f"image file {manifest.parent / first.path} does not exist (fix or remove that ") +
                        r"image's record in manifest .*manifest\.jsonl\)", messages[0])


class FailsWhileHandlingAnError(Dataset):
    """Raises a ValueError while it handles another ValueError: a worker's traceback then shows both, the one
    raised last at its end."""

    def __len__(self):
        return 1

    def __getitem__(self, index):
        try:
            int("x")
        except ValueError:
            raise ValueError("image /data/a.png is truncated")


def test_a_worker_error_raised_while_handling_another_gives_the_error_line_of_no_workers():
    """The message of the error raised last, as without workers; not that of the one it was handling, which
    the worker's traceback shows first."""
    messages = []
    for workers in (0, 1):
        with pytest.raises(ValueError) as error:
            next(iter(DataLoader(FailsWhileHandlingAnError(), num_workers=workers)))
        messages.append(error.value)
    assert _unwrapped_worker_error(messages[0]) is None
    assert "invalid literal for int()" in str(messages[1])  # the handled error, in the worker's traceback
    assert str(_unwrapped_worker_error(messages[1])) == str(messages[0])


def test_ranks_need_a_divisible_identity_count_only_where_batches_follow_identities(tiny_overrides):
    """3 identities x 2 images over 2 processes: the shuffled batches of the weakly supervised align stage split
    into two shares of 3 images that together are the single process's batch; identity-balanced batches cannot
    split 3 identities in two and are refused naming data.identities_per_batch."""
    config = weak_config(tiny_overrides, "data.identities_per_batch=3", "data.images_per_identity=2")
    manifest = resolve_manifest(config.data)
    whole = plan(stage_batches(config, "align", manifest, COLLATE), 3)
    shares = [plan(stage_batches(config, "align", manifest, COLLATE, rank=rank, world_size=2), 3)
              for rank in (0, 1)]
    assert [[len(part) for part in parts] for parts in zip(*shares)] == [[3, 3]] * 3
    assert [parts[0] + parts[1] for parts in zip(*shares)] == whole
    for name in ("fr", "fuse"):
        with pytest.raises(ValueError, match=re.escape("data.identities_per_batch=3 must be divisible by the "
                                                       "world size 2")):
            stage_batches(config, name, manifest, COLLATE, rank=1, world_size=2)
    odd = weak_config(tiny_overrides, "data.identities_per_batch=3", "data.images_per_identity=3")
    with pytest.raises(ValueError, match=re.escape("data.identities_per_batch x data.images_per_identity = 3 x 3 "
                                                   "= 9 must be divisible by the world size 2")):
        stage_batches(odd, "align", manifest, COLLATE, rank=0, world_size=2)


def test_the_vocabulary_a_stage_prefills_is_every_caption_of_its_split(tiny_overrides):
    """The caption features are encoded ahead from StepBatches.captions (tgfr.train.caption_features: a caption's
    features then do not depend on the batch it first comes in): every caption of every training image."""
    config = load_config("quick", tiny_overrides + ["data.synthetic_captions_per_image=3"])
    manifest = resolve_manifest(config.data)
    expected = Counter(caption for record in read_manifest(manifest) if record.split == config.data.train_split
                       for caption in record.captions)
    assert max(len(record.captions) for record in read_manifest(manifest)) == 3
    assert Counter(stage_batches(config, "align", manifest, COLLATE).captions) == expected


def test_the_stages_that_pair_images_with_captions_do_not_mirror_them_in_the_degradation_either(tiny_overrides,
                                                                                              monkeypatch):
    """Every training image degraded by TGFR's celeba recipe, whose flip (p = 0.5) the align and fuse stages leave
    out; the fr stage mirrors about half its images in the recipe and half in TrainTransform."""
    config = load_config("quick", tiny_overrides + ['data.train_degradation="celeba"', "data.train_degrade_p=1.0"])
    manifest = resolve_manifest(config.data)
    mirrored = []
    monkeypatch.setattr(ImageOps, "mirror", lambda image: mirrored.append(1) or image.transpose(Image.FLIP_LEFT_RIGHT))
    for name in ("fr", "align", "fuse"):
        dataset = stage_batches(config, name, manifest, COLLATE).dataset
        mirrored.clear()
        for i in range(min(len(dataset), 40)):
            dataset[i]
        if name == "fr":
            assert 20 < len(mirrored) < 60, name
        else:
            assert mirrored == [], name


def test_the_stages_that_pair_images_with_captions_neither_mirror_nor_grey_them(tiny_overrides):
    """The captions say left and right and name colours: an align or fuse item is its image as EvalTransform
    gives it (no degradation here), while the fr stage, which reads no caption, mirrors about half its items
    and greys some."""
    config = load_config("quick", tiny_overrides + ["data.train_degrade_p=0.0"])
    manifest = resolve_manifest(config.data)
    plain = EvalTransform(config.data.image_size)
    for name in ("fr", "align", "fuse"):
        dataset = stage_batches(config, name, manifest, COLLATE).dataset
        items = range(min(len(dataset), 60))
        unchanged = [torch.equal(dataset[i]["image"], plain(Image.open(dataset.root / dataset.records[i].path)))
                     for i in items]
        grey = [bool((dataset[i]["image"][0] == dataset[i]["image"][1]).all()) for i in items]
        if name == "fr":
            assert 0.3 * len(items) < len(items) - sum(unchanged) and any(grey), name
        else:
            assert all(unchanged) and not any(grey), name


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1.0])
def test_training_images_are_degraded_with_probability_train_degrade_p(p):
    """Over 2000 seeded draws the degraded count is binomial(2000, p): within 5 standard deviations of 2000 p
    (exactly 0 or 2000 at p = 0 or 1). The recipe down2 always changes a checkerboard; the base transform
    returns its input, so a changed image is a degraded one."""
    checkerboard = Image.fromarray((np.indices((16, 16)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB")
    transform = DegradingTransform(lambda image, rng: image, "down2", p)
    draws = 2000
    degraded = sum(not np.array_equal(np.asarray(transform(checkerboard, np.random.default_rng(seed))),
                                      np.asarray(checkerboard)) for seed in range(draws))
    assert abs(degraded - draws * p) <= 5 * math.sqrt(draws * p * (1 - p))


def test_a_training_degradation_that_does_not_suit_the_images_names_its_key():
    image = Image.new("RGB", (16, 16))
    transform = DegradingTransform(lambda image, rng: image, "down32", 1.0)
    with pytest.raises(ValueError, match=r"^data.train_degradation = 'down32': recipe step 'down32': 32 must be "
                                         r"below both sides of the image, 16 x 16"):
        transform(image, np.random.default_rng(0))


def test_a_training_image_too_small_for_the_degradation_is_named_before_the_first_step(tmp_path, tiny_overrides):
    """A real set of mixed sizes: the one image that down40 cannot take (32 x 32 while the others are 48 x 48)
    stopped the run only at the step that first drew it for degradation, naming no image."""
    config = load_config("quick", tiny_overrides)
    shutil.copytree(resolve_manifest(config.data).parent, tmp_path / "data")
    manifest = tmp_path / "data" / "manifest.jsonl"
    records = [record for record in read_manifest(manifest) if record.split == "train"]
    for record in records:
        image = Image.open(manifest.parent / record.path)
        image.resize((48, 48)).save(manifest.parent / record.path)
    small = manifest.parent / records[3].path
    Image.open(small).resize((32, 32)).save(small)
    data = dataclasses.replace(config.data, train_degradation="down40", train_degrade_p=0.1)
    with pytest.raises(ValueError, match=rf"^data.train_degradation = 'down40': image {re.escape(str(small))}: recipe "
                                         r"step 'down40': 40 must be below both sides of the image, 32 x 32"):
        StepBatches(manifest, data, COLLATE, seed=1)
    StepBatches(manifest, dataclasses.replace(data, train_degrade_p=0.0), COLLATE, seed=1)  # never degraded
    Image.open(small).resize((48, 48)).save(small)
    StepBatches(manifest, data, COLLATE, seed=1)


def test_a_loader_worker_that_dies_is_a_child_process_error_saying_what_to_do(tiny_overrides):
    """torch's RuntimeError for a killed worker was a traceback in tgfr train; an OSError is its one line."""
    config = load_config("quick", tiny_overrides)
    data = dataclasses.replace(config.data, loader_workers=1)
    stream = StepBatches(resolve_manifest(config.data), data, COLLATE, seed=1).from_step(0)
    next(stream)
    for worker in multiprocessing.active_children():
        os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(ChildProcessError, match=r"^a data loader worker process ended abruptly \(DataLoader worker "
                                                r"\(pid\(s\) \d+\) exited unexpectedly\), killed, say for lack of "
                                                r"memory: try fewer data.loader_workers; --resume continues"):
        for _ in range(100):
            next(stream)


def manifest_with_single_image_identities(source, folder, count):
    """source's records, the first `count` training identities (sorted) cut to their first image, the paths made
    relative to `folder`."""
    records = read_manifest(source)
    cut = set(sorted({r.identity for r in records if r.split == "train"})[:count])
    kept, seen = [], set()
    for record in records:
        if record.split == "train" and record.identity in cut:
            if record.identity in seen:
                continue
            seen.add(record.identity)
        kept.append(dataclasses.replace(record, path=os.path.relpath(source.parent / record.path, folder)))
    return write_manifest(folder / "manifest.jsonl", kept)


def test_training_says_how_many_identities_have_fewer_images_than_a_group_takes(tmp_path, tiny_overrides, capsys):
    """An identity with fewer than data.images_per_identity images fills its group by repeating them, which only
    the sampler's docstring said: a set of single-image identities trained on copies of one face without a word."""
    manifest = manifest_with_single_image_identities(resolve_manifest(load_config("quick", tiny_overrides).data),
                                                     tmp_path, 3)
    per_identity = Counter(r.identity for r in read_manifest(manifest) if r.split == "train")
    assert sorted(per_identity.values())[:4] == [1, 1, 1, 4]  # the synthetic set: 4 images of each identity
    config = load_config("quick", tiny_overrides + [f'data.manifest="{manifest}"'])  # K = 2
    assert stage_batches(config, "fr", manifest, COLLATE).short_identities == 3
    more = load_config("quick", tiny_overrides + [f'data.manifest="{manifest}"', "data.images_per_identity=5"])
    assert stage_batches(more, "fuse", manifest, COLLATE).short_identities == len(per_identity)
    # Shuffled batches make no groups of an identity.
    weak = weak_config(tiny_overrides, f'data.manifest="{manifest}"')
    assert stage_batches(weak, "align", manifest, COLLATE).short_identities == 0
    capsys.readouterr()
    train(config, tmp_path / "run", stop_after=1)  # every stage's batches are built before the first step
    line = (f"tgfr train: note: 3 of {len(per_identity)} training identities have fewer than "
            "data.images_per_identity = 2 images: their groups repeat images\n")
    assert capsys.readouterr().err.count(line) == 1  # once per call, not per stage
    single = load_config("quick", tiny_overrides + [f'data.manifest="{manifest}"', "data.images_per_identity=1",
                                                    "data.identities_per_batch=8"])
    train(single, tmp_path / "single", stop_after=1)
    assert "tgfr train: note:" not in capsys.readouterr().err
