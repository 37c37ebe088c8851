"""Load and validate wqd's YAML configuration.

Every key is declared once, as a field of the frozen dataclass its section
becomes: its type, default, check and one line of doc (see ``key``). The
validator walks those declarations; nothing else lists keys or defaults.
Errors are collected, not raised one at a time, so an operator fixes a file in
one pass; each names the file, the line (where YAML knows it) and the key path.
"""

import dataclasses
import math
import os
import re
import shlex
import socket
from typing import Any, Callable, Optional, Union
from urllib.parse import quote, urlsplit

import pika
import yaml

from wqd.broker import queues
from wqd.errors import ConfigError  # noqa: F401  (raised here; callers catch it from here too)
from wqd.master.http_endpoint import parse_listen
from wqd.redelivery import ledger_file

DEFAULT_CONFIG_PATH = "/etc/wqd/wqd.yaml"
DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/%2F"
# `wqd publish --url`'s password: a command line is readable by every local user.
BROKER_PASSWORD_VARIABLE = "WQD_BROKER_PASSWORD"
# The environment variables that hold a broker password. The commands exec
# handlers run never see them (exec_handler.inherited_environment).
SECRET_VARIABLES = ("WQD_BROKER_URL", BROKER_PASSWORD_VARIABLE)

# Limits on the file, so that loading it (at check, start and reload) takes
# bounded time and memory whatever it holds: its size, the size of the
# document once YAML aliases are expanded (a "billion laughs" file is a few
# hundred bytes), and how deeply it nests. A real configuration is far below.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_YAML_NODES = 10_000
MAX_YAML_CHARACTERS = 2 * MAX_CONFIG_BYTES
MAX_YAML_DEPTH = 32

# The longest duration a key takes: a year is past any real timeout, and
# well within what sleep(), select() and the monotonic clock accept.
MAX_SECONDS = 365 * 24 * 3600
# The longest retry delay: a delay queue expires (x-expires) after twice the
# delay plus a minute, and RabbitMQ refuses expiries above 2^32-1 ms (49 days).
MAX_RETRY_DELAY = 24 * 24 * 3600
# AMQP carries the heartbeat and the prefetch count as 16-bit numbers.
MAX_AMQP_SHORT = 65535
# Worker processes in one pool: the master forks them all at once.
MAX_WORKERS = 1000
# Message ids the master remembers as finished: about 32 bytes each (deduplication.py).
MAX_DEDUPLICATION_CAPACITY = 50_000_000
DEFAULT_STATE_FILE_NAME = "finished-ids"
# Longer values are cut in error messages (a 1 MiB string is not an error line).
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
    special = ledger_file.special_file(value)
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


# -- declaring a key --


@dataclasses.dataclass(frozen=True)
class Section:
    """A key whose value is a nested mapping, checked against ``cls``'s keys.
    Left out, it is checked as ``null``: the section's defaults, or None when
    ``nullable``."""

    cls: type
    nullable: bool = False


@dataclasses.dataclass(frozen=True)
class SectionList:
    """A key whose value is a non-empty list of ``cls`` mappings, each
    ``noun`` having a distinct ``unique`` key."""

    cls: type
    noun: str
    unique: str


def key(check, default: Any = dataclasses.MISSING, *, doc: str, name: Optional[str] = None,
        env: Optional[str] = None, when_absent: Optional[Callable[[dict], Any]] = None,
        shown: Optional[str] = None, example: Any = None):
    """Declare a configuration key as a dataclass field; the validator walks these.

    ``check`` returns the cleaned value or raises ValueError saying what was
    expected (or is a Section or SectionList); without ``default`` the key is
    required. ``name`` is the YAML key when it differs from the attribute.
    ``env`` names an environment variable that overrides the file, split into
    a list of URLs (see split_urls). ``when_absent(values)`` computes the value
    of a key the file leaves out from its section's other values (the dataclass
    default then serves only code that builds the section itself). The
    generated reference and etc/wqd.yaml (config_docs.py) show ``shown`` as
    the default of such a key, and ``example`` as the value of a required one.
    """
    return dataclasses.field(default=default, metadata={
        "check": check, "doc": doc, "name": name, "env": env, "when_absent": when_absent,
        "shown": shown, "example": example})


