"""A run's config.toml holds its path settings absolute, made so against the directory training ran
in, so that `--resume` (and `tgfr evaluate`) read the same files from any directory; a run whose
config.toml holds relative paths (an older tgfr's) still resumes from the directory it names them from."""

import errno
import os
import re
import tomllib
from pathlib import Path

import pytest
import safetensors.torch

from tgfr.cli import main
from tgfr.models.text_encoder import packaged_minilm_path
from tgfr.train.batches import resolve_manifest
from tgfr.train.config import PATH_KEYS, load_config, to_toml
from tgfr.train.run import build_model


def test_config_toml_holds_absolute_paths_and_resumes_from_another_directory(tmp_path, tiny_overrides, monkeypatch):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    # Each path setting names a file or folder relative to the project folder.
    synthetic = resolve_manifest(load_config("quick", tiny_overrides).data)
    (project / "data").symlink_to(synthetic.parent)
    (project / "text").symlink_to(packaged_minilm_path())
    (project / "weights").mkdir()
    backbone = build_model(load_config("quick", tiny_overrides)).backbone
    safetensors.torch.save_file(backbone.state_dict(), project / "weights" / "backbone.safetensors")
    relative = {"data.manifest": f"data/{synthetic.name}", "data.cache_dir": "../project/cache",
                "model.backbone_weights": "weights/backbone.safetensors", "model.text_encoder": "text"}
    assert set(relative) == set(PATH_KEYS)
    settings = [*tiny_overrides, *(f'{key}="{value}"' for key, value in relative.items())]
    monkeypatch.chdir(project)
    assert main(["train", "--preset", "quick", "--out", "run", "--stop-after", "1",
                 *(arg for setting in settings for arg in ("--set", setting))]) == 0

    written = tomllib.loads((project / "run" / "config.toml").read_text(encoding="utf-8"))
    for key, value in relative.items():
        section, name = key.split(".")
        # Absolute, and naming what the relative path named (the current directory may be spelled without
        # a symlink that tmp_path has).
        assert Path(written[section][name]).is_absolute(), key
        assert os.path.realpath(written[section][name]) == os.path.realpath(project / value), key
        # Made absolute, not resolved: the symlinks data and text and the ".." stay as given, as the user named them.
        assert written[section][name] == os.path.join(os.getcwd(), value), key
    monkeypatch.chdir(elsewhere)  # where none of the relative paths names anything
    assert main(["train", "--resume", "--out", str(project / "run")]) == 0
    assert (project / "run" / "model").is_dir()

    # An older tgfr's run, its paths as given: resumed from the directory they are relative to (here it
    # has no checkpoint yet, so it trains from its first step), its config.toml left as written.
    old = project / "old"
    old.mkdir()
    config_text = to_toml(load_config("quick", settings))
    (old / "config.toml").write_text(config_text, encoding="utf-8")
    monkeypatch.chdir(project)
    assert main(["train", "--resume", "--out", "old", "--stop-after", "1"]) == 0
    assert (old / "config.toml").read_text(encoding="utf-8") == config_text
    assert f'manifest = "data/{synthetic.name}"' in config_text


def test_a_relative_path_under_a_non_utf8_folder_is_refused_by_key_before_the_run_folder(tmp_path, monkeypatch):
    """config.toml is UTF-8: a relative data.manifest made absolute against a current folder whose name
    holds a non-UTF-8 byte could not be written there after the data was read."""
    project = tmp_path / os.fsdecode(b"project\xff")
    project.mkdir()
    monkeypatch.chdir(project)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--preset", "quick", "--out", str(tmp_path / "run"), "--set", "data.manifest=data/m.jsonl"])
    assert str(exit_.value.code).startswith(
        f"tgfr train: error: data.manifest must be encodable as UTF-8, as config.toml is, got "
        f"{str(project / 'data' / 'm.jsonl')!r} (a lone surrogate at position {len(str(tmp_path)) + 8}")
    assert not (tmp_path / "run").exists()


def test_a_model_that_cannot_be_saved_ends_training_with_one_line_naming_the_folder(tmp_path, tiny_overrides,
                                                                                      monkeypatch, capsys):
    """A full disk at the final save raised a traceback after the whole training; tgfr evaluate and
    tgfr data say such a write error in their one-line form, and so does tgfr train now."""
    import tgfr.train.run as run_module

    def full_disk(model, directory):
        raise OSError(errno.ENOSPC, f"cannot write checkpoint folder {directory}: No space left on device")

    monkeypatch.setattr(run_module, "save_tgfr_model", full_disk)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--preset", "quick", "--out", str(out), "--set", 'stages=["fr"]',
              *(arg for setting in tiny_overrides for arg in ("--set", setting))])
    assert str(stopped.value) == (f"tgfr train: error: [Errno {errno.ENOSPC}] cannot write checkpoint folder "
                                  f"{out / 'model'}: No space left on device")
    monkeypatch.undo()  # the disk has room again: --resume saves the model of the kept last checkpoint
    assert main(["train", "--resume", "--out", str(out)]) == 0
    assert (out / "model" / "config.json").is_file()


def test_a_checkpoint_that_cannot_be_written_is_said_on_a_line_of_its_own(tmp_path, tiny_overrides, monkeypatch,
                                                                           capsys):
    """The stage's progress bar is closed (its line ended) before the error reaches the command, which
    prints it: the bar, left open while the exception held its frame, put the error line inside the bar."""
    import tgfr.train.run as run_module

    def full_disk(path, state):
        raise OSError(errno.ENOSPC, f"cannot write checkpoint {path}: No space left on device")

    monkeypatch.setattr(run_module, "save_checkpoint", full_disk)
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--preset", "quick", "--out", str(tmp_path / "run"), "--set", 'stages=["fr"]',
              *(arg for setting in tiny_overrides for arg in ("--set", setting))])
    assert str(stopped.value).startswith(f"tgfr train: error: [Errno {errno.ENOSPC}] cannot write checkpoint")
    progress = capsys.readouterr().err
    assert "fr: " in progress and progress.endswith("\n")


