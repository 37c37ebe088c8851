#!/usr/bin/env python3
"""A persistent exec handler for tests/test_exec_handlers.py: one JSON request
per line on stdin, one JSON answer per line on stdout, echoing the request's
id. The body is an action ("ok", "error", "reject", "die", "hang", "noise",
"env", or one that breaks the protocol: "twice", "error-then-ok",
"wrong-id", "no-id", "garbage", "deep", "long"); every request is recorded in
$WQD_TEST_RECORD with this process's pid."""

import array
import base64
import fcntl
import json
import os
import subprocess
import sys
import termios
import time


def record(event, request, **extra):
    entry = {"event": event, "id": request["message_id"], "pid": os.getpid(), "attempt": request["attempt"],
             "t": time.time(), **extra}
    with open(os.environ["WQD_TEST_RECORD"], "a") as stream:
        stream.write(json.dumps(entry) + "\n")


def answer(request, **fields):
    sys.stdout.write(json.dumps({"id": request["id"], **fields}) + "\n")
    sys.stdout.flush()


def wait_read(timeout=30.0):
    """Whether wqd read everything written on stdout within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    unread = array.array("i", [1])
    while time.monotonic() < deadline:
        fcntl.ioctl(sys.stdout.fileno(), termios.FIONREAD, unread)
        if unread[0] == 0:
            return True
        time.sleep(0.001)
    return False


# Answers that break the protocol, each written at once (one write, so wqd
# reads the whole of it together).
BROKEN = {
    "twice": lambda request: (json.dumps({"id": request["id"], "status": "error", "reason": "first"}) + "\n"
                              + json.dumps({"id": request["id"], "status": "ok"}) + "\n"),
    "wrong-id": lambda request: json.dumps({"id": request["id"][::-1], "status": "ok"}) + "\n",
    "no-id": lambda request: json.dumps({"status": "ok"}) + "\n",
    "garbage": lambda request: '{"id": "' + request["id"] + '", "status": "ok"\n',
    "deep": lambda request: '{"id": "' + request["id"] + '", "status": "ok", "reason": ' + "[" * 50000 + "\n",
    "long": lambda request: json.dumps({"id": request["id"], "status": "ok", "reason": "x" * 70000}) + "\n",
}


for line in sys.stdin:
    request = json.loads(line)
    body = request["body"] if request["encoding"] == "utf-8" else base64.b64decode(request["body"]).decode("utf-8", "replace")
    action, _, argument = body.partition(" ")
    record("start", request, encoding=request["encoding"], headers=request["headers"], body=body,
           pool=request["pool"], queue=request["queue"])
    if action == "error":
        print("about to fail", file=sys.stderr, flush=True)
        answer(request, status="error", reason=f"task {request['message_id']} failed on purpose")
        continue
    if action == "reject":
        answer(request, status="reject", reason="cannot ever process this")
        continue
    if action in BROKEN:
        sys.stdout.write(BROKEN[action](request))
        sys.stdout.flush()
        continue
    if action == "error-then-ok":  # the answer, and then, once wqd has read it, one too many
        answer(request, status="error", reason="the first answer")
        record("read", request, read=wait_read())
        answer(request, status="ok")
        record("extra", request)
        continue
    if action == "die":
        sys.exit(int(argument or 3))
    if action == "hang":
        child = subprocess.Popen(["sleep", "600"])
        record("child", request, child=child.pid)
        time.sleep(600)
    if action == "env":  # its environment, as the lines `env` prints
        dump_path = os.path.join(os.path.dirname(os.environ["WQD_TEST_RECORD"]), "env-" + request["message_id"])
        with open(dump_path, "w") as dump:
            dump.writelines(f"{name}={value}\n" for name, value in os.environ.items())
    if action == "noise":
        print("a line of output on stdout", flush=True)
        for number in range(int(argument or 10)):
            print(f"stderr line {number}", file=sys.stderr, flush=True)
    record("end", request)
    answer(request, status="ok")
