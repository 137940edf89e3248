"""Reading files written by torch.save (released backbones, training checkpoints) without unpickling
objects: torch.load(weights_only=True), with a failure told in one short line. tgfr's errors are one
line naming the file; torch's run to paragraphs of advice, links and terminal colours (a refused
pickle) or come down to a bare pickle opcode (a text file)."""

import errno
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

REFUSED_PICKLE = ("it is a pickle of objects other than tensors and plain containers (or a pickle not written by "
                  "torch.save), which tgfr does not unpickle: torch.load(weights_only=True) refuses it")
_CORRUPT = "it is corrupt, truncated or not a file torch.save wrote"


def is_refused_pickle(error: BaseException | None) -> bool:
    """Whether `error` is torch.load(weights_only=True) refusing a pickle, or an error raised from one
    (transformers 4.56 raises an OSError of its own from it; later versions pass torch's on)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if "Weights only load failed" in str(error):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _starts_like_torch_save(path: Path) -> bool:
    """Whether `path` opens as torch.save's files do: a zip archive, or (the legacy format, and the pickles
    torch.load reads) a pickle of protocol 2 or later, whose first opcode is PROTO."""
    with open(path, "rb") as stream:
        start = stream.read(4)
    return start.startswith((b"PK\x03\x04", pickle.PROTO))


def load_torch_file(path: Path) -> Any:
    """torch.load(path, map_location="cpu", weights_only=True). A file torch refuses or cannot read is
    a ValueError saying why in one line; an OSError opening it (permissions, a folder, a missing file)
    passes through."""
    with warnings.catch_warnings():
        # "Detected pickle protocol 4 in the checkpoint": two lines of warning before the file's own error.
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except OSError as error:
            # torch's zip reader seeks before the start of some files cut short (a small one halved): a bare
            # EINVAL, naming no file, that reads like a bad path. open's errors name the file.
            if error.errno == errno.EINVAL and error.filename is None:
                raise ValueError(_CORRUPT) from error
            raise
        except pickle.UnpicklingError as error:
            # The weights-only unpickler refuses any text opening with a byte it takes for a forbidden opcode: a
            # JSON file ("{" is EMPTY_DICT) given for weights is no pickle of objects.
            refused = is_refused_pickle(error) and _starts_like_torch_save(path)
            raise ValueError(REFUSED_PICKLE if refused else _CORRUPT) from error
        except Exception as error:  # EOFError (empty), KeyError('105') (text), RuntimeError (a broken archive)
            # torch's first sentence where it says something ("failed finding central directory"), not an opcode.
            detail = str(error).split("\n")[0].split(". ")[0][:160]
            raise ValueError(_CORRUPT + (f" ({detail})" if any(c.isalpha() for c in detail) else "")) from error
