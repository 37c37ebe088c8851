"""Broker errors in plain words (pure logic; the live cases are in other tests)."""

import pika.exceptions

from wqd.broker.amqp import describe_error

URL = "amqp://wqd:s3cret@broker:5672/%2F"


def test_the_brokers_ack_timeout_is_named_as_such():
    exc = pika.exceptions.ChannelClosedByBroker(
        406, "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. "
             "Timeout value used: 1800000 ms.")
    text = describe_error(exc, URL)
    assert "closed the channel because a delivery outlived its consumer_timeout: PRECONDITION_FAILED" in text
    assert "give the pool a time_limit" in text and "raise consumer_timeout in the broker's rabbitmq.conf" in text
    assert "s3cret" not in text and "\n" not in text


def test_a_consumer_cancelled_by_the_broker():
    exc = pika.exceptions.ConsumerCancelled("the broker cancelled the consumer on 'q' (queue deleted or ack timeout)")
    assert describe_error(exc, URL) == ("the broker cancelled the consumer on 'q' (queue deleted or ack timeout) "
                                        "at amqp://wqd:***@broker:5672/%2F")


def test_a_peer_that_is_not_a_broker_is_named_as_such():
    from wqd.broker.amqp import ClosedDuringHandshake, HandshakeTimeout

    assert describe_error(HandshakeTimeout("10"), URL) == (
        "the broker at amqp://wqd:***@broker:5672/%2F accepted the TCP connection but did not complete the "
        "AMQP handshake within 10 s (is that address a RabbitMQ AMQP listener, and is the broker overloaded?)")
    closed = "closed the connection before the AMQP handshake ended"
    assert closed in describe_error(ClosedDuringHandshake("Transport indicated EOF"), URL)
    eof = pika.exceptions.IncompatibleProtocolError("StreamLostError: ('Transport indicated EOF',)")
    assert closed in describe_error(eof, URL)
    garbage = pika.exceptions.IncompatibleProtocolError("StreamLostError: ('Stream connection lost: KeyError(1)',)")
    assert "answered with something that is not AMQP 0-9-1" in describe_error(garbage, URL)
