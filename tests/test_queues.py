"""The arguments wqd declares its queues with (queues.py), and the quorum
max_retries bound: pure logic, and `wqd check`'s answer."""

import pytest

from tests.support.daemon import run_cli
from wqd import config
from wqd.broker import queues

QUORUM = """\
pools:
  - name: jobs
    queue: jobs
    handler: wqd.examples:sleep_dots
    queue_type: quorum
"""


def pool(text=QUORUM):
    return config.parse(text, "wqd.yaml").pools[0]


def test_a_quorum_work_queue_has_a_delivery_limit_and_dead_letters_at_least_once():
    arguments = queues.work_queue_arguments(pool(QUORUM + "    max_retries: 5\n"))
    assert arguments == {
        "x-queue-type": "quorum", "x-delivery-limit": 5 + 1 + queues.DELIVERY_LIMIT_MARGIN,
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "jobs.dead",
        "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    assert queues.dead_letter_queue_arguments(pool()) == {"x-queue-type": "quorum"}


def test_a_quorum_pool_without_dead_letter_queue_still_gets_its_delivery_limit():
    arguments = queues.work_queue_arguments(pool(QUORUM + "    dead_letter_queue: null\n"))
    assert arguments == {"x-queue-type": "quorum", "x-delivery-limit": 3 + 1 + queues.DELIVERY_LIMIT_MARGIN}


def test_a_classic_queue_is_declared_plainly():
    classic = pool(QUORUM.replace("quorum", "classic"))
    assert queues.work_queue_arguments(classic) is None
    assert queues.dead_letter_queue_arguments(classic) is None


def test_the_consumer_timeout_argument_covers_time_limit_times_prefetch():
    """On every version: 3.10 ignores it, and honours it once upgraded."""
    limited = pool(QUORUM.replace("quorum", "classic") + "    time_limit: 600\n    prefetch: 2\n")
    assert queues.work_queue_arguments(limited) == {
        "x-consumer-timeout": (600 * 2 + queues.CONSUMER_TIMEOUT_MARGIN) * 1000}
    longest = pool(QUORUM + "    time_limit: 31536000\n")
    assert queues.work_queue_arguments(longest)["x-consumer-timeout"] == 2 ** 31 - 1


def test_from_rabbitmq_4_3_the_timeout_is_the_consumers_on_quorum_queues_and_none_on_classic_ones():
    """4.3 classic queues refuse the argument and have no consumer timeout;
    4.3 quorum queues compare the argument on a redeclare, so it goes on the
    consumer, where a changed time_limit needs no new queue."""
    limits = "    time_limit: 600\n    prefetch: 2\n"
    classic, quorum = pool(QUORUM.replace("quorum", "classic") + limits), pool(QUORUM + limits)
    timeout = {"x-consumer-timeout": (600 * 2 + queues.CONSUMER_TIMEOUT_MARGIN) * 1000}
    for version in [(4, 3, 0), (4, 3, 6), (5, 0, 0)]:
        assert queues.work_queue_arguments(classic, version) is None
        assert queues.consumer_arguments(classic, version) is None
        assert "x-consumer-timeout" not in queues.work_queue_arguments(quorum, version)
        assert queues.consumer_arguments(quorum, version) == timeout
    for version in [(), (3, 10, 8), (4, 0, 5), (4, 2, 9)]:
        assert queues.work_queue_arguments(classic, version) == timeout
        assert queues.consumer_arguments(quorum, version) is None
    assert queues.consumer_arguments(pool(QUORUM), (4, 3, 6)) is None  # no time_limit: the broker's default


@pytest.mark.parametrize("reply, kept", [
    ("PRECONDITION_FAILED - inequivalent arg 'x-consumer-timeout' for queue 'q' in vhost '/': received none but "
     "current is the value '120000' of type 'signedint'", 120000),
    ("PRECONDITION_FAILED - inequivalent arg 'x-consumer-timeout' for queue 'q' in vhost '/': received '60000' "
     "but current is '120000'", 120000),
    ("PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'q' in vhost '/': received '21' but "
     "current is '12'", None),
    ("PRECONDITION_FAILED - inequivalent arg 'x-consumer-timeout' for queue 'q' in vhost '/': received '1' but "
     "current is the value 'x' of type 'longstr'", None),
])
def test_the_consumer_timeout_a_quorum_queue_keeps_is_read_from_the_brokers_refusal(reply, kept):
    """(the two reply forms RabbitMQ 4.3.6 sends, read off a node)"""
    assert queues.kept_consumer_timeout(reply) == kept


def test_no_time_limit_leaves_the_broker_default():
    assert "x-consumer-timeout" not in queues.work_queue_arguments(pool())


@pytest.mark.parametrize("addition, version, warned", [
    ("", (3, 10, 8), "has no time_limit"),
    ("", (4, 0, 5), "has no time_limit"),
    ("", (), "has no time_limit"),
    ("    time_limit: 60\n", (3, 10, 8), None),
    ("    time_limit: 3600\n", (3, 10, 8), "raise consumer_timeout in the broker's rabbitmq.conf"),
    ("    time_limit: 3600\n", (4, 0, 5), None),
    ("    time_limit: 31536000\n", (4, 0, 5), "exceeds the longest consumer timeout"),
    ("", (4, 3, 6), "has no time_limit"),
    ("    time_limit: 3600\n", (4, 3, 6), None),
    ("    queue_type: classic\n", (4, 3, 6), None),  # a classic queue has no consumer timeout from 4.3
    ("    queue_type: classic\n", (4, 0, 5), "has no time_limit"),
])
def test_the_consumer_timeout_warning(addition, version, warned):
    text = QUORUM + addition
    if "queue_type: classic" in addition:
        text = QUORUM.replace("quorum", "classic")
    warning = queues.consumer_timeout_warning(pool(text), version)
    if warned is None:
        assert warning is None
    else:
        assert warned in warning and "consumer_timeout" in warning and "\n" not in warning


def test_a_quorum_pool_may_have_max_retries_up_to_the_bound():
    assert pool(QUORUM + f"    max_retries: {queues.MAX_QUORUM_RETRIES}\n").max_retries == queues.MAX_QUORUM_RETRIES
    classic = QUORUM.replace("quorum", "classic") + f"    max_retries: {queues.MAX_QUORUM_RETRIES + 1}\n"
    assert pool(classic).max_retries == queues.MAX_QUORUM_RETRIES + 1


def test_wqd_check_refuses_a_quorum_pool_whose_max_retries_exceeds_the_bound(tmp_path):
    path = tmp_path / "wqd.yaml"
    path.write_text(QUORUM + f"    max_retries: {queues.MAX_QUORUM_RETRIES + 1}\n")
    result = run_cli("check", "-c", str(path))
    assert result.returncode == 78, result.stderr
    assert f"wqd.yaml:6: pools[0].max_retries: is {queues.MAX_QUORUM_RETRIES + 1}, above the" in result.stderr
    assert "delivery limit" in result.stderr and "delivery_limit" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_mismatch_names_the_argument_and_how_to_migrate():
    text = ("PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue 'jobs' in vhost '/': "
            "received the value '14' of type 'signedint' but current is none")
    error = queues.describe_mismatch(pool(), "jobs", text)
    assert "queue 'jobs' already exists with other arguments than wqd declares (argument x-delivery-limit)" in error
    assert "re-create the queue" in error and "Migrating a quorum queue" in error and text in error
    assert "declare: passive" in error
    other = queues.describe_mismatch(pool(), "jobs", "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' ...")
    assert "(argument x-queue-type)" in other and "set queue_type to the queue's type" in other


def test_a_mismatch_on_a_classic_pool_never_suggests_a_quorum_queue():
    """A hand-written worker's queue with its own arguments: the fix names them, with the queue's value."""
    classic = pool(QUORUM.replace("quorum", "classic"))
    text = ("PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue 'jobs' in vhost '/': received none "
            "but current is the value '10' of type 'byte'")
    error = queues.describe_mismatch(classic, "jobs", text)
    assert "queue_arguments: {x-max-priority: 10}" in error and "declare: passive" in error
    assert "quorum" not in error.replace(text, "")
    legacy_dlx = queues.describe_mismatch(classic, "jobs", "PRECONDITION_FAILED - inequivalent arg "
                                          "'x-dead-letter-exchange' for queue 'jobs' in vhost '/': received none but "
                                          "current is the value 'legacy.dlx' of type 'longstr'")
    assert "queue_arguments: {x-dead-letter-exchange: legacy.dlx}" in legacy_dlx and "re-create" not in legacy_dlx


def test_queue_arguments_are_declared_with_the_queue_and_cannot_name_wqds_own():
    extra = pool(QUORUM.replace("quorum", "classic") + "    queue_arguments: {x-max-priority: 10}\n")
    assert queues.work_queue_arguments(extra, (4, 3, 6)) == {"x-max-priority": 10}
    quorum = pool(QUORUM + "    queue_arguments: {x-max-priority: 10}\n")
    assert queues.work_queue_arguments(quorum)["x-max-priority"] == 10
    assert queues.work_queue_arguments(quorum)["x-queue-type"] == "quorum"
    for text, named in [(QUORUM + "    queue_arguments: {x-delivery-limit: 5}\n", "x-delivery-limit"),
                        (QUORUM + "    queue_arguments: {x-queue-type: classic}\n", "x-queue-type")]:
        with pytest.raises(config.ConfigError) as caught:
            pool(text)
        assert f"pools[0].queue_arguments: names {named}, which wqd sets itself" in str(caught.value)
    for bad, said in [("[1]", "expected a mapping of queue arguments"), ("{max-priority: 1}", "start with x-"),
                      ("{x-a: [1]}", "expected a number, a string or a boolean")]:
        with pytest.raises(config.ConfigError) as caught:
            pool(QUORUM + f"    queue_arguments: {bad}\n")
        assert said in str(caught.value)
    with pytest.raises(config.ConfigError) as caught:
        pool(QUORUM + "    declare: false\n")
    assert "pools[0].declare: expected true or passive" in str(caught.value)
    assert pool(QUORUM + "    declare: passive\n").declare == "passive"
