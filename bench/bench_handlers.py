"""Handlers for bench/run.py (it puts bench/ on the workers' PYTHONPATH)."""

import os
import time

from latency_record import record


def hold(message) -> None:
    """Record when and where the task started, then hold it.

    The body is "LABEL SECONDS". One line per start goes to $WQD_BENCH_RECORD:
    "MONOTONIC PID LABEL REDELIVERED" (CLOCK_MONOTONIC is system-wide, so the
    benchmark compares it with its own clock). A redelivered task is not held,
    so the worker that takes over a killed worker's task is free again at once.
    """
    label, seconds = message.text.split()
    line = f"{time.monotonic():.6f} {os.getpid()} {label} {int(message.redelivered)}\n"
    fd = os.open(os.environ["WQD_BENCH_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    if not message.redelivered:
        time.sleep(float(seconds))


def stamp(message) -> None:
    """The pickup-latency handler: the body is the publisher's monotonic time
    (bench/latency_record.py)."""
    record(message.body)


def started(message) -> None:
    """bench/outbox.py's handler: "MESSAGE_ID MONOTONIC" when the task started,
    to $WQD_BENCH_LATENCY (the benchmark knows when each row's transaction committed)."""
    line = f"{message.message_id} {time.monotonic():.6f}\n"
    fd = os.open(os.environ["WQD_BENCH_LATENCY"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
