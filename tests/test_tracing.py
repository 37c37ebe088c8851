"""Tracing (tracing: {enabled: true}): the span of a task and of a `wqd publish`
message in process, with the SDK's in-memory exporter; then end to end, `wqd
publish` and `wqd run` exporting over OTLP/HTTP to a receiver on loopback, a
trace followed from the publisher through a worker and a retry to the dead
letter; and with tracing off, no OpenTelemetry loaded at all."""

import json
import signal
import subprocess
import sys
import threading

import pika
import pika.spec
import pytest
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.support.daemon import pool, run_cli, wqd_env
from tests.support.otlp import OtlpReceiver
from tests.support.queues import wait_queue
from tests.support.waiting import wait_for
from wqd import config as config_module
from wqd import tracing
from wqd.config import otel
from wqd.handlers import exec_handler
from wqd.ipc.task_stats import Outcome
from wqd.message import Message
from wqd.publishing import tracing as publishing_tracing
from wqd.worker.routing import Task

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
FAST_RETRY = {"initial": 0.2, "max": 0.2}


def _hex(span_id: int, width: int = 16) -> str:
    return f"{span_id:0{width}x}"


@pytest.fixture
def exporter():
    return InMemorySpanExporter()


@pytest.fixture
def task_tracing(exporter):
    traced = tracing.TaskTracing(config_module.PoolConfig("p", "jobs", "m:f"), "p[1]", [exporter])
    yield traced
    traced.shutdown()


def _task(headers=None, attempt=1, **properties) -> Task:
    message = Message(b"body", pika.BasicProperties(headers=headers, **properties), attempt > 1, attempt,
                      "jobs", "p", "p[1]")
    return Task(7, message, properties.get("message_id", "key"))


DELIVERY = pika.spec.Basic.Deliver(delivery_tag=7, routing_key="jobs")


def _finished(task_tracing, exporter):
    task_tracing.provider.force_flush()
    return exporter.get_finished_spans()


# -- in process --


def test_a_task_span_continues_the_message_trace(task_tracing, exporter):
    task = _task({"traceparent": TRACEPARENT.encode(), "tracestate": "vendor=1", "tenant": "acme"},
                 message_id="m-1", correlation_id="order-9")
    seen = {}

    def run_task(task):
        seen["headers"] = task.message.headers  # what the handler sees
        task.duration = 0.25
        return Outcome.SUCCEEDED

    task_tracing.run(DELIVERY, task, run_task)
    (span,) = _finished(task_tracing, exporter)
    assert span.name == "process jobs" and span.kind is SpanKind.CONSUMER
    assert (_hex(span.context.trace_id, 32), _hex(span.parent.span_id)) == (TRACE, PARENT)
    assert span.parent.is_remote and dict(span.context.trace_state) == {"vendor": "1"}
    assert dict(span.attributes) == {
        "messaging.system": "rabbitmq", "messaging.operation.type": "process", "messaging.operation.name": "process",
        "messaging.destination.name": "jobs", "messaging.rabbitmq.destination.routing_key": "jobs",
        "messaging.rabbitmq.message.delivery_tag": 7, "messaging.message.id": "m-1",
        "messaging.message.conversation_id": "order-9", "wqd.attempt": 1, "wqd.redelivered": False,
        "wqd.outcome": "succeeded", "wqd.duration": 0.25}
    assert (span.resource.attributes["wqd.pool"], span.resource.attributes["wqd.worker"]) == ("p", "p[1]")
    assert span.resource.attributes["service.name"] == "wqd"
    assert span.status.status_code is StatusCode.UNSET and not span.events
    # The handler (and any copy) sees the task span's context; other headers are kept.
    assert seen["headers"] == {"traceparent": f"00-{TRACE}-{_hex(span.context.span_id)}-01",
                               "tracestate": "vendor=1", "tenant": "acme"}


def test_a_failed_task_records_its_exception(task_tracing, exporter):
    def run_task(task):
        try:
            raise ValueError("no such order")
        except ValueError as exc:  # as the consumer catches a handler's raise
            task.error = exc
        task.duration = 0.01
        return Outcome.RETRIED

    task_tracing.run(DELIVERY, _task({"traceparent": TRACEPARENT}, attempt=2), run_task)
    (span,) = _finished(task_tracing, exporter)
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "ValueError: no such order"
    assert span.attributes["error.type"] == "ValueError" and span.attributes["wqd.outcome"] == "retried"
    assert span.attributes["wqd.attempt"] == 2 and span.attributes["wqd.redelivered"] is True
    (event,) = span.events
    assert event.name == "exception" and event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "no such order"
    assert "raise ValueError" in event.attributes["exception.stacktrace"]


