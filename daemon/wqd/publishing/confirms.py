"""A confirm-mode channel whose publishes do not wait for their confirm.

pika's BlockingChannel.confirm_delivery() makes every basic_publish wait for
its own confirm: one round trip per message. Here a BlockingConnection still
does the connecting and heartbeats, but confirm mode, returns and confirms
are taken from the channel's underlying pika Channel (``BlockingChannel._impl``,
pika's asynchronous API), so a batch is sent at once and its confirms
awaited together (pipelined), in the connection's own I/O loop (wait()). The alternative,
a SelectConnection on an I/O thread, needs a thread per process, which
neither survives a fork nor suits a library imported before one.
"""

import itertools
import time

import pika.exceptions

from wqd.broker import amqp
from wqd.publishing.outcomes import ACK, NACK, RETURNED


class ChannelLost(Exception):
    """The broker closed the channel; ``reason`` is pika's ChannelClosedByBroker."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class Timeout(Exception):
    pass


class ConfirmChannel:
    def __init__(self, connection: pika.BlockingConnection, deadline: float):
        self._connection = connection
        self._channel = connection.channel()
        self._impl = self._channel._impl  # pika keeps its asynchronous channel here
        self._next_tag = 1
        self._waiting = {}  # delivery tag -> message id, until its confirm
        self._outcomes = {}  # delivery tag -> ACK, NACK or RETURNED
        self._returned = set()  # message ids the broker returned (unroutable); their ack follows
        self._impl.add_on_return_callback(self._on_return)
        selected = []
        self._impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=selected.append)
        self.wait(lambda: bool(selected), deadline)

    @property
    def is_open(self) -> bool:
        return self._channel.is_open

    @property
    def next_tag(self) -> int:
        """The delivery tag the next publish gets (they count from 1 per channel)."""
        return self._next_tag

    def publish(self, exchange: str, routing_key: str, message) -> int:
        """Send one message (mandatory); return its delivery tag."""
        tag = self._next_tag
        self._waiting[tag] = message.message_id
        self._next_tag += 1
        self._impl.basic_publish(exchange, routing_key, message.body, message.properties, mandatory=True)
        return tag

    def await_confirms(self, tags: list, deadline: float) -> dict:
        """Wait until every tag of ``tags`` is confirmed; return {tag: outcome}
        for those that were (all of them unless a Timeout, ChannelLost or a
        connection error was raised: then ``outcomes(tags)`` has what came)."""
        pending = set(tags)
        self.wait(lambda: pending.isdisjoint(self._waiting), deadline)
        return self.outcomes(tags)

    def outcomes(self, tags) -> dict:
        return {tag: self._outcomes.pop(tag) for tag in tags if tag in self._outcomes}

    def forget(self, tags) -> None:
        """Tags whose confirm the caller gave up on (a timeout): a late confirm is ignored."""
        for tag in tags:
            self._waiting.pop(tag, None)
            self._outcomes.pop(tag, None)

    def wait(self, done, deadline: float) -> None:
        """Process I/O until ``done()``; raise Timeout at ``deadline``, ChannelLost
        when the broker closed the channel, pika's errors when the connection was lost.

        The connection's own I/O loop runs until ``done()``, the channel's
        close or a timer says so, as BlockingChannel.basic_publish waits for
        its confirm: process_data_events would return early only for events of
        the BlockingConnection's own, and waking it for a confirm costs a write
        to its wake-up pipe and a second poll per publish."""
        impl = self._impl
        while not done():
            if impl.is_closed:
                refusal = amqp.broker_closed(self._channel)
                if refusal is None:  # closed with its connection
                    raise pika.exceptions.ChannelWrongStateError("the channel was closed with its connection")
                raise ChannelLost(refusal)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout()
            expired = []
            timer = self._connection._impl._adapter_call_later(remaining, lambda: expired.append(True))
            try:
                self._connection._flush_output(done, lambda: impl.is_closed, lambda: bool(expired))
            finally:
                if not expired:
                    self._connection._impl._adapter_remove_timeout(timer)

    def close(self) -> None:
        if self._channel.is_open:
            self._channel.close()

    def _on_return(self, _channel, _method, properties, _body) -> None:
        self._returned.add(properties.message_id)  # a mandatory message no queue took; its ack comes next

    def _on_confirm(self, frame) -> None:
        method = frame.method
        outcome = NACK if isinstance(method, pika.spec.Basic.Nack) else ACK
        if method.multiple:  # every tag up to this one; _waiting is in tag order
            tags = list(itertools.takewhile(lambda tag: tag <= method.delivery_tag, self._waiting))
        else:
            tags = [method.delivery_tag]
        for tag in tags:
            message_id = self._waiting.pop(tag, None)
            if message_id is None:
                continue
            if outcome == ACK and message_id in self._returned:
                self._returned.discard(message_id)
                self._outcomes[tag] = RETURNED
            else:
                self._outcomes[tag] = outcome


def is_broker_error(exc: BaseException) -> bool:
    """A failure of the connection or the channel (pika raises a channel's
    ChannelWrongStateError when its connection was lost under it)."""
    return isinstance(exc, (pika.exceptions.AMQPError, OSError))
