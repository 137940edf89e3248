"""What produced a training run or an evaluation report, recorded beside it (run_info.json,
report_info.json) so that a figure can be traced to its code and rerun: tgfr's version and, when
it runs from a source checkout, the checkout's commit; torch's and Python's versions; the device,
precision and CPU threads used, which config.toml's "auto" and 0 leave open."""

import datetime
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import tgfr


def checkout_commit(root: Path, ignored: Sequence[str] = ()) -> str | None:
    """HEAD of the git checkout holding the folder `root` (12 hex digits), with "-dirty" when tracked
    files differ from it, other than those the pathspecs `ignored` (relative to `root`) name; None
    outside a checkout or without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=30)
        if head.returncode != 0:
            return None
        excluded = [f":(exclude){path}" for path in ignored]
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", *excluded],
                                 cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("-dirty" if changed else "")


def tgfr_commit() -> str | None:
    """The commit of the source checkout tgfr runs from (an editable install), None for an installed
    copy: only a checkout whose root holds tgfr's setup.py beside the package counts, not another
    repository that a virtual environment happens to lie in."""
    root = Path(tgfr.__file__).resolve().parent.parent
    if not ((root / "setup.py").is_file() and (root / ".git").exists()):
        return None
    return checkout_commit(root)


def environment(device: torch.device, precision: str, world_size: int = 1) -> dict[str, Any]:
    """The software and settings of this process, and the date (UTC, ISO 8601), as JSON values.
    precision: "fp32" or "bf16" (autocast), as the command resolved it."""
    described = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                 "tgfr": tgfr.__version__, "commit": tgfr_commit(), "torch": torch.__version__,
                 "python": platform.python_version(), "device": str(device), "precision": precision,
                 "threads": torch.get_num_threads(), "world_size": world_size}
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    return described
