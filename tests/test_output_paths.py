"""Output files are replaced atomically: a write that fails halfway leaves the old file, byte for byte, and
an error that names it."""

import errno
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import tgfr.output_paths as output_paths
from tgfr.data.manifest import ManifestRecord, read_manifest, write_manifest

MANIFEST = ("from tgfr.data.manifest import ManifestRecord, write_manifest\n"
            "def write(path):\n"
            "    write_manifest(path, [ManifestRecord(f'{i}.png', '1', 'test', ('c' * 50,)) for i in range(50)])\n")
PAIRS = ("from tgfr.data.protocol import VerificationPair, write_verification_pairs\n"
         "def write(path):\n"
         "    write_verification_pairs(path, [VerificationPair(f'a{i}.png', f'b{i}.png', 1) for i in range(50)])\n")
# file name -> code that defines write(path), which writes far more than LIMIT bytes to `path`.
WRITERS = {
    "manifest.jsonl": MANIFEST,
    "manifest.csv": MANIFEST,
    "test_pairs.csv": PAIRS,
    "test_pairs.json": PAIRS,
    "test_identification.json": "from tgfr.data.protocol import write_identification_split\n"
                                "def write(path):\n"
                                "    images = [{'path': f'{i}.png', 'identity': '1'} for i in range(50)]\n"
                                "    write_identification_split(path, {'gallery': images, 'probes': images})\n",
    "last.pt": "import torch\n"
               "from tgfr.train.checkpoint import save_checkpoint\n"
               "def write(path):\n"
               "    save_checkpoint(path, {'step': 1, 'weight': torch.zeros(10000)})\n",
    "metrics.json": "import numpy as np\n"
                    "from pathlib import Path\n"
                    "from tgfr.evaluation.report import write_report\n"
                    "from tgfr.metrics import identification_metrics, verification_metrics\n"
                    "from tgfr.provenance import environment\n"
                    "import torch\n"
                    "def write(path):\n"
                    "    a, b = np.triu_indices(20, k=1)\n"
                    "    subjects_a, subjects_b = np.r_[0:20, a], np.r_[0:20, b]\n"
                    "    same = (subjects_a == subjects_b).astype(np.int64)\n"
                    "    rng = np.random.default_rng(0)\n"
                    "    figures = verification_metrics(rng.normal(same, 1.0), same, subjects_a=subjects_a,\n"
                    "                                   subjects_b=subjects_b, resamples=0)\n"
                    "    labels = np.r_[0:4, 0:4]\n"
                    "    figures |= identification_metrics(rng.normal(np.eye(4)[labels]), labels, np.arange(4),\n"
                    "                                      resamples=0)\n"
                    "    context = {'run': 'run', 'manifest': 'm.jsonl', 'protocol': 'all_pairs',\n"
                    "               'gallery_per_subject': 1, 'resamples': 0, 'splits': {'clean': 'test'},\n"
                    "               'training': None, 'environment': environment(torch.device('cpu'), 'fp32')}\n"
                    "    write_report(Path(path).parent, {'clean': {'image_only': figures}}, {}, [], context)\n",
}
WRITERS |= {
    "roc_test.png": "import numpy as np\n"
                    "from tgfr.evaluation.plots import plot_roc\n"
                    "from tgfr.metrics import RocCurve\n"
                    "def write(path):\n"
                    "    far = np.logspace(-4, 0, 50)\n"
                    "    plot_roc({'image_only': RocCurve(far=far, tar=far ** 0.1, thresholds=-far)}, path, 'ROC')\n",
    "cmc_test.png": "import numpy as np\n"
                    "from tgfr.evaluation.plots import plot_cmc\n"
                    "def write(path):\n"
                    "    plot_cmc({'image_only': list(np.linspace(0.5, 1.0, 50))}, path, 'CMC')\n",
    "grid.png": "from tgfr.data.grid import render_grid, synthetic_rows\n"
                "def write(path):\n"
                "    render_grid(synthetic_rows(2), path, 'down24')\n",
    "train_summary.json": "from pathlib import Path\n"
                          "from tgfr.train.run import _write_summary\n"
                          "def write(path):\n"
                          "    counts = {f'stage{i}': {'steps_taken': i, 'seconds': 1.5 * i} for i in range(20)}\n"
                          "    _write_summary(Path(path).parent, counts, 64)\n",
    "run_info.json": "from pathlib import Path\n"
                     "from tgfr.train.run_info import record_call\n"
                     "def write(path):\n"
                     "    record_call(Path(path).parent, {'device': 'cpu', 'note': 'x' * 400})\n",
}
LIMIT = 256  # bytes: RLIMIT_FSIZE makes every write past it fail with EFBIG, as a full disk fails with ENOSPC
# A checkpoint cut off in a tensor larger than the stream's buffer, after its first records: torch's zip writer
# then raised an error of its own over the OSError.
LIMITS = {"last.pt": 2048}


