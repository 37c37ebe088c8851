"""Logging to stderr, as text or one JSON object per line.

Under systemd (JOURNAL_STREAM is set) the journal stamps each line itself, so
text lines carry no timestamp there.
"""

import json
import logging
import os
import sys
import time

_process_name = "master"


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


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ProcessNameFilter())
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
        handler.setFormatter(logging.Formatter(
            stamp + "%(levelname)s [%(wqd_process)s pid %(process)d] %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # pika reports every connection failure with its own error lines; wqd
    # says the same thing once, in its own words, so pika only speaks at debug.
    logging.getLogger("pika").setLevel(logging.DEBUG if level == "debug" else logging.CRITICAL)
