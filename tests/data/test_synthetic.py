import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tgfr.data.synthetic as synthetic
from tgfr.cli import main
from tgfr.data.degrade import down_up
from tgfr.data.manifest import read_manifest
from tgfr.data.synthetic import MARKER, SyntheticConfig, ensure_synthetic_dataset, generate_synthetic_dataset
from tgfr.data.synthetic_captions import fine_phrases
from tgfr.data.synthetic_faces import covered_marks, identity_attributes, image_state, render_face

CONFIG = SyntheticConfig(identities=10, images_per_identity=3, captions_per_image=4, seed=5,
                         val_fraction=0.2, test_fraction=0.3)
FINE_WORDS = {  # attribute -> a pattern a caption must contain when the attribute is visible
    "freckles": lambda a: r"freckle",
    "scar": lambda a: rf"scar (on|across) the {a['scar']}",
    "mole": lambda a: rf"mole {a['mole']}",
    "eye_colour": lambda a: rf"{a['eye_colour']} eyes",
    "glasses": lambda a: rf"{a['glasses']} {a['glasses_colour']} (eyeglasses|frames)",
    "earrings": lambda a: rf"{a['earrings_metal']} (stud|hoop)",
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, read_manifest(generate_synthetic_dataset(out, CONFIG, workers=1))


def test_layout_splits_and_counts(dataset):
    out, records = dataset
    clean = [r for r in records if not r.split.endswith("_degraded")]
    assert len(clean) == 30
    assert {r.split for r in records} == {"train", "val", "test", "test_degraded", "val_degraded"}
    split_of = {}
    for record in clean:
        assert split_of.setdefault(record.identity, record.split) == record.split  # identity-disjoint splits
        assert record.path == f"images/{record.split}/{record.identity}/{record.identity}_{record.path[-5]}.png"
        assert (out / record.path).is_file() and len(record.captions) == 4
    assert sorted(list(split_of.values()).count(s) for s in ("train", "val", "test")) == [2, 3, 5]
    for split in ("test", "val"):
        assert len([r for r in records if r.split == f"{split}_degraded"]) == 3 * list(split_of.values()).count(split)
    assert json.loads((out / "synthetic.json").read_text())["key"] == CONFIG.key()


def test_each_degraded_split_copies_the_images_of_its_own_split(tmp_path):
    """val_degraded and train_degraded copy val's and train's images: a copy of test's under their names
    would leak test images into training."""
    recipes = {"train_degraded": "down16", "val_degraded": "jpeg50", "test_degraded": "down24"}
    config = SyntheticConfig(identities=6, images_per_identity=2, captions_per_image=1, seed=2, val_fraction=0.34,
                             test_fraction=0.34, degradations=recipes)
    records = read_manifest(generate_synthetic_dataset(tmp_path, config, workers=1))
    for name, recipe in recipes.items():
        split = name.removesuffix("_degraded")
        copies = [r for r in records if r.split == name]
        sources = sorted(r.path for r in records if r.split == split)
        assert sources and sorted(r.meta["source"] for r in copies) == sources
        assert {r.meta["recipe"] for r in copies} == {recipe}


def test_degraded_copies_are_seeded_by_the_datasets_seed(dataset):
    """`tgfr data synth --seed` seeds the degradation too: the copies' meta records the dataset's seed."""
    _, records = dataset
    degraded = [record for record in records if record.split == "test_degraded"]
    assert degraded and {record.meta["seed"] for record in degraded} == {CONFIG.seed} != {0}


def test_equal_configs_have_one_key_and_write_the_same_bytes(tmp_path):
    """val_fraction 0 and 0.0, and one degradations dict in two orders, are equal configs: they had two keys (two
    cache folders), and wrote their degraded copies' records in their dicts' order."""
    recipes = {"train_degraded": "down16", "test_degraded": "jpeg50"}
    first = SyntheticConfig(identities=4, images_per_identity=2, captions_per_image=1, seed=3, val_fraction=0,
                            test_fraction=0.25, degradations=recipes)
    second = dataclasses.replace(first, val_fraction=0.0, degradations=dict(reversed(recipes.items())))
    assert first == second and first.key() == second.key()
    for config, folder in ((first, tmp_path / "first"), (second, tmp_path / "second")):
        generate_synthetic_dataset(folder, config, workers=1)
    for name in ("manifest.jsonl", MARKER):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()


def test_same_seed_same_bytes_any_workers(dataset, tmp_path):
    out, records = dataset
    again = generate_synthetic_dataset(tmp_path, CONFIG, workers=2)
    assert again.read_bytes() == (out / "manifest.jsonl").read_bytes()
    for record in records:
        assert (tmp_path / record.path).read_bytes() == (out / record.path).read_bytes()
    other = SyntheticConfig(**{**CONFIG.__dict__, "seed": 6, "degradations": {}})
    other_records = read_manifest(generate_synthetic_dataset(tmp_path / "other", other, workers=1))
    assert [r.captions for r in other_records] != [r.captions for r in records if not r.split.endswith("_degraded")]


def test_a_chunk_of_work_holds_about_a_second_of_images_however_many_an_identity_has(tmp_path, monkeypatch):
    """A Ctrl-C waits for the chunks under way, and a chunk was at least a whole identity: one of 1500 images kept
    it waiting a minute. A chunk holds at most 160 images (7 ms each on this project's CPU), and an identity split
    across chunks still gets, in order, the images drawn one by one."""
    config = SyntheticConfig(identities=2, images_per_identity=170, captions_per_image=1, seed=2, val_fraction=0,
                             test_fraction=0, degradations={})
    pool_map, chunk_images = synthetic.WorkerPool.map, []

    def map_noting_chunks(pool, function, items, chunksize=1):
        results = pool_map(pool, function, items, chunksize)  # each a list of the records of its item's images
        chunk_images.extend(sum(map(len, results[start:start + chunksize])) for start in range(0, len(results),
                                                                                               chunksize))
        return results
    monkeypatch.setattr(synthetic.WorkerPool, "map", map_noting_chunks)
    records = read_manifest(generate_synthetic_dataset(tmp_path, config, workers=2))
    assert sum(chunk_images) == 340 and max(chunk_images) <= 160, chunk_images
    assert [r.path for r in records] == [f"images/train/{i}/{i}_{k}.png" for i in range(2) for k in range(170)]
    for identity in range(2):
        attributes = identity_attributes(config.seed, identity)
        for k in (0, 159, 160, 169):
            drawn = render_face(attributes, image_state(config.seed, identity, k, attributes), config.version)
            written = Image.open(tmp_path / f"images/train/{identity}/{identity}_{k}.png")
            assert np.array_equal(np.asarray(written), np.asarray(drawn)), (identity, k)

def test_attributes_persist_and_captions_mention_fine_ones(dataset):
    _, records = dataset
    by_identity = {}
    for record in records:
        if record.split.endswith("_degraded"):
            continue
        attributes = record.meta["attributes"]
        assert by_identity.setdefault(record.identity, attributes) == attributes
        fresh = identity_attributes(CONFIG.seed, int(record.identity))
        assert all(fresh[name] == value for name, value in attributes.items())
        text = " ".join(record.captions).lower()
        visible = record.meta["image"]
        for name, phrase in FINE_WORDS.items():
            present = attributes[name] not in (False, "none")
            if name == "glasses":
                present = visible["glasses_on"]
            if name == "earrings":
                present = visible["earrings_on"]
            if name == "eye_colour" or present:
                assert re.search(phrase(attributes), text), (name, record.captions)
        if not visible["glasses_on"]:
            assert "eyeglasses" not in text
        other = {"man": r"\b(she|woman)\b", "woman": r"\b(he|man)\b"}[attributes["gender"]]
        assert re.search(other, text) is None


def test_images_of_one_identity_vary():
    attributes = identity_attributes(0, 4)
    images = [np.asarray(render_face(attributes, image_state(0, 4, k, attributes), synthetic.GENERATOR_VERSION),
                         np.float64) for k in range(4)]
    for k in range(1, 4):
        assert np.mean(np.abs(images[0] - images[k])) > 10  # pose, light, background change


@pytest.mark.parametrize("mark, absent", [("freckles", False), ("mole", "none"), ("scar", "none"),
                                          ("eye_colour", None), ("earrings", "none")])
def test_fine_marks_visible_clean_and_erased_by_low_resolution(mark, absent):
    """The pixel difference a fine mark makes shrinks far more than the image under down-up 16."""
    identity = next(i for i in range(200) if identity_attributes(0, i)[mark] not in (False, "none"))
    attributes = identity_attributes(0, identity)
    state = {**image_state(0, identity, 0, attributes), "yaw": 0.0, "roll": 0.0, "earrings_on": True}
    changed = {**attributes, mark: absent if absent is not None else
               ("blue" if attributes["eye_colour"] == "brown" else "brown")}
    changed_state = {**state, "earrings_on": mark != "earrings"}
    version = synthetic.GENERATOR_VERSION
    with_mark, without = render_face(attributes, state, version), render_face(changed, changed_state, version)
    clean = np.abs(np.asarray(with_mark, np.float64) - np.asarray(without, np.float64))
    low = np.abs(np.asarray(down_up(with_mark, 16), np.float64) - np.asarray(down_up(without, 16), np.float64))
    assert clean.max() > 40  # clearly visible in the clean image
    assert low.max() < 0.5 * clean.max()


def test_ensure_reuses_cache(tmp_path):
    config = SyntheticConfig(identities=4, val_fraction=0, images_per_identity=2, captions_per_image=2, degradations={})
    first = ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1)
    stamp = first.stat().st_mtime_ns
    assert ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1) == first
    assert first.stat().st_mtime_ns == stamp
    (first.parent / "synthetic.json").unlink()  # an interrupted run is regenerated
    assert ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1) == first
    with pytest.raises(ValueError, match="preset must be one of"):
        ensure_synthetic_dataset("huge", cache_dir=tmp_path)