def declared_keys(cls: type):
    """(YAML key, field) for each key a section's dataclass declares."""
    return [(field.metadata["name"] or field.name, field)
            for field in dataclasses.fields(cls) if "check" in field.metadata]


# -- the configuration: every key, once --


@dataclasses.dataclass(frozen=True)
class TLSConfig:
    ca_file: Optional[str] = key(optional(readable_file), None,
                                 doc="PEM file of the CA that signed the broker's certificate (default: the system's CAs)")
    cert_file: Optional[str] = key(optional(readable_file), None,
                                   doc="client certificate (PEM), for brokers that want one")
    key_file: Optional[str] = key(optional(readable_file), None,
                                  doc="the client certificate's private key, if not in cert_file")


@dataclasses.dataclass(frozen=True)
class BrokerConfig:
    urls: tuple = key(broker_urls, (DEFAULT_BROKER_URL,), name="url", env="WQD_BROKER_URL",
                      doc="a URL, or a list of them (one per cluster node; workers spread over them); amqps:// for TLS; "
                          "the password may hold any character and is never printed")
    heartbeat: int = key(amqp_short(non_negative_int), 60, doc="AMQP heartbeat, seconds (0 disables; at most 65535)")
    tls: Optional[TLSConfig] = key(Section(TLSConfig, nullable=True), None,
                                   doc="{ca_file, cert_file, key_file} for amqps:// URLs (see TLS to the broker)")

    @property
    def url(self) -> str:
        """The first URL: the one one-shot commands try first, and messages show."""
        return self.urls[0]

    def conflicts(self) -> list:
        """(key, problem) for keys that are valid alone but not together."""
        found = []
        if self.tls is not None and not any(url.startswith("amqps://") for url in self.urls):
            found.append(("tls", "is only used with amqps:// URLs, but no broker URL is amqps://"))
        if self.tls is not None and self.tls.key_file and not self.tls.cert_file:
            found.append(("tls.key_file", "is set without broker.tls.cert_file"))
        return found


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    listen: Optional[str] = key(listen_address, "127.0.0.1:9808",
                                doc="host:port of /metrics, /healthz, /readyz and /status; null disables them")


def console_token_file(value: Any) -> str:
    """A readable token file that holds at least one token (console/tokens.py)."""
    from wqd.console import tokens  # imports nothing of the runtime
    value = readable_file(value)
    tokens.load(value)
    return value


@dataclasses.dataclass(frozen=True)
class ConsoleConfig:
    enabled: bool = key(boolean, True, doc="serve the operator's console at / of metrics.listen")
    token_file: Optional[str] = key(optional(console_token_file), None,
                                    doc="file of name:token lines (or one token) that allows the console's actions "
                                        "(replay, purge, quiet, worker counts); null: the console is read-only")


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    level: str = key(one_of("debug", "info", "warning", "error"), "info", doc="the least severe level logged")
    format: str = key(one_of("text", "json"), "text", doc="text, or json (one object per line)")


@dataclasses.dataclass(frozen=True)
class ShutdownConfig:
    graceful_timeout: float = key(positive_number, 30.0,
                                  doc="on SIGTERM, how long workers may finish their task before they are killed")


@dataclasses.dataclass(frozen=True)
class TracingConfig:
    enabled: bool = key(boolean, False, doc="a span per task and per `wqd publish` message (OpenTelemetry, the "
                                            "wqd[otel] extra); the OTEL_* environment variables say where they go")

    def conflicts(self) -> list:
        """Tracing on needs OpenTelemetry installed (imported only then) and OTEL_* values wqd can use."""
        if not self.enabled:
            return []
        try:
            from wqd import tracing
        except ImportError as exc:
            return [("enabled", f"is true, but OpenTelemetry is not installed ({exc}): install wqd with its "
                                f"otel extra, pip install 'wqd[otel]', or set tracing.enabled: false")]
        problem = tracing.environment_problem()
        return [("enabled", f"is true, but {problem}")] if problem else []


