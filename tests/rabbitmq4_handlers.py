"""Handlers of tests/test_rabbitmq4.py, run inside wqd workers. Each records
its runs as tests/handlers.py does (the test reads them with Wqd.records)."""

import os
import time

from handlers import _record

import wqd


def die_then_fail_then_succeed(message: wqd.Message) -> None:
    """Attempt 1 kills its worker, attempt 2 raises, attempt 3 and later succeed."""
    _record("start", message, id=message.text, headers=_broker_headers(message))
    if message.attempt == 1:
        os._exit(3)
    if message.attempt == 2:
        raise RuntimeError("second attempt fails")
    _record("end", message, id=message.text)


def long_on_first_delivery(message: wqd.Message) -> None:
    """Runs 8 s (longer than test_rabbitmq4's consumer_timeout of 3 s, checked
    every 0.5 s) unless it is a redelivery, which ends at once."""
    _record("start", message, id=message.text)
    if not message.redelivered:
        time.sleep(8)
    _record("end", message, id=message.text)


def _broker_headers(message: wqd.Message) -> dict:
    headers = message.properties.headers or {}
    return {name: str(value) for name, value in headers.items() if not name.startswith("x-wqd-")}