def test_config_validation():
    with pytest.raises(ValueError, match=r"^identities must be an integer in \[1, 10000000\], got 0$"):
        SyntheticConfig(identities=0)
    # Sizes numpy's draws refuse only after the folder's marker is written ("Maximum allowed size exceeded").
    for name, limit in (("identities", 10**7), ("images_per_identity", 10**5), ("captions_per_image", 10**4)):
        with pytest.raises(ValueError, match=rf"^{name} must be an integer in \[1, {limit}\], got {limit + 1}$"):
            SyntheticConfig(**{name: limit + 1})
    with pytest.raises(ValueError, match="sum < 1"):
        SyntheticConfig(val_fraction=0.5, test_fraction=0.5)
    # A TypeError, a comparison of True, or (numpy's float32) a TypeError of json once the key is made.
    for value in ("0.1", True, None, np.float32(0.1)):
        with pytest.raises(ValueError, match=re.escape(f"test_fraction must be an int or float, got {value!r}")):
            SyntheticConfig(test_fraction=value)
    for degradations in ("down24", {1: "down24"}):  # an AttributeError
        with pytest.raises(ValueError, match=re.escape(f"degradations must be a dict {{split name: recipe}}, got "
                                                       f"{degradations!r}")):
            SyntheticConfig(degradations=degradations)
    # A copy of a split that is not there: "foo_degraded" would be a copy of no image.
    # The form the message gives is the form accepted: "val_degraded_x" (ending otherwise) matched "..._degraded...".
    for name in ("blurry", "foo_degraded", "val_degraded_x"):
        with pytest.raises(ValueError, match=re.escape(f"degradation split names look like '<train|val|test>[_...]"
                                                       f"_degraded', got {name!r}")):
            SyntheticConfig(degradations={name: "down16"})
    assert list(SyntheticConfig(degradations={"val_x_degraded": "down16"}).degradations) == ["val_x_degraded"]
    # Refused by the config, not after every clean image is rendered.
    with pytest.raises(ValueError, match=re.escape("a degradation split name (the degraded copy's folder) must be one "
                                                   "plain name (no '/', '\\', '.' or '..'), got 'test_/_degraded'")):
        SyntheticConfig(degradations={"test_/_degraded": "down16"})


def test_config_rejects_a_negative_seed_and_a_bad_recipe_before_rendering():
    for seed in (-1, True):  # True: an int to Python, a seed no one means
        with pytest.raises(ValueError, match=f"^seed must be a non-negative integer, got {seed!r}$"):
            SyntheticConfig(seed=seed)
    with pytest.raises(ValueError, match="degradation recipe of split 'test_degraded': unknown recipe step 'bogus'"):
        SyntheticConfig(degradations={"test_degraded": "bogus"})


