"""Worker-to-master events over a pipe: one JSON array per line; and the
master's one message the other way: attempts lost with a worker, per message.

Only rare events go through the pipe; what changes with every task (the task
running, the counts) is in the worker's shared-memory record (worker_record.py).

The master owns all state (metrics, readiness, status), so nothing is shared
on disk between processes and a dead worker leaves nothing behind. A write of
less than PIPE_BUF bytes to a pipe is atomic, so threads may share the fd.
"""

import json
import os
import threading

# Events a worker sends, each with its fields:
CONNECTED = "connected"        # -
DISCONNECTED = "disconnected"  # reason
CONSUMING = "consuming"        # -
LOST_QUERY = "lost?"           # key: how many attempts of this message died with a worker?
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


def send_lost_attempts(fd: int, key: str, count: int) -> None:
    """Master side, non-blocking: a worker too wedged to read misses the update."""
    try:
        os.write(fd, json.dumps([key, count]).encode() + b"\n")
    except (BlockingIOError, BrokenPipeError):
        pass


class LostAttempts:
    """Worker side: the master's counts of attempts lost with a worker, per
    message key, kept current by a thread that reads the master's pipe."""

    def __init__(self, fd: int, known: dict):
        self._counts = dict(known)
        self._answered = set()
        self._changed = threading.Condition()
        threading.Thread(target=self._follow, args=(fd,), name="master-link", daemon=True).start()

    def _follow(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as stream:
            for line in stream:
                key, count = json.loads(line)
                with self._changed:
                    self._counts[key] = count
                    self._answered.add(key)
                    self._changed.notify_all()

    def get(self, key: str) -> int:
        return self._counts.get(key, 0)

    def ask(self, key: str, reporter: Reporter, timeout: float) -> int:
        """Ask the master (which answers after reaping every dead worker), so a
        redelivery that races the master's news of a death is still counted."""
        with self._changed:
            self._answered.discard(key)
            if reporter.send(LOST_QUERY, key=key):
                self._changed.wait_for(lambda: key in self._answered, timeout)
            self._answered.discard(key)
            return self._counts.get(key, 0)
