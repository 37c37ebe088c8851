"""Load and validate wqd's YAML configuration.

Every key is declared once, as a field of the frozen dataclass its section
becomes: its type, default, check and one line of doc (see ``key``). The
validator walks those declarations; nothing else lists keys or defaults.
Errors are collected, not raised one at a time, so an operator fixes a file in
one pass; each names the file, the line (where YAML knows it) and the key path.
"""

import dataclasses
import os
import re
from typing import Any, Callable, Optional, Union
from urllib.parse import urlsplit, urlunsplit

import yaml

from wqd.errors import ConfigError  # noqa: F401  (raised here; callers catch it from here too)

DEFAULT_CONFIG_PATH = "/etc/wqd/wqd.yaml"
DEFAULT_BROKER_URL = "amqp://guest:guest@localhost:5672/%2F"


def _shown(value: Any) -> str:
    """A value for an error message; URLs lose their password."""
    if isinstance(value, str) and "://" in value:
        return repr(redact_url(value))
    if isinstance(value, list):
        return "[" + ", ".join(_shown(item) for item in value) + "]"
    return repr(value)


# -- value checks: each returns the cleaned value or raises ValueError(expected) --


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("expected a positive integer")
    return value


def non_negative_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected an integer >= 0")
    return value


def positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("expected a positive number of seconds")
    return float(value)


def factor_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
        raise ValueError("expected a number >= 1")
    return float(value)


def non_empty_str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty string")
    return value


def readable_file(value: Any) -> str:
    """A file this process can read now: a wrong TLS path fails `wqd check`,
    not every connection attempt of every worker later."""
    value = non_empty_str(value)
    if not os.path.isfile(value) or not os.access(value, os.R_OK):
        raise ValueError("expected a readable file")
    return value


def one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError("expected one of " + ", ".join(choices))
        return value

    return check


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check_optional(value: Any) -> Any:
        return None if value is None else check(value)

    return check_optional