def test_ensure_regenerates_a_cut_short_marker(tmp_path):
    config = SyntheticConfig(identities=3, val_fraction=0, images_per_identity=1, captions_per_image=1, degradations={})
    manifest = ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1)
    marker = manifest.parent / "synthetic.json"
    marker.write_text(marker.read_text()[:20])
    assert ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1) == manifest
    assert json.loads(marker.read_text())["key"] == config.key()
    assert len(read_manifest(manifest)) == 3
    assert sorted(p.name for p in manifest.parent.parent.iterdir()) == [config.key()]  # nothing left aside


def test_ensure_regenerates_a_cached_dataset_whose_manifest_is_gone(tmp_path):
    """A cache cleaner (or a user tidying) removed the manifest: the folder was reused for good, its manifest's
    path returned though nothing was there."""
    config = SyntheticConfig(identities=3, val_fraction=0, images_per_identity=1, captions_per_image=1, degradations={})
    manifest = ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1)
    written = manifest.read_bytes()
    manifest.unlink()
    assert ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1) == manifest
    assert manifest.read_bytes() == written
    assert sorted(p.name for p in manifest.parent.parent.iterdir()) == [config.key()]  # nothing left aside


def test_ensure_regenerates_a_cache_folder_whose_marker_records_another_key(tmp_path):
    """A finished dataset of other parameters in the folder of this key (copied there, or written by a tgfr
    whose key was another) is not reused: its images are not this config's."""
    config = SyntheticConfig(identities=3, val_fraction=0, images_per_identity=1, captions_per_image=1, degradations={})
    other = dataclasses.replace(config, identities=4)
    folder = tmp_path / "synthetic" / config.key()
    generate_synthetic_dataset(folder, other, workers=1)
    manifest = ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1)
    assert manifest == folder / "manifest.jsonl"
    assert json.loads((folder / "synthetic.json").read_text())["key"] == config.key()
    assert len(read_manifest(manifest)) == config.identities * config.images_per_identity


def test_concurrent_first_use_never_touches_the_other_generation(tmp_path, monkeypatch):
    """A second process that starts while the first generates must neither delete the first's
    half-written files nor fail when the first's dataset arrives: the later one uses the earlier."""
    config = SyntheticConfig(identities=4, val_fraction=0, images_per_identity=2, captions_per_image=1)
    render = synthetic._render_identity
    other = []  # the other process's result; None while it runs

    def render_while_another_process_generates(task):
        if not other:
            other.append(None)
            sentinel = Path(task[0]) / "written-by-the-first-process"
            sentinel.write_text("x")
            other[0] = ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1)
            assert sentinel.is_file()
        return render(task)
    monkeypatch.setattr(synthetic, "_render_identity", render_while_another_process_generates)
    manifest = ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1)
    assert other == [manifest]
    assert json.loads((manifest.parent / "synthetic.json").read_text())["key"] == config.key()
    splits = [r.split for r in read_manifest(manifest)]
    assert len(splits) - splits.count("test_degraded") == 8 and splits.count("test_degraded") == splits.count("test")
    assert sorted(p.name for p in manifest.parent.parent.iterdir()) == [config.key()]
    assert not (manifest.parent / "written-by-the-first-process").exists()


def test_ensure_removes_the_staging_folders_of_killed_runs(tmp_path):
    """A run killed while generating (SIGKILL, out of memory) cannot remove its staging folder; the
    next run removes it (an earlier tgfr's, named without the machine, too), and leaves alone a live
    process's staging folder and another machine's (sharing the cache over a network file system: its
    process id says nothing here)."""
    config = SyntheticConfig(identities=3, val_fraction=0, images_per_identity=1, captions_per_image=1, degradations={})
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
    here = synthetic._staging_owner().partition("@")[2]
    parent = tmp_path / "synthetic"
    abandoned = [parent / f".{config.key()}-{finished}@{here}-0123abcd", parent / f".{config.key()}-{finished}-89ab"]
    kept = [parent / f".{config.key()}-{os.getppid()}@{here}-4567ef01",
            parent / f".{config.key()}-{finished}@another_machine-cdef"]
    for staging in abandoned + kept:
        staging.mkdir(parents=True)
        (staging / "part.png").write_bytes(b"partial")
    manifest = ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1)
    assert not any(staging.exists() for staging in abandoned) and all((s / "part.png").is_file() for s in kept)
    assert sorted(p.name for p in parent.iterdir()) == sorted([config.key(), *(staging.name for staging in kept)])
    assert len(read_manifest(manifest)) == 3


def test_ensure_removes_the_staging_folders_of_killed_runs_of_other_configs(tmp_path):
    """A killed sweep over seeds left one partial dataset per seed, which only a run of that very seed removed: a
    run removes the abandoned staging folders (and moved-aside files) of any config, with the same checks, and
    leaves alone a live process's, another machine's and names that are not a staging folder's."""
    config = SyntheticConfig(identities=3, val_fraction=0, images_per_identity=1, captions_per_image=1, degradations={})
    other = dataclasses.replace(config, seed=7).key()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True).stdout.strip()
    here = synthetic._staging_owner().partition("@")[2]
    parent = tmp_path / "synthetic"
    abandoned = [parent / f".{other}-{ended}@{here}-0123abcd", parent / f".{other}-{ended}-89ab",
                 parent / f".{other}-{ended}@{here}-4567-stale"]
    kept = [parent / f".{other}-{os.getppid()}@{here}-4567ef01", parent / f".{other}-{ended}@another_machine-cdef",
            parent / f".not-a-config-key-{ended}@{here}-0123abcd", parent / f".{other[:15]}-{ended}@{here}-0123abcd"]
    for staging in abandoned + kept:
        staging.mkdir(parents=True)
        (staging / "part.png").write_bytes(b"partial")
    moved_aside = parent / f".{other}-{ended}@{here}-89abcdef-stale"
    moved_aside.write_text("a file that was in the dataset folder's place")
    manifest = ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1)
    assert sorted(p.name for p in parent.iterdir()) == sorted([config.key(), *(staging.name for staging in kept)])
    assert all((staging / "part.png").read_bytes() == b"partial" for staging in kept)
    assert len(read_manifest(manifest)) == 3
    # A run that finds its dataset cached, as most runs of a sweep do, removes them too.
    abandoned[0].mkdir()
    assert ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1) == manifest
    assert not abandoned[0].exists() and all(staging.exists() for staging in kept)


