"""Steady-state images/s of a step function: the one clock both frameworks are read with."""
from __future__ import annotations

import time
from typing import Any, Callable

# The clock is read (and the device synchronised) about this often while timing.
_SYNC_INTERVAL_S = 0.1
_MAX_STEPS_BETWEEN_SYNCS = 100


def no_block(_: Any) -> None:
    return None


def measure_images_per_s(step: Callable[[], Any], images_per_step: int, seconds: float, *,
                         block: Callable[[Any], Any] = no_block, warmup_steps: int = 1,
                         clock: Callable[[], float] = time.perf_counter) -> float:
    """Steady-state images/s of STEP after WARMUP_STEPS calls, over at least SECONDS.

    Steps are dispatched in chunks and BLOCK waits on a chunk's outputs: an asynchronous
    framework keeps its queue full as in a training loop, and the clock still only
    counts finished work. CLOCK (seconds) is replaceable so that tests need no real time.
    """
    for _ in range(warmup_steps):
        block(step())
    start = clock()
    block(step())
    one_step = clock() - start
    chunk = max(1, min(_MAX_STEPS_BETWEEN_SYNCS, int(_SYNC_INTERVAL_S / max(one_step, 1e-9))))
    steps, elapsed = 0, 0.0
    start = clock()
    while elapsed < seconds:
        block([step() for _ in range(chunk)])
        steps += chunk
        elapsed = clock() - start
    return steps * images_per_step / elapsed
