"""The console's dead-letter work, done by a short-lived child process.

Dead letters live on the broker, and the master's loop must never wait on
it. So each piece of work (read the queues, replay, purge) is a child forked
for it, as `wqd dead` would run (dead_letters.py, the same semantics and
counts), which writes one JSON answer to a pipe and exits. The master reads
the pipe when it is readable, keeps the last reading of the queues (at most
MAX_LETTERS letters, each body cut at MAX_BODY bytes) and the last RESULTS
answers, and the pages show them. One child at a time, killed past
JOB_TIMEOUT; at most MAX_PENDING jobs wait for it.
"""

import base64
import collections
import itertools
import json
import logging
import os
import signal
import time

from setproctitle import setproctitle

from wqd import errors, logs
from wqd.broker import dead_letter_actions
from wqd.broker.dead_letters import DeadLetterQueues, pools_with_dead_letters, text
from wqd.master import children

log = logging.getLogger("wqd.console")

MAX_LETTERS = 500
MAX_BODY = 8 * 1024
MAX_ANSWER = 16 * 1024 * 1024  # bytes read from a child; past it, its answer is dropped
RESULTS = 20
MAX_PENDING = 8
JOB_TIMEOUT = 60.0
PROPERTIES = ("message_id", "correlation_id", "content_type", "content_encoding", "timestamp", "type", "app_id",
              "priority", "delivery_mode", "expiration", "reply_to", "user_id")


class Job:
    def __init__(self, number: int, kind: str, who: str = "", **fields):
        self.number, self.kind, self.who, self.fields = number, kind, who, fields
        self.ok = None  # True / False once done
        self.summary = ""
        self.lines = []

    def describe(self) -> str:
        shown = {name: value for name, value in self.fields.items() if value not in (None, [], False, "")}
        return f"{self.kind} {json.dumps(shown, ensure_ascii=False)}" if shown else self.kind


class DeadWork:
    """Master side: every method returns at once."""

    def __init__(self, config, on_done):
        """``on_done(job)`` runs in the master when a replay or purge ended (audit, metrics)."""
        self.config = config
        self._on_done = on_done
        self._numbers = itertools.count(1)
        self.pending = collections.deque()
        self.running = None  # (Job, pid, read fd, deadline)
        self._answer = bytearray()
        self.letters = None  # the last reading: [letter dict], or None before the first
        self.read_at = None  # time.time() of that reading
        self.read_error = None
        self.results = collections.deque(maxlen=RESULTS)

    def browse_soon(self, max_age: float) -> None:
        """Read the queues again if the last reading is older than ``max_age`` s and none is under way."""
        if any(job.kind == "browse" for job in self.jobs()):
            return
        if self.read_at is None or time.time() - self.read_at > max_age:
            self.pending.append(Job(next(self._numbers), "browse"))

    def submit(self, kind: str, who: str, **fields) -> Job:
        """Queue a replay or purge; raise errors.WqdError when too many wait."""
        if len(self.pending) >= MAX_PENDING:
            raise errors.WqdError(f"{MAX_PENDING} dead-letter jobs are already waiting; try again when they are done")
        job = Job(next(self._numbers), kind, who, **fields)
        self.pending.append(job)
        return job

    def jobs(self) -> list:
        """The job under way and those waiting."""
        return ([self.running[0]] if self.running else []) + list(self.pending)

    def tick(self, now: float, close_inherited) -> None:
        if self.running is None and self.pending:
            self._spawn(self.pending.popleft(), close_inherited)
        elif self.running is not None and now > self.running[3]:
            self.read()  # it may have just answered
            if self.running is not None:
                log.warning("Console: the dead-letter %s job did not end within %.0f s; killing it.",
                            self.running[0].kind, JOB_TIMEOUT)
                _kill(self.running[1], signal.SIGKILL)  # its answer ends (cut) when the pipe closes

    def fileno(self):
        return self.running[2] if self.running and self.running[2] is not None else None

    def read(self) -> None:
        """The pipe is readable: take what the child wrote; at its end (the
        child exited: the master's loop reaps it), the job is done."""
        fd = self.fileno()
        if fd is None:
            return
        try:
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                self._answer += chunk
                if len(self._answer) > MAX_ANSWER:
                    self._answer = bytearray(b'{"error": "its answer was too large to keep"}')
                    _kill(self.running[1], signal.SIGKILL)
                    break
        except BlockingIOError:
            return
        self._close_pipe()
        job, self.running = self.running[0], None
        try:
            answer = json.loads(bytes(self._answer))
        except ValueError:
            answer = {"error": "the child ended without an answer (killed, or it failed: see the log)"}
        self._answer = bytearray()
        self._finish(job, answer)

    def close_in_child(self) -> None:
        self._close_pipe()

    def close(self) -> None:
        """The master exits: the child must not outlive it."""
        if self.running is not None:
            _kill(self.running[1], signal.SIGKILL)
            try:
                os.waitpid(self.running[1], 0)
            except ChildProcessError:
                pass  # the master's loop reaped it already
            self._close_pipe()
            self.running = None

    def _finish(self, job: Job, answer: dict) -> None:
        job.ok = "error" not in answer
        job.summary = answer.get("error") or answer.get("summary", "")
        job.lines = answer.get("lines", [])[:200]
        if job.kind == "browse":
            self.read_at = time.time()
            self.read_error = answer.get("error")
            if job.ok:
                self.letters = answer["letters"]
            return
        self.results.appendleft(job)
        self._on_done(job)
        self.browse_soon(0)

    def _spawn(self, job: Job, close_inherited) -> None:
        def child_main(answer_fd: int, _) -> int:
            setproctitle(f"wqd: console {job.kind}")
            logs.set_process_name(f"console {job.kind}")
            view = memoryview(json.dumps(_do(self.config, job)).encode())  # ASCII: \u escapes for the rest
            while view:
                view = view[os.write(answer_fd, view):]
            return 0

        pid, read_fd, _ = children.fork_with_pipes(child_main, f"Console {job.kind}", close_inherited)
        self.running = (job, pid, read_fd, time.monotonic() + JOB_TIMEOUT)

    def _close_pipe(self) -> None:
        if self.running is not None and self.running[2] is not None:
            os.close(self.running[2])
            self.running = self.running[:2] + (None,) + self.running[3:]


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# -- the child --