def test_ensure_removes_the_stale_folder_of_a_run_killed_while_removing_it(tmp_path):
    """A damaged cache folder is moved aside before its removal: a kill during the removal left it, possibly a
    whole dataset, under a name no later run removed. Named after the killed run's staging folder, it goes with
    it; a live process's is left alone."""
    config = SyntheticConfig(identities=3, val_fraction=0, images_per_identity=1, captions_per_image=1, degradations={})
    folder = tmp_path / "synthetic" / config.key()
    folder.mkdir(parents=True)
    (folder / "part.png").write_bytes(b"of a run cut short")  # no marker: a damaged folder, moved aside
    # Killed (os._exit) as it removes the folder moved aside: the name of earlier tgfrs had "-stale-" in the middle.
    killed = subprocess.run([sys.executable, "-c", "import os, shutil\n"
                             "from tgfr.data.synthetic import SyntheticConfig, ensure_synthetic_dataset\n"
                             "rmtree = shutil.rmtree\n"
                             "shutil.rmtree = lambda path, **kwargs: (os._exit(9) if '-stale' in "
                             "os.path.basename(path) else rmtree(path, **kwargs))\n"
                             f"ensure_synthetic_dataset(SyntheticConfig(**{dataclasses.asdict(config)!r}), "
                             f"cache_dir={str(tmp_path)!r}, workers=1)\n"], capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    left = [path for path in folder.parent.iterdir() if path != folder]
    assert any((path / "part.png").is_file() for path in left)
    here = synthetic._staging_owner().partition("@")[2]
    live = folder.parent / f".{config.key()}-{os.getppid()}@{here}-4567ef01-stale"
    live.mkdir()
    manifest = ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1)
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted([config.key(), live.name])
    assert len(read_manifest(manifest)) == 3


@pytest.mark.parametrize("entry", ["file", "link to a folder", "dangling link"])
def test_ensure_removes_a_file_or_link_a_killed_run_moved_aside_but_not_what_it_links_to(tmp_path, entry):
    """A file or link in the dataset folder's place is moved aside (as <staging folder>-stale) and then removed: one
    left by a run killed in between stayed for good, since folder_lock cannot open a file and rmtree refuses a link."""
    config = SyntheticConfig(identities=3, val_fraction=0, images_per_identity=1, captions_per_image=1, degradations={})
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True).stdout.strip()
    here = synthetic._staging_owner().partition("@")[2]
    parent, users = tmp_path / "synthetic", tmp_path / "users"
    parent.mkdir()
    users.mkdir()
    (users / "own.png").write_bytes(b"the user's")
    stale = parent / f".{config.key()}-{ended}@{here}-0123abcd-stale"
    if entry == "file":
        stale.write_text("not a dataset")
    else:
        stale.symlink_to(users if entry == "link to a folder" else tmp_path / "gone")
    manifest = ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1)
    assert sorted(p.name for p in parent.iterdir()) == [config.key()]
    assert [p.name for p in users.iterdir()] == ["own.png"] and (users / "own.png").read_bytes() == b"the user's"
    assert len(read_manifest(manifest)) == 3


def test_a_staging_folder_whose_lock_is_held_is_kept_though_its_process_id_is_gone(tmp_path, monkeypatch,
                                                                                   lock_taken_elsewhere):
    """Two containers of one host name sharing the cache see each other's staging folders but not each other's
    processes: the first one's folder, named with a process id the second cannot see, was removed while the first
    generated into it. The owner holds the folder's lock from its generation to its rename into place, and a
    folder of an ended process is removed only if its lock is free."""
    config = SyntheticConfig(identities=3, val_fraction=0, images_per_identity=1, captions_per_image=1, degradations={})
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True).stdout.strip()
    here = synthetic._staging_owner().partition("@")[2]
    parent = tmp_path / "synthetic"
    held, abandoned = (parent / f".{config.key()}-{ended}@{here}-{suffix}" for suffix in ("0123abcd", "89ab"))
    for staging in (held, abandoned):
        staging.mkdir(parents=True)
        (staging / "part.png").write_bytes(b"partial")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys\n"
                               "fcntl.flock(os.open(sys.argv[1], os.O_RDONLY), fcntl.LOCK_EX)\n"
                               "print('locked', flush=True)\n"
                               "sys.stdin.read()\n", str(held)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    render, replace = synthetic._render_identity, os.replace
    locked_while = {}  # what the owner was doing -> whether its staging folder was locked then

    def render_noting_the_lock(task):
        locked_while["rendering"] = lock_taken_elsewhere(Path(task[0]))
        return render(task)

    def replace_noting_the_lock(source, destination):
        if Path(source).parent == parent and Path(source).name.startswith(f".{config.key()}-{os.getpid()}@"):
            locked_while["renaming"] = lock_taken_elsewhere(Path(source))
        return replace(source, destination)

    monkeypatch.setattr(synthetic, "_render_identity", render_noting_the_lock)
    monkeypatch.setattr(os, "replace", replace_noting_the_lock)
    try:
        assert holder.stdout.readline() == "locked\n"
        manifest = ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1)
    finally:
        holder.communicate("", timeout=30)
    assert (held / "part.png").is_file() and not abandoned.exists()
    assert locked_while == {"rendering": True, "renaming": True}
    assert len(read_manifest(manifest)) == 3


@pytest.mark.parametrize("workers", [0, -1])
def test_workers_must_be_positive_before_anything_is_written(tmp_path, workers):
    config = SyntheticConfig(identities=4, val_fraction=0, images_per_identity=1, captions_per_image=1)
    with pytest.raises(ValueError, match=f"workers must be a positive integer, got {workers}"):
        generate_synthetic_dataset(tmp_path / "out", config, workers=workers)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("entry", ["file", "path under a file", "dangling link"])
