"""The data commands' worker processes: a worker that dies is an error, not a wait for ever."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tgfr.data import worker_pool
from tgfr.data.worker_pool import WorkerPool


def test_a_worker_that_dies_is_a_child_process_error():
    with WorkerPool(2) as pool:
        assert pool.map(abs, [-1, -2, 3]) == [1, 2, 3]
        with pytest.raises(ChildProcessError, match="a worker process ended abruptly"):
            pool.map(os._exit, [9])


def test_a_result_that_does_not_unpickle_is_named_not_taken_for_a_killed_worker(tmp_path):
    """An exception class whose arguments do not rebuild it: the parent's unpickling fails, which the pool
    reported as a worker killed for lack of memory."""
    script = tmp_path / "unpicklable.py"
    script.write_text(textwrap.dedent("""
        from tgfr.data.worker_pool import WorkerPool

        class TwoPartError(Exception):
            def __init__(self, message, detail):
                super().__init__(message)

        def work(item):
            raise TwoPartError("boom", item)

        if __name__ == "__main__":
            with WorkerPool(2) as pool:
                pool.map(work, [1])
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "ChildProcessError: a worker's result or error could not be passed back to this process: TypeError: "
        "TwoPartError.__init__() missing 1 required positional argument: 'detail'"), result.stderr


def test_a_script_without_a_main_guard_fails_instead_of_waiting(tmp_path):
    """Each spawned worker imports the script again, which starts a pool of its own while it is still
    starting: the worker fails, and multiprocessing.Pool replaced it with another for ever."""
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        from tgfr.data import SyntheticConfig, generate_synthetic_dataset
        generate_synthetic_dataset({str(tmp_path / "synth")!r}, SyntheticConfig(identities=10, images_per_identity=1),
                                   workers=2)
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("ChildProcessError: a worker process ended abruptly")


def _group_alive(group: int) -> list[int]:
    """The processes of process group `group` still running (zombies, which init has yet to reap, left out)."""
    alive = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            alive.append(int(entry))
    return alive


def _start_script(tmp_path, body: str) -> subprocess.Popen:
    """Runs `body` as a script in a session of its own, Ctrl-C at its default, until it prints "started"."""
    script = tmp_path / "pool_script.py"
    script.write_text(textwrap.dedent(body))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert process.stdout.readline() == "started\n"
    return process


def _start_sleeping_pool(tmp_path, seconds: float) -> subprocess.Popen:
    """_start_script of a pool of 2 workers sleeping `seconds` on each of 20 items, which prints "interrupted" when
    a Ctrl-C ends it."""
    return _start_script(tmp_path, f"""
        import time
        from tgfr.data.worker_pool import WorkerPool

        if __name__ == "__main__":
            try:
                with WorkerPool(2) as pool:
                    print("started", flush=True)
                    pool.map(time.sleep, [{seconds}] * 20)
            except KeyboardInterrupt:
                print("interrupted", flush=True)
    """)


def _assert_interrupted_cleanly(process: subprocess.Popen) -> None:
    """The pool script ended by its Ctrl-C handling, with no traceback (its process group killed if not)."""
    try:
        out, err = process.communicate(timeout=30)
    finally:
        if _group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0 and out == "interrupted\n" and "Traceback" not in err, err


