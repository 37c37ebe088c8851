"""Handlers the test suite runs inside wqd workers.

Each task body is JSON: {"id": ..., "sleep": seconds, "action": ...}. Every
run is recorded as JSON lines in $WQD_TEST_RECORD ("start" and "end" events
with pid and time), so a test can see which worker ran what, when, and how
often. O_APPEND writes of one short line are atomic across processes.
"""

import json
import os
import signal
import time

import wqd

_hoard = []  # memory a "grow" task keeps, to cross max_memory_per_child


def _record(event: str, message: wqd.Message, **extra) -> None:
    entry = {"event": event, "pid": os.getpid(), "worker": message.worker, "t": time.time(),
             "body": message.text, "attempt": message.attempt, "redelivered": message.redelivered}
    entry.update(extra)
    fd = os.open(os.environ["WQD_TEST_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def task(message: wqd.Message) -> None:
    spec = message.json()
    _record("start", message, id=spec.get("id"))
    time.sleep(spec.get("sleep", 0))
    action = spec.get("action")
    if action == "fail":
        raise RuntimeError(f"task {spec.get('id')} failed on purpose")
    if action == "reject":
        raise wqd.Reject("not a task we can ever do")
    if action == "exit":
        os._exit(3)
    if action == "grow":
        _hoard.append(bytearray(spec["mib"] * 1024 * 1024))
    _record("end", message, id=spec.get("id"))


def exit_on_first_delivery(message: wqd.Message) -> None:
    """Ends its own worker with os._exit(0) in the middle of the task, except on a redelivery."""
    _record("start", message, id=message.text)
    if not message.redelivered:
        os._exit(0)
    _record("end", message, id=message.text)


def stop_own_worker(message: wqd.Message) -> None:
    """Sends its own worker SIGTERM, then returns: the worker acks the task and exits 0, unasked by wqd."""
    _record("start", message, id=message.text)
    os.kill(os.getpid(), signal.SIGTERM)
    _record("end", message, id=message.text)
