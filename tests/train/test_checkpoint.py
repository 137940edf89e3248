"""Checkpoints: atomic replacement, weights_only loading, RNG state round trip."""

import contextlib
import errno
import os
import pickle
import random
import re
import stat
import struct
import zipfile

import numpy as np
import pytest
import torch

from tgfr.output_paths import remove_temporaries, write_atomically
from tgfr.train import checkpoint as checkpoint_module
from tgfr.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def draws():
    """One draw of each RNG; Python's random.gauss and numpy's standard_normal each make a pair and cache the
    second (gauss_next, has_gauss)."""
    return (random.random(), random.gauss(0, 1), float(np.random.rand()), float(np.random.standard_normal()),
            float(torch.rand(())))


def test_the_cuda_rng_state_is_the_process_devices_and_resumes_with_fewer_visible_devices(monkeypatch):
    """Checkpoints kept every visible device's CUDA state and restored them all with set_rng_state_all,
    which raises IndexError (reported as a checkpoint that does not fit) where fewer devices are visible."""
    devices = {0: torch.tensor([0], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}
    current = {"device": 1}

    def set_state(state, device="cuda"):
        devices[current["device"]] = state

    def set_all(states):  # torch's: one default generator per visible device
        for index, state in enumerate(states):
            if index not in devices:
                raise IndexError("tuple index out of range")
            devices[index] = state

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current["device"])
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": devices[current["device"]])
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [devices[index] for index in sorted(devices)])
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)
    saved = rng_state()  # rank 1 of a two-GPU machine
    assert torch.equal(saved["cuda_device"], devices[1]) and "cuda" not in saved
    del devices[1]  # resumed where one GPU is visible, as device 0
    current["device"] = 0
    set_rng_state(saved)
    assert torch.equal(devices[0], torch.tensor([1], dtype=torch.uint8))
    # An older checkpoint (every device's state): the current device takes its own.
    older = {key: value for key, value in saved.items() if key != "cuda_device"}
    set_rng_state({**older, "cuda": [torch.tensor([7], dtype=torch.uint8), torch.tensor([8], dtype=torch.uint8)]})
    assert torch.equal(devices[0], torch.tensor([7], dtype=torch.uint8))