@dataclasses.dataclass(frozen=True)
class DeduplicationConfig:
    capacity: int = key(at_most(MAX_DEDUPLICATION_CAPACITY, positive_int), 1_000_000,
                        doc="finished message ids the master remembers, the oldest forgotten first (about 32 "
                            "bytes each: 31 MiB at the default; at most 50,000,000)")
    state_file: Optional[str] = key(optional(state_file_path), None, when_absent=default_state_file,
                                    shown="$STATE_DIRECTORY/finished-ids",
                                    doc="where they are kept across restarts (written at stop, read at start); "
                                        "default $STATE_DIRECTORY/finished-ids under systemd, else not kept")


@dataclasses.dataclass(frozen=True)
class RetryDelay:
    initial: float = key(seconds(MAX_RETRY_DELAY, "24 days"), 1.0, doc="seconds before the first retry")
    max: float = key(seconds(MAX_RETRY_DELAY, "24 days"), 300.0, doc="the longest delay, seconds")
    factor: float = key(factor_number, 2.0, doc="each retry waits this many times longer than the one before")


@dataclasses.dataclass(frozen=True)
class WorkerBounds:
    """A pool's worker count: fixed (``workers: 4`` is min = max = 4), or
    autoscaled between min and max (``workers: {min: 1, max: 8}``)."""

    min: int = key(at_most(MAX_WORKERS, positive_int), doc="workers kept however idle the pool is")
    max: int = key(at_most(MAX_WORKERS, positive_int), doc="workers at most, added one at a time while messages wait and all are busy")
    idle_timeout: float = key(positive_number, 30.0, doc="seconds a worker above min stays idle before it is retired")

    @property
    def autoscaled(self) -> bool:
        return self.max > self.min

    def __str__(self) -> str:
        return f"{self.min}..{self.max}" if self.autoscaled else str(self.min)


