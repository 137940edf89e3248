"""`tgfr train`'s path option: an empty --out (an unset shell variable, `--out "$RUN"`) is a usage error naming it,
not the current folder, which the run was trained into."""

import pytest

import tgfr.train.run as run_module
from tgfr.cli import main


@pytest.mark.parametrize("extra", [[], ["--print-config"], ["--resume"]])
def test_an_empty_out_is_a_usage_error_naming_it_before_any_work(tmp_path, monkeypatch, capsys, extra):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_module, "train", lambda *arguments, **keywords: pytest.fail("trained"))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "quick", "--out", "", *extra])
    assert exit_info.value.code == 2
    assert "tgfr train: error: argument --out: must be a non-empty path, got ''" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_out_given_with_an_equals_sign_and_a_tilde_is_in_the_home_folder(tmp_path, monkeypatch):
    """The shell expands `--out ~/x` but not `--out=~/x`: the run went into a folder named `~` in the current one."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    outs = []
    monkeypatch.setattr(run_module, "train", lambda config, out, **keywords: outs.append(out) or out)
    main(["train", "--preset", "quick", "--out=~/run", "--stop-after", "1"])
    assert outs == [tmp_path / "home" / "run"]


def test_train_refuses_an_empty_out_given_in_python(tmp_path, monkeypatch):
    """As a Path, "" is the current folder: train(config, "") trained the run into it."""
    from tgfr.train.config import load_config

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="^out is empty: name the run folder$"):
        run_module.train(load_config("quick"), "")
    assert list(tmp_path.iterdir()) == []