def test_a_run_folder_whose_real_path_utf8_cannot_encode_is_refused_before_training(tmp_path, tiny_overrides,
                                                                                        monkeypatch):
    """The saved model's tokenizer files cannot be written under a non-UTF-8 path, and the model is saved at the
    run folder's real path: such an --out (named so, or relative in such a current folder) failed at the final
    save, after the whole training, and at every --resume. It is refused before anything trains or is written;
    the run, renamed, resumes and finishes."""
    settings = [arg for setting in tiny_overrides + ['stages=["fr"]'] for arg in ("--set", setting)]
    byte = os.fsdecode(b"\xff")
    unnamed = tmp_path / f"run{byte}"

    def refusal(real):
        return (f"tgfr train: error: run folder (--out) must be encodable as UTF-8, as the saved model's tokenizer "
                f"files are written at its real path, got {str(real)!r} (a lone surrogate at position "
                f"{str(real).index(byte)}: a non-UTF-8 byte of a file name? rename the folder holding "
                f"that byte, or train into another --out)")

    with pytest.raises(SystemExit) as stopped:
        main(["train", "--preset", "quick", "--out", str(unnamed), *settings])
    assert str(stopped.value) == refusal(unnamed)
    assert not unnamed.exists()
    unnamed.mkdir()
    monkeypatch.chdir(unnamed)
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--preset", "quick", "--out", "run", *settings])
    assert str(stopped.value) == refusal(unnamed / "run")
    assert not (unnamed / "run").exists()
    monkeypatch.chdir(tmp_path)
    # A run moved under such a name: its resume is refused too, not trained and then lost.
    assert main(["train", "--preset", "quick", "--out", "run", "--stop-after", "1", *settings]) == 0
    (tmp_path / "run").rename(unnamed / "run")
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--resume", "--out", str(unnamed / "run")])
    assert str(stopped.value) == refusal(unnamed / "run")
    (unnamed / "run").rename(tmp_path / "renamed")
    assert main(["train", "--resume", "--out", "renamed"]) == 0
    assert (tmp_path / "renamed" / "model" / "config.json").is_file()


def test_a_synthetic_cache_inside_the_run_folder_is_the_runs_own(tmp_path, tiny_overrides):
    """data.cache_dir inside --out: the run writes the synthetic set there before it takes the folder's lock, and
    the check that no other run started meanwhile took it for another run's files. The run failed, and so did
    every retry (the folder was no longer empty) and --resume (no config.toml)."""
    run = tmp_path / "run"
    settings = [o for o in tiny_overrides if not o.startswith("data.cache_dir")] + [f'data.cache_dir="{run / "cache"}"']
    broken = tmp_path / "backbone.pth"
    broken.write_bytes(b"not a torch file")
    # A first attempt that fails after generating the data (its backbone weights are loaded after it).
    with pytest.raises(SystemExit, match="weights file"):
        main(["train", "--preset", "quick", "--out", str(run), "--stop-after", "1",
              *[arg for o in settings + [f'model.backbone_weights="{broken}"'] for arg in ("--set", o)]])
    assert [path.name for path in run.iterdir()] == ["cache"]
    assert main(["train", "--preset", "quick", "--out", str(run), "--stop-after", "1",
                 *[arg for o in settings for arg in ("--set", o)]]) == 0
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "cache" / "synthetic").is_dir()


def test_a_path_setting_opening_with_a_tilde_names_the_home_folder(tmp_path, tiny_overrides, monkeypatch):
    """The shell leaves `--set data.cache_dir=~/x` as typed (the dot makes it no assignment): the run had made a
    folder named `~` in the current directory. A `~` further in names a folder of that name, as the shell's does."""
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(project)
    config = load_config("quick", ["data.cache_dir=~/cache", "data.manifest=~/data/m.jsonl", "model.text_encoder=~",
                                   "model.backbone_weights=weights/~/b.safetensors"])
    absolute = config.with_absolute_paths()
    assert (absolute.data.cache_dir, absolute.data.manifest, absolute.model.text_encoder,
            absolute.model.backbone_weights) == (str(home / "cache"), str(home / "data" / "m.jsonl"), str(home),
                                                 str(project / "weights" / "~" / "b.safetensors"))

    # The session's synthetic set, reached through the home folder: nothing is generated.
    (home / "cache").symlink_to(load_config("quick", tiny_overrides).data.cache_dir)
    assert main(["train", "--preset", "quick", "--out", "run", "--stop-after", "1",
                 *(arg for setting in [*tiny_overrides, "data.cache_dir=~/cache"] for arg in ("--set", setting))]) == 0
    written = tomllib.loads((project / "run" / "config.toml").read_text(encoding="utf-8"))
    assert written["data"]["cache_dir"] == str(home / "cache")
    assert sorted(entry.name for entry in project.iterdir()) == ["run"]


def test_a_tilde_naming_no_user_is_named_with_its_setting():
    """~user of a user this machine does not know: Path.expanduser raised RuntimeError, a traceback."""
    config = load_config("quick", ["data.cache_dir=~no_such_user_of_tgfr/cache"])
    with pytest.raises(ValueError, match=re.escape("data.cache_dir = '~no_such_user_of_tgfr/cache': its leading ~ "
                                                   "names no user's home folder here")):
        config.with_absolute_paths()
