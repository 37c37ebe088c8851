"""Value checks: each returns the cleaned value or raises ValueError(expected)."""

import dataclasses
import math
import os
import re
import shlex
import socket
import stat
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit

import pika

from wqd.config import console_tokens
from wqd.config.limits import DEFAULT_STATE_FILE_NAME, MAX_AMQP_SHORT, MAX_SECONDS
from wqd.config.urls import _encode_userinfo, _split_userinfo, redact_url

SHOWN_LENGTH = 200


def _shown(value: Any) -> str:
    """A value for an error message: URLs lose their password, long ones are cut."""
    text = repr(_redacted(value))
    return text if len(text) <= SHOWN_LENGTH else text[:SHOWN_LENGTH] + "..."


def _redacted(value: Any) -> Any:
    """``value`` with every string that may hold a password redacted, at any depth."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, (list, tuple)):
        return [_redacted(item) for item in value]
    if isinstance(value, dict):
        return {_redacted(k): "***" if _url_cut_by_yaml(k) else _redacted(v) for k, v in value.items()}
    return value


def _url_cut_by_yaml(key: Any) -> bool:
    """A mapping key that starts a broker URL: "amqp://user: pass@host" (a
    space after the colon) reads as {"amqp://user": "pass@host"}, so the
    value may be the password and its host, which redact_url cannot tell."""
    return isinstance(key, str) and re.match(r"amqps?://", key, re.IGNORECASE) is not None


# -- value checks: each returns the cleaned value or raises ValueError(expected) --


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("expected a positive integer")
    return value


def non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected an integer >= 0")
    return value


def at_most(maximum: int, check: Callable[[Any], int], why: str = "") -> Callable[[Any], int]:
    """``check``, and at most ``maximum``."""
    def check_at_most(value: Any) -> int:
        value = check(value)
        if value > maximum:
            raise ValueError(f"expected at most {maximum}{why}")
        return value

    return check_at_most


def amqp_short(check: Callable[[Any], int]) -> Callable[[Any], int]:
    """``check``, and at most 65535: the value travels in a 16-bit AMQP field."""
    return at_most(MAX_AMQP_SHORT, check, " (a 16-bit AMQP field)")


def seconds(maximum: int, in_words: str) -> Callable[[Any], float]:
    """A positive, finite duration up to ``maximum``. The comparison also
    refuses .nan and .inf, and happens before float(), which cannot hold 10**400."""
    def check_seconds(value: Any) -> float:
        if not _is_number(value) or not 0 < value <= maximum:
            raise ValueError(f"expected a positive number of seconds, at most {maximum} ({in_words})")
        return float(value)

    return check_seconds


positive_number = seconds(MAX_SECONDS, "a year")


def factor_number(value: Any) -> float:
    if not _is_number(value) or not 1 <= value <= 100:
        raise ValueError("expected a number from 1 to 100")
    return float(value)


def non_empty_str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value


def readable_file(value: Any) -> str:
    """A file this process can read now: a wrong TLS path fails `wqd check`,
    not every connection attempt of every worker later."""
    value = non_empty_str(value)
    if "\0" in value or not os.path.isfile(value) or not os.access(value, os.R_OK):
        raise ValueError("expected a readable file")
    return value


def console_token_file(value: Any) -> str:
    """A readable token file that holds at least one token (console_tokens.py)."""
    value = readable_file(value)
    console_tokens.load(value)
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def state_file_path(value: Any) -> str:
    """An absolute path in a directory that exists now, of a regular file or
    of nothing yet: a wrong path fails `wqd check`, not the write at the next
    stop (or the read at start: a FIFO would block it, ledger_file.py)."""
    value = non_empty_str(value)
    if "\0" in value or not os.path.isabs(value):
        raise ValueError("expected an absolute path")
    if not os.path.isdir(os.path.dirname(value)):
        raise ValueError("expected a path in an existing directory")
    special = special_file(value)
    if special is not None:
        raise ValueError(f"expected a regular file or a path where none exists yet, not {special}")
    return value


def default_state_file(values: dict) -> Optional[str]:
    """$STATE_DIRECTORY/finished-ids: systemd sets $STATE_DIRECTORY for a unit
    with StateDirectory= (the first of its directories); without it, None."""
    directory = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return os.path.join(directory, DEFAULT_STATE_FILE_NAME) if os.path.isabs(directory) else None


def one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value

    return check


def queue_argument_map(value: Any) -> tuple:
    """A mapping of queue argument names to numbers, strings or booleans, kept
    as sorted (name, value) pairs (a frozen, comparable value)."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of queue arguments, e.g. {x-max-priority: 10}")
    for name, argument in value.items():
        if not isinstance(name, str) or not name.startswith("x-"):
            raise ValueError(f"expected argument names that start with x-, got {name!r}")
        if not isinstance(argument, (bool, int, str)) and not (
                isinstance(argument, float) and math.isfinite(argument)):
            raise ValueError(f"{name}: expected a number, a string or a boolean, got {argument!r}")
    return tuple(sorted(value.items()))