def _do(config, job: Job) -> dict:
    try:
        pools = pools_with_dead_letters(config, job.fields.get("pool") or None)
        with DeadLetterQueues(config) as queues:
            if job.kind == "browse":
                return {"letters": _browse(queues, pools)}
            if job.kind == "replay":
                return _replay(queues, pools, job.fields)
            return _purge(queues, pools, job.fields)
    except errors.WqdError as exc:
        return {"error": str(exc)}


def _browse(queues, pools) -> list:
    letters, now = [], time.time()
    for pool in pools:
        for letter in queues.browse(pool, limit=MAX_LETTERS - len(letters)):
            letters.append(_letter(letter, now))
    return letters


def _letter(letter, now: float) -> dict:
    shown = letter.summary(now)
    shown["failed_epoch"] = letter.failed_at
    shown["properties"] = {name: text(getattr(letter.properties, name)) for name in PROPERTIES
                           if getattr(letter.properties, name) is not None}
    shown["headers"] = sorted([text(name), text(value)] for name, value in letter.headers.items())
    shown["body"] = base64.b64encode(letter.body[:MAX_BODY]).decode()
    return shown


def _replay(queues, pools, fields: dict) -> dict:
    """`wqd dead replay` IDs / --exception / --all, with its lines and counts."""
    lines = []
    replayed = dead_letter_actions.replay(queues, pools, fields.get("ids") or [], fields.get("exceptions") or [],
                                          None, lines.append)
    error = replayed.error(pools)
    if error is not None:
        return {"error": str(error), "lines": lines}
    return {"summary": f"Replayed {dead_letter_actions.messages(replayed.count)}.", "lines": lines,
            "count": replayed.count}


def _purge(queues, pools, fields: dict) -> dict:
    """`wqd dead purge --yes [--older-than S]`."""
    deleted = dead_letter_actions.purge(queues, pools, fields.get("older_than"))
    return {"summary": dead_letter_actions.purged(deleted), "count": deleted}
