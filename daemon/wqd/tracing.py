"""OpenTelemetry tracing: ``tracing: {enabled: true}``, with the wqd[otel] extra.

Imported only when tracing is enabled, so that with it off no wqd process
loads OpenTelemetry. Where spans go is the standard OTEL_* environment's
business (OTEL_TRACES_EXPORTER, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME,
OTEL_TRACES_SAMPLER, OTEL_PROPAGATORS...), read by the SDK itself.

A worker builds its TracerProvider after the fork (the batch processor's
export thread would not survive one) and shuts it down, within
SHUTDOWN_TIMEOUT, when it stops gracefully, so the spans of its last tasks
are exported. Each task runs in a CONSUMER span continuing the trace context
of the message's headers (W3C traceparent/tracestate). Before the handler
runs, the message's headers are given the task span's context instead, so
that a handler's own spans (and an exec command's, through TRACEPARENT) nest
under it, and a retried or dead-lettered copy, made from those headers,
continues the trace from the attempt that failed.
"""

import copy
import logging
import os
import threading
from typing import Optional

from opentelemetry import context, propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

import wqd
from wqd.broker.header_decoding import header_text
from wqd.config.otel import exporter_names
from wqd.ipc.task_stats import Outcome

log = logging.getLogger("wqd.tracing")

# How long a stopping worker (or `wqd publish`) waits for its last spans to be exported.
SHUTDOWN_TIMEOUT = 5.0
DEFAULT_SERVICE_NAME = "wqd"
# Every span's attributes follow OpenTelemetry's messaging semantic
# conventions. Their destination is the queue: wqd publishes to it through the
# default exchange, so the exchange the conventions name is always empty.
SYSTEM = {"messaging.system": "rabbitmq"}


def tracer_provider(exporters=None, attributes=None) -> TracerProvider:
    """A provider exporting through a batch processor per exporter named by
    $OTEL_TRACES_EXPORTER (or ``exporters``, span exporters: the tests'),
    its resource from $OTEL_SERVICE_NAME and $OTEL_RESOURCE_ATTRIBUTES
    (service.name "wqd" unless they name one) and ``attributes``."""
    resource = Resource.create({"service.version": wqd.__version__, **(attributes or {})})
    if resource.attributes.get("service.name", "").startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    for exporter in _exporters() if exporters is None else exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporters() -> list:
    found = []
    for name in dict.fromkeys(exporter_names()):
        if name == "otlp":
            # Imported here: a console-only setup does not load requests and protobuf.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            found.append(OTLPSpanExporter())  # OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS, _TIMEOUT...
        elif name == "console":
            found.append(ConsoleSpanExporter())
    return found


def shutdown(provider: TracerProvider, timeout: float = SHUTDOWN_TIMEOUT) -> bool:
    """Export what is left and stop, giving up after ``timeout`` seconds (an
    unreachable collector must not hold a stop); True when it finished."""
    done = threading.Thread(target=provider.shutdown, name="tracing shutdown", daemon=True)
    done.start()
    done.join(timeout)
    if done.is_alive():
        log.warning("Tracing: the last spans were not exported within %.0f s; they are dropped.", timeout)
        return False
    return True


class _HeaderGetter(Getter):
    """Reads trace context from AMQP headers, whose text values pika may hand over as bytes."""

    def get(self, carrier, key):
        value = header_text(carrier.get(key))
        return None if value is None else [value]

    def keys(self, carrier):
        return [key for key in carrier if isinstance(key, str)]


_GETTER = _HeaderGetter()


def extract(headers) -> context.Context:
    """The trace context a message's headers carry (an empty one when they carry none)."""
    return propagate.extract(headers if isinstance(headers, dict) else {}, getter=_GETTER)


