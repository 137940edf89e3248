"""Metrics log of a run: one JSON object per line (metrics.jsonl), and TensorBoard scalars when
the `tensorboard` package is installed."""

import json
import shutil
import time
from pathlib import Path
from typing import Any

from tgfr.text_formats import parse_json
from tgfr.output_paths import write_atomically
from tgfr.train.config import STAGES

TENSORBOARD = "tensorboard"


class TrainingLog:
    """Appends records {"stage", "step", ...numbers} to `path`; `path` None logs nothing (other ranks).

    TensorBoard scalars go to tensorboard/<stage>/ beside `path`, one writer per stage, opened at the
    stage's first record in this process with purge_step at the first step this call can log: the step
    after the checkpoint's in the stage of the checkpoint it resumes (`resumed_at`: that stage and step),
    1 in any other. TensorBoard then hides an earlier call's points from there on, as the resume cuts
    them from metrics.jsonl (drop_records_after), whichever steps the two calls logged: log_every may
    change on resume, so the first step this call logs need not be the first step past the checkpoint."""

    def __init__(self, path: str | Path | None, resumed_at: tuple[str, int] | None = None):
        self.path = Path(path) if path is not None else None
        self.resumed_at = resumed_at
        self.summary_writer: type | None = None
        self.writers: dict[str, Any] = {}
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self.summary_writer = SummaryWriter

    def write(self, stage: str, step: int, values: dict[str, Any]) -> None:
        if self.path is None:
            return
        record = {"stage": stage, "step": step, "time": time.time(), **values}
        with self.path.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")
        if self.summary_writer is None:
            return
        if stage not in self.writers:
            resumed_stage, resumed_step = self.resumed_at or (None, 0)
            purge_step = resumed_step + 1 if stage == resumed_stage else 1
            self.writers[stage] = self.summary_writer(str(self.path.parent / TENSORBOARD / stage),
                                                      purge_step=purge_step)
        for name, value in values.items():
            if isinstance(value, (int, float)):
                self.writers[stage].add_scalar(f"{stage}/{name}", value, step)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, record) for every record of the metrics log `path`.

    An unparsable last line is left out: a step's record is written before its checkpoint, so a
    process killed while appending leaves at most a half line, past the last checkpoint (a resumed
    run drops it and logs that step again). Any other bad line is a ValueError naming the file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except UnicodeDecodeError as error:
        raise ValueError(f"metrics log {path} is not UTF-8 text: {error}") from None
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(numbered):
        try:
            record = parse_json(line)
        except json.JSONDecodeError as error:
            if index == len(numbered) - 1:
                break
            raise ValueError(f"metrics log {path}, line {number}, is not valid JSON: {error}") from None
        if not (isinstance(record, dict) and isinstance(record.get("stage"), str)
                and type(record.get("step")) is int):
            raise ValueError(f"metrics log {path}, line {number}, is not a record with a stage and a step: "
                             f"{line.strip()[:100]}")
        records.append((line, record))
    return records


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl file (without a half-written last line)."""
    return [record for _, record in _records(Path(path))]


def drop_records_after(path: str | Path, stage: str, step: int) -> None:
    """Removes from the metrics log `path` the records of `stage` past `step` and of the stages after it
    in tgfr.train.config.STAGES, and a half-written last line: steps a run logged after its last
    checkpoint were lost with it, and the resumed run logs them again, or never, where config.toml no
    longer lists their stage (stages after the checkpoint's may be dropped on resume). The TensorBoard
    folders of those later stages (tensorboard/<stage>/ beside `path`) go too: they hold lost steps only.
    The log is rewritten atomically (write_atomically), so a crash keeps the old log."""
    path = Path(path)
    later = STAGES[STAGES.index(stage) + 1:]

    def lost(record: dict[str, Any]) -> bool:
        return record["stage"] in later or (record["stage"] == stage and record["step"] > step)

    # Read before anything changes: a bad line stops the resume with the run folder as it was. A last record
    # without its newline gets one: the next record is appended after it.
    kept = ([line if line.endswith("\n") else line + "\n" for line, record in _records(path) if not lost(record)]
            if path.is_file() else None)
    for name in later:
        if (path.parent / TENSORBOARD / name).is_dir():
            shutil.rmtree(path.parent / TENSORBOARD / name)
    if kept is not None:
        with write_atomically(path, "metrics log") as stream:
            stream.write("".join(kept))
