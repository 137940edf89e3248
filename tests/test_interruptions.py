"""Ctrl-C and SIGTERM end a `tgfr` command with one line and exit status 128 + the signal, through the
clean-up an error gets (SIGTERM's default would end the process where it stands)."""

import signal
import subprocess
import sys
import textwrap

import pytest

import tgfr.data.cli as data_cli
import tgfr.train.run as train_run
from tgfr.cli import main
from tgfr.data.worker_pool import WorkerPool
from tgfr.train.config import load_config, to_toml


def test_ctrl_c_is_one_line_with_status_130(tmp_path, monkeypatch, capsys):
    def interrupted(*arguments, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_cli, "generate_synthetic_dataset", interrupted)
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--identities", "10"]) == 130
    assert capsys.readouterr().err == "tgfr data synth: interrupted (SIGINT)\n"


def test_sigterm_runs_the_clean_up_and_ends_with_status_143(tmp_path):
    """The command's `finally` runs (here it writes a file), and train's line says how to go on."""
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        import tgfr.train.run as train_run
        from tgfr.cli import main

        def training(*arguments, **options):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(60)
            finally:
                open({str(tmp_path / "cleaned")!r}, "w").close()

        train_run.train = training
        sys.exit(main(["train", "--preset", "quick", "--out", {str(tmp_path / "run")!r}]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 143, result.stderr
    assert result.stderr.splitlines()[-1] == (f"tgfr train: interrupted (SIGTERM); the run had not started in "
                                              f"{tmp_path / 'run'} (no config.toml yet): run the same command again")
    assert "Traceback" not in result.stderr and (tmp_path / "cleaned").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interruption_while_the_subcommands_load_is_one_line(signum):
    """build_parser imports the subcommands, torch with them (seconds on a busy machine): interrupted there,
    SIGINT printed a traceback and SIGTERM ended the process without a word."""
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        import tgfr.cli

        def loading():
            os.kill(os.getpid(), {int(signum)})
            time.sleep(60)

        signal.signal(signal.SIGINT, signal.default_int_handler)
        tgfr.cli.build_parser = loading
        sys.exit(tgfr.cli.main(["train", "--preset", "quick"]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (128 + signum, f"tgfr: interrupted ({signum.name})\n")


@pytest.mark.parametrize("resume, writes_config", [(False, False), (False, True), (True, False)])
def test_an_interrupted_train_suggests_resume_only_once_the_run_folder_holds_its_config(
        tmp_path, monkeypatch, capsys, resume, writes_config):
    """Interrupted before it writes config.toml (generating the synthetic set, building the model), a run cannot be
    resumed: --resume then said "config.toml does not exist (no run to resume)"."""
    out = tmp_path / "run"
    if resume:
        out.mkdir()
        (out / "config.toml").write_text(to_toml(load_config("quick")), encoding="utf-8")

    def interrupted(config, out, **options):
        if writes_config:
            out.mkdir(exist_ok=True)
            (out / "config.toml").write_text(to_toml(config), encoding="utf-8")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_run, "train", interrupted)
    assert main(["train", "--preset", "quick", "--out", str(out), *(["--resume"] if resume else [])]) == 130
    resumable = (f"tgfr train: interrupted (SIGINT); `tgfr train --resume --out {out}` continues the run from its last "
                 "checkpoint (from its first step before one is written)\n")
    again = (f"tgfr train: interrupted (SIGINT); the run had not started in {out} (no config.toml yet): run the same "
             "command again\n")
    assert capsys.readouterr().err == (resumable if resume or writes_config else again)


def test_pool_workers_leave_ctrl_c_and_sigterm_to_the_parent():
    """Ctrl-C (and a scheduler's SIGTERM) reaches the whole process group: the parent handles it, and the
    workers, which ignore it, print no traceback each and end once their chunk is done."""
    with WorkerPool(1) as pool:
        assert pool.map(signal.getsignal, [signal.SIGINT, signal.SIGTERM]) == [signal.SIG_IGN, signal.SIG_IGN]