@pytest.mark.parametrize("name", WRITERS)
def test_a_write_that_fails_halfway_keeps_the_old_file_and_names_it(tmp_path, name):
    path = tmp_path / name
    old = b"the user's own file\n"
    path.write_bytes(old)
    # Python ignores SIGXFSZ, so the write past the limit returns EFBIG instead of killing the process.
    script = (WRITERS[name] + "import resource, sys\n"
              f"resource.setrlimit(resource.RLIMIT_FSIZE, ({LIMITS.get(name, LIMIT)}, resource.RLIM_INFINITY))\n"
              "try:\n"
              "    write(sys.argv[1])\n"
              "except OSError as error:\n"
              "    print(f'{type(error).__name__}: {error}', file=sys.stderr)\n"
              "    sys.exit(3)\n")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr
    assert path.read_bytes() == old
    assert f"[Errno {errno.EFBIG}]" in result.stderr and str(path) in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file, no report.md either


def test_a_replaced_file_keeps_its_permissions_and_a_symlink_its_place(tmp_path):
    """What open("w") did: an existing file keeps its mode; a symlinked manifest is written through the
    link, which stays a link (os.replace over the link would turn it into a copy)."""
    records = [ManifestRecord("a.png", "1", "test", ("c",))]
    own = tmp_path / "own.jsonl"
    own.write_text("old")
    os.chmod(own, 0o640)
    write_manifest(own, records)
    assert stat.S_IMODE(own.stat().st_mode) == 0o640 and read_manifest(own) == records
    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "real.jsonl"
    target.write_text("old")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    write_manifest(link, records)
    assert link.is_symlink() and read_manifest(target) == records


def test_write_atomically_forces_the_new_content_to_disk_before_the_rename(tmp_path, monkeypatch):
    """Renamed before its data reached the disk, the file could be found empty or cut short after a power loss,
    the old content gone with it."""
    path = tmp_path / "report.txt"
    path.write_text("old")
    synced = []  # (file synced, its content then, the content at `path` then)
    fsync = os.fsync

    def recording_fsync(descriptor):
        name = Path(os.readlink(f"/proc/self/fd/{descriptor}"))
        synced.append((name, name.read_text() if name.is_file() else None, path.read_text()))
        fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with output_paths.write_atomically(path, "report") as stream:
        stream.write("new content")
    assert path.read_text() == "new content"
    assert [(name.parent, content, at_path) for name, content, at_path in synced if name != path] == [
        (tmp_path, "new content", "old")]


@pytest.mark.parametrize("below", ["", "run"])
def test_an_output_folder_at_or_under_a_broken_link_is_refused_naming_the_link(tmp_path, below):
    """A link to a disk that is not mounted: making the folder failed with a bare "File exists", after the work."""
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "unmounted")
    path, where = (link / below, f": {link}") if below else (link, "")
    message = f" is a broken symbolic link (to {tmp_path / 'unmounted'})"
    with pytest.raises(ValueError, match=re.escape(f"--out {path}{where}{message}")):
        output_paths.check_output_folder("--out", path)
    with pytest.raises(ValueError, match=re.escape(f"--out {path / 'm.jsonl'}: {link}{message}")):
        output_paths.check_output_file("--out", path / "m.jsonl")


