"""Handlers that are commands: ``handler: {exec: [command, args...]}``.

One-shot (the default): per message the command runs with the body on stdin,
the message described in WQD_* environment variables, and its exit code
decides: 0 succeeded, 65 (EX_DATAERR) rejected (dead-lettered at once), any
other code or a signal failed (retried). Persistent (``persistent: true``):
one long-lived process per worker, started at its first message, reads one
JSON request per line on stdin and answers each with one JSON line on stdout
that echoes the request's id (docs/handlers.md documents both). Either way the
handler is a plain callable taking a wqd.Message, so the consumer runs it
like any other handler.

A command runs in a session of its own: the worker's signals (a graceful
stop's SIGTERM, a terminal's Ctrl-C) do not reach it, and its whole process
group, grandchildren included, can be killed at time_limit, which this module
enforces itself a little before the master would kill the worker. Its stdout
and stderr are logged line by line, within limits (LINE_LIMIT,
LINES_PER_TASK), whatever it writes.
"""

import base64
import collections
import datetime
import decimal
import json
import logging
import os
import secrets
import select
import selectors
import shutil
import signal
import stat
import time
from typing import Callable, Optional

from wqd.config import SECRET_VARIABLES, ExecHandler, PoolConfig
from wqd.errors import ConfigError
from wqd.message import Message, Reject

log = logging.getLogger("wqd.exec")

# Longest output line logged; the rest of a longer line is dropped, saying so.
LINE_LIMIT = 4096
# Output lines logged per task; later ones are counted, and the count logged.
LINES_PER_TASK = 100
# Last stderr lines quoted in a failure's reason (each cut to TAIL_LINE_LIMIT).
TAIL_LINES = 5
TAIL_LINE_LIMIT = 200
# A reason a persistent command answers is cut to this many characters.
REASON_LIMIT = 1000
# A persistent command's answer (a stdout line that starts with "{") is at most this long.
ANSWER_LIMIT = 64 * 1024
# The command is killed this long before time_limit (at most 10% of it), so
# that the task is settled before the master would SIGKILL the worker.
KILL_MARGIN = 0.5
# After the command exits, how long its pipes are read for what is left in them.
DRAIN_TIMEOUT = 1.0
# Without pidfds, how often a command's exit is looked for.
EXIT_POLL = 0.02
READ_CHUNK = 65536

# What a one-shot command's exit code means.
EX_DATAERR = os.EX_DATAERR  # 65: this message can never succeed: dead-letter it now

class CommandFailed(Exception):
    """The command exited with a failing code, died by a signal, or answered an error: retried."""


class CommandTimedOut(CommandFailed):
    """The command ran past the pool's time_limit and was killed with its process group."""


class ProtocolViolation(CommandFailed):
    """A persistent command wrote what is not the one answer to its request: it
    was killed, and the task is retried (never taken for a success)."""


def build(pool: PoolConfig) -> Callable[[Message], None]:
    """The handler for a pool whose handler is an ExecHandler; ConfigError if
    its command cannot be run (what `wqd check` reports)."""
    spec: ExecHandler = pool.handler
    program = locate(spec.command[0])
    runner = Persistent if spec.persistent else OneShot
    return runner(program, spec.command, pool.time_limit)


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


def kill_deadline(started: float, time_limit: Optional[float]) -> Optional[float]:
    """When to kill a command started at ``started``: a little before time_limit."""
    if time_limit is None:
        return None
    return started + time_limit - min(KILL_MARGIN, time_limit / 10)


# -- what the command is told about the message --


def inherited_environment() -> dict:
    """wqd's environment less its secrets (config.SECRET_VARIABLES): a command
    works on what publishers sent, and what that makes it do must not be done
    with the broker's password."""
    return {name: value for name, value in os.environ.items() if name not in SECRET_VARIABLES}


def environment(message: Message) -> dict:
    """The WQD_* variables a one-shot command gets besides inherited_environment(),
    and TRACEPARENT/TRACESTATE, the message's trace context (with tracing on,
    the task's span) as OpenTelemetry hands one to a process."""
    return {
        **trace_context(message.headers),
        "WQD_MESSAGE_ID": message.message_id,
        "WQD_ATTEMPT": str(message.attempt),
        "WQD_REDELIVERED": "1" if message.redelivered else "0",
        "WQD_QUEUE": message.queue,
        "WQD_POOL": message.pool,
        "WQD_WORKER": message.worker,
        "WQD_CONTENT_TYPE": message.properties.content_type or "",
        "WQD_HEADERS": json.dumps(message.headers, default=_json_value, ensure_ascii=False),
    }


