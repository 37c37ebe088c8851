"""Exponential backoff arithmetic, shared by respawns and reconnects."""

import random


def exponential(failures: int, initial: float, maximum: float, jitter: float = 0.0) -> float:
    """Delay after ``failures`` consecutive failures (1-based): initial * 2^(n-1), capped.

    ``jitter`` takes up to that fraction off, so many workers that lost the
    same broker do not reconnect in lockstep.
    """
    if failures < 1:
        return 0.0
    delay = min(maximum, initial * 2 ** min(failures - 1, 32))
    return delay * (1 - jitter * random.random())
