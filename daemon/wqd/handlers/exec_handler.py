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
import datetime
import decimal
import json
import logging
import os
import secrets
import time
from typing import Callable, Optional

from wqd import exits
from wqd.broker.header_decoding import header_text
from wqd.config import ExecHandler, PoolConfig
from wqd.handlers.process import (
    Command,
    TaskOutput,
    inherited_environment,
    locate,
)
from wqd.message import Message, Reject

log = logging.getLogger("wqd.exec")

# A reason a persistent command answers is cut to this many characters.
REASON_LIMIT = 1000
# A persistent command's answer (a stdout line that starts with "{") is at most this long.
ANSWER_LIMIT = 64 * 1024
# The command is killed this long before time_limit (at most 10% of it), so
# that the task is settled before the master would SIGKILL the worker.
KILL_MARGIN = 0.5
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


def kill_deadline(started: float, time_limit: Optional[float]) -> Optional[float]:
    """When to kill a command started at ``started``: a little before time_limit."""
    if time_limit is None:
        return None
    return started + time_limit - min(KILL_MARGIN, time_limit / 10)


# -- what the command is told about the message --


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
        value = header_text(headers.get(name))
        if value and "\0" not in value:
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
        raise CommandFailed(f"the command {exits.describe_code(code)}{output.tail()}")


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
            raise CommandFailed(f"the persistent command {exits.describe_code(code)} before it answered{output.tail()}")
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
                            self.program, exits.describe_code(code))
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