def worker_count(value: Any) -> WorkerBounds:
    """A positive integer, or a {min, max, idle_timeout} mapping checked along WorkerBounds' keys."""
    if not isinstance(value, dict):
        count = at_most(MAX_WORKERS, positive_int)(value)
        return WorkerBounds(count, count)
    keys = declared_keys(WorkerBounds)
    shape = "{" + ", ".join(name for name, _ in keys) + "}"
    for name in value:
        if name not in {name for name, _ in keys}:
            raise ValueError(f"unknown key {name!r} in {shape}")
    values = {}
    for name, field in keys:
        if name not in value:
            if field.default is dataclasses.MISSING:
                raise ValueError(f"{name} is required in {shape}")
            continue
        try:
            values[field.name] = field.metadata["check"](value[name])
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    if values["min"] > values["max"]:
        raise ValueError("expected min <= max")
    return WorkerBounds(**values)


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    name: str = key(non_empty_str, example="default", doc="unique; the label in metrics, logs and process titles")
    queue: str = key(non_empty_str, example="task_queue", doc="the work queue, declared durable")
    handler: Union[str, ExecHandler] = key(
        handler_ref, example="wqd.examples:sleep_dots",
        doc='"module:callable" run for each message, or {exec: [command, ...], persistent: false}')
    workers: WorkerBounds = key(worker_count, WorkerBounds(1, 1),
                                doc="worker processes (at most 1000): a number, or {min, max, idle_timeout} to "
                                    "autoscale between min and max")
    prefetch: int = key(amqp_short(positive_int), 1, doc="unacked messages per worker; 1 = fair dispatch (at most 65535)")
    queue_type: str = key(one_of("classic", "quorum"), "classic", doc="classic, or quorum (for clusters)")
    max_retries: int = key(non_negative_int, 3, doc="retries after the first failed attempt; then dead-letter")
    retry_delay: RetryDelay = key(Section(RetryDelay), RetryDelay(), doc="retry n waits initial x factor^(n-1) seconds, capped at max, minus up to 10% "
                                                                          "jitter; initial and max at most 24 days, factor 1 to 100")
    dead_letter_queue: Optional[str] = key(optional(non_empty_str), None,
                                           when_absent=lambda values: values["queue"] + ".dead", shown="<queue>.dead",
                                           doc="where given-up messages go (default <queue>.dead); null drops them")
    time_limit: Optional[float] = key(optional(positive_number), None,
                                      doc="seconds a task's handler may run before its worker is killed and replaced "
                                          "(the attempt failed); a handler that ends within it has up to 60 s more to "
                                          "ack, retry or dead-letter the task")
    max_tasks_per_child: Optional[int] = key(optional(positive_int), None,
                                             doc="recycle a worker after this many tasks")
    max_memory_per_child: Optional[int] = key(optional(positive_int), None,
                                              doc="MiB of RSS; recycle a worker after the task that crossed it")
    deduplicate: bool = key(boolean, True, doc="skip redeliveries of message ids already finished here "
                                               "(acked without running: outcome duplicate)")
    queue_arguments: tuple = key(queue_argument_map, (), shown="{}",
                                 doc="more arguments the work queue has, declared with it (an existing queue's, "
                                     "e.g. {x-max-priority: 10}); not those wqd sets itself")
    declare: Union[bool, str] = key(declare_mode, True,
                                    doc="true: declare the work queue as wqd does; passive: use an existing "
                                        "queue as it is (wqd then cannot promise what its arguments decide)")

    def conflicts(self) -> list:
        """(key, problem) for keys that are valid alone but not together."""
        own = queues.arguments_wqd_sets(self) & {name for name, _ in self.queue_arguments}
        if own:
            return [("queue_arguments", f"names {', '.join(sorted(own))}, which wqd sets itself for this pool "
                                        f"(from queue_type, max_retries, dead_letter_queue and time_limit); "
                                        f"leave it out")]
        if self.queue_type == "quorum" and self.max_retries > queues.MAX_QUORUM_RETRIES:
            return [("max_retries", (
                f"is {self.max_retries}, above the {queues.MAX_QUORUM_RETRIES} a quorum pool allows: wqd declares "
                f"a quorum queue with a delivery limit of max_retries + {1 + queues.DELIVERY_LIMIT_MARGIN} (the "
                f"broker dead-letters a message past it, with x-death reason delivery_limit), and a message that "
                f"is redelivered that often keeps the queue's log from being truncated; lower max_retries to "
                f"{queues.MAX_QUORUM_RETRIES} or less, or use queue_type: classic"))]
        return []

    def same_settings(self, other: "PoolConfig") -> bool:
        """True when only the worker count differs (a scale, not a replace)."""
        return dataclasses.replace(self, workers=other.workers) == other


@dataclasses.dataclass(frozen=True)
class Config:
    path: str  # the file it was loaded from; not a key
    broker: BrokerConfig = key(Section(BrokerConfig), doc="the RabbitMQ broker (or cluster nodes)")
    metrics: MetricsConfig = key(Section(MetricsConfig), doc="the master's HTTP endpoint")
    logging: LoggingConfig = key(Section(LoggingConfig), doc="log records on stderr")
    shutdown: ShutdownConfig = key(Section(ShutdownConfig), doc="how a stop proceeds")
    tracing: TracingConfig = key(Section(TracingConfig), doc="OpenTelemetry spans: {enabled: false}")
    pools: tuple = key(SectionList(PoolConfig, noun="pool", unique="name"),
                       doc="the worker pools, each consuming one queue")
    deduplication: DeduplicationConfig = key(Section(DeduplicationConfig), DeduplicationConfig(),
                                             doc="the ledger of finished messages (pools[].deduplicate)")
    console: ConsoleConfig = key(Section(ConsoleConfig), ConsoleConfig(),
                                 doc="the operator's console in a browser (see The console)")


_INVALID = object()  # a value that failed its check; the error is already recorded


