"""Logging to stderr, as text or one JSON object per line.

When stderr is the journal (systemd's JOURNAL_STREAM names stderr's device and
inode) the journal stamps each line itself, so text lines carry no timestamp
there, and every line starts with its syslog priority (``<4>`` for a warning),
which the journal strips and files under PRIORITY: ``journalctl -p warning``
then shows wqd's warnings. A JOURNAL_STREAM inherited by a process whose stderr
was redirected elsewhere changes nothing.
"""

import json
import logging
import os
import sys
import time

_process_name = "master"


# Python's levels as syslog priorities (sd-daemon(3)); a level between two
# takes the lower one's priority, e.g. a custom level 25 is logged as info.
_SYSLOG_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)
_SYSLOG_DEBUG = 7


def set_process_name(name: str) -> None:
    """Name this process in every later log line ("master", "worker default[1]")."""
    global _process_name
    _process_name = name


class _ProcessNameFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.wqd_process = _process_name
        return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "process": record.wqd_process,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class JournalFormatter(logging.Formatter):
    """Another formatter's lines, each prefixed with the record's syslog priority
    (a traceback's lines too: the journal stores each line as an entry)."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self._inner.format(record).split("\n"))


def syslog_priority(levelno: int) -> int:
    for threshold, priority in _SYSLOG_PRIORITIES:
        if levelno >= threshold:
            return priority
    return _SYSLOG_DEBUG


def stream_is_journal(stream) -> bool:
    """Whether ``stream`` is the journal stream systemd connected: JOURNAL_STREAM
    ("device:inode") names the same file as the stream's descriptor."""
    device, sep, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (sep and device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor (closed, or replaced by an object)
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ProcessNameFilter())
    journal = stream_is_journal(sys.stderr)
    if fmt == "json":
        formatter = JSONFormatter()
    else:
        stamp = "" if journal else "%(asctime)s "
        formatter = logging.Formatter(stamp + "%(levelname)s [%(wqd_process)s pid %(process)d] %(message)s")
    handler.setFormatter(JournalFormatter(formatter) if journal else formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pika reports every connection failure with its own error lines; wqd
    # says the same thing once, in its own words, so pika only speaks at debug.
    logging.getLogger("pika").setLevel(logging.DEBUG if level == "debug" else logging.CRITICAL)