def trace_context(headers: dict) -> dict:
    """{TRACEPARENT, TRACESTATE} from a message's W3C trace context headers, where they are text."""
    found = {}
    for name in ("traceparent", "tracestate"):
        value = headers.get(name)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value and "\0" not in value:
            found[name.upper()] = value
    return found


def request(message: Message, request_id: str) -> bytes:
    """One line of the persistent protocol: the message as a JSON object, with
    the id its answer must echo."""
    try:
        body, encoding = message.body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(message.body).decode("ascii"), "base64"
    fields = {
        "id": request_id, "message_id": message.message_id, "attempt": message.attempt,
        "redelivered": message.redelivered, "queue": message.queue, "pool": message.pool, "worker": message.worker,
        "content_type": message.properties.content_type, "headers": message.headers,
        "encoding": encoding, "body": body,
    }
    return json.dumps(fields, default=_json_value).encode() + b"\n"


def _json_value(value):
    """A header value JSON cannot hold: bytes as UTF-8 text, or {"base64": ...}
    when they are not text; timestamps in ISO 8601; decimals as strings."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return repr(value)


# -- the command's output, logged within bounds --


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


def _died(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _task_id(message: Message) -> str:
    return message.message_id or "(no id)"


# -- the two handlers --


class OneShot:
    """``{exec: [...]}``: one process per message."""

    def __init__(self, program: str, argv: tuple, time_limit: Optional[float]):
        self.program = program
        self.argv = argv
        self.time_limit = time_limit

    def __call__(self, message: Message) -> None:
        started = time.monotonic()
        output = TaskOutput(_task_id(message))
        try:
            command = Command(self.program, self.argv, {**inherited_environment(), **environment(message)})
        except OSError as exc:
            raise CommandFailed(f"cannot start {self.program}: {exc.strerror or exc}") from None
        ended = "exited"
        try:
            ended = command.exchange(message.body, output.feed, kill_deadline(started, self.time_limit),
                                     close_stdin=True)
        finally:
            code = command.close(output.feed)
            output.finish()
        if ended == "deadline":
            raise CommandTimedOut(f"the command ran longer than the pool's time_limit ({self.time_limit:g} s) "
                                  f"and was killed with its process group{output.tail()}")
        if code == 0:
            return
        if code == EX_DATAERR:
            raise Reject(f"the command exited with code 65 (EX_DATAERR){output.tail()}")
        raise CommandFailed(f"the command {_died(code)}{output.tail()}")


class Persistent:
    """``{exec: [...], persistent: true}``: one long-lived process per worker,
    started at its first message (after the fork) and again after it died or
    broke the protocol, speaking line-delimited JSON (see ``request``,
    ``Reply`` and docs/handlers.md)."""

    def __init__(self, program: str, argv: tuple, time_limit: Optional[float]):
        self.program = program
        self.argv = argv
        self.time_limit = time_limit
        self._command: Optional[Command] = None
        self._stdout = b""  # stdout read but not yet split into lines
        self._skipping = False  # in the middle of a stdout line too long to be an answer
        self._reply = Reply("")  # what stdout said to the last request (none yet)

    def __call__(self, message: Message) -> None:
        started = time.monotonic()
        output = TaskOutput(_task_id(message))

        def on_output(stream: str, data: bytes) -> None:
            if stream == "stdout":
                self._take_stdout(data, output)
            else:
                output.feed(stream, data)

        command = self._running(message, on_output)
        reply = self._reply = Reply(secrets.token_hex(8))
        code = None
        try:
            ended = command.exchange(request(message, reply.request_id), on_output,
                                     kill_deadline(started, self.time_limit), until=reply.complete)
            if ended != "done" or reply.violation:  # the next message starts another command
                code = self._stop(on_output)
        finally:
            output.finish()
        if ended == "deadline":
            raise CommandTimedOut(
                f"the persistent command did not answer within the pool's time_limit ({self.time_limit:g} s) "
                f"and was killed with its process group; a new one starts for the next task{output.tail()}")
        if reply.violation:
            raise ProtocolViolation(f"the persistent command broke the protocol: {reply.violation}; it was killed, "
                                    f"and a new one starts for the next task{output.tail()}")
        if reply.answer is None:
            raise CommandFailed(f"the persistent command {_died(code)} before it answered{output.tail()}")
        _settle(reply.answer)

    def _running(self, message: Message, on_output) -> Command:
        """The command, started now if it is not running, or if it wrote on
        stdout, since its last answer, another line for the protocol."""
        if self._command is not None:
            self._command.read_ready(on_output)
            if self._command.running() and not self._reply.violation:
                return self._command
            code = self._stop(on_output)
            if self._reply.violation:
                log.warning("The persistent command %s broke the protocol after it answered its last task: %s; "
                            "starting it again.", self.program, self._reply.violation)
            else:
                log.warning("The persistent command %s %s between tasks; starting it again.",
                            self.program, _died(code))
        env = {**inherited_environment(), "WQD_QUEUE": message.queue, "WQD_POOL": message.pool,
               "WQD_WORKER": message.worker}
        try:
            self._command = Command(self.program, self.argv, env)
        except OSError as exc:
            raise CommandFailed(f"cannot start {self.program}: {exc.strerror or exc}") from None
        log.info("Started the persistent command %s (pid %d).", self.program, self._command.pid)
        return self._command

    def _stop(self, on_output) -> int:
        command, self._command = self._command, None
        code = command.close(on_output)
        self._stdout, self._skipping = b"", False
        return code

    def _take_stdout(self, data: bytes, output: TaskOutput) -> None:
        """Pass the lines that start with "{" to the reply: they are the
        protocol's; other lines are the command's output, logged."""
        lines = (self._stdout + data).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if self._skipping:  # the end of a line already taken as cut
                self._skipping = False
            elif line.lstrip().startswith(b"{"):
                self._reply.take(line)
            else:
                output.line("stdout", line)
        if len(rest) > ANSWER_LIMIT and not self._skipping:
            if rest.lstrip().startswith(b"{"):
                self._reply.take(rest)
            else:
                output.line("stdout", rest)
            self._skipping = True
        self._stdout = b"" if self._skipping else rest


class Reply:
    """What a persistent command wrote on stdout in answer to one request: its
    answer, or the first way it broke the protocol. An answer counts only for
    the request whose (random) id it echoes, so that no answer can be credited
    to another task: not an extra one, nor a message body a command prints."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.answer: Optional[dict] = None
        self.violation = ""

    def complete(self) -> bool:
        return self.answer is not None or bool(self.violation)

    def take(self, line: bytes) -> None:
        """A stdout line that starts with "{"."""
        if self.violation:
            return
        if self.answer is not None:
            self.violation = f"it answered request {self.request_id!r} a second time: {_quoted(line)}"
            return
        try:
            self.answer = _answer(line, self.request_id)
        except ValueError as exc:
            self.violation = str(exc)


