"""wqd.Publisher when the broker fails: SIGKILLed and restarted under 8
publishing threads, a memory alarm, a delay across a restart; and end to end,
a `wqd run` pool running what the publisher sent, each message once."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.support.daemon import pool, run_cli, task_body, wqd_env
from tests.support.publishing import RepublishingThreads, assert_each_id_ran_once
from tests.support.waiting import wait_for
from wqd import Publisher, PublishError
from wqd.publishing.republishing import CHECK_DUPLICATE_HEADER

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "publishing"


def test_a_broker_killed_under_eight_publishing_threads_then_each_id_runs_once(broker, queue_name, make_wqd):
    """A caller that got PublishError publishes again with the same id (the
    publisher marks that copy x-wqd-check-duplicate): a pool runs every id
    once, whether its first copy reached the queue or not."""
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    with Publisher(broker.url, timeout=5) as publisher:
        publishing = RepublishingThreads(publisher, queue_name).start()
        wait_for(lambda: len(publishing.confirmed) >= 200, 60, message=publishing.describe)
        broker.kill()
        broker.start()
        publishing.mark()
        wait_for(lambda: publishing.confirmed_since_mark() >= 5, 90,
                 message=lambda: f"5 ids confirmed after the restart per thread: {publishing.describe()}")
        publishing.stop()
    assert_each_id_ran_once(wqd, publishing, lambda: broker.queue_stats(queue_name))
    assert wqd.stop() == 0


def test_a_memory_alarm_ends_a_publish_at_its_timeout_saying_why(broker, queue_name):
    broker.declare_queue(queue_name)
    with Publisher(broker.url, timeout=20) as publisher:
        publisher.publish(queue_name, b"before")
        broker.ctl("set_vm_memory_high_watermark", "0.000001")
        try:
            began = time.monotonic()
            with pytest.raises(PublishError) as caught:
                publisher.publish(queue_name, b"blocked", message_id="m-blocked", timeout=3)
            took = time.monotonic() - began
        finally:
            broker.ctl("set_vm_memory_high_watermark", "0.4")
        assert 3 <= took < 6, took
        assert ("blocked publishing (a memory or disk alarm: see `rabbitmq-diagnostics alarms`) until the "
                "timeout (3 s) ran out") in str(caught.value)
        assert caught.value.unconfirmed == ["m-blocked"]
        assert publisher.publish(queue_name, b"after", message_id="m-after") == "m-after"
        publisher.publish(queue_name, b"blocked again", message_id="m-blocked")
    # The blocked publish was read once the alarm cleared: its copy asks wqd to check for a duplicate.
    assert [(body, CHECK_DUPLICATE_HEADER in (properties.headers or {}))
            for body, properties in broker.get_all_messages(queue_name)] == [
        (b"before", False), (b"blocked", False), (b"after", False), (b"blocked again", True)]


def test_a_delay_survives_a_broker_restart(broker, queue_name):
    broker.declare_queue(queue_name)
    with Publisher(broker.url, timeout=20) as publisher:
        began = time.monotonic()
        publisher.publish(queue_name, b"delayed", delay=12)
    broker.restart(graceful=True)  # a SIGKILL just after the declare can lose the queue's record itself
    # Polled from the restart on: the first sight of it is (within a poll) its arrival.
    wait_for(lambda: broker.get_all(queue_name) == [b"delayed"], 60, interval=0.2, message="the delayed message")
    assert time.monotonic() - began >= 12, "it arrived before its delay"


def test_a_pool_runs_each_published_message_once(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    ids = [f"t{i}" for i in range(60)]
    with Publisher.from_config(str(wqd.config_path), timeout=20) as publisher:
        publisher.publish_many(queue_name, [task_body(i) for i in ids[:40]])
        for i in ids[40:50]:
            publisher.publish(queue_name, task_body(i))
        for i in ids[50:]:
            publisher.publish(queue_name, task_body(i), delay=1)
    wait_for(lambda: sorted(wqd.ended_ids()) == sorted(ids), 60,
             message=lambda: f"ended: {len(wqd.ended_ids())} of {len(ids)}")
    assert len(wqd.records("start")) == len(ids)


def test_the_publishing_examples_run_against_a_declared_pool(broker, queue_name, tmp_path):
    """examples/publishing: `wqd declare`, then both examples publish to the pool's queue."""
    config = yaml.safe_load((EXAMPLES / "wqd.yaml").read_text())
    config["broker"]["url"] = broker.url
    config["pools"][0]["queue"] = queue_name
    path = tmp_path / "wqd.yaml"
    path.write_text(yaml.safe_dump(config))
    env = wqd_env(tmp_path / "r")
    assert run_cli("declare", "-c", str(path), env=env).returncode == 0
    for script in ("publish_tasks.py", "publish_tasks_async.py"):
        result = subprocess.run([sys.executable, str(EXAMPLES / script), "-c", str(path), "--queue", queue_name],
                                env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.startswith("sent "), result
    bodies = broker.get_all(queue_name)
    assert len(bodies) == 2 + 10 + 1 + 10 and b"Order 17..." in bodies and b'{"path":"a.jpg"}' in bodies


def test_delayed_messages_of_a_deleted_queue_do_not_hold_up_the_others(broker, queue_name):
    """More than the dead-letter worker's window (32) of delayed messages lose their work queue."""
    gone, alive = queue_name + ".gone", queue_name
    broker.declare_queue(gone)
    broker.declare_queue(alive)
    with Publisher(broker.url, timeout=20) as publisher:
        publisher.publish_many(gone, [b"x"] * 60, delay=1)
        broker.delete_queue(gone)
        wait_for(lambda: _count(broker, "wqd.delay.0") == 0, 30, message="the orphans dropped at the last hop")
        publisher.publish(alive, b"a", delay=1)
    wait_for(lambda: broker.get_all(alive) == [b"a"], 15, interval=0.1, message="the other queue's delayed message")


def _count(broker, queue):
    with broker.connection() as connection:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