def declare_mode(value: Any):
    """True: declare the queue as wqd does; "passive": use it as it is."""
    if value is not True and value != "passive":
        raise ValueError("expected true or passive")
    return value


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check_optional(value: Any) -> Any:
        return None if value is None else check(value)

    return check_optional


@dataclasses.dataclass(frozen=True)
class ExecHandler:
    """A handler that is a command, ``{exec: [command, args...], persistent: false}``
    (exec_handler.py runs it). Whether the command exists is checked where
    handlers are loaded, not here: `wqd publish` on another host needs no such file."""

    command: tuple
    persistent: bool = False

    def __str__(self) -> str:
        return ("persistent " if self.persistent else "") + "exec " + shlex.join(self.command)


_EXPECTED_HANDLER = 'expected "module:callable" or {exec: [command, args...], persistent: false}'


def handler_ref(value: Any) -> Union[str, ExecHandler]:
    if isinstance(value, str) and re.fullmatch(r"[\w.]+:[\w.]+", value):
        return value
    if not isinstance(value, dict) or "exec" not in value:
        raise ValueError(_EXPECTED_HANDLER)
    unknown = sorted(str(name) for name in value if name not in ("exec", "persistent"))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in an exec handler; {_EXPECTED_HANDLER}")
    command = value["exec"]
    if (not isinstance(command, list) or not command or not all(isinstance(arg, str) for arg in command)
            or any("\0" in arg for arg in command) or not command[0].strip()):
        raise ValueError("expected exec: a non-empty list of strings, the command and its arguments")
    if "/" in command[0] and not os.path.isabs(command[0]):
        raise ValueError(f"expected exec's command to be an absolute path or a name found on PATH, "
                         f"not the relative path {command[0]!r}")
    persistent = value.get("persistent", False)
    if not isinstance(persistent, bool):
        raise ValueError("expected persistent: true or false")
    return ExecHandler(tuple(command), persistent)


_EXPECTED_URL = "expected an amqp:// or amqps:// URL"


def broker_url(value: Any) -> str:
    """The URL as pika will read it (see ``_encode_userinfo``), once pika accepts it."""
    if not isinstance(value, str) or not re.match(r"amqps?://", value, re.IGNORECASE):
        raise ValueError(_EXPECTED_URL)
    url = _encode_userinfo(value)
    try:
        parts = urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL"; its text may quote the password
        raise ValueError("not a valid URL") from None
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    try:
        pika.URLParameters(url)
    except Exception as exc:  # pika refuses a bad query parameter with any of several errors
        text = str(exc)
        for password in (_split_userinfo(value)[2], _split_userinfo(url)[2]):
            text = text.replace(password, "***") if password else text
        raise ValueError(f"not a URL pika can use: {redact_url(text)[:SHOWN_LENGTH]}") from None
    return url


def broker_urls(value: Any) -> tuple:
    """One URL, or a list of them (the nodes of a cluster)."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(_EXPECTED_URL + " or a list of them")
    urls = []
    for index, item in enumerate(values):
        try:
            urls.append(broker_url(item))
        except ValueError as exc:
            if str(exc) == _EXPECTED_URL:
                raise ValueError(_EXPECTED_URL + " or a list of them") from None
            raise ValueError(f"{exc} (URL {index + 1} of {len(values)})" if len(values) > 1 else str(exc)) from None
    return tuple(urls)


def split_urls(text: str) -> list:
    """A comma-separated list of URLs, split only at a comma that starts a new
    amqp:// or amqps:// URL: a password may hold commas."""
    return [item.strip() for item in re.split(r",(?=\s*amqps?://)", text, flags=re.IGNORECASE)]


def listen_address(value: Any) -> Optional[str]:
    """host:port that can be bound: the port in range and the host resolving
    now, so `wqd check` fails rather than `wqd run` later."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"\[?[\w.:-]*\]?:\d{1,5}", value):
        raise ValueError('expected "host:port" or null')
    host, port = parse_listen(value)
    if port > 65535:
        raise ValueError("expected a port from 0 to 65535")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"cannot resolve host {host!r} ({getattr(exc, 'strerror', None) or exc})") from None
    return value

def parse_listen(listen: str):
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)

_SPECIAL_FILES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))

def special_file(path: str) -> Optional[str]:
    """What ``path`` names when it is there and not a regular file ("a FIFO
    (named pipe)", ...), following symbolic links; None otherwise (a regular
    file, nothing, or what cannot be looked at: reading it says why)."""
    try:
        return special_kind(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None

def special_kind(mode: int) -> Optional[str]:
    if stat.S_ISREG(mode):
        return None
    return next((name for is_kind, name in _SPECIAL_FILES if is_kind(mode)), "a special file")