def _wait_until_gone(group: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (alive := _group_alive(group)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def test_work_handed_to_the_workers_is_dropped_after_an_error(tmp_path):
    """Cancelling the executor's futures leaves the chunks already in its workers' queue (up to workers + 1)
    to run; the stop event makes them return at once, so only the chunks under way finish."""
    log = tmp_path / "started.log"
    process = _start_script(tmp_path, f"""
        import time
        from tgfr.data.worker_pool import WorkerPool

        def job(item):
            with open({str(log)!r}, "a") as handle:
                handle.write(f"{{item}}\\n")
            time.sleep(1.0)
            if item == 0:
                raise ValueError("the first item fails")

        if __name__ == "__main__":
            print("started", flush=True)
            try:
                with WorkerPool(2) as pool:
                    pool.map(job, range(40))
            except ValueError:
                pass
    """)
    assert process.wait(timeout=120) == 0, process.stderr.read()
    started = sorted(int(line) for line in log.read_text().split())
    # 0 and 1 run together; each worker takes one more while 0's error travels back; none after that.
    assert started in ([0, 1], [0, 1, 2], [0, 1, 2, 3]), started


def test_an_error_stops_the_submission_and_the_dispatch_of_the_chunks_after_it(tmp_path):
    """ProcessPoolExecutor.map submitted every chunk before raising a worker's error (seconds for 10^5 chunks),
    and a shutdown that did not cancel the pending ones sent each to a worker, to return at once (the stop
    event): only the chunks the executor already queued (up to workers + 1) may reach a worker after it."""
    started_log, dispatched_log = tmp_path / "started.log", tmp_path / "dispatched.log"
    process = _start_script(tmp_path, f"""
        import concurrent.futures
        import time
        import tgfr.data.worker_pool as worker_pool

        unless_stopped, submit = worker_pool._unless_stopped, concurrent.futures.ProcessPoolExecutor.submit
        submissions = 0

        def dispatched(*args):
            with open({str(dispatched_log)!r}, "a") as handle:
                handle.write("chunk\\n")
            return unless_stopped(*args)

        def counted_submit(executor, *args):
            global submissions
            submissions += 1
            return submit(executor, *args)

        def job(item):
            with open({str(started_log)!r}, "a") as handle:
                handle.write(f"{{item}}\\n")
            time.sleep(0.2)
            if item == 0:
                raise ValueError("the first item fails")

        # The pool hands the workers what it finds under this name: each chunk a worker takes is logged.
        worker_pool._unless_stopped = dispatched
        concurrent.futures.ProcessPoolExecutor.submit = counted_submit

        if __name__ == "__main__":
            print("started", flush=True)
            try:
                with worker_pool.WorkerPool(2) as pool:
                    try:
                        pool.map(job, range(2000))
                    finally:
                        print(submissions, flush=True)
            except ValueError:
                pass
    """)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert int(out) <= 2 * worker_pool.CHUNKS_AHEAD_PER_WORKER  # submitted when the error was raised
    started, dispatched = started_log.read_text().split(), dispatched_log.read_text().split()
    # Besides those started: the workers + 1 queued, and one a worker may have taken but not begun at the stop.
    assert len(dispatched) <= len(started) + (2 + 1) + 2, (started, len(dispatched))


@pytest.mark.parametrize("delay", [0.03, 0.1, 0.2])
def test_a_ctrl_c_while_the_workers_start_is_the_parents_alone(tmp_path, delay):
    """A worker spawned while Ctrl-C reached the process group, before its initializer made it deaf to it,
    ended with a KeyboardInterrupt traceback from its imports (in the pool's first ~0.2 s)."""
    process = _start_sleeping_pool(tmp_path, 0.3)
    time.sleep(delay)  # the workers are being spawned, importing
    os.killpg(process.pid, signal.SIGINT)
    _assert_interrupted_cleanly(process)


def test_a_second_ctrl_c_while_the_pool_winds_down_ends_the_program(tmp_path):
    """Interrupted, the executor's shutdown left its workers waiting for work and the interpreter's exit
    waiting for them, for ever: the second Ctrl-C is taken once the chunks under way end."""
    process = _start_sleeping_pool(tmp_path, 1.5)
    time.sleep(2.5)  # the workers are up and sleeping
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGINT)
    _assert_interrupted_cleanly(process)
    assert _wait_until_gone(process.pid, 10) == []


def test_workers_end_with_their_parent(tmp_path):
    """Deaf to SIGTERM, workers whose parent was killed outright (SIGKILL, the out-of-memory killer) would
    wait for work for ever."""
    process = _start_script(tmp_path, """
        import time
        from tgfr.data.worker_pool import WorkerPool

        if __name__ == "__main__":
            with WorkerPool(2) as pool:
                print("started", flush=True)
                pool.map(time.sleep, [60, 60])
    """)
    time.sleep(2.5)  # the workers are up and sleeping
    assert len(_group_alive(process.pid)) >= 3  # the parent, its workers (and the resource tracker)
    process.kill()
    process.wait()
    left = _wait_until_gone(process.pid, 15)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == []


def test_interruptions_held_back_by_a_pool_are_raised_once_it_ends_the_last_one_received():
    """A Ctrl-C and then a SIGTERM (a scheduler stopping the job) during the pool's shutdown: once it ends, the
    SIGTERM is raised, as the last one received, and only then."""
    import signal

    from tgfr.interruptions import interruptions_deferred

    seen = []
    previous = {signum: signal.signal(signum, lambda signum, frame: seen.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with interruptions_deferred():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGTERM)
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_an_interruption_during_a_submission_is_raised_once_the_submission_ends(monkeypatch):
    """Raised inside the executor's submit (between a worker's start and its record, say), the interruption
    would leave the executor's state half changed; it is taken once submit returns."""
    submissions = []
    # Ctrl-C at Python's default handler: a test run started in the background of a shell ignores SIGINT.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with WorkerPool(1) as pool:
            submit = pool._executor.submit

            def interrupted_submit(*arguments, **options):
                # From another thread, as a Ctrl-C reaches a process: this one blocks it while it submits.
                sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT))
                sender.start()
                sender.join()
                time.sleep(0.05)  # where the main thread would take it
                submissions.append("ended")
                return submit(*arguments, **options)

            monkeypatch.setattr(pool._executor, "submit", interrupted_submit)
            with pytest.raises(KeyboardInterrupt):
                pool.map(abs, [1, 2, 3])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert submissions == ["ended"]