def test_a_task_whose_connection_was_lost_ends_its_span_failed(task_tracing, exporter):
    def run_task(task):
        task.duration = 0.01
        raise pika.exceptions.StreamLostError("gone")

    with pytest.raises(pika.exceptions.StreamLostError):
        task_tracing.run(DELIVERY, _task(), run_task)
    (span,) = _finished(task_tracing, exporter)
    assert span.attributes["wqd.outcome"] == "failed"
    assert span.parent is None  # no trace context in the headers: a trace of its own
    from opentelemetry import trace
    assert not trace.get_current_span().get_span_context().is_valid  # the task's context was detached


def test_a_publish_span_continues_a_given_or_inherited_context(exporter, monkeypatch):
    """`wqd publish`'s tracing: the library's PRODUCER span, from the command's provider, continues
    a traceparent given with --header, else $TRACEPARENT."""
    with tracing.PublishTracing({"traceparent": TRACEPARENT}, [exporter]) as given:
        span, headers = publishing_tracing.start("jobs", "m-1", {"traceparent": TRACEPARENT, "tenant": "acme"},
                                                 given.provider)
        publishing_tracing.end(span)
    monkeypatch.setenv("TRACEPARENT", f"00-{'1' * 32}-{'2' * 16}-01")
    second_exporter = InMemorySpanExporter()  # a shut down exporter takes no more spans
    with tracing.PublishTracing({}, [second_exporter]) as inherited:
        other, _ = publishing_tracing.start("jobs", "m-2", {}, inherited.provider)
        publishing_tracing.end(other, RuntimeError("refused"))
    (first,), (second,) = exporter.get_finished_spans(), second_exporter.get_finished_spans()
    assert first.name == "publish jobs" and first.kind is SpanKind.PRODUCER
    assert (_hex(first.context.trace_id, 32), _hex(first.parent.span_id)) == (TRACE, PARENT)
    assert headers == {"traceparent": f"00-{TRACE}-{_hex(first.context.span_id)}-01", "tenant": "acme"}
    assert first.attributes["messaging.message.id"] == "m-1" and first.attributes["messaging.operation.type"] == "send"
    assert (_hex(second.context.trace_id, 32), _hex(second.parent.span_id)) == ("1" * 32, "2" * 16)
    assert second.status.status_code is StatusCode.ERROR


def test_headers_keep_their_context_when_there_is_no_span_to_carry():
    from opentelemetry.context import Context
    headers = {"traceparent": TRACEPARENT, "tenant": "acme"}
    assert tracing.with_context(headers, Context()) == headers  # e.g. OTEL_SDK_DISABLED=true: no span was made


def test_an_exec_command_gets_the_trace_context():
    message = Message(b"", pika.BasicProperties(headers={"traceparent": TRACEPARENT.encode(), "tracestate": "a=1"}),
                      False, 1, "q", "p", "p[1]")
    environment = exec_handler.environment(message)
    assert (environment["TRACEPARENT"], environment["TRACESTATE"]) == (TRACEPARENT, "a=1")
    assert "TRACEPARENT" not in exec_handler.environment(Message(b"", pika.BasicProperties(), False, 1,
                                                                 "q", "p", "p[1]"))


def test_shutdown_gives_up_on_an_exporter_that_hangs():
    release = threading.Event()

    class Hanging(InMemorySpanExporter):
        def export(self, spans):
            release.wait(30)
            return SpanExportResult.SUCCESS

    provider = tracing.tracer_provider([Hanging()])
    provider.get_tracer("test").start_span("stuck").end()
    try:
        assert tracing.shutdown(provider, timeout=0.5) is False
    finally:
        release.set()


