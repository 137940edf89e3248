"""metrics.jsonl: a half-written last line (a process killed while appending) is left out and dropped on
resume; any other bad line stops with the file and line named. A resume drops the steps logged after its
checkpoint, from metrics.jsonl and TensorBoard alike."""

import json
import os
import re
import sys

import pytest

from tgfr.train.config import STAGES
from tgfr.train.training_log import TrainingLog, drop_records_after, read_log


def write_steps(path, steps):
    log = TrainingLog(path)
    for step in steps:
        log.write("fr", step, {"loss": float(step)})
    log.close()


def test_a_half_written_last_line_is_left_out_and_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_steps(path, [1, 2, 3])
    with path.open("a") as stream:
        stream.write('{"stage": "fr", "step": 4, "ti')
    assert [record["step"] for record in read_log(path)] == [1, 2, 3]
    drop_records_after(path, "fr", 2)  # resume from the checkpoint after step 2
    write_steps(path, [3, 4])
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]  # every line is a whole record


def test_a_last_record_without_its_newline_is_kept_and_followed_correctly(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"stage": "fr", "step": 1}\n{"stage": "fr", "step": 2}')
    drop_records_after(path, "fr", 2)
    write_steps(path, [3])
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


@pytest.mark.parametrize("bad", ['{"stage": "fr", "st', '[1, 2]', '{"stage": "fr"}', '{"stage": "fr", "step": true}',
                                 '{"stage": "fr", "step": 2.0}', '{"stage": 1, "step": 2}'])
def test_a_bad_line_before_the_last_names_the_file_and_line(tmp_path, bad):
    path = tmp_path / "metrics.jsonl"
    text = f'{{"stage": "fr", "step": 1}}\n{bad}\n{{"stage": "fr", "step": 3}}\n'
    path.write_text(text)
    for call in (lambda: read_log(path), lambda: drop_records_after(path, "fr", 1)):
        with pytest.raises(ValueError, match=re.escape(f"metrics log {path}, line 2, is not")):
            call()
    assert path.read_text() == text


class PurgingSummaryWriter:
    """TensorBoard as its SummaryWriter documents purge_step: a writer opened on a folder with purge_step p hides
    the folder's earlier points at steps >= p. `shown` holds what TensorBoard shows: folder -> tag -> step -> value."""

    shown: dict[str, dict[str, dict[int, float]]] = {}

    def __init__(self, log_dir, purge_step=None):
        self.folder = self.shown.setdefault(log_dir, {})
        for points in self.folder.values():
            for step in [step for step in points if purge_step is not None and step >= purge_step]:
                del points[step]

    def add_scalar(self, tag, value, step):
        self.folder.setdefault(tag, {})[step] = value

    def close(self):
        pass


@pytest.mark.parametrize("resumed", [[("fr", 3), ("fr", 4), ("align", 1), ("align", 2)], [("fr", 4), ("align", 2)]],
                         ids=["log_every unchanged", "log_every 2 on resume"])
def test_tensorboard_shows_each_step_of_a_resumed_run_once_with_its_last_value(tmp_path, monkeypatch, resumed):
    """A call logs fr 1-4 and align 1-3 and dies; its checkpoint was at fr step 2. The resumed call logs fr and
    align again (other values), every step or, with log_every edited to 2, fr 4 and align 2: TensorBoard shows
    what metrics.jsonl holds, each step once, without the dead call's fr step 3 or align steps. (An appended
    writer per folder without purge_step showed both calls' points; purge_step at the first step the resumed
    call logs, 4, kept fr step 3.)"""
    module = type(sys)("torch.utils.tensorboard")
    module.SummaryWriter = PurgingSummaryWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    monkeypatch.setattr(PurgingSummaryWriter, "shown", {})
    path = tmp_path / "metrics.jsonl"
    log = TrainingLog(path)
    for stage, step in [("fr", 1), ("fr", 2), ("fr", 3), ("fr", 4), ("align", 1), ("align", 2), ("align", 3)]:
        log.write(stage, step, {"loss": 1.0 * step})
    drop_records_after(path, "fr", 2)
    log = TrainingLog(path, resumed_at=("fr", 2))
    for stage, step in resumed:
        log.write(stage, step, {"loss": 10.0 * step})
    log.close()
    shown = {(os.path.basename(folder), tag, step): value for folder, tags in PurgingSummaryWriter.shown.items()
             for tag, points in tags.items() for step, value in points.items()}
    assert shown == {(record["stage"], f"{record['stage']}/loss", record["step"]): record["loss"]
                     for record in read_log(path)}
    assert len(shown) == 2 + len(resumed)


def test_a_resume_drops_the_records_and_tensorboard_folders_of_the_stages_after_its_checkpoint(tmp_path):
    """A call that died in fuse after align's checkpoint logged fuse steps that are lost, whether or not the resumed
    run's config.toml still lists fuse (a stage still to come may be dropped): they go from metrics.jsonl, and
    their TensorBoard folder, which no writer of the resumed run would open to hide them, goes too."""
    path = tmp_path / "metrics.jsonl"
    log = TrainingLog(path)
    logged = [(stage, step) for stage in STAGES for step in (1, 2, 3)]
    for stage, step in logged:
        log.write(stage, step, {"loss": 1.0})
        (tmp_path / "tensorboard" / stage).mkdir(parents=True, exist_ok=True)
        (tmp_path / "tensorboard" / stage / "events").write_text(stage)
    drop_records_after(path, "align", 2)
    kept_stages = STAGES[:STAGES.index("align") + 1]
    assert [(record["stage"], record["step"]) for record in read_log(path)] == [
        (stage, step) for stage, step in logged if STAGES.index(stage) < STAGES.index("align")
        or (stage == "align" and step <= 2)]
    assert sorted(folder.name for folder in (tmp_path / "tensorboard").iterdir()) == sorted(kept_stages)
    assert [(tmp_path / "tensorboard" / stage / "events").read_text() for stage in kept_stages] == list(kept_stages)