def test_an_out_that_cannot_be_a_folder_is_named_before_anything_is_written(tmp_path, entry):
    """A bare FileExistsError or NotADirectoryError from mkdir named no argument."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    out, expected = {
        "file": (tmp_path / "file", f"out {tmp_path / 'file'} is a file, not a folder"),
        "path under a file": (tmp_path / "file" / "sub",
                              f"out {tmp_path / 'file' / 'sub'}: {tmp_path / 'file'} is a file, not a folder"),
        "dangling link": (tmp_path / "link", f"out {tmp_path / 'link'} is a broken symbolic link (to "
                                             f"{tmp_path / 'gone'})"),
    }[entry]
    config = SyntheticConfig(identities=4, val_fraction=0, images_per_identity=1, captions_per_image=1)
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        generate_synthetic_dataset(out, config, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "link"] and not (tmp_path / "gone").exists()


def test_a_file_in_place_of_the_cache_folders_is_named(tmp_path):
    config = SyntheticConfig(identities=3, val_fraction=0, images_per_identity=1, captions_per_image=1, degradations={})
    (tmp_path / "synthetic").write_text("x")
    with pytest.raises(ValueError, match=re.escape(
            f"cache_dir {tmp_path}: the synthetic dataset's folder {tmp_path / 'synthetic'} is a file, not a folder")):
        ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1)
    cache_file = tmp_path / "cache-file"
    cache_file.write_text("x")
    with pytest.raises(ValueError, match=re.escape(
            f"cache_dir {cache_file}: the synthetic dataset's folder {cache_file / 'synthetic'}: {cache_file} is a "
            "file, not a folder")):
        ensure_synthetic_dataset(config, cache_dir=cache_file, workers=1)


def test_a_staging_folder_that_cannot_be_made_is_named(tmp_path, monkeypatch):
    config = SyntheticConfig(identities=3, val_fraction=0, images_per_identity=1, captions_per_image=1, degradations={})
    mkdir = Path.mkdir

    def refuse_staging(self, *args, **kwargs):
        if self.name.startswith(f".{config.key()}-"):
            raise PermissionError(13, "Permission denied", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse_staging)
    expected = (f"cache_dir {tmp_path}: cannot create the synthetic dataset's folder "
                f"{tmp_path / 'synthetic' / config.key()}: {tmp_path / 'synthetic'}/.{config.key()}-")
    with pytest.raises(ValueError, match=re.escape(expected) + r"\S+: Permission denied$"):
        ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1)


@pytest.mark.parametrize("entry", ["file", "dangling link", "link to a folder"])
def test_a_file_in_place_of_the_dataset_folder_is_replaced_and_removed(tmp_path, entry):
    """A file (or a link) where the dataset's folder belongs is moved aside and removed, leaving no hidden
    copy behind; a linked folder, the user's, is left as it was."""
    config = SyntheticConfig(identities=3, val_fraction=0, images_per_identity=1, captions_per_image=1, degradations={})
    (tmp_path / "synthetic").mkdir()
    users = tmp_path / "users"
    users.mkdir()
    (users / "own.png").write_bytes(b"the user's")
    if entry == "file":
        (tmp_path / "synthetic" / config.key()).write_text("not a dataset")
    else:
        (tmp_path / "synthetic" / config.key()).symlink_to(users if entry == "link to a folder" else tmp_path / "gone")
    manifest = ensure_synthetic_dataset(config, cache_dir=tmp_path, workers=1)
    assert len(read_manifest(manifest)) == 3
    assert sorted(p.name for p in (tmp_path / "synthetic").iterdir()) == [config.key()]
    assert [p.name for p in users.iterdir()] == ["own.png"] and (users / "own.png").read_bytes() == b"the user's"


def _interrupt_at_identity(monkeypatch, identity: int) -> None:
    """Makes the generator stop with KeyboardInterrupt (a Ctrl-C) when it comes to render `identity`;
    monkeypatch.undo() lets it run again."""
    render = synthetic._render_identity

    def interrupted(task):
        if task[2] == identity:
            raise KeyboardInterrupt
        return render(task)

    monkeypatch.setattr(synthetic, "_render_identity", interrupted)


def test_a_generation_cut_short_is_no_dataset_and_the_next_run_writes_over_it(tmp_path, monkeypatch):
    """Ctrl-C (or a full disk) mid-way leaves images but no manifest: the folder must neither be taken
    for a finished dataset nor refused as someone else's files by the rerun."""
    out = tmp_path / "synth"
    _interrupt_at_identity(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(out, CONFIG, workers=1)
    assert any(out.rglob("*.png")) and not (out / "manifest.jsonl").exists()
    assert synthetic._cached_manifest(out, CONFIG.key()) is None
    monkeypatch.undo()
    manifest = generate_synthetic_dataset(out, CONFIG, workers=1)
    fresh = generate_synthetic_dataset(tmp_path / "fresh", CONFIG, workers=1)
    assert manifest.read_bytes() == fresh.read_bytes()
    assert synthetic._cached_manifest(out, CONFIG.key()) == manifest


@pytest.mark.parametrize("identities, val_fraction, test_fraction, empty, sizes", [
    (2, 0.1, 0.2, "val, test", "2/0/0"), (4, 0.1, 0.2, "val", "3/0/1"), (3, 0.49, 0.5, "train", "0/1/2")])
def test_a_split_rounded_to_no_identity_is_refused_before_anything_is_written(tmp_path, capsys, identities,
                                                                               val_fraction, test_fraction, empty, sizes):
    with pytest.raises(ValueError, match=re.escape(
            f"identities={identities} with val_fraction={val_fraction} and test_fraction={test_fraction} leaves "
            f"split(s) {empty} without an identity (train/val/test get {sizes})")):
        SyntheticConfig(identities=identities, val_fraction=val_fraction, test_fraction=test_fraction)
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--identities", str(identities), "--val-fraction",
                 str(val_fraction), "--test-fraction", str(test_fraction), "--workers", "1"]) == 2
    assert f"leaves split(s) {empty} without an identity" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_every_split_with_a_positive_fraction_gets_identities_as_the_fractions_round():
    for identities, val_fraction, test_fraction in ((6, 0.1, 0.2), (24, 0.1, 0.2), (3, 0, 0.2), (2, 0, 0.5)):
        config = SyntheticConfig(identities=identities, val_fraction=val_fraction, test_fraction=test_fraction)
        counts = {name: synthetic.identity_splits(config).count(name) for name in ("train", "val", "test")}
        expected_test, expected_val = round(identities * test_fraction), round(identities * val_fraction)
        assert counts == {"train": identities - expected_test - expected_val, "val": expected_val, "test": expected_test}
        assert counts["train"] > 0 and (counts["val"] > 0) == (val_fraction > 0) and counts["test"] > 0


