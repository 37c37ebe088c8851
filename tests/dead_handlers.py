"""A handler with a bug that an operator fixes: while the file named by
$WQD_TEST_BROKEN exists, each task raises the exception its body names
({"id": ..., "raise": "KeyError"}), or ends its worker ("raise": "exit"); once the file is gone every task succeeds.
Runs are recorded like handlers.task's ("start"/"end" events)."""

import os

from handlers import _record

import wqd

EXCEPTIONS = {"ValueError": ValueError, "KeyError": KeyError, "ZeroDivisionError": ZeroDivisionError}


def task(message: wqd.Message) -> None:
    spec = message.json()
    _record("start", message, id=spec["id"])
    if os.path.exists(os.environ["WQD_TEST_BROKEN"]) and spec.get("raise") == "exit":
        os._exit(3)
    if os.path.exists(os.environ["WQD_TEST_BROKEN"]) and spec.get("raise"):
        raise EXCEPTIONS[spec["raise"]](f"task {spec['id']} hit the bug")
    _record("end", message, id=spec["id"])
