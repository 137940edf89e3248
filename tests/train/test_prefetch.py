"""The background batch maker of the training loop: same items in the same order, errors where
they happen, ahead of the consumer, and a thread that stops and closes its source."""

import threading
import time

import pytest

from tgfr.train.prefetch import Prefetcher


def counting(produced: list[int], stop_at: int | None = None, fail_at: int | None = None, closed: list[bool] | None = None):
    """0, 1, 2, ... (up to stop_at), recording each item as it is made; raises at fail_at."""
    try:
        index = 0
        while stop_at is None or index < stop_at:
            if index == fail_at:
                raise KeyError(f"bad item {index}")
            produced.append(index)
            yield index
            index += 1
    finally:
        if closed is not None:
            closed.append(True)


def wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


@pytest.mark.parametrize("depth", [1, 3])
def test_items_in_order_then_the_end(depth):
    with Prefetcher(counting([], stop_at=7), depth=depth) as stream:
        assert list(stream) == list(range(7))
        with pytest.raises(StopIteration):
            next(stream)


@pytest.mark.parametrize("depth", [1, 2])
def test_runs_ahead_of_the_consumer_by_depth_items(depth):
    produced = []
    with Prefetcher(counting(produced), depth=depth) as stream:
        assert next(stream) == 0
        # While the consumer holds item 0, the thread makes the next `depth` items, and no more: each
        # batch made ahead is memory, and a stop waits for the one being made.
        assert wait_for(lambda: len(produced) >= 1 + depth)
        time.sleep(0.1)
        assert len(produced) == 1 + depth
        assert next(stream) == 1
        assert wait_for(lambda: len(produced) >= 2 + depth)
        time.sleep(0.1)
        assert len(produced) == 2 + depth


def test_an_error_of_the_source_reaches_the_consumer_in_place():
    with Prefetcher(counting([], fail_at=3)) as stream:
        assert [next(stream) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(KeyError, match="bad item 3"):
            next(stream)
        with pytest.raises(StopIteration):
            next(stream)


def test_close_stops_the_thread_and_closes_an_endless_source():
    closed, produced, before = [], [], threading.active_count()
    # Held here, as a DataLoader iterator is by its loader: a source freed with the thread would close anyway.
    source = counting(produced, closed=closed)
    stream = Prefetcher(source)
    assert next(stream) == 0
    assert wait_for(lambda: len(produced) == 2)
    stream.close()
    assert closed == [True] and threading.active_count() == before and len(produced) == 2
    with pytest.raises(StopIteration):
        next(stream)


@pytest.mark.parametrize("depth", [0, -1, 1.5, True])
def test_bad_depth_is_named(depth):
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        Prefetcher(iter([]), depth=depth)
