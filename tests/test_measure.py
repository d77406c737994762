"""Timing and peak memory helpers shared by the pages and the benchmarks (tutorials_pkg.measure)."""

import pytest
import torch

from tutorials_pkg.measure import (
    median_seconds,
    median_seconds_each,
    peak_memory_bytes,
    seconds_each,
)


def test_median_seconds():
    calls = []
    assert median_seconds(lambda: calls.append(1), repeats=3) >= 0
    assert len(calls) == 4  # one warm-up
    with pytest.raises(ValueError, match="at least 1"):
        median_seconds(lambda: None, repeats=0)


def test_median_seconds_each_takes_turns():
    order = []
    times = median_seconds_each([lambda: order.append("a"), lambda: order.append("b")], repeats=2)
    assert order == ["a", "b"] * 3  # a warm-up round, then two rounds
    assert len(times) == 2 and all(t >= 0 for t in times)


def test_peak_memory_counts_what_is_alive_at_once(device):
    n = 2**20  # 4 MiB of float32

    def three_alive():
        a = torch.ones(n, device=device)
        b = torch.ones(n, device=device)
        return a + b  # a, b and the sum at once

    def one_at_a_time():
        for _ in range(3):
            torch.ones(n, device=device)

    size = 4 * n
    assert 3 * size <= peak_memory_bytes(three_alive, device) < 3 * size + 2**20
    assert size <= peak_memory_bytes(one_at_a_time, device) < 2 * size


def test_before_runs_untimed_before_every_timed_run():
    events = []
    times = seconds_each([lambda: events.append("run")], repeats=2, before=lambda: events.append("before"))
    assert events == ["run", "before", "run", "before", "run"]  # warm-up without before
    assert len(times) == 1 and len(times[0]) == 2
