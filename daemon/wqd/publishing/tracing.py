"""A PRODUCER span per message, when the application uses OpenTelemetry.

Only the OpenTelemetry API is used (wqd.tracing, the daemon's side, builds
an SDK provider of its own): the application's tracer provider and
propagators decide what is recorded and what the headers carry (W3C
``traceparent``). An application that set up tracing has imported
opentelemetry.trace; one that did not pays nothing, whether or not
OpenTelemetry is installed: it is not even imported.
"""

import sys

import wqd


def start(queue: str, message_id: str, headers, provider=None):
    """(span or None, headers carrying its context) for one message, its span
    from ``provider`` (default: the global tracer provider), continuing the
    current context."""
    if provider is None and "opentelemetry.trace" not in sys.modules:
        return None, headers
    from opentelemetry import propagate, trace

    tracer = trace.get_tracer("wqd", wqd.__version__, tracer_provider=provider)
    span = tracer.start_span(f"publish {queue}", kind=trace.SpanKind.PRODUCER, attributes={
        "messaging.system": "rabbitmq", "messaging.operation.type": "send", "messaging.operation.name": "publish",
        "messaging.destination.name": queue, "messaging.rabbitmq.destination.routing_key": queue,
        "messaging.message.id": message_id})
    carried = dict(headers or {})
    propagate.inject(carried, context=trace.set_span_in_context(span))
    return span, carried or headers


def end(span, error=None) -> None:
    if span is None:
        return
    if error is not None:
        from opentelemetry import trace

        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(trace.StatusCode.ERROR, str(error)[:1000])
    span.end()
