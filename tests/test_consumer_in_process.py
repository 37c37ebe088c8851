"""The worker's Consumer in process, on stand-in channels (tests/support/
stand_in.py): what it asks of the broker for each kind of delivery, in
milliseconds and without a broker. The same paths against a real broker and
daemon are in test_failures.py, test_dead_letters.py and test_rabbitmq4.py."""

import pytest
from pika.spec import Basic, BasicProperties

import wqd
from tests.support.stand_in import consumer
from wqd.ipc.task_stats import Outcome


def deliver(handling, tag=1, message_id="m-1", body=b"job", redelivered=False, headers=None):
    handling._handle(Basic.Deliver(delivery_tag=tag, redelivered=redelivered),
                     BasicProperties(delivery_mode=2, message_id=message_id, headers=headers), body)


def outcomes(handling) -> dict:
    counts = handling.record.read().outcomes
    return {outcome.name.lower(): counts[outcome] for outcome in Outcome if counts[outcome]}


def test_a_handler_that_returns_is_acked_and_nothing_else():
    ran = []
    handling = consumer(lambda message: ran.append(message.body))
    deliver(handling)
    assert ran == [b"job"]
    assert handling._channel.calls == [("ack", 1)] and handling.router._publish_channel.calls == []
    assert outcomes(handling) == {"succeeded": 1}


def test_a_failure_is_copied_to_a_delay_queue_with_its_attempt_then_acked():
    def fails(message):
        raise ValueError("no such image")

    handling = consumer(fails)
    deliver(handling)
    (declare, publish) = handling.router._publish_channel.calls
    assert declare == ("declare", "stand-in.delay.1000")
    assert publish[:3] == ("publish", "stand-in.delay.1000", b"job")
    assert publish[3].message_id == "m-1" and publish[3].headers["x-wqd-attempt"] == 2  # the retry's number
    assert handling._channel.calls == [("ack", 1)]
    assert outcomes(handling) == {"retried": 1}


def test_reject_dead_letters_at_once_with_the_error():
    def rejects(message):
        raise wqd.Reject("no path: retrying will not help")

    handling = consumer(rejects)
    deliver(handling)
    ((_, queue, body, properties),) = handling.router._publish_channel.calls
    assert (queue, body) == ("stand-in.dead", b"job")
    assert "retrying will not help" in str(properties.headers["x-wqd-error"])
    assert handling._channel.calls == [("ack", 1)]
    assert outcomes(handling) == {"dead_lettered": 1}


@pytest.mark.parametrize("fails", [False, True])
def test_a_task_whose_consumer_the_broker_cancelled_meanwhile_is_not_settled(fails):
    """RabbitMQ 4.3 takes a timed-out delivery back and ignores a late ack:
    nothing is sent on that channel, and the handler's result is counted once."""
    def handler(message):
        handling._on_cancelled_by_broker(None)  # arrives while the handler runs
        if fails:
            raise ValueError("failed too")

    handling = consumer(handler)
    deliver(handling)
    assert handling._channel.calls == [] and handling.router._publish_channel.calls == []
    assert outcomes(handling) == ({"failed": 1} if fails else {"succeeded": 1})
    assert handling._cancelled_by_broker  # the consumer thread replaces the channel next
