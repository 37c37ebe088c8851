"""wqd.Publisher against a real broker: confirms, ids, body kinds, mandatory
routing, the missing-queue message, publish_many, threads and forks."""

import json
import os
import random
import threading
import time
import uuid

import pytest

import wqd
from tests.support.waiting import wait_for
from wqd import Publisher, PublishError
from wqd.publishing import BrokerUnreachable, QueueNotFound
from wqd.publishing.messages import new_message_id


@pytest.fixture
def work_queue(broker, queue_name):
    broker.declare_queue(queue_name)
    return queue_name


@pytest.fixture
def publisher(broker):
    with Publisher(broker.url, timeout=20) as publisher:
        yield publisher


def _messages(broker, queue):
    return broker.get_all_messages(queue)


def test_publish_returns_the_id_once_confirmed_and_encodes_each_body_kind(broker, work_queue, publisher):
    ids = [publisher.publish(work_queue, b"\x00raw"),
           publisher.publish(work_queue, "h\u00e9llo"),
           publisher.publish(work_queue, {"path": "a.jpg", "n": [1, 2]}),
           publisher.publish(work_queue, b"x", message_id="order-17", headers={"tenant": "a"},
                             content_type="image/jpeg")]
    assert ids[3] == "order-17" and all(len(i) == 32 and int(i, 16) >= 0 for i in ids[:3])
    assert len(set(ids)) == 4
    got = _messages(broker, work_queue)
    assert [body for body, _ in got] == [b"\x00raw", "h\u00e9llo".encode(), b'{"path":"a.jpg","n":[1,2]}', b"x"]
    assert [p.message_id for _, p in got] == ids
    assert [p.content_type for _, p in got] == [None, "text/plain; charset=utf-8", "application/json", "image/jpeg"]
    assert {p.delivery_mode for _, p in got} == {2}
    # (a test of this process may have set up OpenTelemetry: then each message carries its span's context)
    assert {k: v for k, v in got[3][1].headers.items() if k not in ("traceparent", "tracestate")} == {"tenant": "a"}
    assert json.loads(got[2][0]) == {"path": "a.jpg", "n": [1, 2]}


def test_a_missing_queue_is_named_with_the_way_to_declare_it(broker, queue_name, publisher):
    with pytest.raises(QueueNotFound) as caught:
        publisher.publish(queue_name, b"x")
    assert str(caught.value) == (f"queue {queue_name!r} does not exist: start wqd, or declare it as wqd does: "
                                 f"`wqd declare -c CONFIG`; nothing was sent")
    assert isinstance(caught.value, PublishError)
    assert not broker.queue_exists(queue_name)  # never declared by the publisher


def test_a_message_no_queue_takes_is_a_publish_error(broker, work_queue, publisher):
    """mandatory: the queue was checked, then deleted: the broker returns the message."""
    publisher.publish(work_queue, b"first")
    broker.delete_queue(work_queue)
    with pytest.raises(PublishError) as caught:
        publisher.publish(work_queue, b"lost", message_id="m-2")
    assert f"no queue took it: queue {work_queue!r} was deleted" in str(caught.value)
    assert caught.value.unconfirmed == ["m-2"] and caught.value.confirmed == []
    broker.declare_queue(work_queue)
    assert publisher.publish(work_queue, b"again", message_id="m-2") == "m-2"  # the connection is still usable
    assert broker.get_all(work_queue) == [b"again"]


def test_publish_many_confirms_every_message_in_order(broker, work_queue, publisher):
    bodies = [f"m{i}" for i in range(500)]
    ids = publisher.publish_many(work_queue, bodies, headers={"batch": "1"})
    assert len(ids) == 500 and len(set(ids)) == 500
    got = _messages(broker, work_queue)
    assert [b.decode() for b, _ in got] == bodies and [p.message_id for _, p in got] == ids
    assert publisher.publish_many(work_queue, []) == []
    assert publisher.publish_many(work_queue, [b"a", b"b"], message_ids=["x1", "x2"]) == ["x1", "x2"]


def test_bad_input_is_refused_before_anything_is_sent(broker, work_queue, publisher):
    with pytest.raises(TypeError, match="a message body must be bytes, str or a JSON-serialisable value; object"):
        publisher.publish(work_queue, object())
    with pytest.raises(ValueError, match="message_id must be a non-empty str"):
        publisher.publish(work_queue, b"x", message_id="")
    with pytest.raises(ValueError, match="delay must be a finite number of seconds >= 0"):
        publisher.publish(work_queue, b"x", delay=-1)
    with pytest.raises(ValueError, match="delay must be at most 2097151 s"):
        publisher.publish(work_queue, b"x", delay=30 * 86400)
    with pytest.raises(ValueError, match="publish_many: 1 message_ids for 2 bodies"):
        publisher.publish_many(work_queue, [b"a", b"b"], message_ids=["a"])
    with pytest.raises(ValueError, match="Publisher: broker URL"):
        Publisher("http://nope")
    assert broker.get_all(work_queue) == []


def test_a_broker_that_is_down_is_an_error_within_the_timeout(free_tcp_port):
    with Publisher(f"amqp://guest:secret@127.0.0.1:{free_tcp_port}/%2F", timeout=2) as publisher:
        began = time.monotonic()
        with pytest.raises(BrokerUnreachable) as caught:
            publisher.publish("q", b"x")
        took = time.monotonic() - began
    assert took < 4, took
    text = str(caught.value)
    assert "cannot reach the broker at amqp://guest:***@127.0.0.1" in text and "nothing was sent" in text
    assert "secret" not in text


