"""wqd.AsyncPublisher (aio-pika) against a real broker: the same promises as
Publisher's, awaited."""

import asyncio
import time

import pytest

import wqd
from tests.support.waiting import wait_for
from wqd import PublishError
from wqd.publishing import BrokerUnreachable, QueueNotFound


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 120))


def test_publish_and_publish_many_return_confirmed_ids(broker, queue_name):
    broker.declare_queue(queue_name)

    async def main():
        async with wqd.AsyncPublisher(broker.url, timeout=20) as publisher:
            one = await publisher.publish(queue_name, {"n": 1}, message_id="first", headers={"tenant": "a"})
            many = await publisher.publish_many(queue_name, [f"m{i}" for i in range(300)])
            text = await publisher.publish(queue_name, "h\u00e9")
            return one, many, text

    one, many, text = run(main())
    assert one == "first" and len(set(many)) == 300
    got = broker.get_all_messages(queue_name)
    assert [body for body, _ in got] == [b'{"n":1}'] + [f"m{i}".encode() for i in range(300)] + ["h\u00e9".encode()]
    assert [p.message_id for _, p in got] == [one, *many, text]
    assert got[0][1].content_type == "application/json" and got[-1][1].content_type == "text/plain; charset=utf-8"
    assert {p.delivery_mode for _, p in got} == {2}
    assert {k: v for k, v in got[0][1].headers.items() if k not in ("traceparent", "tracestate")} == {"tenant": "a"}


def test_the_publishes_of_one_loop_turn_go_out_in_one_write_each_with_its_own_outcome(broker, queue_name):
    """200 concurrent publishes and one to a queue deleted meanwhile: one
    frame on the connection's write queue; 200 confirmed ids, one error."""
    gone = f"{queue_name}-gone"
    broker.declare_queue(queue_name)
    broker.declare_queue(gone)

    async def main():
        async with wqd.AsyncPublisher(broker.url, timeout=20) as publisher:
            await publisher.publish(gone, b"checked")  # the passive checks are behind us
            await publisher.publish(queue_name, b"checked")
            broker.delete_queue(gone)
            write_queue = publisher._batches.channel.write_queue
            queued, put = [], write_queue.put

            async def counting_put(frame):
                queued.append(frame)
                await put(frame)

            write_queue.put = counting_put
            results = await asyncio.gather(*(publisher.publish(queue_name, f"m{n}") for n in range(200)),
                                           publisher.publish(gone, b"lost", message_id="lost-1"),
                                           return_exceptions=True)
            return results, len(queued)

    results, writes = run(main())
    assert writes == 1
    ids, error = results[:200], results[200]
    assert isinstance(error, PublishError) and error.unconfirmed == ["lost-1"] and "no queue took it" in str(error)
    got = broker.get_all_messages(queue_name)
    assert [body for body, _ in got] == [b"checked"] + [f"m{n}".encode() for n in range(200)]
    assert [p.message_id for _, p in got[1:]] == ids


def test_a_missing_queue_and_an_unroutable_message_are_errors(broker, queue_name):
    async def main():
        async with wqd.AsyncPublisher(broker.url, timeout=20) as publisher:
            with pytest.raises(QueueNotFound, match=f"queue '{queue_name}' does not exist: start wqd, or declare"):
                await publisher.publish(queue_name, b"x")
            broker.declare_queue(queue_name)
            await publisher.publish(queue_name, b"first")
            broker.delete_queue(queue_name)
            with pytest.raises(PublishError) as caught:
                await publisher.publish(queue_name, b"lost", message_id="m-2")
            assert caught.value.unconfirmed == ["m-2"] and "no queue took it" in str(caught.value)

    run(main())


def test_a_broker_that_is_down_is_an_error_within_the_timeout(free_tcp_port):
    async def main():
        async with wqd.AsyncPublisher(f"amqp://guest:secret@127.0.0.1:{free_tcp_port}/%2F", timeout=2) as publisher:
            began = time.monotonic()
            with pytest.raises(BrokerUnreachable) as caught:
                await publisher.publish("q", b"x")
            return time.monotonic() - began, str(caught.value)

    took, text = run(main())
    assert took < 4 and "cannot reach the broker at amqp://guest:***@127.0.0.1" in text and "secret" not in text


def test_after_a_broker_restart_a_short_delay_after_a_long_one_arrives_first(broker, queue_name):
    broker.declare_queue(queue_name)
    began = []

    async def main():
        async with wqd.AsyncPublisher(broker.url, timeout=20) as publisher:
            await publisher.publish(queue_name, b"before")
            # The connection is lost while the loop runs: it connects anew. A graceful
            # restart: a SIGKILL just after the declare can lose the queue's record
            # itself (RabbitMQ 3.10's Mnesia had not written it yet; seen in CI).
            await asyncio.to_thread(broker.restart, True)
            assert broker.get_all(queue_name) == [b"before"]
            began.append(time.monotonic())
            await publisher.publish(queue_name, b"long", delay=60)
            await publisher.publish(queue_name, b"short", delay=2)
            await publisher.publish(queue_name, b"now")

    run(main())
    got = []
    wait_for(lambda: got.extend(broker.get_all(queue_name)) or b"short" in got, 30, interval=0.2,
             message=lambda: f"got {got}")
    assert got == [b"now", b"short"] and time.monotonic() - began[0] >= 2, got


def test_importing_wqd_does_not_import_aio_pika():
    import subprocess
    import sys
    code = "import sys, wqd; before = 'aio_pika' in sys.modules; wqd.AsyncPublisher; print(before, 'aio_pika' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_a_memory_alarm_ends_a_publish_at_its_timeout_saying_why(broker, queue_name):
    broker.declare_queue(queue_name)

    async def main():
        async with wqd.AsyncPublisher(broker.url, timeout=20) as publisher:
            await publisher.publish(queue_name, b"before")
            broker.ctl("set_vm_memory_high_watermark", "0.000001")
            try:
                began = time.monotonic()
                with pytest.raises(PublishError) as caught:
                    await publisher.publish(queue_name, b"blocked", message_id="m-blocked", timeout=3)
                took = time.monotonic() - began
            finally:
                broker.ctl("set_vm_memory_high_watermark", "0.4")
            assert 3 <= took < 6, took
            assert "blocked publishing (a memory or disk alarm: see `rabbitmq-diagnostics alarms`) until the " \
                   "timeout (3 s) ran out" in str(caught.value)
            assert await publisher.publish(queue_name, b"after", message_id="m-after") == "m-after"

    run(main())


def test_nacked_messages_are_sent_again_until_the_timeout_then_named(broker, queue_name):
    broker.declare_queue(queue_name, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})

    async def main():
        async with wqd.AsyncPublisher(broker.url, timeout=2) as publisher:
            with pytest.raises(PublishError) as caught:
                await publisher.publish_many(queue_name, [b"a", b"b"], message_ids=["a", "b"])
            return caught.value

    error = run(main())
    assert (error.confirmed, error.unconfirmed) == (["a"], ["b"]) and "the broker nacked it" in str(error)
    assert broker.get_all(queue_name) == [b"a"]
