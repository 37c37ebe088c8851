"""Worker-to-master events over a pipe: one JSON array per line. (The other
way, the master sends only counts of attempts lost with a worker: lost_attempts.py.)

Only rare events go through the pipe; what changes with every task (the task
running, the counts) is in the worker's shared-memory record (worker_record.py).

The master owns all state (metrics, readiness, status), so nothing is shared
on disk between processes and a dead worker leaves nothing behind. A write of
less than PIPE_BUF bytes to a pipe is atomic, so threads may share the fd.
"""

import json
import os

# Events a worker sends, each with its fields (and lost_attempts.QUERY, with key):
CONNECTED = "connected"        # -
DISCONNECTED = "disconnected"  # reason
CONSUMING = "consuming"        # -
RECYCLING = "recycling"        # reason
FATAL = "fatal"                # error: a configuration problem; do not restart


class Reporter:
    """Worker side. A vanished master makes ``send`` return False."""

    def __init__(self, fd: int):
        self.fd = fd

    def send(self, event: str, **fields) -> bool:
        line = json.dumps([event, fields], separators=(",", ":")).encode() + b"\n"
        try:
            os.write(self.fd, line)
        except (BrokenPipeError, OSError):
            return False
        return True


class EventReader:
    """Master side: reassembles lines from non-blocking reads of one pipe."""

    def __init__(self, fd: int):
        self.fd = fd
        self._partial = b""

    def read(self):
        """Return (events, eof). Never blocks."""
        chunks, eof = [], False
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
        data = self._partial + b"".join(chunks)
        *lines, self._partial = data.split(b"\n")
        events = []
        for line in lines:
            try:
                event, fields = json.loads(line)
            except ValueError:
                continue
            events.append((event, fields))
        return events, eof