def test_a_rerun_removes_the_images_of_earlier_runs_also_one_cut_short(tmp_path, monkeypatch):
    """Run A finishes, run B (another config) is cut short over it, leaving no manifest, and run C (a
    third) writes over both: the folder then holds the images that C's manifest lists, and nothing of
    A's or B's else."""
    out = tmp_path / "synth"
    generate_synthetic_dataset(out, CONFIG, workers=1)
    _interrupt_at_identity(monkeypatch, 6)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(out, dataclasses.replace(CONFIG, seed=7, images_per_identity=4), workers=1)
    assert any(out.glob("images/*/*/*_3.png"))  # B's fourth images, which A has not
    # A's manifest went before B touched A's images: kept, it would list images of two datasets.
    assert not (out / "manifest.jsonl").exists()
    monkeypatch.undo()
    manifest = generate_synthetic_dataset(out, dataclasses.replace(CONFIG, identities=6, seed=8,
                                                                   images_per_identity=2), workers=1)
    listed = {record.path for record in read_manifest(manifest)}
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == listed | {"manifest.jsonl",
                                                                                                "synthetic.json"}
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_dir()} == \
        {parent for path in listed for parent in map(str, Path(path).parents) if parent != "."}


def test_a_run_cut_short_while_it_removes_an_earlier_cut_short_runs_images_passes_that_run_on(tmp_path,
                                                                                            monkeypatch):
    """Run A is cut short, run B (another config) is cut short while it removes A's images, and run C writes
    over both: B's marker listed A's parameters with its own, so C removes the images of A that B left, and
    the folder holds only the images that C's manifest lists."""
    out = tmp_path / "synth"
    earlier = dataclasses.replace(CONFIG, identities=20, images_per_identity=1, degradations={})
    _interrupt_at_identity(monkeypatch, 15)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(out, earlier, workers=1)
    monkeypatch.undo()
    remove_images = synthetic._remove_images

    def interrupted_while_removing(folder, paths):
        if paths:
            raise KeyboardInterrupt
        remove_images(folder, paths)

    monkeypatch.setattr(synthetic, "_remove_images", interrupted_while_removing)
    cut_short = dataclasses.replace(earlier, identities=10, seed=1)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic_dataset(out, cut_short, workers=1)
    monkeypatch.undo()
    # A's images that C does not write, e.g. those of identities 10 to 14, are still there for C to remove.
    assert any(int(p.parent.name) >= 10 for p in out.glob("images/*/*/*.png"))
    manifest = generate_synthetic_dataset(out, dataclasses.replace(cut_short, seed=2), workers=1)
    listed = {record.path for record in read_manifest(manifest)}
    assert {p.relative_to(out).as_posix() for p in out.glob("images/*/*/*.png")} == listed


def test_a_rerun_that_drops_a_degraded_copy_leaves_no_empty_folder(tmp_path):
    """_remove_images removes the folders its images leave empty, the deepest first: a parent tried before
    its child is not empty yet, and stays empty once the child goes."""
    out = tmp_path / "synth"
    generate_synthetic_dataset(out, CONFIG, workers=1)
    assert (out / "test_degraded").is_dir()
    generate_synthetic_dataset(out, dataclasses.replace(CONFIG, identities=6, degradations={}), workers=1)
    assert [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_dir() and not any(p.iterdir())] == []
    assert not (out / "test_degraded").exists()


def test_a_small_rerun_after_a_huge_run_cut_short_tests_the_images_there_not_every_planned_one(tmp_path,
                                                                                                   monkeypatch):
    """A run of 10^7 identities started by mistake and killed a second later lists its parameters: the next, small
    run built the set of every path that run planned (minutes, gigabytes) to find the few images it wrote. It
    removes those (and its degraded copies) without listing the big run's splits identity by identity."""
    out = tmp_path / "synth"
    generate_synthetic_dataset(out, CONFIG, workers=1)
    huge = SyntheticConfig(identities=10**7, images_per_identity=2, seed=5)
    marker = {"version": synthetic.GENERATOR_VERSION, "key": None, "finished": False,
              "written": [dataclasses.asdict(CONFIG), dataclasses.asdict(huge)]}
    (out / "synthetic.json").write_text(json.dumps(marker))
    # The split of the first identity of the seeded permutation is test, that of the last train.
    order = np.random.default_rng((huge.seed, 3)).permutation(huge.identities)
    first, last = int(order[0]), int(order[-1])
    assert min(first, last) >= CONFIG.identities
    written_by_huge = [f"images/test/{first}/{first}_0.png", f"test_degraded/images/test/{first}/{first}_1.png",
                       f"images/train/{last}/{last}_1.png"]
    written_by_none = [f"images/val/{first}/{first}_0.png", f"images/train/{last}/{last}_2.png",
                       f"test_blur_degraded/images/test/{first}/{first}_0.png"]
    for name in written_by_huge + written_by_none:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"earlier")
    identity_splits = synthetic.identity_splits

    def refusing_the_huge_config(config):
        assert config.identities < huge.identities, "listed the split of each of the huge run's identities"
        return identity_splits(config)

    monkeypatch.setattr(synthetic, "identity_splits", refusing_the_huge_config)
    manifest = generate_synthetic_dataset(out, dataclasses.replace(CONFIG, identities=6, seed=8), workers=1)
    listed = {record.path for record in read_manifest(manifest)}
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == \
        listed | set(written_by_none) | {"manifest.jsonl", "synthetic.json"}


def test_a_rerun_removes_the_images_of_a_run_an_earlier_tgfr_cut_short(tmp_path):
    """An earlier tgfr's cut-short marker lists no parameters: the rerun removes the files named like
    the generator's images and degraded copies that it does not write itself, and no other file."""
    out = tmp_path / "synth"
    (out / "images").mkdir(parents=True)
    (out / "synthetic.json").write_text(json.dumps({"finished": False, "key": None, "version": 1}))
    generated_names = ["images/val/50/50_0.png", "images/test/51/51_2.png", "images/train/0/0_7.png",
                       "test_degraded/images/test/51/51_2.png", "test_blur_degraded/images/test/52/52_0.png"]
    other_names = ["notes.txt", "images/test/51/face.png", "images/train/7/8_0.png", "images/extra/1/1_0.png",
                   "images/test/51/51_2.jpg", "test_degraded/images/val/50/50_0.png", "images/test/051/051_0.png",
                   "mine/images/test/51/51_2.png"]
    for name in generated_names + other_names:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"earlier")
    manifest = generate_synthetic_dataset(out, CONFIG, workers=1)
    listed = {record.path for record in read_manifest(manifest)}
    assert not listed & set(generated_names + other_names)  # none of them is rewritten by this run
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == \
        listed | set(other_names) | {"manifest.jsonl", "synthetic.json"}


