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
def test_an_interruption_while_the_subcommands_load_is_one_line_once_they_are_loaded(signum):
    """build_parser imports the subcommands, torch with them (seconds on a busy machine): interrupted there,
    SIGINT printed a traceback and SIGTERM ended the process without a word; raised inside torch's C++ set-up,
    the KeyboardInterrupt aborted the process. The signal (here from another thread, as from outside) is taken
    once the imports end."""
    script = textwrap.dedent(f"""
        import os, signal, sys, threading, time
        import tgfr.cli

        building = tgfr.cli.build_parser

        def loading():
            sender = threading.Thread(target=os.kill, args=(os.getpid(), {int(signum)}))
            sender.start()
            sender.join()
            time.sleep(0.2)  # where the interruption would be raised
            print("loaded", flush=True)
            return building()

        signal.signal(signal.SIGINT, signal.default_int_handler)
        tgfr.cli.build_parser = loading
        sys.exit(tgfr.cli.main(["train", "--preset", "quick"]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (128 + signum, "loaded\n",
                                                                  f"tgfr: interrupted ({signum.name})\n")


@pytest.mark.parametrize("command, module", [("train", "tgfr.train.run"), ("evaluate", "tgfr.evaluation.run")])
def test_an_interruption_while_a_command_loads_its_models_is_taken_once_they_are_loaded(tmp_path, command, module):
    """The command's own imports (the models, transformers, matplotlib) come after the arguments are read: an
    interruption raised inside an extension's set-up there aborted the process, or left Python's record of an
    unhandled Ctrl-C, which ended a process that had printed its line with SIGINT instead of 143."""
    script = textwrap.dedent(f"""
        import importlib.abc, importlib.util, os, signal, sys, threading, time
        import tgfr.cli

        class SlowModels(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path, target=None):
                return importlib.util.spec_from_loader(name, self) if name == {module!r} else None

            def create_module(self, spec):
                return None

            def exec_module(self, loaded):
                sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM))
                sender.start()
                sender.join()
                time.sleep(0.2)  # where the interruption would be raised
                print("loaded", flush=True)
                loaded.train = loaded.evaluate = None  # what the command imports from it

        sys.meta_path.insert(0, SlowModels())
        arguments = {{"train": ["--preset", "quick", "--out", {str(tmp_path / "run")!r}],
                     "evaluate": ["--run", {str(tmp_path)!r}]}}[{command!r}]
        sys.exit(tgfr.cli.main([{command!r}, *arguments]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (143, "loaded\n"), result.stderr
    assert result.stderr.startswith(f"tgfr {command}: interrupted (SIGTERM)") and result.stderr.count("\n") == 1


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


@pytest.mark.parametrize("rank, world_size, lines", [(None, None, 1), ("0", "2", 1), ("00", "2", 1), ("1", "2", 0),
                                                    ("1", None, 1), ("1", "1", 1)])
def test_under_torchrun_rank_0_alone_prints_the_interrupted_line(tmp_path, monkeypatch, capsys, rank, world_size,
                                                                 lines):
    """torchrun forwards Ctrl-C to every rank: each printed the line, where rank 0 alone speaks for the job, as it
    does for an error; a RANK without a WORLD_SIZE of several (a job's leftover) silences nothing."""
    def interrupted(*arguments, **keywords):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_run, "train", interrupted)
    for name, value in (("RANK", rank), ("WORLD_SIZE", world_size)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert main(["train", "--preset", "quick", "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err.count("tgfr train: interrupted (SIGINT)") == lines


def test_a_rank_in_the_environment_does_not_silence_the_interruption_of_another_command(tmp_path, monkeypatch,
                                                                                         capsys):
    """Only tgfr train runs distributed: RANK=1 left in a job's environment silenced tgfr data's line."""
    def interrupted(*arguments, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_cli, "generate_synthetic_dataset", interrupted)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--identities", "10"]) == 130
    assert capsys.readouterr().err == "tgfr data synth: interrupted (SIGINT)\n"
