"""Ctrl-C and SIGTERM end a `tgfr` command with one line and exit status 128 + the signal, through the
clean-up an error gets (SIGTERM's default would end the process where it stands)."""

import signal
import subprocess
import sys
import textwrap

import tgfr.data.cli as data_cli
from tgfr.cli import main
from tgfr.data.worker_pool import WorkerPool


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
    assert result.stderr.splitlines()[-1] == (f"tgfr train: interrupted (SIGTERM); `tgfr train --resume --out "
                                              f"{tmp_path / 'run'}` continues the run from its last checkpoint (from "
                                              "its first step before one is written)")
    assert "Traceback" not in result.stderr and (tmp_path / "cleaned").exists()


def test_pool_workers_leave_ctrl_c_and_sigterm_to_the_parent():
    """Ctrl-C (and a scheduler's SIGTERM) reaches the whole process group: the parent handles it, and the
    workers, which ignore it, print no traceback each and end once their chunk is done."""
    with WorkerPool(1) as pool:
        assert pool.map(signal.getsignal, [signal.SIGINT, signal.SIGTERM]) == [signal.SIG_IGN, signal.SIG_IGN]