@pytest.mark.parametrize("tgfr_cache, xdg_cache, expected", [
    ("/srv/tgfr-cache", "/xdg", "/srv/tgfr-cache"),
    ("", "/xdg", "/xdg/tgfr"),  # an empty $TGFR_CACHE_DIR is unset, not the current folder
    (None, "/xdg", "/xdg/tgfr"),
    (None, "", "HOME/.cache/tgfr"),  # the XDG spec: an empty or relative $XDG_CACHE_HOME is ignored
    (None, "cache", "HOME/.cache/tgfr"),
    (None, None, "HOME/.cache/tgfr"),
])
def test_default_cache_dir_ignores_empty_variables_and_a_relative_xdg_cache_home(tmp_path, monkeypatch, tgfr_cache,
                                                                                 xdg_cache, expected):
    monkeypatch.setenv("HOME", str(tmp_path))
    for name, value in (("TGFR_CACHE_DIR", tgfr_cache), ("XDG_CACHE_HOME", xdg_cache)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert synthetic.default_cache_dir() == Path(expected.replace("HOME", str(tmp_path)))



def test_a_rerun_removes_the_images_of_a_newer_generator_version(tmp_path):
    """A folder that a newer generator version wrote (its marker's parameters make no config of this
    tgfr) holds, after a rerun with fewer identities and images, only the rerun's images and the
    files that no run wrote."""
    out = tmp_path / "synth"
    generate_synthetic_dataset(out, CONFIG, workers=1)
    marker = json.loads((out / "synthetic.json").read_text())
    (out / "synthetic.json").write_text(json.dumps({**marker, "version": synthetic.GENERATOR_VERSION + 1}))
    (out / "notes.txt").write_text("mine")
    manifest = generate_synthetic_dataset(out, dataclasses.replace(CONFIG, identities=6, images_per_identity=2),
                                          workers=1)
    listed = {record.path for record in read_manifest(manifest)}
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == \
        listed | {"manifest.jsonl", "synthetic.json", "notes.txt"}
    assert json.loads((out / "synthetic.json").read_text())["version"] == CONFIG.version


# The keys, and so the cache folders, that tgfr gave the presets before the version was a parameter
# (computed by the tgfr of 2ea00fd): a run trained then finds its cached dataset again.
KEYS_BEFORE_VERSIONS = {"default": "962ff99f1a9e5063", "small": "ff22d02536f734bb", "tiny": "7eb9ea2fb183785c"}


@pytest.mark.parametrize("preset", sorted(KEYS_BEFORE_VERSIONS))
def test_a_version_1_config_keeps_the_key_it_had_before_versions_were_a_parameter(preset):
    """The preset's parameters with version 1's own degraded copies (test's alone, the default then)."""
    config = dataclasses.replace(synthetic.SYNTHETIC_PRESETS[preset], version=1, degradations=None)
    assert config.degradations == {"test_degraded": synthetic.DEFAULT_DEGRADATION}
    assert config.key() == KEYS_BEFORE_VERSIONS[preset]


@pytest.mark.parametrize("version", range(1, synthetic.GENERATOR_VERSION + 1))
def test_a_config_without_degradations_writes_the_copies_of_tgfr_train_and_tgfr_data_synth(version):
    """SyntheticConfig(), like the presets, wrote test_degraded alone where tgfr train and tgfr data synth write
    val_degraded too from version 4: a dataset that `tgfr evaluate ... degraded = "val_degraded"` could not use,
    under a key other than train's."""
    config = dataclasses.replace(CONFIG, version=version, degradations=None)
    assert config.degradations == {"test_degraded": synthetic.DEFAULT_DEGRADATION,
                                   **({"val_degraded": synthetic.DEFAULT_DEGRADATION} if version >= 4 else {})}
    assert config == dataclasses.replace(config, degradations=synthetic.degraded_splits(synthetic.DEFAULT_DEGRADATION,
                                                                                        version))
    assert SyntheticConfig(version=version).degradations == config.degradations


def test_configs_of_other_versions_have_other_keys():
    versions = range(1, synthetic.GENERATOR_VERSION + 1)
    assert len({dataclasses.replace(CONFIG, version=version).key() for version in versions}) == len(versions) >= 3


@pytest.mark.parametrize("version", [0, -1, synthetic.GENERATOR_VERSION + 1, True, 1.0, "1"])
def test_a_version_this_generator_does_not_write_is_refused(version):
    with pytest.raises(ValueError, match=rf"^version must be a synthetic generator version from 1 to "
                                         rf"{synthetic.GENERATOR_VERSION} \(this tgfr's newest\), got "
                                         rf"{re.escape(repr(version))}$"):
        dataclasses.replace(CONFIG, version=version)


def test_the_marker_records_the_version_the_dataset_was_written_with(dataset):
    out, _ = dataset
    marker = json.loads((out / "synthetic.json").read_text())
    assert marker["version"] == CONFIG.version == synthetic.GENERATOR_VERSION
    assert SyntheticConfig(**{f.name: marker[f.name] for f in dataclasses.fields(SyntheticConfig)}) == CONFIG


# Identities 21, 22 and 29 of seed 5 have a mole or scar that a beard or bangs cover.
COVERING = SyntheticConfig(identities=30, images_per_identity=2, captions_per_image=3, seed=5, degradations={})
# sha256 of the manifest.jsonl that the tgfr of 2ea00fd, before versions were a parameter, wrote for COVERING.
COVERING_MANIFEST_SHA256_BEFORE_VERSIONS = "659b2bee83b8438544d71aa9bb702cf848e29dda434eda61c62f8363e1c6758f"


def test_version_1_writes_the_dataset_of_before_and_later_versions_differ_in_covered_marks_only(tmp_path):
    """`tgfr data synth --generator-version 1` writes, byte for byte, the dataset the tgfr before versions
    wrote (which named covered marks); versions 2 and 3 draw the same images and leave out the marks that
    covered_marks counts as covered in each (3 more than 2: wrinkles under any hair front); version 4
    writes version 3's captions with faces of marks and brows set apart from the skin."""
    assert main(["data", "synth", "--out", str(tmp_path / "v1"), "--identities", "30", "--images-per-identity", "2",
                 "--captions-per-image", "3", "--seed", "5", "--no-degraded", "--workers", "1",
                 "--generator-version", "1"]) == 0
    first = (tmp_path / "v1" / "manifest.jsonl").read_bytes()
    assert hashlib.sha256(first).hexdigest() == COVERING_MANIFEST_SHA256_BEFORE_VERSIONS
    assert json.loads((tmp_path / "v1" / "synthetic.json").read_text())["key"] == \
        dataclasses.replace(COVERING, version=1).key()
    changed = {}
    for version in (2, 3):
        later = read_manifest(generate_synthetic_dataset(tmp_path / f"v{version}",
                                                         dataclasses.replace(COVERING, version=version), workers=1))
        changed[version] = 0
        for old, new in zip(read_manifest(tmp_path / "v1" / "manifest.jsonl"), later, strict=True):
            assert (old.path, old.identity, old.meta) == (new.path, new.identity, new.meta)
            assert (tmp_path / "v1" / old.path).read_bytes() == (tmp_path / f"v{version}" / new.path).read_bytes()
            identity, k = int(old.identity), int(old.path[-5])
            attributes = identity_attributes(COVERING.seed, identity)
            state = image_state(COVERING.seed, identity, k, attributes)
            covered = covered_marks(attributes, state, version)
            if not covered:
                assert old.captions == new.captions
                continue
            changed[version] += 1
            for mark in covered:
                phrases = fine_phrases(attributes, state, 1)[mark]
                assert any(phrase in caption for caption in old.captions for phrase in phrases)
                assert not any(phrase in caption for caption in new.captions for phrase in phrases)
    assert 0 < changed[2] < changed[3], changed
    assert synthetic.GENERATOR_VERSION == 4
    newest = read_manifest(generate_synthetic_dataset(tmp_path / "v4", COVERING, workers=1))
    redrawn = 0
    for old, new in zip(read_manifest(tmp_path / "v3" / "manifest.jsonl"), newest, strict=True):
        assert (old.path, old.identity, old.meta, old.captions) == (new.path, new.identity, new.meta, new.captions)
        redrawn += (tmp_path / "v3" / old.path).read_bytes() != (tmp_path / "v4" / new.path).read_bytes()
    assert 0 < redrawn < len(newest)


# sha256 of the decoded pixels of COVERING's images (_pixel_digest), as versions 1 and 4 drew them at d8a3c86;
# versions 2 and 3 draw version 1's images (the test above).
COVERING_PIXELS_SHA256 = {1: "c10d52f3cd8ce57a4597316164c7f1404961dafa4bfc3ae1b8113c15bc6b2f97",
                          4: "5e15d443a8ded9ee0f963b791173d07a659589412b261074e6f2d001788d9845"}


def _pixel_digest(folder: Path, records: list) -> str:
    """sha256 over the records' paths and decoded pixels, in the manifest's order: a PNG's bytes depend on
    zlib's version as well, its pixels on the drawing alone."""
    digest = hashlib.sha256()
    for record in records:
        pixels = np.asarray(Image.open(folder / record.path))
        digest.update(f"{record.path} {pixels.shape} {pixels.dtype}\n".encode())
        digest.update(pixels.tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("version", sorted(COVERING_PIXELS_SHA256))
def test_a_version_draws_the_images_it_drew_when_it_was_recorded(tmp_path, version):
    """A recorded reference, not an independent one, on purpose: the promise here is byte-stability itself. A
    version writes forever the dataset it first wrote, and a cache folder is reused by its key alone, so a change
    to the drawing code (even one shared by every version, which comparing versions misses) would give two
    machines different images under one key. A drawing meant to change is a new generator version."""
    folder = tmp_path / f"v{version}"
    records = read_manifest(generate_synthetic_dataset(folder, dataclasses.replace(COVERING, version=version),
                                                       workers=1))
    assert _pixel_digest(folder, records) == COVERING_PIXELS_SHA256[version]


def test_a_folder_another_process_generates_into_is_refused_and_left_alone(tmp_path, folder_held_elsewhere):
    """Two generators in one folder interleave their images: one's could end up under the other's manifest."""
    out = tmp_path / "synth"
    generate_synthetic_dataset(out, CONFIG, workers=1)
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    release = folder_held_elsewhere(out)
    with pytest.raises(ValueError, match=re.escape(f"output folder {out} is being written by another process "
                                                   "generating a synthetic dataset")):
        generate_synthetic_dataset(out, dataclasses.replace(CONFIG, seed=6), workers=1)
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    release()
    generate_synthetic_dataset(out, dataclasses.replace(CONFIG, seed=6), workers=1)
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} != before


def test_files_another_program_writes_before_the_folder_is_locked_are_refused_and_left_alone(tmp_path, monkeypatch):
    """The folder is checked for someone else's files before it is made and locked: another program may write
    there in between."""
    out = tmp_path / "synth"
    lock = synthetic.folder_lock

    def locked_after_another_program_wrote(folder, *arguments, **options):
        (folder / "notes.txt").write_text("another program's")
        return lock(folder, *arguments, **options)

    monkeypatch.setattr(synthetic, "folder_lock", locked_after_another_program_wrote)
    with pytest.raises(ValueError, match=re.escape(f"output folder (--out) {out} already holds files (e.g. notes.txt) "
                                                   f"but no {MARKER} of an earlier synthetic dataset")):
        generate_synthetic_dataset(out, CONFIG, workers=1)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "another program's"


def test_a_degradation_the_faces_are_too_small_for_is_refused_before_any_face_is_drawn(tmp_path, capsys):
    """down200 on the 112-pixel faces was found once every clean face was drawn, leaving images and no manifest."""
    config = SyntheticConfig(identities=6, images_per_identity=2, degradations={"test_degraded": "down200"})
    with pytest.raises(ValueError, match=r"^degradation 'test_degraded' = 'down200' of the 112 x 112 synthetic "
                                         r"faces: recipe step 'down200': 200 must be below both sides of the image, "
                                         r"112 x 112"):
        generate_synthetic_dataset(tmp_path / "out", config)
    assert not list((tmp_path / "out").rglob("*.png"))
    assert main(["data", "synth", "--out", str(tmp_path / "cli"), "--identities", "6", "--images-per-identity", "2",
                 "--degradation", "down112"]) == 2
    assert "recipe step 'down112': 112 must be below" in capsys.readouterr().err
    assert not list((tmp_path / "cli").rglob("*.png"))
