"""One tgfr train per run folder: a second one, while the first runs, is refused before it writes."""

import pytest

from tgfr.cli import main
from tgfr.train.checkpoint import load_checkpoint
from tgfr.train.config import load_config
from tgfr.train.run import CHECKPOINT, train


def train_error(*arguments):
    with pytest.raises(SystemExit) as stopped:
        main(["train", *arguments])
    return str(stopped.value)


def test_a_resume_while_the_run_trains_is_refused_and_changes_nothing(tmp_path, tiny_overrides,
                                                                      folder_held_elsewhere):
    run = tmp_path / "run"
    train(load_config("quick", tiny_overrides), run, stop_after=1)
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    release = folder_held_elsewhere(run)
    assert train_error("--resume", "--out", str(run)) == (
        f"tgfr train: error: run folder {run} is being trained by another tgfr train process: wait for it to end (two "
        "processes would write the same checkpoint and log every step twice)")
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before
    release()
    assert main(["train", "--resume", "--out", str(run), "--stop-after", "1"]) == 0
    assert load_checkpoint(run / CHECKPOINT)["step"] == 2


def test_a_new_run_into_a_folder_being_trained_is_refused(tmp_path, tiny_overrides, folder_held_elsewhere):
    run = tmp_path / "run"
    run.mkdir()  # the other run made it and holds it, not yet written into
    folder_held_elsewhere(run)
    assert "is being trained by another tgfr train process" in train_error(
        "--preset", "quick", "--out", str(run), *(arg for setting in tiny_overrides for arg in ("--set", setting)))
    assert not any(run.iterdir())


def test_the_lock_is_released_when_training_fails(tmp_path, tiny_overrides, monkeypatch, folder_held_elsewhere):
    import tgfr.train.run as run_module

    def failing(*arguments, **options):
        raise OSError(28, "No space left on device")

    run = tmp_path / "run"
    monkeypatch.setattr(run_module, "record_call", failing)
    with pytest.raises(OSError):
        train(load_config("quick", tiny_overrides), run)
    folder_held_elsewhere(run)  # free again: the failed call let go of it
