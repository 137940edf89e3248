"""tgfr.memory measures the peak memory of the code it runs, whatever its caller holds."""

import pytest
import torch

from tgfr.memory import measure_peak_rss_rise

ALLOCATION_BYTES = 300 * 2**20
SETUP = "import torch"
RUN = f"block = torch.ones({ALLOCATION_BYTES // 4}); del block"


def _assert_measures_the_allocation():
    measured = measure_peak_rss_rise(SETUP, RUN)
    assert 0.9 * ALLOCATION_BYTES < measured.rise_bytes < 1.3 * ALLOCATION_BYTES, measured
    assert measured.seconds > 0


def test_an_allocation_in_run_is_measured():
    _assert_measures_the_allocation()


def test_the_callers_memory_does_not_hide_the_childs_peak():
    # Linux hands ru_maxrss down across fork and exec: measured that way, a child of a process that
    # has held 1 GiB reports a 1 GiB baseline and no rise for a 300 MiB allocation.
    held = torch.ones(2**28)  # 1 GiB, touched
    try:
        _assert_measures_the_allocation()
    finally:
        del held


def test_setup_peaks_are_not_counted():
    setup = "import torch\ntransient = torch.ones(2**27); del transient  # 512 MiB, freed"
    measured = measure_peak_rss_rise(setup, RUN)
    assert measured.rise_bytes < 1.3 * ALLOCATION_BYTES, measured


def test_a_failing_child_raises_with_its_error():
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        measure_peak_rss_rise(SETUP, "1 / 0")
