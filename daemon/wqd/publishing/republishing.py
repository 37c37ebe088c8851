"""Publishing again after a PublishError: the copy asks wqd to check its id.

A message that raised PublishError may be in the queue (its confirm was lost
with the connection, or timed out). Published again with the same id, two
copies may then be queued, and the second one's first delivery is no
redelivery: wqd's duplicate suppression would not ask about it. So each
publisher remembers the ids of its last REMEMBERED unconfirmed messages and
sends a later publish of one of them with CHECK_DUPLICATE_HEADER: a worker
then asks the master's finished-ledger as it does for a redelivery, and a
copy of a message already finished is acked without running. First publishes
carry no header and cost the master nothing.
"""

import collections

from wqd.redelivery.headers import CHECK_DUPLICATE_HEADER

REMEMBERED = 10_000  # ids kept per publisher (the oldest forgotten first): about 1 MiB


class Unconfirmed:
    """The ids of this publisher's messages whose publish raised PublishError
    and that were not confirmed since. Not thread-safe: Publisher calls it
    under its lock, AsyncPublisher from its event loop."""

    def __init__(self, size: int = REMEMBERED):
        self._size = size
        self._ids = collections.OrderedDict()

    def mark(self, message) -> None:
        """Add the header to ``message`` (messages.Outgoing) if its id is one of them."""
        if message.message_id in self._ids:
            message.properties.headers = {**(message.properties.headers or {}), CHECK_DUPLICATE_HEADER: 1}

    def settle(self, confirmed, unconfirmed) -> None:
        """After a call: its confirmed ids are settled, its unconfirmed ones remembered."""
        if self._ids:
            for message_id in confirmed:
                self._ids.pop(message_id, None)
        for message_id in unconfirmed:
            self._ids[message_id] = None
            self._ids.move_to_end(message_id)
        while len(self._ids) > self._size:
            self._ids.popitem(last=False)
