"""The handler the deployment tests run in the installed daemon.

It says what it does on stdout, which the journal (systemd) or `docker logs`
keeps: under the unit's hardening nothing else it could write outlives a
restart, and neither needs a file shared with the test. Body: JSON
{"id": ..., "sleep": seconds}. Each line: "deploy-task {json}".
"""

import json
import os
import time

import wqd

MARK = "deploy-task "


def task(message: wqd.Message) -> None:
    spec = message.json()
    _say("start", message, spec)
    time.sleep(spec.get("sleep", 0))
    _say("end", message, spec)


def _say(event: str, message: wqd.Message, spec: dict) -> None:
    entry = {"event": event, "id": spec["id"], "pid": os.getpid(), "redelivered": message.redelivered}
    print(MARK + json.dumps(entry), flush=True)


def records(lines) -> list:
    """The entries of the lines this handler printed, among any others."""
    return [json.loads(line[line.index(MARK) + len(MARK):]) for line in lines if MARK in line]
