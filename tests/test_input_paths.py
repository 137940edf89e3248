import os
import signal
import socket

import pytest

from tgfr.data.files import load_image, read_text_file
from tgfr.input_paths import file_problem


def test_file_problem_tells_each_kind_of_path_apart(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    (tmp_path / "link_to_file").symlink_to(tmp_path / "file")
    (tmp_path / "broken").symlink_to(tmp_path / "gone")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")  # a loop of two links
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    os.mkfifo(tmp_path / "pipe")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "socket"))
        found = {name: file_problem(tmp_path / name)
                 for name in ("file", "link_to_file", "missing", "file/child", "folder", "broken", "loop", "loop_a",
                              "pipe", "socket")}
    assert found == {
        "file": None, "link_to_file": None, "missing": "does not exist", "folder": "is a folder, not a file",
        "file/child": "does not exist",  # ENOTDIR, not "cannot be reached (Not a directory)"
        "broken": f"is a broken symbolic link (to {tmp_path / 'gone'})",
        "loop": f"is a broken symbolic link (to {tmp_path / 'loop'})",
        "loop_a": f"is a broken symbolic link (to {tmp_path / 'loop_b'})",
        "pipe": "is not a regular file (a pipe, socket or device)",
        "socket": "is not a regular file (a pipe, socket or device)",
    }


def test_a_pipe_where_an_image_or_a_text_file_is_expected_is_refused_without_waiting_for_a_writer(tmp_path):
    """Opening a pipe for reading waits for a writer: the error must come from the check, not the open,
    which the alarm would interrupt (failing the test rather than hanging it)."""
    os.mkfifo(tmp_path / "face.png")

    def waited(signum, frame):
        raise TimeoutError("the pipe was opened and waited for a writer")

    previous = signal.signal(signal.SIGALRM, waited)
    signal.alarm(30)
    try:
        with pytest.raises(ValueError, match=r"^image file .*face\.png is not a regular file"):
            load_image(tmp_path / "face.png")
        with pytest.raises(ValueError, match=r"^caption file .*face\.png is not a regular file"):
            read_text_file(tmp_path / "face.png", "caption file")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