class _Validator:
    """Walks the loaded YAML along the declared keys, collecting errors."""

    def __init__(self, path: str, lines: dict):
        self.path = path
        self.lines = lines
        self.errors = []

    def error(self, key_path: str, text: str) -> None:
        line = self.lines.get(key_path)
        parent = key_path
        while line is None:  # a missing key: point at its parent
            parent, found = re.subn(r"(\.[^.\[]*|\[\d+\])$", "", parent)
            if not found:
                break
            line = self.lines.get(parent)
        where = f"{self.path}:{line}" if line else self.path
        shown_path = redact_url(key_path)  # a key is text from the file too
        if len(shown_path) > SHOWN_LENGTH:
            shown_path = shown_path[:SHOWN_LENGTH] + "..."
        self.errors.append(f"{where}: {shown_path}: {text}")

    def config(self, data: Any) -> Optional[Config]:
        if data is not None and not isinstance(data, dict):
            self.errors.append(f"{self.path}: expected a mapping at the top level")
            return None
        config = self.section(Config, data, "", path=self.path)
        return None if config is _INVALID else config

    def value(self, check: Any, value: Any, key_path: str) -> Any:
        """The cleaned value, or _INVALID (the error recorded)."""
        if isinstance(check, Section):
            return None if value is None and check.nullable else self.section(check.cls, value, key_path)
        if isinstance(check, SectionList):
            return self.section_list(check, value, key_path)
        try:
            return check(value)
        except ValueError as exc:
            self.error(key_path, f"{exc}, got {_shown(value)}")
            return _INVALID

    def section(self, cls: type, data: Any, key_path: str, **given: Any) -> Any:
        """An instance of ``cls`` from a mapping (defaults filled), or _INVALID."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.error(key_path, f"expected a mapping, got {_shown(data)}")
            return _INVALID
        errors_before = len(self.errors)
        keys = declared_keys(cls)
        known = {name for name, _ in keys}
        for name in data:
            if name not in known:
                self.error(_join(key_path, name), "unknown key")
        values, absent = dict(given), []
        for name, field in keys:
            check, sub_path = field.metadata["check"], _join(key_path, name)
            if name in data or isinstance(check, (Section, SectionList)):
                values[field.name] = self.value(check, data.get(name), sub_path)
            elif field.metadata["when_absent"]:
                absent.append(field)
            elif field.default is dataclasses.MISSING:
                self.error(sub_path, "required key is missing")
            if field.metadata["env"] and os.environ.get(field.metadata["env"]):
                values[field.name] = self.environment(check, field.metadata["env"])
        if len(self.errors) > errors_before:
            return _INVALID
        for field in absent:
            values[field.name] = field.metadata["when_absent"](values)
        instance = cls(**values)
        for name, text in getattr(instance, "conflicts", list)():
            self.error(_join(key_path, name), text)
        return _INVALID if len(self.errors) > errors_before else instance

    def section_list(self, spec: SectionList, data: Any, key_path: str) -> Any:
        if not isinstance(data, list) or not data:
            self.error(key_path, f"expected a non-empty list of {spec.noun}s, got {_shown(data)}")
            return _INVALID
        items, seen = [], {}
        for index, item in enumerate(data):
            item_path = f"{key_path}[{index}]"
            items.append(self.section(spec.cls, item, item_path))
            unique = item.get(spec.unique) if isinstance(item, dict) else None
            if isinstance(unique, str) and unique in seen:
                self.error(f"{item_path}.{spec.unique}", f"duplicate {spec.noun} {spec.unique} {_shown(unique)} "
                                                         f"(also {key_path}[{seen[unique]}])")
            elif isinstance(unique, str):
                seen[unique] = index
        return _INVALID if any(item is _INVALID for item in items) else tuple(items)

    def environment(self, check: Callable[[Any], Any], variable: str) -> Any:
        """A key's value from the environment (URLs separated by commas), which wins over the file."""
        value = split_urls(os.environ[variable])
        try:
            return check(value)
        except ValueError as exc:
            self.errors.append(f"${variable}: {exc}, got {_shown(value)}")
            return _INVALID


def _join(key_path: str, name: Any) -> str:
    """A key's path for messages; a key YAML read as another type (null, a
    number, a date) is shown as Python writes it."""
    name = name if isinstance(name, str) else repr(name)
    return f"{key_path}.{name}" if key_path else name


