"""run_info.json of a run folder: one entry per `tgfr train` call that trained it (a resumed run has
several, maybe on other machines or another tgfr), each tgfr.provenance.environment plus the stage
and step the call resumed at (null for the call that started the run)."""

import json
import os
import sys
from pathlib import Path
from typing import Any

from tgfr.input_paths import file_problem
from tgfr.output_paths import write_atomically
from tgfr.text_formats import parse_json

RUN_INFO = Path("run_info.json")


def record_call(out: Path, call: dict[str, Any]) -> None:
    """Appends `call` to out/run_info.json (written atomically). A file that cannot be read is named on
    stderr and replaced: it describes the run, and training does not depend on it."""
    path = out / RUN_INFO
    calls = []
    if os.path.lexists(path):
        try:
            if problem := file_problem(path):  # a pipe would be waited on for ever
                raise OSError(f"{path} {problem}")
            calls = parse_json(path.read_bytes().decode("utf-8"))["calls"]
            if not isinstance(calls, list):
                raise TypeError(f"calls is a {type(calls).__name__}, not a list")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
            print(f"tgfr train: warning: {path} cannot be read ({error!r}); it is written anew, with this call "
                  "only", file=sys.stderr)
            calls = []
    with write_atomically(path, "run information") as stream:
        stream.write(json.dumps({"calls": [*calls, call]}, indent=1) + "\n")
