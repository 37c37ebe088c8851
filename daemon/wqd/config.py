"""Load and validate wqd's YAML configuration.

Every key is declared once below with its type, default and a check. Errors
are collected, not raised one at a time, so an operator fixes a file in one
pass; each names the file, the line (where YAML knows it) and the key path.
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


# -- the schema --

REQUIRED = object()
DERIVED = object()  # computed from other keys after validation


@dataclasses.dataclass(frozen=True)
class TLSConfig:
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class BrokerConfig:
    urls: tuple = (DEFAULT_BROKER_URL,)  # one per cluster node; workers spread over them
    heartbeat: int = 60
    tls: Optional[TLSConfig] = None

    @property
    def url(self) -> str:
        """The first URL: the one one-shot commands try first, and messages show."""
        return self.urls[0]


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    listen: Optional[str] = "127.0.0.1:9808"


@dataclasses.dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "text"


@dataclasses.dataclass(frozen=True)
class ShutdownConfig:
    graceful_timeout: float = 30.0


@dataclasses.dataclass(frozen=True)
class RetryDelay:
    initial: float = 1.0
    max: float = 300.0
    factor: float = 2.0


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    name: str
    queue: str
    handler: str
    workers: int = 1
    prefetch: int = 1
    queue_type: str = "classic"
    max_retries: int = 3
    retry_delay: RetryDelay = RetryDelay()
    dead_letter_queue: Optional[str] = None
    time_limit: Optional[float] = None
    max_tasks_per_child: Optional[int] = None
    max_memory_per_child: Optional[int] = None

    def same_settings(self, other: "PoolConfig") -> bool:
        """True when only the worker count differs (a scale, not a replace)."""
        return dataclasses.replace(self, workers=other.workers) == other


@dataclasses.dataclass(frozen=True)
class Config:
    path: str
    broker: BrokerConfig
    metrics: MetricsConfig
    logging: LoggingConfig
    shutdown: ShutdownConfig
    pools: tuple


# Key -> (check, default). REQUIRED marks keys without a default.
SECTION_SCHEMAS = {
    "broker": {
        "url": (broker_urls, (DEFAULT_BROKER_URL,)),
        "heartbeat": (non_negative_int, 60),
        "tls": (None, None),  # a nested section, see TLS_SCHEMA
    },
    "metrics": {"listen": (listen_address, "127.0.0.1:9808")},
    "logging": {
        "level": (one_of("debug", "info", "warning", "error"), "info"),
        "format": (one_of("text", "json"), "text"),
    },
    "shutdown": {"graceful_timeout": (positive_number, 30.0)},
}
TLS_SCHEMA = {
    "ca_file": (optional(readable_file), None),
    "cert_file": (optional(readable_file), None),
    "key_file": (optional(readable_file), None),
}
RETRY_DELAY_SCHEMA = {
    "initial": (positive_number, 1.0),
    "max": (positive_number, 300.0),
    "factor": (factor_number, 2.0),
}
POOL_SCHEMA = {
    "name": (non_empty_str, REQUIRED),
    "queue": (non_empty_str, REQUIRED),
    "handler": (handler_ref, REQUIRED),
    "workers": (positive_int, 1),
    "prefetch": (positive_int, 1),
    "queue_type": (one_of("classic", "quorum"), "classic"),
    "max_retries": (non_negative_int, 3),
    "retry_delay": (None, None),  # nested, see RETRY_DELAY_SCHEMA
    "dead_letter_queue": (optional(non_empty_str), DERIVED),  # absent = "<queue>.dead"
    "time_limit": (optional(positive_number), None),
    "max_tasks_per_child": (optional(positive_int), None),
    "max_memory_per_child": (optional(positive_int), None),
}


class _Validator:
    """Walks the loaded YAML against the schemas, collecting errors."""

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

    def section(self, data: Any, schema: dict, key_path: str) -> dict:
        """Check a mapping against a schema; return cleaned values (defaults filled)."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.error(key_path, f"expected a mapping, got {repr(data)}")
            return {}
        for key in data:
            if key not in schema:
                self.error(f"{key_path}.{key}", "unknown key")
        cleaned = {}
        for key, (check, default) in schema.items():
            sub_path = f"{key_path}.{key}"
            if key not in data:
                if default is REQUIRED:
                    self.error(sub_path, "required key is missing")
                cleaned[key] = default
                continue
            if check is None:
                cleaned[key] = data[key]
                continue
            try:
                cleaned[key] = check(data[key])
            except ValueError as exc:
                self.error(sub_path, f"{exc}, got {_shown(data[key])}")
        return cleaned

    def config(self, data: Any) -> Optional[Config]:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.errors.append(f"{self.path}: expected a mapping at the top level")
            return None
        for key in data:
            if key not in ("broker", "metrics", "logging", "shutdown", "pools"):
                self.error(key, "unknown key")

        broker = self.section(data.get("broker"), SECTION_SCHEMAS["broker"], "broker")
        tls = None
        if broker.get("tls") is not None:
            tls = TLSConfig(**self.section(broker["tls"], TLS_SCHEMA, "broker.tls"))
        urls = broker.get("url") or (DEFAULT_BROKER_URL,)
        environment_url = os.environ.get("WQD_BROKER_URL")
        if environment_url:  # comma-separated for a cluster
            try:
                urls = broker_urls([url.strip() for url in environment_url.split(",")])
            except ValueError as exc:
                self.errors.append(f"$WQD_BROKER_URL: {exc}, got {_shown(environment_url.split(','))}")
        broker_config = BrokerConfig(urls=urls, heartbeat=broker.get("heartbeat", 60), tls=tls)
        if tls is not None and not any(url.startswith("amqps://") for url in urls):
            self.error("broker.tls", "is only used with amqps:// URLs, but no broker URL is amqps://")
        if tls is not None and tls.key_file and not tls.cert_file:
            self.error("broker.tls.key_file", "is set without broker.tls.cert_file")

        metrics = MetricsConfig(**self.section(data.get("metrics"), SECTION_SCHEMAS["metrics"], "metrics"))
        logging_config = LoggingConfig(
            **self.section(data.get("logging"), SECTION_SCHEMAS["logging"], "logging")
        )
        shutdown = ShutdownConfig(
            **self.section(data.get("shutdown"), SECTION_SCHEMAS["shutdown"], "shutdown")
        )
        pools = self.pools(data.get("pools"))
        if self.errors:
            return None
        return Config(self.path, broker_config, metrics, logging_config, shutdown, tuple(pools))

    def pools(self, data: Any) -> list:
        if not isinstance(data, list) or not data:
            self.error("pools", f"expected a non-empty list of pools, got {repr(data)}")
            return []
        pools, seen = [], {}
        for index, item in enumerate(data):
            key_path = f"pools[{index}]"
            values = self.section(item, POOL_SCHEMA, key_path)
            name = values.get("name")
            if isinstance(name, str) and name in seen:
                self.error(f"{key_path}.name", f"duplicate pool name {name!r} (also pools[{seen[name]}])")
            elif isinstance(name, str):
                seen[name] = index
            if self.errors:
                continue  # the config is refused anyway; keep collecting errors
            if values["dead_letter_queue"] is DERIVED:
                values["dead_letter_queue"] = values["queue"] + ".dead"
            delay = self.section(values["retry_delay"], RETRY_DELAY_SCHEMA, f"{key_path}.retry_delay")
            values["retry_delay"] = RetryDelay(**delay) if delay else RetryDelay()
            pools.append(PoolConfig(**values))
        return pools


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