def _key_lines(node: Any, key_path: str, lines: dict) -> None:
    """Record the line of every key path in a composed YAML node tree."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            sub_path = f"{key_path}.{key_node.value}" if key_path else str(key_node.value)
            lines[sub_path] = key_node.start_mark.line + 1
            _key_lines(value_node, sub_path, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            sub_path = f"{key_path}[{index}]"
            lines[sub_path] = item.start_mark.line + 1
            _key_lines(item, sub_path, lines)


def parse(text: str, path: str) -> Config:
    """Validate YAML text; raise ConfigError listing every problem."""
    data, lines = _read_yaml(text, path)
    validator = _Validator(path, lines)
    config = validator.config(data)
    if validator.errors:
        raise ConfigError(_without_secrets("\n".join(validator.errors), data))
    return config


def load(path: str) -> Config:
    """Read and validate the file: at most MAX_CONFIG_BYTES of UTF-8 text."""
    try:
        with open(path, "rb") as stream:
            raw = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: the configuration file is larger than {MAX_CONFIG_BYTES} bytes "
                          f"({MAX_CONFIG_BYTES // 1024 // 1024} MiB), the most wqd reads")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: the configuration file is not UTF-8 text "
                          f"(byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    return parse(text, path)


def default_path() -> str:
    return os.environ.get("WQD_CONFIG") or DEFAULT_CONFIG_PATH


# -- reading YAML within limits --

# libyaml when PyYAML was built with it: several times faster on a large file.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(text: str, path: str):
    """(data, {key path: line}) of a YAML document; ConfigError if it is not
    YAML or exceeds the limits. The limits are checked on the event stream
    before anything is built, so a billion laughs costs its few hundred bytes."""
    try:
        _check_limits(text, path)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            data = None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {redact_url(problem)[:SHOWN_LENGTH]}") from None
    except (ValueError, OverflowError) as exc:  # a scalar YAML resolves but Python cannot hold: 2026-13-45
        raise ConfigError(f"{path}: invalid YAML: {redact_url(str(exc))[:SHOWN_LENGTH]}") from None
    lines: dict = {}
    _key_lines(node, "", lines)
    return data, lines


def _check_limits(text: str, path: str) -> None:
    """Walk the YAML events once, keeping for each anchor the size of what an
    alias of it expands to; raise ConfigError past MAX_YAML_DEPTH levels,
    MAX_YAML_NODES nodes or MAX_YAML_CHARACTERS characters of scalars."""
    anchors = {}  # anchor -> (nodes, characters) it expands to
    open_collections = [[None, 0, 0]]  # [anchor, nodes, characters] of the document, then each open collection

    def refuse(event, problem):
        raise ConfigError(f"{path}:{event.start_mark.line + 1}: {problem}")

    for event in yaml.parse(text, Loader=_Loader):
        anchor = getattr(event, "anchor", None)
        if isinstance(event, yaml.CollectionStartEvent):
            if len(open_collections) > MAX_YAML_DEPTH:
                refuse(event, f"the document nests deeper than {MAX_YAML_DEPTH} levels")
            open_collections.append([anchor, 1, 0])
            continue
        if isinstance(event, yaml.ScalarEvent):
            size = (1, len(event.value))
        elif isinstance(event, yaml.AliasEvent):
            if any(anchor == entry[0] for entry in open_collections):
                refuse(event, f"alias *{anchor} refers to a collection that contains it")
            if anchor not in anchors:
                continue  # undefined: the composer names it
            size, anchor = anchors[anchor], None
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, *size = open_collections.pop()
        else:
            continue
        if anchor:
            anchors[anchor] = tuple(size)
        receiver = open_collections[-1]
        receiver[1] += size[0]
        receiver[2] += size[1]
        if receiver[1] > MAX_YAML_NODES or receiver[2] > MAX_YAML_CHARACTERS:
            refuse(event, f"the document, its aliases expanded, is larger than wqd accepts "
                          f"({MAX_YAML_NODES} nodes, {MAX_YAML_CHARACTERS} characters)")


def _without_secrets(text: str, data: Any) -> str:
    """``text`` with every password of a URL found anywhere in ``data`` (or in
    $WQD_BROKER_URL) replaced by ***: whatever an error quotes, a password
    stays hidden. Passwords under 4 characters are left to redact_url (each
    would otherwise mask unrelated words)."""
    found = set()

    def collect(value):
        if isinstance(value, str):
            password = _split_userinfo(value)[2]
            if password and len(password) >= 4:
                found.update({password, _percent_encode(password)})
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)
        elif isinstance(value, dict):
            for key_and_value in value.items():
                collect(key_and_value)

    collect(data)
    collect(split_urls(os.environ.get("WQD_BROKER_URL", "")))
    for secret in sorted(found, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


# -- URLs and their passwords --


def url_password(url: str) -> Optional[str]:
    """The password a URL holds (None or "": none)."""
    return _split_userinfo(url)[2]


def with_password(url: str, password: str) -> str:
    """``url`` with ``password``, every character of it taken as it is;
    ValueError when the URL names no user to give it to."""
    prefix, user, _, rest = _split_userinfo(url)
    if rest is None:
        raise ValueError("names no user for the password: write amqp://USER@HOST/...")
    return f"{prefix}{user}:{quote(password, safe='')}@{rest}"


def _split_userinfo(url: str):
    """(the text up to and with the first "scheme://" (or ""), user, password
    or None, the part after the user info or None when there is no "@").

    The user info runs to the last "@", so a password may hold any character
    ("@", "/", "#", "?", ":" and "," included) and is still found whole; a raw
    "@" after the host (in a virtual host) must be written %40.
    """
    prefix = url[:_scheme_end(url)]
    userinfo, at, rest = url[len(prefix):].rpartition("@")
    if not at:
        return prefix, None, None, None
    user, colon, password = userinfo.partition(":")
    return prefix, user, (password if colon else None), rest


def _scheme_end(text: str) -> int:
    """The end of the first "scheme://" in ``text``, or 0. Linear in the text's
    length: a regular expression search for it is quadratic on a long run of
    letters (a 100 KB value took a minute)."""
    start = 0
    while True:
        separator = text.find("://", start)
        if separator < 0:
            return 0
        begin = separator
        while begin > 0 and (text[begin - 1].isascii() and (text[begin - 1].isalnum() or text[begin - 1] in "+.-")):
            begin -= 1
        while begin < separator and not text[begin].isalpha():
            begin += 1  # a scheme starts with a letter
        if begin < separator:
            return separator + 3
        start = separator + 1


def _percent_encode(text: str) -> str:
    """Percent-encode what would end a URL's user info early or that a URL
    parser may refuse ("/", "?", "#", "@", ":", spaces, controls, non-ASCII);
    "%" is kept, as it already encodes."""
    return quote(text, safe="!$&'()*+,;=%")


def _encode_userinfo(url: str) -> str:
    """The URL with its user and password percent-encoded where a raw character
    would make a URL parser (pika's) end them early: amqp://u:a/b@h becomes
    amqp://u:a%2Fb@h, the same password. A "%" is kept: it already encodes."""
    prefix, user, password, rest = _split_userinfo(url)
    if rest is None:
        return url
    userinfo = _percent_encode(user) + ("" if password is None else ":" + _percent_encode(password))
    return f"{prefix}{userinfo}@{rest}"


def redact_url(url: Union[str, None]) -> str:
    """Hide the password of a broker URL: amqp://guest:***@host, whatever
    characters the password holds. Without an "@", what follows the host's
    ":" is shown only if it is a port number (it may be a password whose "@"
    was forgotten)."""
    if not url:
        return str(url)
    prefix, user, password, rest = _split_userinfo(url)
    if rest is not None:
        return url if password is None else f"{prefix}{user}:***@{rest}"
    if not prefix:
        return url
    after_scheme = url[len(prefix):]
    authority = re.match(r"(\[[^\]]*\])?[^/?#]*", after_scheme).group(0)
    host_end = authority.find("]") + 1 if authority.startswith("[") else 0
    host, colon, port = authority[host_end:].partition(":")
    if not colon or port.isdigit():
        return url
    return f"{prefix}{authority[:host_end]}{host}:***"
