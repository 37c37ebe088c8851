"""A command's process, for handlers/exec_handler.py: finding the program,
spawning it in a session of its own with pipes (posix_spawn), moving its
input and output without blocking, logging its output within limits, and
killing its process group.
"""

import collections
import logging
import os
import select
import selectors
import shutil
import signal
import stat
import time
from typing import Callable, Optional

from wqd.config import SECRET_VARIABLES
from wqd.errors import ConfigError

log = logging.getLogger("wqd.exec")

# Longest output line logged; the rest of a longer line is dropped, saying so.
LINE_LIMIT = 4096
# Output lines logged per task; later ones are counted, and the count logged.
LINES_PER_TASK = 100
# Last stderr lines quoted in a failure's reason (each cut to TAIL_LINE_LIMIT).
TAIL_LINES = 5
TAIL_LINE_LIMIT = 200
# After the command exits, how long its pipes are read for what is left in them.
DRAIN_TIMEOUT = 1.0
# Without pidfds, how often a command's exit is looked for.
EXIT_POLL = 0.02
READ_CHUNK = 65536


def locate(command: str) -> str:
    """The absolute path of an executable ``command`` (a path, or a name on PATH)."""
    if not os.path.isabs(command):
        found = shutil.which(command)
        if found is None:
            raise ConfigError(f"command {command!r} is not found on PATH ({os.environ.get('PATH', '')})")
        return os.path.abspath(found)
    try:
        mode = os.stat(command).st_mode
    except OSError as exc:
        raise ConfigError(f"command {command!r}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"command {command!r} is not a file")
    if not os.access(command, os.X_OK):
        raise ConfigError(f"command {command!r} is not executable (mode {stat.filemode(mode)})")
    return command


def inherited_environment() -> dict:
    """wqd's environment less its secrets (config.SECRET_VARIABLES): a command
    works on what publishers sent, and what that makes it do must not be done
    with the broker's password."""
    return {name: value for name, value in os.environ.items() if name not in SECRET_VARIABLES}


class TaskOutput:
    """Splits a command's stdout and stderr into lines and logs them, tagged
    with the task, at most LINES_PER_TASK of them, each cut at LINE_LIMIT;
    keeps the last stderr lines for a failure's reason. Memory is bounded
    by LINE_LIMIT plus one read per stream, whatever the command writes."""

    def __init__(self, task_id: str):
        self.task_id = task_id
        self.logged = 0
        self.omitted = 0
        self.stderr_tail = collections.deque(maxlen=TAIL_LINES)
        self._partial = {"stdout": b"", "stderr": b""}
        self._cut = {"stdout": False, "stderr": False}  # in the middle of a line already cut

    def feed(self, stream: str, data: bytes) -> None:
        if self.logged >= LINES_PER_TASK:
            self._count(stream, self._partial[stream] + data)
            return
        lines = (self._partial[stream] + data).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if self._cut[stream]:  # the end of a line whose start was logged
                self._cut[stream] = False
                continue
            self.line(stream, line)
        if len(rest) > LINE_LIMIT and not self._cut[stream]:
            self.line(stream, rest)
            self._cut[stream], rest = True, b""
        self._partial[stream] = b"" if self._cut[stream] else rest

    def _count(self, stream: str, buffered: bytes) -> None:
        """Past the budget: count the lines without splitting them all (a
        flood of short lines would cost a Python object each), keeping
        stderr's last ones."""
        last_end = buffered.rfind(b"\n")
        if last_end >= 0:
            self.omitted += buffered.count(b"\n", 0, last_end + 1) - self._cut[stream]
            self._cut[stream] = False
            if stream == "stderr":
                for line in buffered[:last_end].rsplit(b"\n", TAIL_LINES)[-TAIL_LINES:]:
                    self.stderr_tail.append(line[:TAIL_LINE_LIMIT].decode("utf-8", "replace").rstrip("\r"))
        rest = buffered[last_end + 1:]
        if len(rest) > LINE_LIMIT and not self._cut[stream]:
            self.omitted += 1
            self._cut[stream], rest = True, b""
        self._partial[stream] = b"" if self._cut[stream] else rest

    def line(self, stream: str, line: bytes) -> None:
        text = line[:LINE_LIMIT].decode("utf-8", "replace").rstrip("\r")
        if len(line) > LINE_LIMIT:
            text += f" [line cut at {LINE_LIMIT} bytes]"
        if stream == "stderr":
            self.stderr_tail.append(text[:TAIL_LINE_LIMIT])
        if self.logged < LINES_PER_TASK:
            self.logged += 1
            log.info("Task %s %s: %s", self.task_id, stream, text)
        else:
            self.omitted += 1

    def finish(self) -> None:
        """Log what is left: an unterminated last line, the count of lines not logged."""
        for stream, rest in self._partial.items():
            if rest:
                self.line(stream, rest)
            self._partial[stream] = b""
        if self.omitted:
            log.info("Task %s: %d more output lines not logged (at most %d per task).",
                     self.task_id, self.omitted, LINES_PER_TASK)
            self.omitted = 0

    def tail(self) -> str:
        """The last stderr lines, for a failure's reason ("" when there were none)."""
        return ("; stderr: " + " | ".join(self.stderr_tail)) if self.stderr_tail else ""


# -- one running command --


# The command starts with every signal's default action and none blocked:
# the worker blocks some (worker.py) and ignores others (children.py), and
# both would be inherited through exec.
_DEFAULT_SIGNALS = frozenset(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}


def spawn(program: str, argv: tuple, env: dict):
    """Start ``program`` in a session of its own with pipes as its stdin,
    stdout and stderr; return (pid, stdin, stdout, stderr) file descriptors.

    posix_spawn (a vfork, about 1 ms) rather than subprocess with a preexec
    function (a full fork of the worker, about 10 ms more per task). The
    command inherits no other descriptor: Python opens its own close-on-exec,
    and any other (from wqd's parent) is made so here first.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and os.get_inheritable(fd):
                os.set_inheritable(fd, False)
        except OSError:  # the descriptor listdir() used, closed since
            pass
    ours, theirs = [], []
    try:
        for _ in range(3):
            read_end, write_end = os.pipe()
            ours.append(read_end)
            theirs.append(write_end)
        ours[0], theirs[0] = theirs[0], ours[0]  # stdin: the command reads, wqd writes
        pid = os.posix_spawn(program, list(argv), env, setsid=True, setsigmask=(), setsigdef=_DEFAULT_SIGNALS,
                             file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(theirs)])
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    return (pid, *ours)


class Command:
    """A started command and its pipes, moved without blocking by one selector,
    with its exit seen through a pidfd (the process stays a zombie until
    ``close``, so its process group id cannot be reused while it is killed).
    Without pidfds (Linux before 5.3) its exit is polled every EXIT_POLL."""

    def __init__(self, program: str, argv: tuple, env: dict):
        self.pid, self._stdin, stdout, stderr = spawn(program, argv, env)
        self.exited = False
        self._selector = selectors.DefaultSelector()
        self._streams = {stdout: "stdout", stderr: "stderr"}
        for fd in (self._stdin, stdout, stderr):
            os.set_blocking(fd, False)
        for fd in self._streams:
            self._selector.register(fd, selectors.EVENT_READ)
        try:
            self._pidfd = os.pidfd_open(self.pid)
            self._selector.register(self._pidfd, selectors.EVENT_READ)
        except (AttributeError, OSError):
            self._pidfd = None

    def exchange(self, data: bytes, on_output: Callable[[str, bytes], None], deadline: Optional[float],
                 until: Callable[[], bool] = lambda: False, close_stdin: bool = False) -> str:
        """Write ``data`` to stdin while passing output to ``on_output(stream,
        bytes)``, until ``until()`` is true ("done"), the command exits
        ("exited") or ``deadline`` passes ("deadline")."""
        pending = memoryview(data)
        stdin = self._stdin
        if pending:
            self._selector.register(stdin, selectors.EVENT_WRITE)
        elif close_stdin:
            self._close_stdin()
        try:
            while not until():
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    return "deadline"
                if self._pidfd is None:
                    timeout = EXIT_POLL if timeout is None else min(timeout, EXIT_POLL)
                    self.running()
                for selected, _ in self._selector.select(timeout):
                    if selected.fd == self._pidfd:
                        self.exited = True
                    elif selected.fd == stdin:
                        pending = self._write(pending)
                        if not pending:
                            self._selector.unregister(stdin)
                            if close_stdin:
                                self._close_stdin()
                    else:
                        self._read(selected.fd, on_output)
                if self.exited:
                    return "done" if until() else "exited"
            return "done"
        finally:
            if pending:
                self._selector.unregister(stdin)

    def _write(self, pending: memoryview) -> memoryview:
        try:
            return pending[os.write(self._stdin, pending[:READ_CHUNK]):]
        except BlockingIOError:
            return pending
        except BrokenPipeError:  # it does not read its input (any more): not a failure by itself
            return pending[:0]

    def _close_stdin(self) -> None:
        """End of input for the command (closed once: the number may be reused after)."""
        if self._stdin is not None:
            os.close(self._stdin)
            self._stdin = None

    def _read(self, fd: int, on_output) -> None:
        """Read once from ``fd``; at its end, stop watching it."""
        try:
            data = os.read(fd, READ_CHUNK)
        except BlockingIOError:
            return
        if not data:
            self._selector.unregister(fd)
            os.close(fd)
            del self._streams[fd]
            return
        on_output(self._streams[fd], data)

    def read_ready(self, on_output) -> None:
        """Pass on what the command wrote and was not read yet, without waiting."""
        for selected, _ in self._selector.select(0):
            if selected.fd in self._streams:
                self._read(selected.fd, on_output)

    def running(self) -> bool:
        """False once the command has exited (it is not reaped here: see the class)."""
        if self.exited:
            return False
        if self._pidfd is not None:
            self.exited = bool(select.select([self._pidfd], [], [], 0)[0])
        else:  # WNOWAIT: it stays a zombie
            self.exited = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        return not self.exited

    def kill_group(self) -> None:
        """SIGKILL the command's process group: the command and what it started."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self, on_output) -> int:
        """Kill what is left of its process group, reap it, pass on the output
        still in its pipes (for at most DRAIN_TIMEOUT), close all; return the
        exit code (negative: the signal that killed it)."""
        self.kill_group()  # the command itself is at least a zombie: its group id is still its own
        _, status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self._streams and time.monotonic() < deadline:
            for selected, _ in self._selector.select(deadline - time.monotonic()):
                if selected.fd in self._streams:
                    self._read(selected.fd, on_output)
        self._selector.close()
        self._close_stdin()
        for fd in [self._pidfd, *self._streams]:
            if fd is not None:
                os.close(fd)
        return code
