"""Publishing again after a PublishError, against a real broker: the copy of
an id that raised carries x-wqd-check-duplicate (wqd's workers then ask the
finished-ledger about it), first publishes and later ones do not."""

import asyncio

import pytest

import wqd
from wqd import Publisher, PublishError
from wqd.publishing.republishing import CHECK_DUPLICATE_HEADER, Unconfirmed


def _checks(broker, queue) -> dict:
    """{message id: whether it asks for the duplicate check}, in queue order."""
    return {properties.message_id: CHECK_DUPLICATE_HEADER in (properties.headers or {})
            for _, properties in broker.get_all_messages(queue)}


def _refused(broker, queue, publish) -> PublishError:
    """Delete the (already checked) queue, so ``publish()`` is returned unroutable; declare it again."""
    broker.delete_queue(queue)
    with pytest.raises(PublishError) as caught:
        publish()
    broker.declare_queue(queue)
    return caught.value


def test_only_the_republish_of_an_unconfirmed_id_asks_for_the_duplicate_check(broker, queue_name):
    broker.declare_queue(queue_name)
    with Publisher(broker.url, timeout=20) as publisher:
        publisher.publish(queue_name, b"first", message_id="a")
        error = _refused(broker, queue_name, lambda: publisher.publish_many(queue_name, [b"b", b"c"],
                                                                            message_ids=["b", "c"]))
        assert error.unconfirmed == ["b", "c"]
        publisher.publish(queue_name, b"b again", message_id="b", headers={"tenant": "t"})
        publisher.publish_many(queue_name, [b"c again", b"d"], message_ids=["c", "d"])
        publisher.publish(queue_name, b"b once more", message_id="b")  # confirmed since: a new message
    got = broker.get_all_messages(queue_name)
    assert [(p.message_id, CHECK_DUPLICATE_HEADER in (p.headers or {})) for _, p in got] == [
        ("b", True), ("c", True), ("d", False), ("b", False)]  # ("a" went with the deleted queue)
    assert got[0][1].headers[CHECK_DUPLICATE_HEADER] == 1 and got[0][1].headers["tenant"] == "t"


def test_the_async_publisher_asks_for_the_check_on_a_republish_too(broker, queue_name):
    broker.declare_queue(queue_name)

    async def main():
        async with wqd.AsyncPublisher(broker.url, timeout=20) as publisher:
            await publisher.publish(queue_name, b"first", message_id="a")
            broker.delete_queue(queue_name)
            with pytest.raises(PublishError):
                await publisher.publish(queue_name, b"lost", message_id="b")
            broker.declare_queue(queue_name)
            await publisher.publish_many(queue_name, [b"b again", b"c"], message_ids=["b", "c"])

    asyncio.run(asyncio.wait_for(main(), 120))
    assert _checks(broker, queue_name) == {"b": True, "c": False}


def test_the_oldest_unconfirmed_ids_are_forgotten_first():
    unconfirmed = Unconfirmed(size=3)
    unconfirmed.settle([], ["a", "b", "c"])
    unconfirmed.settle(["b"], ["a", "d"])  # b confirmed; a again, now the newest
    unconfirmed.settle([], ["e"])
    assert list(unconfirmed._ids) == ["a", "d", "e"]
