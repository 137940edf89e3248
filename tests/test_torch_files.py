"""Files torch.save did not write, or wrote with objects tgfr does not unpickle, are refused in one
short line naming why, wherever tgfr reads one (backbone weights, training checkpoints); an OSError
opening one passes through."""

import argparse
import collections
import errno
import io
import pickle
import warnings
from pathlib import Path

import pytest
import torch

from tgfr.models import load_weights_file
from tgfr.torch_files import is_refused_pickle, load_torch_file
from tgfr.train.checkpoint import load_checkpoint


def saved_bytes(content=None) -> bytes:
    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(3)} if content is None else content, buffer)
    return buffer.getvalue()


REFUSED = ("it is a pickle of objects other than tensors and plain containers (or a pickle not written by torch.save), "
           "which tgfr does not unpickle: torch.load(weights_only=True) refuses it")
CORRUPT = "it is corrupt, truncated or not a file torch.save wrote"


@pytest.mark.parametrize("content, reason", [
    (pickle.dumps({"conv1.weight": torch.zeros(3)}, protocol=4), REFUSED),  # a plain pickle: torch's text had 8 lines
    # A released checkpoint that saved its training arguments beside the weights: torch.save's zip archive.
    (saved_bytes({"args": argparse.Namespace(lr=0.1), "conv1.weight": torch.zeros(3)}), REFUSED),
    (pickle.dumps(collections.Counter(a=1), protocol=2), CORRUPT + " (Invalid magic number; corrupt file?)"),
    (b"hello world\n", CORRUPT),  # torch said "101", the opcode of 'e'
    (b'{"dim": 64}\n', CORRUPT),  # a config.json given for weights: torch's unpickler refused "{" as a pickle
    (b"", CORRUPT),
    (saved_bytes()[:200], CORRUPT + " (PytorchStreamReader failed reading zip archive: failed finding central "
                                    "directory)"),
])
@pytest.mark.parametrize("reader, description", [(load_weights_file, "weights file '{}'"),
                                                 (load_checkpoint, "checkpoint file {}")])
def test_a_file_torch_load_refuses_is_one_line_saying_why(tmp_path, content, reason, reader, description):
    path = tmp_path / "file.pth"
    path.write_bytes(content)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ValueError) as refused:
        warnings.simplefilter("always")
        reader(path)
    assert str(refused.value) == f"{description.format(path)} could not be read: {reason}"
    assert not [warning for warning in caught if "pickle protocol" in str(warning.message)]


@pytest.mark.parametrize("reader, description", [(load_weights_file, "weights file '{}'"),
                                                 (load_checkpoint, "checkpoint file {}")])
def test_a_small_file_cut_in_half_is_named_corrupt_not_an_os_error(tmp_path, reader, description):
    """torch's zip reader seeks before the start of a small file cut short: a bare OSError EINVAL, which read
    like a bad path ("could not be read: [Errno 22] Invalid argument")."""
    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(5000)}, buffer)
    path = tmp_path / "file.pth"
    path.write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
    with pytest.raises(OSError) as torch_error:  # the case at hand: torch's own error on this file
        torch.load(path, weights_only=True)
    assert torch_error.value.errno == errno.EINVAL
    with pytest.raises(ValueError) as refused:
        reader(path)
    assert str(refused.value) == f"{description.format(path)} could not be read: {CORRUPT}"


@pytest.mark.parametrize("make, error", [(lambda path: None, FileNotFoundError), (Path.mkdir, IsADirectoryError)],
                         ids=["missing", "folder"])
def test_an_os_error_opening_the_file_passes_through(tmp_path, make, error):
    """The callers name a missing file or a folder themselves (file_problem); load_torch_file must not call either
    a corrupt file."""
    path = tmp_path / "file.pth"
    make(path)
    with pytest.raises(error) as raised:
        load_torch_file(path)
    assert raised.value.filename == str(path)


def test_a_folder_where_the_checkpoint_should_be_is_named_as_one(tmp_path):
    (tmp_path / "last.pt").mkdir()
    with pytest.raises(ValueError, match=r"^checkpoint file .*last\.pt is a folder, not a file$"):
        load_checkpoint(tmp_path / "last.pt")


def test_a_refused_pickle_is_recognised_through_an_error_raised_from_it(tmp_path):
    """transformers 4.56 raises an OSError of its own ("Unable to load weights from pytorch checkpoint file")
    from torch's refusal: the text model folder's error must still say that tgfr does not unpickle it."""
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(pickle.dumps({"weight": collections.Counter(a=1)}, protocol=4))
    with pytest.raises(pickle.UnpicklingError) as refusal:
        torch.load(path, weights_only=True)
    try:
        raise OSError(f"Unable to load weights from pytorch checkpoint file for '{path}'") from refusal.value
    except OSError as wrapped:
        assert is_refused_pickle(wrapped) and is_refused_pickle(refusal.value)
    assert not is_refused_pickle(OSError("Unable to load weights from pytorch checkpoint file"))
