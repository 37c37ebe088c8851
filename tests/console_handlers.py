"""Handlers the console's tests run inside wqd workers (tests/test_console*.py).

Both record their runs as tests/handlers.py does ($WQD_TEST_RECORD)."""

import os
import time

from handlers import _record

import wqd

HOLD_LIMIT = 120.0  # a held task gives up after this long, whatever the test does


def held(message: wqd.Message) -> None:
    """Runs until the file named by its body exists: a worker busy with a task for as long as the test wants."""
    _record("start", message, id=message.message_id)
    deadline = time.monotonic() + HOLD_LIMIT
    while not os.path.exists(message.text) and time.monotonic() < deadline:
        time.sleep(0.05)
    _record("end", message, id=message.message_id)


def fails_until_replayed(message: wqd.Message) -> None:
    """Dead-letters a first attempt (ValueError, the body as its text); runs a replayed copy."""
    _record("start", message, id=message.message_id)
    if "x-wqd-replays" not in message.headers:
        raise ValueError(f"cannot do {message.text}")
    _record("end", message, id=message.message_id)