@pytest.mark.parametrize("variables, problem", [
    ({"OTEL_TRACES_EXPORTER": "otlp,zipkin"}, "$OTEL_TRACES_EXPORTER names 'zipkin'; wqd knows otlp, console, none"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "the OTLP protocol is 'grpc'"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_TRACES_EXPORTER": "console"}, None),
    ({"OTEL_TRACES_EXPORTER": "none"}, None),
])
def test_the_environment_is_checked(monkeypatch, variables, problem):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    found = otel.environment_problem()
    assert found == problem if problem is None else problem in found


# -- `wqd check` --


def _config(tmp_path, tracing_section) -> str:
    path = tmp_path / "wqd.yaml"
    path.write_text(json.dumps({"tracing": tracing_section,
                                "pools": [{"name": "p", "queue": "q", "handler": "wqd.examples:noop"}]}))
    return str(path)


def test_check_says_where_spans_go_and_refuses_what_it_cannot_use(tmp_path):
    config = _config(tmp_path, {"enabled": True})
    checked = run_cli("check", "-c", config, env=wqd_env(tmp_path / "record", {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/", "OTEL_TRACES_EXPORTER": "otlp,console"}))
    assert checked.returncode == 0 and checked.stdout.rstrip().endswith(
        "; spans to OTLP/HTTP to http://collector:4318/v1/traces and stdout (console)"), checked
    bad_exporter = run_cli("check", "-c", config, env=wqd_env(tmp_path / "record", {"OTEL_TRACES_EXPORTER": "jaeger"}))
    assert bad_exporter.returncode == 78 and "$OTEL_TRACES_EXPORTER names 'jaeger'" in bad_exporter.stderr
    not_a_bool = run_cli("check", "-c", _config(tmp_path, {"enabled": "yes"}), env=wqd_env(tmp_path / "record"))
    assert not_a_bool.returncode == 78 and "tracing.enabled: expected true or false, got 'yes'" in not_a_bool.stderr


# -- end to end: `wqd publish`, `wqd run`, OTLP/HTTP --


def _observed(wqd) -> list:
    return [json.loads(line) for line in wqd.record.read_text().splitlines() if line.strip()]


def test_a_trace_is_followed_from_the_publisher_to_the_dead_letter(broker, queue_name, make_wqd):
    with OtlpReceiver() as receiver:
        # Spans are exported in batches every few seconds; with the delay this long, only the
        # flush of a stopping worker (and of `wqd publish` at its end) can export them.
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "600000",
               "OTEL_SERVICE_NAME": "wqd-test"}
        exec_queue = queue_name + ".exec"  # a one-shot command writes the TRACEPARENT it was given
        wqd = make_wqd([pool(queue_name, handler="tracing_handlers:observe", workers=1, max_retries=1,
                             retry_delay=FAST_RETRY),
                        pool(exec_queue, name="exec", workers=1, handler={
                            "exec": ["/bin/sh", "-c", 'printf %s "$TRACEPARENT" > "$WQD_TEST_RECORD.exec"']})],
                       extra_env=env)
        wqd.config["tracing"] = {"enabled": True}
        wqd.write_config()
        wqd.start()
        broker.publish(exec_queue, b"", declare=False, headers={"traceparent": f"00-{'5' * 32}-{'6' * 16}-01"})
        published = run_cli("publish", "-c", str(wqd.config_path), "--header", f"traceparent={TRACEPARENT}",
                            "--header", "tracestate=vendor=1", "hello", env=wqd.env)
        assert published.returncode == 0, published
        broker.publish(queue_name, b"fail", declare=False, message_id="m-fail",
                       headers={"traceparent": f"00-{'3' * 32}-{'4' * 16}-01"})
        wait_queue(broker, queue_name + ".dead", 60, "the failing task dead-lettered", messages_ready=1)
        wait_for(lambda: wqd.metric("wqd_tasks_total", pool="default", outcome="succeeded") == 1, 30,
                 message="hello acked")
        wait_for(lambda: wqd.metric("wqd_tasks_total", pool="exec", outcome="succeeded") == 1, 30,
                 message="the command ran")
        (dead_body, dead_properties), = broker.get_all_messages(queue_name + ".dead")
        assert wqd.stop() == 0
        broker.delete_queue(exec_queue)
        broker.delete_queue(exec_queue + ".dead")
        wait_for(lambda: len(receiver.spans()) == 5, 30, message=lambda: f"five spans: {receiver.spans()}")

    (publish,) = receiver.spans(f"publish {queue_name}")
    assert publish["kind"] == "producer" and publish["path"] == "/v1/traces"
    assert (publish["trace_id"], publish["parent_span_id"], publish["trace_state"]) == (TRACE, PARENT, "vendor=1")
    assert publish["resource"]["service.name"] == "wqd-test"
    hello, first, second = receiver.spans(f"process {queue_name}")
    # The worker continued the publisher's span.
    assert hello["kind"] == "consumer" and hello["status"] == "unset"
    assert (hello["resource"]["service.name"], hello["resource"]["wqd.worker"]) == ("wqd-test", "default[1]")
    assert (hello["trace_id"], hello["parent_span_id"]) == (TRACE, publish["span_id"])
    message_id = publish["attributes"]["messaging.message.id"]
    assert {key: hello["attributes"][key] for key in (
        "messaging.system", "messaging.destination.name", "messaging.rabbitmq.destination.routing_key",
        "messaging.message.id", "messaging.operation.type", "wqd.attempt", "wqd.outcome")} == {
        "messaging.system": "rabbitmq", "messaging.destination.name": queue_name,
        "messaging.rabbitmq.destination.routing_key": queue_name, "messaging.message.id": message_id,
        "messaging.operation.type": "process", "wqd.attempt": 1, "wqd.outcome": "succeeded"}
    # The handler ran in the task's span, and its message's headers carry it.
    observed = {(entry["id"], entry["attempt"]): entry for entry in _observed(wqd)}
    handler = observed[message_id, 1]
    assert handler["otel_loaded"] and (handler["trace_id"], handler["span_id"]) == (TRACE, hello["span_id"])
    assert handler["traceparent"] == f"00-{TRACE}-{hello['span_id']}-01"
    # The failed attempt recorded its exception; its retry continued from it; the dead letter carries the last.
    assert (first["trace_id"], first["parent_span_id"]) == ("3" * 32, "4" * 16)
    assert (first["attributes"]["wqd.attempt"], first["attributes"]["wqd.outcome"]) == (1, "retried")
    assert first["status"] == "error" and first["attributes"]["error.type"] == "RuntimeError"
    (exception,) = first["events"]
    assert exception["name"] == "exception"
    assert exception["attributes"]["exception.message"] == "task m-fail failed on purpose"
    assert (second["trace_id"], second["parent_span_id"]) == ("3" * 32, first["span_id"])
    assert (second["attributes"]["wqd.attempt"], second["attributes"]["wqd.outcome"]) == (2, "dead_lettered")
    assert dead_body == b"fail" and dead_properties.headers["traceparent"] == f"00-{'3' * 32}-{second['span_id']}-01"
    # A command runs in the task's span too.
    (command,) = receiver.spans(f"process {exec_queue}")
    assert (command["trace_id"], command["parent_span_id"]) == ("5" * 32, "6" * 16)
    assert (wqd.workdir / "record.jsonl.exec").read_text() == f"00-{'5' * 32}-{command['span_id']}-01"


def test_tracing_off_loads_no_opentelemetry_and_a_reload_turns_it_on(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, handler="tracing_handlers:observe", workers=1)],
                   extra_env={"OTEL_TRACES_EXPORTER": "none"}).start()
    (worker,) = wqd.worker_pids()
    # -X importtime lists every module the process imports (on stderr).
    published = subprocess.run([sys.executable, "-X", "importtime", "-m", "wqd", "publish", "-c", str(wqd.config_path),
                                "--header", f"traceparent={TRACEPARENT}", "hello"],
                               env=wqd.env, capture_output=True, text=True, timeout=60)
    assert published.returncode == 0, published
    assert "wqd.cli.publish" in published.stderr and "opentelemetry" not in published.stderr
    (entry,) = wait_for(lambda: _observed(wqd), 30, message="the task ran")
    # Nothing loaded OpenTelemetry in the worker, nor in the master it was forked from;
    # the publisher's context passes through untouched.
    assert entry["otel_loaded"] is False and entry["traceparent"] == TRACEPARENT

    wqd.config["tracing"] = {"enabled": True}
    wqd.write_config()
    wqd.signal(signal.SIGHUP)
    wait_for(lambda: wqd.worker_pids(consuming_only=True) not in ([], [worker]), 30,
             message=lambda: f"the worker replaced\n{wqd.logs()}")
    broker.publish(queue_name, b"after", declare=False, message_id="m-after", headers={"traceparent": TRACEPARENT})
    after = wait_for(lambda: [entry for entry in _observed(wqd) if entry["id"] == "m-after"], 30,
                     message="the task ran after the reload")
    assert after[0]["otel_loaded"] is True and after[0]["trace_id"] == TRACE
