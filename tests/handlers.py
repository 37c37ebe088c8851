"""Handlers the test suite runs inside wqd workers.

Each task body is JSON: {"id": ..., "sleep": seconds, "action": ...}. Every
run is recorded as JSON lines in $WQD_TEST_RECORD ("start" and "end" events
with pid and time), so a test can see which worker ran what, when, and how
often. O_APPEND writes of one short line are atomic across processes.
"""

import ctypes
import json
import os
import signal
import sys
import time

import wqd

_hoard = []  # memory a "grow" task keeps, to cross max_memory_per_child


def _record(event: str, message: wqd.Message, **extra) -> None:
    entry = {"event": event, "pid": os.getpid(), "worker": message.worker, "t": time.time(),
             "body": message.text, "attempt": message.attempt, "redelivered": message.redelivered,
             "message_id": message.message_id, "delivery_mode": message.properties.delivery_mode}
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
    _spin(spec.get("spin", 0))
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


def _spin(seconds: float) -> None:
    """Run Python for ``seconds``: a handler that computes (it gives up the GIL every 5 ms)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sum(range(1000))


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


# -- hostile handlers and messages (tests/test_hostile_messages.py) --


async def _coroutine_body(message: wqd.Message) -> None:
    _record("end", message, id="coroutine body ran")


def returns_coroutine(message: wqd.Message):
    """A plain function that hands back an un-awaited coroutine (its body never runs)."""
    return _coroutine_body(message)


def returns_generator(message: wqd.Message):
    """A plain function that hands back an un-iterated generator."""
    def body():
        _record("end", message, id="generator body ran")
        yield
    return body()


def kill_on_boom(message: wqd.Message) -> None:
    """SIGKILLs its own worker for the body "boom" while $WQD_TEST_FLAG exists;
    otherwise records the run (a JSON body's id, else the text)."""
    _record("start", message, id=message.text)
    if message.body == b"boom" and os.path.exists(os.environ["WQD_TEST_FLAG"]):
        os.kill(os.getpid(), 9)
    _record("end", message, id=message.text)


def fail_always(message: wqd.Message) -> None:
    _record("start", message, id=message.message_id)
    raise RuntimeError("failed on purpose")


# -- duplicate suppression (tests/test_deduplication.py) --


def settle_and_die(message: wqd.Message) -> None:
    """On a first delivery, SIGKILLs its own worker at the moment wqd calls the
    pika method named by the body's "die_at" (basic_ack: the handler returned
    and wqd recorded it, but the ack never left; basic_publish: a retry copy
    not yet sent); with "fail", the handler raises first. A profile hook on
    the consumer thread finds the call: no hook in wqd itself."""
    spec = message.json()
    _record("start", message, id=spec["id"])
    if not message.redelivered and message.attempt == 1:
        def die_at_call(frame, event, arg):
            if event == "call" and frame.f_code.co_name == spec["die_at"] and "pika" in frame.f_code.co_filename:
                os.kill(os.getpid(), signal.SIGKILL)
        sys.setprofile(die_at_call)
    time.sleep(spec.get("sleep", 0))
    if spec.get("fail") and message.attempt == 1:
        raise RuntimeError("failed on purpose on the first attempt")
    _record("end", message, id=spec["id"])


# -- stalled workers (tests/test_stalled_workers.py) --


def hang_on_first_delivery(message: wqd.Message) -> None:
    """On a first delivery, hangs for an hour: the body "gil" in a C call that
    holds the GIL (libc's sleep through ctypes.PyDLL), any other body in
    time.sleep (the test SIGSTOPs the worker meanwhile). A redelivery runs at once."""
    _record("start", message, id=message.text)
    if not message.redelivered:
        if message.body == b"gil":
            ctypes.PyDLL(None).sleep(3600)
        else:
            time.sleep(3600)
    _record("end", message, id=message.text)
