"""README's script for training and evaluating from Python runs as written, at the tests' tiny scale."""

import re
from pathlib import Path

import tgfr.train
from tgfr.train.config import read_run_config

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_script() -> str:
    """The Python block of README that trains with tgfr.train.load_config."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    return next(block for block in blocks if "tgfr.train.load_config(" in block)


def test_readme_training_script_trains_and_evaluates_the_run(tiny_overrides, tmp_path, monkeypatch, capsys):
    load_config, asked = tgfr.train.load_config, []

    def load_at_test_scale(preset, overrides):
        asked.append((preset, list(overrides)))
        return load_config(preset, [*overrides, *tiny_overrides])  # the tiny sizes and step counts win

    monkeypatch.setattr(tgfr.train, "load_config", load_at_test_scale)
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_script(), str(README), "exec"), {"__name__": "__main__"})

    [(preset, overrides)] = asked
    run = tmp_path / "runs" / "quick-seed1"
    config = read_run_config(run)
    assert config == load_config(preset, [*overrides, *tiny_overrides]) and config.seed == 1
    assert (run / "model" / "model.safetensors").is_file()
    report = run / "report" / "report.md"
    assert capsys.readouterr().out == report.read_text(encoding="utf-8") + "\n"