def _answer(line: bytes, request_id: str) -> dict:
    """The answer ``line`` holds to request ``request_id``; ValueError saying
    how it breaks the protocol otherwise."""
    if len(line) > ANSWER_LIMIT:
        raise ValueError(f"an answer is longer than {ANSWER_LIMIT} bytes: {_quoted(line)}")
    try:
        answer = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        answer = None
    if not isinstance(answer, dict):
        raise ValueError(f"a stdout line that starts with '{{' (an answer) is not a JSON object: {_quoted(line)}")
    if answer.get("id") != request_id:  # none (the protocol before ids), or another request's
        raise ValueError(f"an answer does not echo its request's id ({request_id!r}): {_quoted(line)}")
    if answer.get("status") not in ("ok", "reject", "error"):
        raise ValueError(f"an answer's status is not ok, reject or error: {_quoted(line)}")
    return answer


def _quoted(line: bytes) -> str:
    """The start of a stdout line, for a reason."""
    text = line[:100].decode("utf-8", "replace")
    return repr(text) + ("..." if len(line) > 100 else "")


def _settle(answer: dict) -> None:
    reason = str(answer.get("reason") or "")[:REASON_LIMIT]
    if answer["status"] == "reject":
        raise Reject(reason or "the persistent command rejected the message")
    if answer["status"] == "error":
        raise CommandFailed(reason or "the persistent command answered an error")
