"""Metrics log of a run: one JSON object per line (metrics.jsonl), and TensorBoard scalars when
the `tensorboard` package is installed."""

import json
import time
from pathlib import Path
from typing import Any

from tgfr.text_formats import parse_json
from tgfr.output_paths import write_atomically


class TrainingLog:
    """Appends records {"stage", "step", ...numbers} to `path`; `path` None logs nothing (other ranks).

    TensorBoard scalars go to tensorboard/<stage>/ beside `path`, one writer per stage, opened at the
    stage's first record in this process with purge_step = that record's step: a resumed run logs again
    the steps past its checkpoint, and TensorBoard then hides the earlier call's points from that step
    on, as the resume cuts them from metrics.jsonl (the first step logged after a checkpoint is the
    same in every call: log_every and the checkpoint's step fix it)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
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
            self.writers[stage] = self.summary_writer(str(self.path.parent / "tensorboard" / stage), purge_step=step)
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


def drop_records_after(path: str | Path, stages: list[str], stage: str, step: int) -> None:
    """Removes from the metrics log `path` the records of `stage` past `step` and of the stages after it
    in `stages`, and a half-written last line: steps a run logged after its last checkpoint were lost
    with it, and the resumed run logs them again. Rewritten atomically (write_atomically), so a crash
    keeps the old log."""
    path = Path(path)
    if not path.is_file():
        return
    later = set(stages[stages.index(stage) + 1:])

    def lost(record: dict[str, Any]) -> bool:
        return record["stage"] in later or (record["stage"] == stage and record["step"] > step)

    # A last record without its newline gets one: the next record is appended after it.
    kept = [line if line.endswith("\n") else line + "\n" for line, record in _records(path) if not lost(record)]
    with write_atomically(path, "metrics log") as stream:
        stream.write("".join(kept))
