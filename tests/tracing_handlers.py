"""A handler for tests/test_tracing.py: it records, as JSON lines in
$WQD_TEST_RECORD, whether OpenTelemetry is loaded in its worker, the trace
context it runs in and the one its message's headers carry; a body "fail"
makes it raise."""

import json
import os
import sys

import wqd


def observe(message: wqd.Message) -> None:
    entry = {"id": message.message_id, "attempt": message.attempt, "otel_loaded": "opentelemetry" in sys.modules,
             "traceparent": message.headers.get("traceparent")}
    if entry["otel_loaded"]:
        from opentelemetry import trace  # only when tracing loaded it: this must not load it itself

        context = trace.get_current_span().get_span_context()
        entry.update(trace_id=f"{context.trace_id:032x}", span_id=f"{context.span_id:016x}")
    fd = os.open(os.environ["WQD_TEST_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)
    if message.body == b"fail":
        raise RuntimeError(f"task {message.message_id} failed on purpose")
