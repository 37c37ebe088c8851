"""What became of each message of a call, and the call's result or error."""

from typing import Optional

from wqd.publishing import tracing
from wqd.publishing.errors import ConnectionLost, PublishError
from wqd.publishing.republishing import Unconfirmed

ACK, NACK, RETURNED = "ack", "nack", "returned"  # what the broker answered to one message


def describe(outcome: Optional[str], queue: str, reason: Optional[str]) -> str:
    """Why one message was not confirmed: its outcome (None: no answer came, for ``reason``)."""
    if outcome == NACK:
        return "the broker nacked it (it could not take it: a quorum queue without a leader, a full queue)"
    if outcome == RETURNED:
        return f"no queue took it: queue {queue!r} was deleted, or is not bound"
    return reason or "no confirm"


def _not_confirmed(error_class, failed: dict, messages: list, confirmed: list, queue: str, reason: Optional[str]):
    """The error for a call whose messages ``failed`` ({outcome: [ids]}) were not confirmed."""
    parts = [f"{len(ids)} {describe(outcome, queue, reason)}" if len(messages) > 1 else describe(outcome, queue, reason)
             for outcome, ids in failed.items()]
    count = sum(len(ids) for ids in failed.values())
    what = "the message" if len(messages) == 1 else f"{count} of {len(messages)} messages"
    detail = f"the broker did not confirm {what} to queue {queue!r}: {'; '.join(parts)}"
    return error_class(f"{detail}. It may or may not be in the queue: publish it again with the same message id",
                       confirmed,
                       [i for ids in failed.values() for i in ids], detail)


def conclude(messages: list, spans: list, outcomes: dict, queue: str, reason: Optional[str], lost: bool,
             unconfirmed: Unconfirmed) -> list:
    """End each message's span and settle the ids in ``unconfirmed``; return
    the ids if the broker confirmed every message, else raise PublishError
    (ConnectionLost when the connection failed with messages unanswered).
    ``outcomes``: {index: outcome}."""
    for index, span in enumerate(spans):
        outcome = outcomes.get(index)
        tracing.end(span, None if outcome == ACK else PublishError(describe(outcome, queue, reason)))
    confirmed, failed = [], {}
    for index, message in enumerate(messages):
        outcome = outcomes.get(index)
        if outcome == ACK:
            confirmed.append(message.message_id)
        else:
            failed.setdefault(outcome, []).append(message.message_id)
    unconfirmed.settle(confirmed, [i for ids in failed.values() for i in ids])
    if failed:
        error = ConnectionLost if lost and None in failed else PublishError
        raise _not_confirmed(error, failed, messages, confirmed, queue, reason)
    return confirmed
