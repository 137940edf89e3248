"""What a run or report records of the code that made it: the commit only of tgfr's own checkout."""

import subprocess
from pathlib import Path

import torch

import tgfr
from tgfr import provenance

ROOT = Path(__file__).resolve().parents[1]


def git(folder, *arguments):
    return subprocess.run(["git", *arguments], cwd=folder, capture_output=True, text=True, check=True).stdout


def test_the_commit_is_tgfr_s_checkout_s_and_none_in_another_repository(tmp_path, monkeypatch):
    if (ROOT / ".git").exists():
        head = git(ROOT, "rev-parse", "--short=12", "HEAD").strip()
        assert provenance.tgfr_commit() in (head, f"{head}-dirty")
    # An installed copy of the package inside some other repository (a virtual environment in a project's
    # checkout): that repository's commit says nothing of tgfr's code.
    other = tmp_path / "project"
    (other / "venv" / "tgfr").mkdir(parents=True)
    (other / "venv" / "tgfr" / "__init__.py").write_text("")
    git(other, "init", "-q")
    git(other, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "project")
    monkeypatch.setattr(tgfr, "__file__", str(other / "venv" / "tgfr" / "__init__.py"))
    assert provenance.tgfr_commit() is None
    (other / "venv" / "setup.py").write_text("")  # a checkout of tgfr's own layout, not under git itself
    assert provenance.tgfr_commit() is None


def test_the_environment_names_the_software_and_settings():
    described = provenance.environment(torch.device("cpu"), "bf16", world_size=2)
    assert (described["tgfr"], described["torch"], described["device"], described["precision"],
            described["threads"], described["world_size"]) == (tgfr.__version__, torch.__version__, "cpu", "bf16",
                                                               torch.get_num_threads(), 2)
    assert "gpu" not in described and described["date"].endswith("+00:00")
