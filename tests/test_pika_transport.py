"""A pika connection sending a message at once in one write and reading until
a short read (pika_transport.py), against a real broker."""

import contextlib
import hashlib
import socket

import pika
import pika.exceptions
import pytest

from wqd.broker import pika_transport


@pytest.fixture
def connect(broker):
    """broker.connection() with pika_transport installed on it."""
    @contextlib.contextmanager
    def opened():
        with broker.connection() as connection:
            pika_transport.install(connection)
            yield connection
    return opened


def _buffered(connection) -> int:
    """Bytes pika holds for its I/O loop to send."""
    return connection._impl._get_write_buffer_size()


class CountingSocket:
    """The transport's socket, counting the sends and the reads that found it empty."""

    def __init__(self, sock):
        self._sock = sock
        self.empty_reads = 0
        self.sends = 0

    def send(self, data):
        self.sends += 1
        return self._sock.send(data)

    def recv(self, size):
        try:
            return self._sock.recv(size)
        except BlockingIOError:
            self.empty_reads += 1
            raise

    def __getattr__(self, name):
        return getattr(self._sock, name)


def test_a_frame_leaves_in_the_call_that_writes_it(connect, queue_name):
    with connect() as connection:
        channel = connection.channel()
        channel.queue_declare(queue_name, durable=True)
        channel._impl.basic_publish("", queue_name, b"sent at once")  # no flush: pika's loop does not run
        assert _buffered(connection) == 0, "the frames went to the socket in the write itself"
        method, _, body = channel.basic_get(queue_name, auto_ack=True)
        assert body == b"sent at once" and method.message_count == 0


def test_a_message_leaves_in_one_send_and_other_connections_keep_pikas_ways(broker, connect, queue_name):
    with connect() as connection, broker.connection() as untouched:
        channel = connection.channel()
        channel.queue_declare(queue_name, durable=True)
        transport = connection._impl._transport
        transport._sock = counting = CountingSocket(transport._sock)
        channel._impl.basic_publish("", queue_name, b"three frames")  # method, header and body
        assert counting.sends == 1, "the three frames went out joined, in one send"
        untouched.channel()._impl.basic_publish("", queue_name, b"buffered")
        assert _buffered(untouched) > 0, "a connection install() was not given keeps pika's buffered write"
        untouched.process_data_events(0)
    assert broker.get_all(queue_name) == [b"three frames", b"buffered"]


def test_what_the_socket_does_not_take_at_once_follows_in_order(broker, connect, queue_name):
    """A socket buffer far smaller than a message: the first frames go out at
    once, the rest is buffered behind them; the broker gets every byte in order."""
    bodies = [bytes([n]) * 100_000 + hashlib.sha256(bytes([n])).digest() for n in range(12)]
    with connect() as connection:
        connection._impl._transport._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        channel = connection.channel()
        channel.queue_declare(queue_name, durable=True)
        channel._impl.basic_publish("", queue_name, bodies[0])
        assert _buffered(connection) > 0, "the socket took part of the message; the rest waits for the loop"
        channel.confirm_delivery()  # confirms: the broker parsed every frame sent so far, in order
        for body in bodies[1:]:
            channel.basic_publish("", queue_name, body, mandatory=True)
        assert _buffered(connection) == 0
    assert broker.get_all(queue_name) == bodies


def test_a_broken_connection_fails_as_pika_reports_it(connect, queue_name):
    """A send the socket refuses (here: its sending side shut) is handed to
    pika's own path, which closes the connection with an AMQP error."""
    with connect() as connection:
        channel = connection.channel()
        channel.queue_declare(queue_name, durable=True)
        connection._impl._transport._sock.shutdown(socket.SHUT_WR)
        with pytest.raises(pika.exceptions.AMQPError):
            channel.basic_publish("", queue_name, b"never sent")
            connection.process_data_events(time_limit=1)
        assert connection.is_closed


def test_reads_stop_at_a_short_read_and_messages_of_any_size_arrive_whole(broker, connect, queue_name):
    """Small deliveries cost one recv each, none of them into an empty socket;
    a delivery many reads long (recv takes 4 KiB at a time) arrives whole."""
    bodies = [b"small %d" % n for n in range(20)] + [hashlib.sha256(b"big").digest() * 40_000]
    broker.publish_many(queue_name, bodies)
    with connect() as connection:
        transport = connection._impl._transport
        transport._sock = counting = CountingSocket(transport._sock)
        channel = connection.channel()
        received = []
        for _ in bodies:
            method, _, body = channel.basic_get(queue_name)
            channel.basic_ack(method.delivery_tag)
            received.append(body)
        assert received == bodies
        assert counting.empty_reads == 0, "a read that got less than it asked for ended the reading"


def test_the_broker_closing_the_socket_is_still_seen(connect, queue_name):
    with connect() as connection:
        connection.channel().queue_declare(queue_name, durable=True)
        connection._impl._transport._sock.shutdown(socket.SHUT_RD)  # reads now find the end of the stream
        with pytest.raises(pika.exceptions.AMQPError):
            connection.process_data_events(time_limit=5)
        assert connection.is_closed