def test_rng_state_round_trip_through_a_file(tmp_path, checkpoint_state):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    draws()
    # Cached normals, which the next random.gauss and standard_normal return.
    assert random.getstate()[2] is not None and np.random.get_state()[3] == 1
    save_checkpoint(tmp_path / "c.pt", checkpoint_state(rng=[rng_state()]))
    expected = draws()
    draws()
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"][0])
    assert draws() == expected


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch, checkpoint_state):
    path = tmp_path / "last.pt"
    save_checkpoint(path, checkpoint_state(step=1, weight=torch.ones(3)))

    def crash(state, stream):
        stream.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, checkpoint_state(step=2, weight=torch.zeros(3)))
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["weight"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_a_byte_flipped_inside_a_tensor_record_is_named(tmp_path, checkpoint_state):
    """torch.load does not check the CRC-32s of torch.save's zip records: a byte flipped inside a weight's record
    (bit rot, a bad copy) loaded as a changed weight, and a resume trained on from it without a word."""
    weight = torch.arange(4096, dtype=torch.float32)
    path = tmp_path / "last.pt"
    save_checkpoint(path, checkpoint_state(model={"weight": weight}))
    with zipfile.ZipFile(path) as archive:
        largest = max(archive.infolist(), key=lambda record: record.file_size)
    data = bytearray(path.read_bytes())
    start = data.find(weight.numpy().tobytes())
    assert largest.file_size == weight.numel() * weight.element_size() and start > 0
    data[start + largest.file_size // 2] ^= 0x01
    path.write_bytes(data)
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["weight"], weight)
    with pytest.raises(ValueError, match=re.escape(f"checkpoint file {path} could not be read: it is corrupt (record "
                                                   f"{largest.filename} does not match its CRC-32)")):
        load_checkpoint(path)


def test_a_zip_directory_entry_claiming_more_bytes_than_the_file_holds_is_named(tmp_path, checkpoint_state):
    """A record whose zip directory entry claims a size past the end of the file (a damaged copy) ends zipfile's
    read of it with an EOFError, which is no ValueError naming the file."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, checkpoint_state())
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        name = next(record.filename for record in archive.infolist() if record.filename.endswith("/data.pkl"))
    # A directory entry: signature PK\1\2, its compressed and uncompressed sizes at bytes 20 and 24, its name at 46.
    entry = data.find(b"PK\x01\x02")
    while data[entry + 46:entry + 46 + len(name)] != name.encode():
        entry = data.find(b"PK\x01\x02", entry + 4)
        assert entry > 0, f"no directory entry for {name}"
    struct.pack_into("<II", data, entry + 20, 4 * len(data), 4 * len(data))
    path.write_bytes(data)
    with pytest.raises(ValueError, match=re.escape(f"checkpoint file {path} could not be read: it is corrupt (its zip "
                                                   f"directory is damaged: EOFError")):
        load_checkpoint(path)


class FullDisk:
    """A stream that takes `room` bytes, then fails every write with ENOSPC, as a file on a full disk."""

    def __init__(self, stream, room):
        self.stream, self.room = stream, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.stream.write(data)

    def flush(self):
        self.stream.flush()


def test_a_full_disk_inside_a_tensor_record_is_the_oserror_naming_the_checkpoint(tmp_path, monkeypatch,
                                                                                  checkpoint_state):
    """The disk fills up inside a weight's record: torch's zip writer, as it closes, raises a RuntimeError of its own
    ("unexpected pos"), the OSError only its __context__; the error names the checkpoint and the disk's error,
    and the old checkpoint stays."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, checkpoint_state(step=1, model={"weight": torch.ones(4096)}))

    @contextlib.contextmanager
    def on_a_full_disk(*args, **kwargs):
        with write_atomically(*args, **kwargs) as stream:
            yield FullDisk(stream, room=path.stat().st_size // 2)

    monkeypatch.setattr(checkpoint_module, "write_atomically", on_a_full_disk)
    with pytest.raises(OSError) as raised:
        save_checkpoint(path, checkpoint_state(step=2, model={"weight": torch.zeros(4096)}))
    assert str(raised.value) == f"[Errno {errno.ENOSPC}] cannot write checkpoint {path}: No space left on device"
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["model"]["weight"], torch.ones(4096))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with path.open("wb") as stream:
        pickle.dump({"step": 1, "x": Payload()}, stream)
    with pytest.raises(ValueError, match="evil.pt could not be read"):
        load_checkpoint(path)
    torch.save({"no_step": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a tgfr training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("key", ["stage", "step", "model", "losses", "optimizer", "scheduler", "rng"])
def test_a_checkpoint_without_a_part_is_named(tmp_path, checkpoint_state, key):
    state = checkpoint_state()
    del state[key]
    save_checkpoint(tmp_path / "last.pt", state)
    with pytest.raises(ValueError, match=re.escape(f"checkpoint file {tmp_path / 'last.pt'} is not a tgfr training "
                                                   f"checkpoint (no {key!r})")):
        load_checkpoint(tmp_path / "last.pt")


def rng_with(source, entry, value):
    """One process's RNG state as rng_state writes it, but with `value` as its `source` part (entry None) or as
    that part's `entry`."""
    state = rng_state()
    state[source] = value if entry is None else {**state[source], entry: value}
    return state


# Parts of an RNG state (source, entry, value) of other types than rng_state writes (a checkpoint edited or written
# by another tool), and what the error says of them. set_rng_state failed on the first two with a bare
# AttributeError, in the resume, after load_checkpoint had accepted the file.
MALFORMED_RNG = [
    ("python", "state", [1, 2], "'python' 'state' is a list, not a tensor of torch.int64"),
    ("numpy", "keys", [1, 2], "'numpy' 'keys' is a list, not a tensor of torch.int64"),
    ("python", "state", torch.ones(2), "'python' 'state' is a tensor of torch.float32, not a tensor of torch.int64"),
    ("python", None, [1], "'python' is a list, not dict"),
    ("numpy", None, 7, "'numpy' is an int, not dict"),
    ("python", "version", 3.0, "'python' 'version' is a float, not int"),
    ("python", "gauss", "0.5", "'python' 'gauss' is a str, not float or NoneType"),
    ("numpy", "position", True, "'numpy' 'position' is a bool, not int"),
    ("numpy", "cached_gauss", "0.5", "'numpy' 'cached_gauss' is a str, not float"),
    ("numpy", "kind", b"MT19937", "'numpy' 'kind' is a bytes, not str"),
    ("torch", None, [0, 1], "'torch' is a list, not a tensor of torch.uint8"),
    ("cuda_device", None, torch.zeros(2, dtype=torch.int64), "'cuda_device' is a tensor of torch.int64, not a "
                                                             "tensor of torch.uint8"),
    ("cuda", None, torch.zeros(2, dtype=torch.uint8), "'cuda' is a tensor of torch.uint8, not list"),
    ("cuda", None, [torch.zeros(2, dtype=torch.uint8), [0]], "'cuda' [1] is a list, not a tensor of torch.uint8"),
]


@pytest.mark.parametrize("key, value", [
    ("stage", 1), ("step", "2"), ("step", -1), ("step", True), ("model", [torch.ones(1)]),
    ("losses", {"margin": 0.5}), ("optimizer", {"state": {}}), ("optimizer", {}),
    ("optimizer", {"state": [], "param_groups": []}), ("optimizer", {"state": {}, "param_groups": {}}),
    ("scheduler", []), ("rng", {"python": 1}), ("rng", []), ("rng", [{"torch": torch.ones(1)}]),
    *[("rng", [rng_with(source, entry, value)]) for source, entry, value, _ in MALFORMED_RNG],
    ("summary", {"fr": {"steps_taken": 2}}), ("summary", {"fr": {"steps_taken": 2.0, "seconds": 1.0}}),
    ("optim", {"lr": [0.1]}), ("optim", ["lr", 0.1]),
])
def test_a_checkpoint_with_a_malformed_part_is_named(tmp_path, checkpoint_state, key, value):
    save_checkpoint(tmp_path / "last.pt", checkpoint_state(**{key: value}))
    with pytest.raises(ValueError, match=re.escape(f"checkpoint file {tmp_path / 'last.pt'}: {key!r} must be")):
        load_checkpoint(tmp_path / "last.pt")


@pytest.mark.parametrize("source, entry, value, problem", MALFORMED_RNG)
def test_an_rng_state_of_other_types_names_its_process_and_part(tmp_path, checkpoint_state, source, entry, value,
                                                                  problem):
    path = tmp_path / "last.pt"
    save_checkpoint(path, checkpoint_state(rng=[rng_state(), rng_with(source, entry, value)]))
    with pytest.raises(ValueError) as raised:
        load_checkpoint(path)
    assert str(raised.value) == (f"checkpoint file {path}: 'rng' must be a list of per-process RNG states as tgfr "
                                 f"writes them: process 1's {problem}")


def test_rng_states_with_cuda_generators_load(tmp_path, checkpoint_state):
    """A GPU process's state (cuda_device), and an older tgfr's (cuda: every visible device's), pass the check."""
    generator = torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.get_rng_state()
    states = [{**rng_state(), "cuda_device": generator}, {**rng_state(), "cuda": [generator, generator]}]
    save_checkpoint(tmp_path / "last.pt", checkpoint_state(rng=states))
    loaded = load_checkpoint(tmp_path / "last.pt")["rng"]
    assert torch.equal(loaded[0]["cuda_device"], generator) and len(loaded[1]["cuda"]) == 2


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002], ids=oct)
def test_the_checkpoint_gets_the_permissions_of_any_new_file(tmp_path, checkpoint_state, umask):
    previous = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "last.pt", checkpoint_state())
        (tmp_path / "other").write_text("")  # what the umask gives a new file, e.g. metrics.jsonl
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "last.pt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "other").stat().st_mode) == 0o666 & ~umask


def test_remove_temporaries_removes_only_what_save_checkpoint_leaves(tmp_path, checkpoint_state,
                                                                     kill_while_writing):
    path = tmp_path / "last.pt"
    save_checkpoint(path, checkpoint_state())
    leftovers = [kill_while_writing(path), tmp_path / ".last.pt.k_9zq2xa.tmp"]  # and one named by tempfile.mkstemp
    leftovers[1].write_bytes(b"older")
    kept = ["last.pt", ".last.pt.notes.tmp", ".last.pt.0a1b2c3d.tmp.bak", ".other.pt.0a1b2c3d.tmp",
            "last.pt.0a1b2c3d.tmp", ".last.pt.BACKUP01.tmp"]
    for name in kept[1:]:
        (tmp_path / name).write_text("not a leftover")
    (tmp_path / ".last.pt.abcdefgh.tmp").mkdir()  # not a file
    assert sorted(remove_temporaries(path)) == sorted(leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + [".last.pt.abcdefgh.tmp"])
    assert load_checkpoint(path)["step"] == 1
    assert remove_temporaries(tmp_path / "absent" / "last.pt") == []
