"""Every key of the configuration, declared once: the frozen dataclass of its
section, with its type, default, check and one line of doc (see ``key``)."""

import dataclasses
from typing import Any, Callable, Optional, Union

from wqd.config import otel
from wqd.config.checks import (
    ExecHandler,
    amqp_short,
    at_most,
    boolean,
    broker_urls,
    console_token_file,
    declare_mode,
    default_state_file,
    factor_number,
    handler_ref,
    listen_address,
    non_empty_str,
    non_negative_int,
    one_of,
    optional,
    positive_int,
    positive_number,
    queue_argument_map,
    readable_file,
    seconds,
    state_file_path,
)
from wqd.config.limits import (
    DEFAULT_BROKER_URL,
    DELIVERY_LIMIT_MARGIN,
    MAX_DEDUPLICATION_CAPACITY,
    MAX_QUORUM_RETRIES,
    MAX_RETRY_DELAY,
    MAX_WORKERS,
)
from wqd.config.outbox import outbox_table, postgres_dsn, psycopg_problem

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
        missing = otel.missing_module()
        if missing:
            return [("enabled", f"is true, but OpenTelemetry is not installed (no module {missing}): install wqd "
                                f"with its otel extra, pip install 'wqd[otel]', or set tracing.enabled: false")]
        problem = otel.environment_problem()
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
        own = arguments_wqd_sets(self) & {name for name, _ in self.queue_arguments}
        if own:
            return [("queue_arguments", f"names {', '.join(sorted(own))}, which wqd sets itself for this pool "
                                        f"(from queue_type, max_retries, dead_letter_queue and time_limit); "
                                        f"leave it out")]
        if self.queue_type == "quorum" and self.max_retries > MAX_QUORUM_RETRIES:
            return [("max_retries", (
                f"is {self.max_retries}, above the {MAX_QUORUM_RETRIES} a quorum pool allows: wqd declares "
                f"a quorum queue with a delivery limit of max_retries + {1 + DELIVERY_LIMIT_MARGIN} (the "
                f"broker dead-letters a message past it, with x-death reason delivery_limit), and a message that "
                f"is redelivered that often keeps the queue's log from being truncated; lower max_retries to "
                f"{MAX_QUORUM_RETRIES} or less, or use queue_type: classic"))]
        return []

    def same_settings(self, other: "PoolConfig") -> bool:
        """True when only the worker count differs (a scale, not a replace)."""
        return dataclasses.replace(self, workers=other.workers) == other


@dataclasses.dataclass(frozen=True)
class OutboxConfig:
    dsn: Optional[str] = key(optional(postgres_dsn), None, env="WQD_OUTBOX_DSN", shown="$WQD_OUTBOX_DSN",
                             doc="the PostgreSQL database of the outbox table (a postgresql:// URL or a key=value "
                                 "string); its password is never printed")
    table: str = key(outbox_table, "wqd_outbox", doc="the outbox table, optionally schema.table")
    batch: int = key(at_most(10_000, positive_int), 500, doc="rows the relay takes and publishes per transaction")

    def conflicts(self) -> list:
        """A DSN from the file or the environment, and psycopg to use it."""
        if not self.dsn:
            return [("dsn", "is missing: set outbox.dsn or $WQD_OUTBOX_DSN")]
        problem = psycopg_problem()
        return [("dsn", f"is set, but {problem}")] if problem else []


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
    outbox: Optional[OutboxConfig] = key(Section(OutboxConfig, nullable=True), None,
                                         doc="a PostgreSQL transactional outbox the master relays (see The outbox)")
    console: ConsoleConfig = key(Section(ConsoleConfig), ConsoleConfig(),
                                 doc="the operator's console in a browser (see The console)")

def arguments_wqd_sets(pool) -> set:
    """The work queue arguments wqd decides for ``pool``, on some broker version."""
    own = {"x-queue-type"}
    if pool.queue_type == "quorum":
        own |= {"x-delivery-limit"}
        if pool.dead_letter_queue:
            own |= {"x-dead-letter-exchange", "x-dead-letter-routing-key", "x-dead-letter-strategy", "x-overflow"}
    if pool.time_limit is not None:
        own.add("x-consumer-timeout")
    return own
