"""Polling with a deadline, for tests: never a bare sleep."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns a truthy
    value, and return that value. After ``timeout`` seconds raise
    AssertionError with ``message`` (a string, or a callable called at that
    moment so it can describe the current state), plus the last value or
    exception the predicate gave. The predicate is always tried at least once,
    and once more at the deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        at_deadline = time.monotonic() >= deadline
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # e.g. the broker is restarting: keep polling
            last = exc
        if at_deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"{text} (after {timeout:g}s; last result: {last!r})")
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
