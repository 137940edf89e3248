"""A pipe where a run's file is expected is an error naming it (or, for the run's own notes, a warning), never
a wait for a writer that does not come (opening a pipe to read waits for one)."""

import os
import shutil
import signal

import pytest

from tgfr.cli import main
from tgfr.data.synthetic import ensure_synthetic_dataset
from tgfr.train.batches import synthetic_config
from tgfr.train.config import load_config
from tgfr.train.run import train


@pytest.fixture
def alarm():
    """Fails the test after 120 s instead of hanging it on a pipe."""
    def waited(signum, frame):
        raise TimeoutError("a pipe was opened and waited on")

    previous = signal.signal(signal.SIGALRM, waited)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def with_pipe(run, name, copy):
    """A copy of run folder `run` whose file `name` is a pipe."""
    shutil.copytree(run, copy)
    (copy / name).unlink()
    os.mkfifo(copy / name)
    return copy


def error_of(arguments):
    with pytest.raises(SystemExit) as stopped:
        main(arguments)
    return str(stopped.value)


def test_pipes_in_a_run_folder(tmp_path, tiny_overrides, alarm, capsys):
    stopped, finished = tmp_path / "stopped", tmp_path / "finished"
    train(load_config("quick", tiny_overrides), stopped, stop_after=1)
    train(load_config("quick", tiny_overrides), finished)

    run = with_pipe(stopped, "metrics.jsonl", tmp_path / "log_pipe")
    assert error_of(["train", "--resume", "--out", str(run)]) == (
        f"tgfr train: error: training log {run / 'metrics.jsonl'} is not a regular file (a pipe, socket or device)")
    run = with_pipe(stopped, "config.toml", tmp_path / "config_pipe")
    assert error_of(["train", "--resume", "--out", str(run)]) == (
        f"tgfr train: error: --resume: {run / 'config.toml'} is not a regular file (a pipe, socket or device)")
    # run_info.json describes the run, and training does not depend on it: said, and written anew.
    run = with_pipe(stopped, "run_info.json", tmp_path / "info_pipe")
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--stop-after", "1"]) == 0
    assert "is not a regular file" in capsys.readouterr().err and (run / "run_info.json").is_file()

    run = with_pipe(finished, "train_summary.json", tmp_path / "summary_pipe")
    assert error_of(["evaluate", "--run", str(run)]) == (
        f"tgfr evaluate: error: training summary {run / 'train_summary.json'} is not a regular file (a pipe, socket "
        "or device)")
    run = with_pipe(finished, "config.toml", tmp_path / "evaluated_config_pipe")
    assert error_of(["evaluate", "--run", str(run)]) == (
        f"tgfr evaluate: error: --run: {run / 'config.toml'} is not a regular file (a pipe, socket or device)")

    preset = tmp_path / "preset.toml"
    os.mkfifo(preset)
    with pytest.raises(ValueError, match=r"^preset '.*preset\.toml': .*preset\.toml is not a regular file"):
        load_config(str(preset))


def test_a_pipe_as_the_synthetic_sets_marker_makes_it_generated_again(tmp_path, tiny_overrides, alarm):
    data = load_config("quick", tiny_overrides).data
    cache = tmp_path / "cache"
    manifest = ensure_synthetic_dataset(synthetic_config(data), cache_dir=cache)
    marker = manifest.parent / "synthetic.json"
    marker.unlink()
    os.mkfifo(marker)
    assert ensure_synthetic_dataset(synthetic_config(data), cache_dir=cache) == manifest
    assert marker.is_file()


def test_a_checkpoint_folder_behind_a_broken_link_is_named_not_trained_again(tmp_path, tiny_overrides):
    """Through the broken link the checkpoint looked absent: a run killed at its first checkpoint (no
    train_summary.json) was taken for one that stopped before it, trained again from step 0 and its metrics.jsonl
    emptied."""
    run = tmp_path / "run"
    train(load_config("quick", tiny_overrides + ["checkpoint_every=1"]), run, stop_after=1)
    (run / "train_summary.json").unlink()
    log = (run / "metrics.jsonl").read_bytes()
    shutil.move(run / "checkpoints", tmp_path / "unmounted")
    (run / "checkpoints").symlink_to(tmp_path / "gone")
    assert error_of(["train", "--resume", "--out", str(run)]) == (
        f"tgfr train: error: checkpoint folder {run / 'checkpoints'} is a broken symbolic link (to {tmp_path / 'gone'})")
    assert (run / "metrics.jsonl").read_bytes() == log