def test_an_output_file_linked_into_a_missing_folder_is_refused_and_the_folder_never_made(tmp_path):
    """A manifest linked into a disk that is not mounted was accepted, and the write made the disk's folders
    under its mount point and wrote there; a link to a file not written yet, in a folder that is there, is
    written through."""
    target = tmp_path / "unmounted" / "disk" / "m.jsonl"
    link = tmp_path / "work" / "m.jsonl"
    link.parent.mkdir()
    link.symlink_to(target)
    message = f"--out {link} is a broken symbolic link (to {target}): the folder {target.parent} does not exist"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        output_paths.check_output_file("--out", link)
    records = [ManifestRecord("a.png", "1", "test", ("c",))]
    with pytest.raises(OSError, match=re.escape(f"cannot write manifest {link}: ")):
        write_manifest(link, records)
    assert not (tmp_path / "unmounted").exists()
    target.parent.mkdir(parents=True)
    assert output_paths.check_output_file("--out", link) == link
    write_manifest(link, records)
    assert link.is_symlink() and read_manifest(target) == records


def test_an_output_file_that_is_a_loop_of_links_is_refused_naming_it(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.symlink_to(second)
    second.symlink_to(first)
    message = f"--out {first} is a broken symbolic link (to {second}): the links loop"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        output_paths.check_output_file("--out", first)


def test_staged_entries_replace_the_folders_in_order_the_last_ones_at_the_end(tmp_path, monkeypatch):
    """A reader takes a folder whose `last` entries (a saved model's config.json) are there as complete: every
    other entry is renamed into place before them, and they in the order given."""
    renamed = []
    replace_entry = output_paths._replace_entry
    monkeypatch.setattr(output_paths, "_replace_entry", lambda new, target: (renamed.append(target.name),
                                                                           replace_entry(new, target)))
    others = [f"{letter}.bin" for letter in "zyxwvutsrqponm"] + ["a.bin", "config.bin"]
    with output_paths.replace_entries_atomically(tmp_path / "model", "model folder",
                                                 last=("config.json", "b.json")) as staging:
        for name in (*others, "b.json", "config.json"):
            (staging / name).write_text(name)
    assert sorted(renamed[:-2]) == sorted(others) and renamed[-2:] == ["config.json", "b.json"]
    assert {path.name: path.read_text() for path in (tmp_path / "model").iterdir()} == {n: n for n in renamed}



def test_staged_files_replace_a_file_with_its_permissions_and_a_link_through_it(tmp_path):
    """As write_atomically: a report file that is a link to a shared copy was replaced by a new file (the shared
    copy left stale), and a replaced file lost its mode."""
    folder, shared = tmp_path / "out", tmp_path / "shared.csv"
    folder.mkdir()
    shared.write_text("old")
    (folder / "linked.csv").symlink_to(shared)
    (folder / "private.csv").write_text("old")
    os.chmod(folder / "private.csv", 0o600)
    with output_paths.replace_entries_atomically(folder, "files") as staging:
        (staging / "linked.csv").write_text("new linked")
        (staging / "private.csv").write_text("new private")
    assert (folder / "linked.csv").is_symlink() and shared.read_text() == "new linked"
    assert (folder / "private.csv").read_text() == "new private"
    assert stat.S_IMODE((folder / "private.csv").stat().st_mode) == 0o600


@pytest.fixture
def folder_on_another_file_system(tmp_path):
    """A new folder on another file system than tmp_path (/dev/shm's), removed at the test's end."""
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's folder")
    folder = Path(tempfile.mkdtemp(dir="/dev/shm"))
    yield folder
    shutil.rmtree(folder)


def _checkpoint_linking_its_weights(folder: Path, weights: Path) -> dict[str, str]:
    """`folder` holding old entries, its weights.bin a link to `weights`; the new content of each entry."""
    folder.mkdir()
    weights.write_text("old")
    (folder / "weights.bin").symlink_to(weights)
    names = [f"{letter}.bin" for letter in "abcd"] + ["weights.bin", "z_config.json"]
    for name in names:
        if name != "weights.bin":
            (folder / name).write_text("old")
    return {name: f"new {name}" for name in names}


def test_a_file_entry_linked_to_another_file_system_is_replaced_through_the_link_with_the_others(
        tmp_path, folder_on_another_file_system):
    """A checkpoint whose weights file a user linked to a bigger disk: the staged file was renamed onto the link's
    target, EXDEV, after the entries before it were new; the staged copy went with the staging folder."""
    folder, weights = tmp_path / "ckpt", folder_on_another_file_system / "weights.bin"
    new = _checkpoint_linking_its_weights(folder, weights)
    with output_paths.replace_entries_atomically(folder, "checkpoint folder", last=("z_config.json",)) as staging:
        for name, content in new.items():
            (staging / name).write_text(content)
    assert {path.name: path.read_text() for path in folder.iterdir()} == new
    assert (folder / "weights.bin").is_symlink() and weights.read_text() == new["weights.bin"]
    assert list(folder_on_another_file_system.iterdir()) == [weights]


def test_a_file_entry_linked_to_another_file_system_that_cannot_take_its_new_file_leaves_every_entry_old(
        tmp_path, folder_on_another_file_system, monkeypatch):
    """The copy onto the other file system (its disk full) fails before any entry is renamed."""
    folder, weights = tmp_path / "ckpt", folder_on_another_file_system / "weights.bin"
    new = _checkpoint_linking_its_weights(folder, weights)

    def full_disk(source, destination):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", full_disk)
    with pytest.raises(OSError) as raised:
        with output_paths.replace_entries_atomically(folder, "checkpoint folder", last=("z_config.json",)) as staging:
            for name, content in new.items():
                (staging / name).write_text(content)
    assert str(raised.value) == f"[Errno {errno.ENOSPC}] cannot write checkpoint folder {folder}: " \
        "No space left on device"
    assert {path.name: path.read_text() for path in folder.iterdir()} == dict.fromkeys(new, "old")
    assert list(folder_on_another_file_system.iterdir()) == [weights]


def test_a_move_beside_a_links_target_failing_otherwise_than_across_file_systems_is_not_copied(
        tmp_path, monkeypatch):
    """Only EXDEV means a rename cannot reach the target's disk; a copy after another error (a folder the user may
    not rename into) hid the error and wrote where the rename was refused."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder, weights = tmp_path / "ckpt", elsewhere / "weights.bin"
    new = _checkpoint_linking_its_weights(folder, weights)
    rename, copies = os.rename, []

    def refused_beside_the_target(source, destination):
        if Path(destination).parent == elsewhere:
            raise PermissionError(errno.EACCES, "Permission denied")
        return rename(source, destination)

    monkeypatch.setattr(os, "rename", refused_beside_the_target)
    monkeypatch.setattr(shutil, "copyfileobj", lambda source, destination: copies.append(source))
    with pytest.raises(OSError) as raised:
        with output_paths.replace_entries_atomically(folder, "checkpoint folder") as staging:
            for name, content in new.items():
                (staging / name).write_text(content)
    assert raised.value.errno == errno.EACCES and str(folder) in str(raised.value) and not copies
    assert {path.name: path.read_text() for path in folder.iterdir()} == dict.fromkeys(new, "old")
    assert list(elsewhere.iterdir()) == [weights]


def test_a_copy_a_killed_save_left_beside_a_links_target_is_removed_by_the_next_save(
        tmp_path, folder_on_another_file_system):
    """Nothing else removed it: a checkpoint-sized file on the other disk after every killed save."""
    folder, weights = tmp_path / "ckpt", folder_on_another_file_system / "weights.bin"
    new = _checkpoint_linking_its_weights(folder, weights)
    (folder_on_another_file_system / output_paths.temporary_name(weights.name)).write_text("a killed save's copy")
    (folder_on_another_file_system / "notes.txt").write_text("the user's")
    with output_paths.replace_entries_atomically(folder, "checkpoint folder") as staging:
        for name, content in new.items():
            (staging / name).write_text(content)
    assert weights.read_text() == new["weights.bin"]
    assert sorted(path.name for path in folder_on_another_file_system.iterdir()) == ["notes.txt", "weights.bin"]


def test_files_moved_beside_their_links_targets_are_removed_when_a_later_one_fails(
        tmp_path, folder_on_another_file_system, monkeypatch):
    """Two weights files linked to a bigger disk, the second copy failing: the first copy stayed there."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in ("a.bin", "b.bin"):
        (folder_on_another_file_system / name).write_text("old")
        (folder / name).symlink_to(folder_on_another_file_system / name)
    copy, copies = shutil.copyfileobj, []

    def second_copy_fails(source, destination):
        copies.append(source)
        if len(copies) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return copy(source, destination)

    monkeypatch.setattr(shutil, "copyfileobj", second_copy_fails)
    with pytest.raises(OSError, match="No space left on device"):
        with output_paths.replace_entries_atomically(folder, "checkpoint folder") as staging:
            for name in ("a.bin", "b.bin"):
                (staging / name).write_text("new")
    assert len(copies) == 2
    assert {path.name: path.read_text() for path in folder_on_another_file_system.iterdir()} == {"a.bin": "old",
                                                                                                "b.bin": "old"}


@pytest.mark.parametrize("name", ["a_weights.bin", "z_weights.bin"])
def test_a_file_entry_linked_into_a_sub_folder_being_replaced_is_replaced_with_it(tmp_path, name):
    """Moved beside its target inside enc/, the new file went with the old enc/ when enc/ was replaced first (a
    FileNotFoundError with enc/ new). Renamed last, through the link, it is what enc/m.bin holds."""
    folder = tmp_path / "ckpt"
    (folder / "enc").mkdir(parents=True)
    (folder / "enc" / "m.bin").write_text("old m")
    (folder / name).symlink_to("enc/m.bin")
    with output_paths.replace_entries_atomically(folder, "checkpoint folder", last=(name,)) as staging:
        (staging / "enc").mkdir()
        (staging / "enc" / "m.bin").write_text("new m")
        (staging / name).write_text("new weights")
    assert (folder / name).is_symlink() and (folder / "enc" / "m.bin").read_text() == "new weights"
    assert sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")) == sorted(["enc", "enc/m.bin", name])


def test_a_folder_replacing_a_link_to_a_file_elsewhere_leaves_the_file(tmp_path):
    """The link itself is replaced by the folder; the user's file it linked to stays as it was."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "encoder.bin").write_text("the user's")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "text_encoder").symlink_to(tmp_path / "shared" / "encoder.bin")
    with output_paths.replace_entries_atomically(folder, "checkpoint folder") as staging:
        (staging / "text_encoder").mkdir()
        (staging / "text_encoder" / "config.json").write_text("new")
    assert not (folder / "text_encoder").is_symlink()
    assert (folder / "text_encoder" / "config.json").read_text() == "new"
    assert (tmp_path / "shared" / "encoder.bin").read_text() == "the user's"


def test_a_long_folder_name_leaves_room_for_the_staging_folder(tmp_path):
    """The staging folder was named after the folder, 14 bytes longer: a folder name of 242 to 255 bytes failed."""
    folder = tmp_path / ("r" * 250)
    with output_paths.replace_entries_atomically(folder, "files") as staging:
        (staging / "a.txt").write_text("a")
    assert [path.name for path in folder.iterdir()] == ["a.txt"]


def test_an_error_written_in_the_staging_folder_names_the_files_place(tmp_path):
    """The staging folder is gone when the error is read: the file is named where it was to go."""
    folder = tmp_path / "out"
    with pytest.raises(OSError) as raised:
        with output_paths.replace_entries_atomically(folder, "report folder") as staging:
            with output_paths.write_atomically(staging / "metrics.json", "metrics file"):
                raise OSError(errno.ENOSPC, "No space left on device")
    assert str(raised.value) == f"[Errno 28] cannot write metrics file {folder / 'metrics.json'}: No space left on device"
    assert list(folder.iterdir()) == []


def old_checkpoint(tmp_path: Path) -> Path:
    """A folder of a weights folder and a config file, each saying "old"."""
    folder = tmp_path / "ckpt"
    (folder / "weights").mkdir(parents=True)
    (folder / "weights" / "w.bin").write_text("old weights")
    (folder / "config.json").write_text("old config")
    return folder


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_folder_entry_whose_new_one_cannot_take_its_name_is_put_back(tmp_path, monkeypatch, failure):
    """rename(2) fails with ENOSPC when the folder must grow, and a Ctrl-C can land between the two renames of a
    folder entry: the old folder stayed under a hidden name only, and the new one went with the staging folder."""
    folder = old_checkpoint(tmp_path)
    rename = os.rename

    def failing_once(source, destination):
        if os.path.basename(os.path.dirname(source)).startswith(f".{output_paths.STAGING}.") and not failed:
            failed.append(destination)
            raise failure
        return rename(source, destination)

    failed = []
    monkeypatch.setattr(os, "rename", failing_once)
    with pytest.raises(type(failure)) as raised:
        with output_paths.replace_entries_atomically(folder, "checkpoint folder", last=("config.json",)) as staging:
            (staging / "weights").mkdir()
            (staging / "weights" / "w.bin").write_text("new weights")
            (staging / "config.json").write_text("new config")
    assert failed == [folder / "weights"]
    if isinstance(failure, OSError):
        assert str(raised.value) == f"[Errno {errno.ENOSPC}] cannot write checkpoint folder {folder}: " \
            "No space left on device"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == ["config.json", "weights",
                                                                                   "weights/w.bin"]
    assert (folder / "weights" / "w.bin").read_text() == "old weights"
    assert (folder / "config.json").read_text() == "old config"


def test_a_folder_entry_interrupted_just_after_its_new_one_took_its_name_stays_new(tmp_path, monkeypatch):
    """A Ctrl-C landing after the new folder's rename into place, before the old one's removal: renaming the old one
    back over the new one would fail (ENOTEMPTY in place of the KeyboardInterrupt, the old copy left hidden), or, with
    an empty new folder, silently put the old one back."""
    folder = old_checkpoint(tmp_path)
    rename = os.rename

    def interrupted_after_the_rename(source, destination):
        rename(source, destination)
        if os.path.basename(os.path.dirname(source)).startswith(f".{output_paths.STAGING}."):
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "rename", interrupted_after_the_rename)
    with pytest.raises(KeyboardInterrupt):
        with output_paths.replace_entries_atomically(folder, "checkpoint folder", last=("config.json",)) as staging:
            (staging / "weights").mkdir()
            (staging / "weights" / "w.bin").write_text("new weights")
            (staging / "config.json").write_text("new config")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == ["config.json", "weights",
                                                                                   "weights/w.bin"]
    assert (folder / "weights" / "w.bin").read_text() == "new weights"
    assert (folder / "config.json").read_text() == "old config"  # interrupted before its turn


def test_a_folder_entry_that_is_a_link_to_a_folder_is_replaced_itself(tmp_path):
    """A checkpoint's text_encoder linked to a shared copy failed the save with "Not a directory" (a folder renamed
    over a link), naming the checkpoint folder, after the entries before it were already new; the link itself is
    replaced, and the shared copy left as it was."""
    shared, folder = tmp_path / "shared_bert", tmp_path / "ckpt"
    shared.mkdir()
    (shared / "vocab.txt").write_text("shared")
    folder.mkdir()
    (folder / "text_encoder").symlink_to(shared)
    (folder / "model.safetensors").write_text("old")
    with output_paths.replace_entries_atomically(folder, "checkpoint folder") as staging:
        (staging / "model.safetensors").write_text("new")
        (staging / "text_encoder").mkdir()
        (staging / "text_encoder" / "vocab.txt").write_text("new")
    assert not (folder / "text_encoder").is_symlink() and (folder / "text_encoder" / "vocab.txt").read_text() == "new"
    assert (folder / "model.safetensors").read_text() == "new" and (shared / "vocab.txt").read_text() == "shared"
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors", "text_encoder"]


def test_remove_temporaries_removes_the_names_write_atomically_gives_and_no_longer_or_shorter_ones(tmp_path):
    """A user's `.report.json.backup_2024.tmp` is 11 characters where write_atomically's are 8: not a leftover."""
    (tmp_path / "report.json").write_text("{}")
    leftovers = [tmp_path / output_paths.temporary_name("report.json"), tmp_path / ".report.json.k_9zq2xa.tmp"]
    kept = ["report.json", ".report.json.backup_2024.tmp", ".report.json.0a1b2c3d4.tmp", ".report.json.0a1b2c3.tmp"]
    for path in [*leftovers, *(tmp_path / name for name in kept[1:])]:
        path.write_text("x")
    assert sorted(output_paths.remove_temporaries(tmp_path / "report.json")) == sorted(leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def refusing_writes_to(monkeypatch, *folders):
    """os.access answering as a read-only mount would for `folders` (the tests run as root, whom a file mode
    does not stop), and as before elsewhere."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **options: (
        not (mode & os.W_OK and Path(path) in folders) and real(path, mode, **options)))


