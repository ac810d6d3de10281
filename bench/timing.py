"""Timing helpers: time-boxed sampling and interleaved comparison with a baseline.

A benchmark and its baseline are measured in alternating batches of the same run,
so a noisy neighbour or a CPU frequency change hits both alike and the ratio holds.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p95(xs: list[float]) -> float:
    """Nearest-rank 95th percentile (an observed value, no interpolation)."""
    ordered = sorted(xs)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Keep the cyclic collector out of timed sections (it runs between them)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def batch_time(fn: Callable[[], object], reps: int) -> float:
    """Seconds per call of fn over one batch of reps calls."""
    with gc_paused():
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps


def interleaved(
    fns: dict[str, Callable[[], object]],
    budget_s: float,
    target_batch_s: float = 0.02,
    min_rounds: int = 5,
    max_rounds: int = 500,
) -> dict[str, list[float]]:
    """Per-call times of each fn, one batch of each per round, rounds until budget_s.

    Each fn's batch size is chosen once so a batch lasts about target_batch_s;
    the lists hold one per-call time per round.
    """
    reps: dict[str, int] = {}
    for name, fn in fns.items():
        fn()  # warm up caches and lazy imports outside the measurement
        once = batch_time(fn, 1)
        reps[name] = max(1, min(10_000, int(target_batch_s / max(once, 1e-7))))
    out: dict[str, list[float]] = {name: [] for name in fns}
    deadline = time.perf_counter() + budget_s
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() < deadline and rounds < max_rounds):
        for name, fn in fns.items():
            out[name].append(batch_time(fn, reps[name]))
        rounds += 1
    return out


def keep_going(start: float, budget_s: float, count: int, min_n: int, max_n: int) -> bool:
    """Whether a time-boxed sampling loop should take another sample."""
    if count < min_n:
        return True
    return count < max_n and time.perf_counter() - start < budget_s
