"""AsyncPublisher's sending: the messages of every publish made in one turn
of the event loop go out together, in one write.

aiormq's Channel.basic_publish takes the channel's lock, a timeout scope, a
trip through the connection's write queue and a system call per message: an
application's 100 concurrent ``publish`` calls (a web server's requests)
paid it 100 times. Here each call hands its messages over and awaits their
confirmation futures; a task started at the first hand-over of a turn
sends all that was handed over by then as aiormq does (delivery tags, the
confirmation futures its reader settles, the message ids by which it maps a
returned message to its tag), in one frame of its write queue. This uses
aiormq's Channel attributes (``delivery_tag``, ``confirmations``,
``message_id_delivery_tag``, ``write_queue``, ``lock``); setup.cfg bounds
aiormq to the versions that have them alike.
"""

import asyncio
import functools

import aiormq
from aiormq.abc import ChannelFrame
from pamqp.header import ContentHeader


class ConfirmBatches:
    """Sends on one aiormq confirm channel (``on_return_raises``)."""

    def __init__(self, channel: aiormq.Channel):
        self.channel = channel
        self._handed_over = []  # (message, confirmation future) not sent yet
        self._sender = None  # the task that will send them
        self._senders = set()  # every sender task until it ends (the loop holds tasks weakly)

    def send(self, messages: list) -> list:
        """Hand ``messages`` (messages.Outgoing, addressed) over; return their
        confirmation futures: a result for an ack, else aiormq's DeliveryError
        (a nack), PublishError (returned: no queue took it) or why the
        channel or connection closed."""
        confirmations = [self.channel.create_future() for _ in messages]  # failed by aiormq if the channel closes
        self._handed_over += zip(messages, confirmations)
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_handed_over())
            self._senders.add(self._sender)
            self._sender.add_done_callback(self._senders.discard)
        return confirmations

    async def _send_handed_over(self) -> None:
        batch, self._handed_over, self._sender = self._handed_over, [], None
        channel, frames, tags = self.channel, [], []
        try:
            async with channel.lock:  # delivery tags count publishes in the order the broker gets them
                for message, confirmation in batch:
                    if confirmation.done():  # its caller gave up while this waited (a blocked connection): not sent
                        continue
                    channel.delivery_tag += 1
                    tags.append(channel.delivery_tag)
                    channel.confirmations[channel.delivery_tag] = confirmation
                    channel.message_id_delivery_tag[message.message_id] = channel.delivery_tag
                    confirmation.add_done_callback(functools.partial(_forget_id, channel, message.message_id,
                                                                     channel.delivery_tag))
                    frames += _frames(channel, message)
                if frames:
                    await channel.write_queue.put(ChannelFrame.marshall(channel_number=channel.number, frames=frames))
        except BaseException as exc:  # never queued: the broker does not count them
            channel.delivery_tag -= len(tags)
            for tag in tags:
                channel.confirmations.pop(tag, None)
            for _, confirmation in batch:
                if not confirmation.done():
                    confirmation.set_exception(exc if isinstance(exc, Exception) else ConnectionError("cancelled"))
            if not isinstance(exc, Exception):
                raise


def _frames(channel: aiormq.Channel, message) -> list:
    """A message's frames, as aiormq's Channel.basic_publish makes them (mandatory)."""
    properties = message.properties
    header = ContentHeader(properties=aiormq.spec.Basic.Properties(
        headers=properties.headers, content_type=properties.content_type, delivery_mode=properties.delivery_mode,
        message_id=message.message_id), body_size=len(message.body))
    publish = aiormq.spec.Basic.Publish(exchange=message.exchange, routing_key=message.routing_key, mandatory=True)
    return [publish, header, *channel._split_body(message.body)]


def _forget_id(channel: aiormq.Channel, message_id: str, tag: int, _confirmation) -> None:
    """Once confirmed, a message's id no longer maps to its tag (unless published again since)."""
    if channel.message_id_delivery_tag.get(message_id) == tag:
        del channel.message_id_delivery_tag[message_id]