@pytest.mark.parametrize("where", ["in", "under", "linked"])
def test_an_output_file_whose_folder_cannot_be_written_is_refused_naming_the_folder(tmp_path, monkeypatch, where):
    """A dataset on a read-only mount: the manifest's write failed after the whole conversion. A link is written
    through (write_atomically), so the folder of its target is the one to write into."""
    mount = tmp_path / "mount"
    mount.mkdir()
    refusing_writes_to(monkeypatch, mount)
    path = {"in": mount / "m.jsonl", "under": mount / "new" / "m.jsonl", "linked": tmp_path / "m.jsonl"}[where]
    if where == "linked":
        (mount / "m.jsonl").write_text("")
        path.symlink_to(mount / "m.jsonl")
    with pytest.raises(ValueError, match=f"^{re.escape(f'--out {path}: {mount} is not writable')}$"):
        output_paths.check_output_file("--out", path)
    assert output_paths.check_output_file("--out", tmp_path / "elsewhere.jsonl") == tmp_path / "elsewhere.jsonl"


def test_an_output_file_name_is_refused_exactly_where_its_temporary_name_would_be_too_long(tmp_path):
    """The file is first written as .<name>.<8 hex digits>.tmp: a name the file system takes failed at the write,
    after the work, with "File name too long". The write itself tells where the limit is."""
    longest = os.pathconf(tmp_path, "PC_NAME_MAX")
    room = longest - len(output_paths.temporary_name(""))
    for length in (room, room + 1):
        path = tmp_path / ("é" + "m" * (length - 8) + ".jsonl")  # é: the limit is in bytes (2 here), not letters
        try:
            with output_paths.write_atomically(path, "manifest") as stream:
                stream.write("{}\n")
            written = True
        except OSError as error:
            assert error.errno == errno.ENAMETOOLONG
            written = False
        assert written == (length == room)
        if written:
            assert output_paths.check_output_file("--out", path) == path
        else:
            with pytest.raises(ValueError, match=(f"^--out {re.escape(str(path))}: its name is {length} bytes long "
                                                  f"and is first written as .*past the {longest} bytes")):
                output_paths.check_output_file("--out", path)


@pytest.mark.parametrize("given", ["", "manifests/", f"manifests{os.sep}"])
def test_an_output_file_spelled_empty_or_as_a_folder_is_refused(tmp_path, monkeypatch, given):
    """Path("manifests/") is "manifests": `--out manifests/`, meant as a folder, wrote a file named manifests. Path("")
    is ".", refused as "a folder", a riddle for the `--out ""` of an unset shell variable."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="^--out (is empty|manifests/ ends in '/', as a folder does)"):
        output_paths.check_output_file("--out", given)
    assert list(tmp_path.iterdir()) == []


def test_an_output_folder_spelled_empty_is_refused_not_taken_as_the_current_folder(tmp_path, monkeypatch):
    """Path("") is ".": generate_synthetic_dataset(""), or any caller passing an option's string through, wrote into
    the current folder; a Path(".") given as such still means it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="^--out is empty: name the folder to write$"):
        output_paths.check_output_folder("--out", "")
    assert output_paths.check_output_folder("--out", Path(".")) == Path(".")