class TaskTracing:
    """A worker's tracing: one CONSUMER span per task."""

    def __init__(self, pool, worker_name: str, exporters=None):
        """``exporters``: span exporters instead of $OTEL_TRACES_EXPORTER's (the tests')."""
        # The pool and the worker are the process's: its resource, not each span, holds them.
        self.provider = tracer_provider(exporters, {"wqd.pool": pool.name, "wqd.worker": worker_name})
        trace.set_tracer_provider(self.provider)  # a handler's own spans use it too
        self.tracer = self.provider.get_tracer("wqd", wqd.__version__)
        self.attributes = {**SYSTEM, "messaging.operation.type": "process", "messaging.operation.name": "process",
                           "messaging.destination.name": pool.queue}

    def run(self, method, task, run_task):
        """``run_task(task)`` (the handler, then the ack, retry or dead letter;
        it returns the Outcome, or None while a refused copy is held) in the
        task's span."""
        message = task.message
        attributes = dict(self.attributes)
        attributes.update({
            "messaging.rabbitmq.destination.routing_key": method.routing_key or "",
            "messaging.rabbitmq.message.delivery_tag": task.delivery_tag,
            "wqd.attempt": message.attempt,
            "wqd.redelivered": message.redelivered,
        })
        if message.message_id:
            attributes["messaging.message.id"] = message.message_id
        if message.properties.correlation_id:
            attributes["messaging.message.conversation_id"] = str(message.properties.correlation_id)
        span = self.tracer.start_span(f"process {message.queue}", context=extract(message.headers),
                                      kind=trace.SpanKind.CONSUMER, attributes=attributes)
        token = context.attach(trace.set_span_in_context(span))
        outcome = Outcome.FAILED  # unless run_task returns: the connection was lost, the broker requeues it
        try:
            properties = copy.copy(message.properties)  # the handler sees, and copies carry, this span's context
            properties.headers = with_context(message.properties.headers)
            message.properties = properties
            outcome = run_task(task)
        finally:
            self._end(span, task, outcome)
            context.detach(token)

    @staticmethod
    def _end(span, task, outcome) -> None:
        span.set_attribute("wqd.outcome", "held" if outcome is None else Outcome(outcome).value)
        if task.duration is not None:
            span.set_attribute("wqd.duration", task.duration)
        if task.error is not None:
            _record_error(span, task.error)
        span.end()

    def shutdown(self) -> bool:
        return shutdown(self.provider)


class PublishTracing:
    """`wqd publish`'s tracing: a tracer provider for the publishing library's
    PRODUCER spans (publishing/tracing.py), and, while entered, the context
    they continue: a traceparent given with --header, else
    $TRACEPARENT/$TRACESTATE (the convention for handing a process its context)."""

    def __init__(self, headers: dict, exporters=None):
        """``exporters``: span exporters instead of $OTEL_TRACES_EXPORTER's (the tests')."""
        self.provider = tracer_provider(exporters)
        fields = propagate.get_global_textmap().fields
        given = headers if any(name in fields for name in headers) else {
            name: os.environ[name.upper()] for name in fields if os.environ.get(name.upper())}
        self.parent = extract(given)
        self._token = None

    def __enter__(self) -> "PublishTracing":
        self._token = context.attach(self.parent)
        return self

    def __exit__(self, *exc) -> None:
        context.detach(self._token)
        self.shutdown()

    def shutdown(self) -> bool:
        return shutdown(self.provider)


def _record_error(span, error: BaseException) -> None:
    """The exception as an event (type, message, traceback), its class as error.type, and status ERROR."""
    span.set_attribute("error.type", type(error).__qualname__)
    span.record_exception(error)
    span.set_status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"[:1000])


def with_context(headers, ctx: Optional[context.Context] = None) -> dict:
    """A copy of ``headers`` carrying the trace context ``ctx`` (default: the
    current one) instead of any they had; as they were when there is none to
    carry (OTEL_SDK_DISABLED: no span was made)."""
    injected = {}
    propagate.inject(injected, context=ctx)
    if not injected:
        return dict(headers or {})
    fields = propagate.get_global_textmap().fields
    carried = {name: value for name, value in (headers or {}).items() if name not in fields}
    carried.update(injected)
    return carried
