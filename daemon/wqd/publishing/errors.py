"""What a publish that was not confirmed raises."""

from wqd import errors


class PublishError(errors.WqdError):
    """The broker did not confirm a message: nacked, unroutable, timed out, or
    the connection was lost after it was sent. It may or may not be in the
    queue: publish it again with the same message id, so that its copies can
    be told apart (README: Publishing; a handler may see both, keep it idempotent).

    ``confirmed``: the ids of the call that were confirmed (publish_many
    confirms some and not others); ``unconfirmed``: the ids to publish again;
    ``detail``: what happened, without the advice (what `wqd publish` shows).
    """

    def __init__(self, text: str, confirmed=(), unconfirmed=(), detail=None):
        super().__init__(text)
        self.confirmed = list(confirmed)
        self.unconfirmed = list(unconfirmed)
        self.detail = detail or text


class QueueNotFound(PublishError):
    """The target queue does not exist: nothing was sent. The publisher never
    declares a work queue (its arguments are the pool's: a declare with other
    ones would be refused, or create a queue the pool cannot use)."""


class BrokerUnreachable(PublishError, errors.BrokerUnavailable):
    """No broker URL could be connected to within the timeout: nothing was
    sent. ``detail``: why, per URL, in the words of amqp.describe_error."""


class ConnectionLost(PublishError, errors.BrokerUnavailable):
    """The connection was lost, the broker did not answer, or it blocked
    publishing (a memory or disk alarm) until the timeout, after the send."""

