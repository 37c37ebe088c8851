#!/usr/bin/env python3
"""A persistent exec handler for tests/test_exec_handlers.py: one JSON request
per line on stdin, one JSON answer per line on stdout. The body is an action
("ok", "error", "reject", "die", "hang", "noise", "env"); every request is recorded
in $WQD_TEST_RECORD with this process's pid."""

import base64
import json
import os
import subprocess
import sys
import time


def record(event, request, **extra):
    entry = {"event": event, "id": request["message_id"], "pid": os.getpid(), "attempt": request["attempt"],
             "t": time.time(), **extra}
    with open(os.environ["WQD_TEST_RECORD"], "a") as stream:
        stream.write(json.dumps(entry) + "\n")


def answer(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


for line in sys.stdin:
    request = json.loads(line)
    body = request["body"] if request["encoding"] == "utf-8" else base64.b64decode(request["body"]).decode("utf-8", "replace")
    action, _, argument = body.partition(" ")
    record("start", request, encoding=request["encoding"], headers=request["headers"], body=body,
           pool=request["pool"], queue=request["queue"])
    if action == "error":
        print("about to fail", file=sys.stderr, flush=True)
        answer(status="error", reason=f"task {request['message_id']} failed on purpose")
        continue
    if action == "reject":
        answer(status="reject", reason="cannot ever process this")
        continue
    if action == "die":
        sys.exit(int(argument or 3))
    if action == "hang":
        child = subprocess.Popen(["sleep", "600"])
        record("child", request, child=child.pid)
        time.sleep(600)
    if action == "env":  # its environment, as the lines `env` prints
        with open(os.path.join(os.path.dirname(os.environ["WQD_TEST_RECORD"]), "env-" + request["message_id"]), "w") as dump:
            dump.writelines(f"{name}={value}\n" for name, value in os.environ.items())
    if action == "noise":
        print("a line of output on stdout", flush=True)
        for number in range(int(argument or 10)):
            print(f"stderr line {number}", file=sys.stderr, flush=True)
    record("end", request)
    answer(status="ok")