def test_eight_threads_share_one_publisher(broker, work_queue, publisher):
    results, errors = [], []

    def run(number):
        try:
            for i in range(50):
                results.append(publisher.publish(work_queue, f"{number}-{i}"))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(results) == 400
    got = _messages(broker, work_queue)
    assert sorted(p.message_id for _, p in got) == sorted(results)
    for n in range(8):  # each thread's messages in its order
        mine = [b.decode() for b, _ in got if b.decode().startswith(f"{n}-")]
        assert mine == [f"{n}-{i}" for i in range(50)]


def test_a_forked_child_publishes_on_a_connection_of_its_own(broker, work_queue, publisher):
    publisher.publish(work_queue, b"parent before")
    parent_socket = publisher._connection._impl._transport._sock.getsockname()
    pid = os.fork()
    if pid == 0:  # the child: a new connection, never the parent's socket
        code = 1
        try:
            assert publisher._connection is None
            publisher.publish(work_queue, b"child")
            mine = publisher._connection._impl._transport._sock.getsockname()
            code = 0 if mine != parent_socket else 2
            publisher.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    publisher.publish(work_queue, b"parent after")  # the parent's connection was not disturbed
    assert publisher._connection._impl._transport._sock.getsockname() == parent_socket
    assert sorted(broker.get_all(work_queue)) == [b"child", b"parent after", b"parent before"]


def test_message_ids_are_uuid4s_no_fork_or_random_seed_repeats():
    ids = [new_message_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(i).hex == i and uuid.UUID(i).version == 4 for i in ids)
    random.seed(7)
    first = new_message_id()
    random.seed(7)  # an application seeding the random module
    assert new_message_id() != first
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child's next id: reseeded, not the parent's next one
        try:
            os.write(write, new_message_id().encode())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    assert uuid.UUID(child).version == 4 and child != new_message_id()


def test_wqd_exports_the_publisher_and_imports_it_on_first_use():
    import subprocess
    import sys
    code = ("import sys, wqd; light = 'pika' not in sys.modules; "
            "print(light, wqd.Publisher.__module__, 'aio_pika' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "wqd.publishing.publisher", "False"]  # a handler's `import wqd` stays light
    assert wqd.PublishError is PublishError


def test_delays_short_after_long_arrives_first(broker, work_queue, publisher):
    began = time.monotonic()
    publisher.publish(work_queue, b"long", delay=100)
    publisher.publish(work_queue, b"short", delay=3)
    publisher.publish(work_queue, b"now")
    got = []
    wait_for(lambda: got.extend(broker.get_all(work_queue)) or b"short" in got, 30, interval=0.2,
             message=lambda: f"got {got}")
    took = time.monotonic() - began
    assert got == [b"now", b"short"] and 3 <= took < 10, (got, took)
    # (the 64 s level, which no other test of the session's broker uses: test_async_publisher's
    # 60 s message can still wait at the 32 s level)
    wait_for(lambda: _count(broker, "wqd.delay.6") == 1, 10, message="100 = 64 + 32 + 4: the long one waits")


def _count(broker, queue):
    with broker.connection() as connection:
        return connection.channel().queue_declare(queue, passive=True).method.message_count


TRACED_APPLICATION = """
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import wqd

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
with trace.get_tracer("app").start_as_current_span("request") as request:
    with wqd.Publisher(sys.argv[1]) as publisher:
        message_id = publisher.publish(sys.argv[2], b"traced")
(span,) = [s for s in exporter.get_finished_spans() if s.name != "request"]
print(json.dumps({"name": span.name, "kind": span.kind.name, "id": message_id,
                  "attributes": dict(span.attributes), "trace_id": f"{span.context.trace_id:032x}",
                  "span_id": f"{span.context.span_id:016x}", "parent": f"{span.parent.span_id:016x}",
                  "request": f"{request.context.span_id:016x}"}))
"""


def test_with_an_application_tracer_provider_each_message_gets_a_producer_span(broker, work_queue):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", TRACED_APPLICATION, broker.url, work_queue], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    span = json.loads(out.stdout)
    assert (span["name"], span["kind"], span["parent"]) == (f"publish {work_queue}", "PRODUCER", span["request"])
    assert span["attributes"]["messaging.message.id"] == span["id"]
    assert span["attributes"]["messaging.destination.name"] == work_queue
    ((body, properties),) = broker.get_all_messages(work_queue)
    (traceparent,) = properties.headers.values()  # flags 01 or 03 (sampled; random trace id), by SDK version
    assert traceparent.startswith(f"00-{span['trace_id']}-{span['span_id']}-0")


def test_nacked_messages_are_sent_again_until_the_timeout_then_named(broker, queue_name):
    """A full queue with x-overflow reject-publish nacks; publish_many tells the confirmed from the rest."""
    broker.declare_queue(queue_name, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    with Publisher(broker.url, timeout=2) as publisher:
        began = time.monotonic()
        with pytest.raises(PublishError) as caught:
            publisher.publish_many(queue_name, [b"a", b"b", b"c"], message_ids=["a", "b", "c"])
        assert 1.0 < time.monotonic() - began < 4  # sent again 0.2, 0.4 and 0.8 s later: the next pause passes 2 s
    assert (caught.value.confirmed, caught.value.unconfirmed) == (["a"], ["b", "c"])
    assert "2 the broker nacked it" in str(caught.value)
    assert broker.get_all(queue_name) == [b"a"]


def test_refused_credentials_fail_at_once_not_at_the_timeout(broker):
    with Publisher(broker.url.replace("guest:guest", "guest:wrong"), timeout=30) as publisher:
        began = time.monotonic()
        with pytest.raises(BrokerUnreachable) as caught:
            publisher.publish("q", b"x")
        assert time.monotonic() - began < 5
    assert "refused the credentials" in str(caught.value) and "wrong" not in str(caught.value)
