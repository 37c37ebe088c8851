"""A failed attempt's copy (a retry, or a dead letter) that the broker will not
take as it is, and what wqd does instead, so that no refusal can make a
handler run again and again (routing.py publishes the copies):

- its queue is gone (the copy comes back unroutable): routing declares it
  again, as the worker does at its start, and publishes once more;
- no retry copy can be made (the delay queue exists with other arguments or
  may not be declared, the broker refuses the copy for good, or its header
  block would not fit a frame): the message is dead-lettered at once, with
  ``x-wqd-reason`` saying why (RetryImpossible);
- a dead letter's header block would not fit the connection's frame
  (frame_max; a broker closes the connection on a larger frame): wqd's own
  headers give way until it does (GIVE_WAY: the traceback and error text
  shortened first);
- no copy can be published at all (its body is over the broker's
  max_message_size, the dead-letter queue refuses it, or the broker refused
  it ROUTE_ATTEMPTS times): the original is *parked* (Parking). It stays
  unacked, so nothing is lost, while its worker consumes on with a new
  consumer (a prefetch window of its own); after a hold of at most PARK_MAX
  it goes back to its queue (a reject, which a quorum queue's delivery limit
  counts). Each parking counts as an attempt (the master's count, as for an
  attempt that died with its worker), so its handler runs no more often than
  max_retries allows: then its redeliveries are given up without running,
  and each tries its dead letter once more (it may fit after the operator
  raised the limit) and is parked again.
"""

import collections
import logging

import pika.exceptions

log = logging.getLogger("wqd.worker")

# A content header frame: frame type, channel and size (7 bytes) and the frame
# end (1), then class id, weight and body size (12) before the properties.
HEADER_FRAME_OVERHEAD = 20
# wqd's own dead-letter headers, in the order they give way when the header
# block would not fit a frame: a text is shortened (a traceback keeps its last
# lines, the others their first words), the rest removed. x-wqd-exception and
# x-wqd-attempts stay: `wqd dead` needs no more.
GIVE_WAY = (("x-wqd-traceback", "end"), ("x-wqd-error", "start"), ("x-wqd-reason", "start"),
            ("x-wqd-host", None), ("x-wqd-queue", None), ("x-wqd-pool", None), ("x-wqd-failed-at", None))
PARK_MIN = 1.0  # seconds a parked delivery is held at least: its return is no busy loop
# Held at most this long: below any consumer timeout wqd gives a queue
# (time_limit x prefetch + 60 s) and the broker's default (30 min), which
# would close the channel of a delivery unacked longer.
PARK_MAX = 60.0
MAX_PARKED = 64  # a worker holding more takes no new consumer window until one went back
REMEMBERED = 1024  # message keys whose refusal a worker remembers, to say it once


class RetryImpossible(Exception):
    """No retry copy can be made: the message is dead-lettered instead, saying why."""


class Uncopyable(Exception):
    """No copy of the message can be published: it is parked."""


class CopyRefused(Exception):
    """Why a parked message was given up without running again (its dead letter's exception)."""


def for_good(exc) -> bool:
    """Whether the broker will refuse the same copy again: it closed the
    channel on it (406 PRECONDITION_FAILED: a body over max_message_size;
    403 ACCESS_REFUSED). A nack (a quorum queue electing a leader) or an
    unroutable copy may pass next time."""
    return isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code in (403, 406)


def describe(exc) -> str:
    """The broker's refusal in words, for the log and x-wqd-reason."""
    if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
        return f"the broker refused it: {exc.reply_code} {exc.reply_text}"
    if isinstance(exc, pika.exceptions.UnroutableError):
        return "the broker could not route it to its queue"
    if isinstance(exc, pika.exceptions.NackError):
        return "the broker nacked it"
    return str(exc)


def header_block_size(properties) -> int:
    return len(b"".join(properties.encode()))


def frame_room(frame_max: int) -> int:
    """Bytes of encoded properties a content header frame holds."""
    return frame_max - HEADER_FRAME_OVERHEAD


def check_retry_fits(properties, frame_max: int) -> None:
    """Raise RetryImpossible when the retry copy's header block exceeds a frame."""
    size = header_block_size(properties)
    if size > frame_room(frame_max):
        raise RetryImpossible(f"its header block ({size} bytes) would not fit the connection's frame "
                              f"(frame_max {frame_max} bytes)")


def fit_dead_letter(properties, frame_max: int):
    """The dead letter's properties, wqd's own headers shortened or removed
    (GIVE_WAY) until its header block fits a frame; raises Uncopyable when
    even the message's own headers do not leave room."""
    headers = properties.headers
    for name, keep in GIVE_WAY:
        excess = header_block_size(properties) - frame_room(frame_max)
        if excess <= 0:
            return properties
        if name not in headers:
            continue
        encoded = str(headers[name]).encode()
        kept = len(encoded) - excess
        if keep is None or kept <= 0:
            del headers[name]
        else:
            headers[name] = (encoded[-kept:] if keep == "end" else encoded[:kept]).decode(errors="ignore")
    if header_block_size(properties) <= frame_room(frame_max):
        return properties
    raise Uncopyable(f"its own headers leave no room for wqd's in the connection's frame (frame_max {frame_max} "
                     f"bytes)")


def hold_seconds(retry_delay: float, ran: bool) -> float:
    """How long a parked delivery is held before it goes back: its retry
    delay, within bounds, while its handler ran; PARK_MAX once it is given up
    without running and only tried as a dead letter (its whole body sent
    again each time)."""
    return min(max(retry_delay, PARK_MIN), PARK_MAX) if ran else PARK_MAX


class Parking:
    """Deliveries held unacked on the consuming channel until their hold ends,
    and why each message's copies were refused (by key, the newest kept)."""

    def __init__(self):
        self._held = {}  # delivery tag -> the channel it came on
        self._reasons = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def refused(self, key: str):
        """A CopyRefused for a message whose copies this worker saw refused, or None."""
        reason = self._reasons.get(key)
        return None if reason is None else CopyRefused(reason)

    def park(self, connection, channel, task, reason: str, hold: float) -> None:
        """Hold ``task``'s delivery for ``hold`` s, then return it to its queue.
        Logs one line the first time a message is parked here."""
        if task.key not in self._reasons:
            log.error("Task %s cannot be copied to a delay or dead-letter queue (%s); it stays in its queue, "
                      "held at most %g s at a time, and its handler runs no more than its attempts allow "
                      "(wqd_copies_refused_total). Fix the cause (e.g. raise the broker's max_message_size) "
                      "or take the message out of the queue.", task.message.message_id or task.key, reason,
                      PARK_MAX)
        self._reasons[task.key] = reason
        self._reasons.move_to_end(task.key)
        if len(self._reasons) > REMEMBERED:
            self._reasons.popitem(last=False)
        self._held[task.delivery_tag] = channel
        connection.call_later(hold, lambda: self._return(task.delivery_tag, channel))

    def _return(self, delivery_tag, channel) -> None:
        """A timer's callback: back to the queue, unless its channel is gone (the broker requeued it then)."""
        if self._held.get(delivery_tag) is channel:
            del self._held[delivery_tag]
            if channel.is_open:  # a reject, not a nack: RabbitMQ 4.3 counts only a reject in x-delivery-count
                channel.basic_reject(delivery_tag, requeue=True)

    def forget(self) -> None:
        """The channel is gone (with its connection): the broker requeued every held delivery."""
        self._held.clear()