def handler_ref(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[\w.]+:[\w.]+", value):
        raise ValueError('expected "module:callable"')
    return value


def broker_url(value: Any) -> str:
    if not isinstance(value, str) or urlsplit(value).scheme not in ("amqp", "amqps"):
        raise ValueError("expected an amqp:// or amqps:// URL")
    return value


def broker_urls(value: Any) -> tuple:
    """One URL, or a list of them (the nodes of a cluster)."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError("expected an amqp:// or amqps:// URL or a list of them")
    try:
        return tuple(broker_url(item) for item in values)
    except ValueError:
        raise ValueError("expected an amqp:// or amqps:// URL or a list of them") from None


def listen_address(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"\[?[\w.:-]*\]?:\d{1,5}", value):
        raise ValueError('expected "host:port" or null')
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
        env: Optional[str] = None, when_absent: Optional[Callable[[dict], Any]] = None):
    """Declare a configuration key as a dataclass field; the validator walks these.

    ``check`` returns the cleaned value or raises ValueError saying what was
    expected (or is a Section or SectionList); without ``default`` the key is
    required. ``name`` is the YAML key when it differs from the attribute.
    ``env`` names an environment variable that overrides the file, split at
    commas into a list. ``when_absent(values)`` computes the value of a key the
    file leaves out from its section's other values (the dataclass default then
    serves only code that builds the section itself).
    """
    return dataclasses.field(default=default, metadata={
        "check": check, "doc": doc, "name": name, "env": env, "when_absent": when_absent})


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
                      doc="a URL, or a list of them (one per cluster node; workers spread over them)")
    heartbeat: int = key(non_negative_int, 60, doc="AMQP heartbeat, seconds (0 disables)")
    tls: Optional[TLSConfig] = key(Section(TLSConfig, nullable=True), None,
                                   doc="{ca_file, cert_file, key_file} for amqps:// URLs")

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


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    level: str = key(one_of("debug", "info", "warning", "error"), "info", doc="the least severe level logged")
    format: str = key(one_of("text", "json"), "text", doc="text, or json (one object per line)")


@dataclasses.dataclass(frozen=True)
class ShutdownConfig:
    graceful_timeout: float = key(positive_number, 30.0,
                                  doc="on SIGTERM, how long workers may finish their task before they are killed")


@dataclasses.dataclass(frozen=True)
class RetryDelay:
    initial: float = key(positive_number, 1.0, doc="seconds before the first retry")
    max: float = key(positive_number, 300.0, doc="the longest delay, seconds")
    factor: float = key(factor_number, 2.0, doc="each retry waits this many times longer than the one before")


@dataclasses.dataclass(frozen=True)
class WorkerBounds:
    """A pool's worker count: fixed (``workers: 4`` is min = max = 4), or
    autoscaled between min and max (``workers: {min: 1, max: 8}``)."""

    min: int = key(positive_int, doc="workers kept however idle the pool is")
    max: int = key(positive_int, doc="workers at most, added one at a time while messages wait and all are busy")
    idle_timeout: float = key(positive_number, 30.0, doc="seconds a worker above min stays idle before it is retired")

    @property
    def autoscaled(self) -> bool:
        return self.max > self.min

    def __str__(self) -> str:
        return f"{self.min}..{self.max}" if self.autoscaled else str(self.min)


def worker_count(value: Any) -> WorkerBounds:
    """A positive integer, or a {min, max, idle_timeout} mapping checked along WorkerBounds' keys."""
    if not isinstance(value, dict):
        count = positive_int(value)
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
    name: str = key(non_empty_str, doc="unique; the label in metrics, logs and process titles")
    queue: str = key(non_empty_str, doc="the work queue, declared durable")
    handler: str = key(handler_ref, doc='"module:callable" run for each message')
    workers: WorkerBounds = key(worker_count, WorkerBounds(1, 1),
                                doc="worker processes: a number, or {min, max, idle_timeout} to autoscale")
    prefetch: int = key(positive_int, 1, doc="unacked messages per worker; 1 = fair dispatch")
    queue_type: str = key(one_of("classic", "quorum"), "classic", doc="classic, or quorum (for clusters)")
    max_retries: int = key(non_negative_int, 3, doc="retries after the first failed attempt; then dead-letter")
    retry_delay: RetryDelay = key(Section(RetryDelay), RetryDelay(), doc="the delay before each retry")
    dead_letter_queue: Optional[str] = key(optional(non_empty_str), None,
                                           when_absent=lambda values: values["queue"] + ".dead",
                                           doc="where given-up messages go (default <queue>.dead); null drops them")
    time_limit: Optional[float] = key(optional(positive_number), None,
                                      doc="seconds a task may run before its worker is killed and replaced")
    max_tasks_per_child: Optional[int] = key(optional(positive_int), None,
                                             doc="recycle a worker after this many tasks")
    max_memory_per_child: Optional[int] = key(optional(positive_int), None,
                                              doc="MiB of RSS; recycle a worker after the task that crossed it")

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
    pools: tuple = key(SectionList(PoolConfig, noun="pool", unique="name"),
                       doc="the worker pools, each consuming one queue")


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
        self.errors.append(f"{where}: {key_path}: {text}")

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
                self.error(f"{item_path}.{spec.unique}", f"duplicate {spec.noun} {spec.unique} {unique!r} "
                                                         f"(also {key_path}[{seen[unique]}])")
            elif isinstance(unique, str):
                seen[unique] = index
        return _INVALID if any(item is _INVALID for item in items) else tuple(items)

    def environment(self, check: Callable[[Any], Any], variable: str) -> Any:
        """A key's value from the environment (comma-separated), which wins over the file."""
        value = [item.strip() for item in os.environ[variable].split(",")]
        try:
            return check(value)
        except ValueError as exc:
            self.errors.append(f"${variable}: {exc}, got {_shown(value)}")
            return _INVALID


def _join(key_path: str, name: str) -> str:
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
    try:
        data = yaml.safe_load(text)
        lines: dict = {}
        _key_lines(yaml.compose(text, Loader=yaml.SafeLoader), "", lines)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    validator = _Validator(path, lines)
    config = validator.config(data)
    if validator.errors:
        raise ConfigError("\n".join(validator.errors))
    return config


def load(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from None
    return parse(text, path)


def default_path() -> str:
    return os.environ.get("WQD_CONFIG") or DEFAULT_CONFIG_PATH


def redact_url(url: Union[str, None]) -> str:
    """Hide the password of a broker URL: amqp://guest:***@host."""
    if not url:
        return str(url)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))
