"""What RabbitMQ 4.x changed, checked against the session's node, whichever
version it runs (3.10 with `make test`, 4.0 with `make test-rabbitmq4`):
the broker version shown; nothing 4.x removes (global QoS, transient
non-exclusive queues) in use; quorum queues that dead-letter instead of
dropping; attempts counted right; the consumer timeout."""

import json

from daemon import pool, run_cli, task_body
from waiting import wait_for

SLOW_RETRY = {"initial": 120, "max": 120, "factor": 1}


def _version(broker) -> str:
    """The node's version as its own CLI reports it, e.g. "4.0.5"."""
    return broker.ctl("version").strip()


def _channels(broker) -> list:
    """Every channel's name, consumer count, per-consumer and global prefetch, as
    the broker's channel processes report them (rabbitmqctl list_channels
    has no global_prefetch_count column in 4.0, the channels still know it)."""
    printed = broker.ctl("eval", (
        'io:format("~s~n", [rabbit_json:encode([maps:from_list(rabbit_channel:info(P, [name, consumer_count, '
        'prefetch_count, global_prefetch_count])) || P <- rabbit_channel:list()])]).'))
    return json.loads(printed.splitlines()[0])


def test_status_shows_the_brokers_version(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1)]).start()
    version = _version(broker)
    shown = json.loads(run_cli("status", "--json", "-c", str(wqd.config_path)).stdout)
    assert shown["broker_server"] == f"RabbitMQ {version}"
    assert shown["broker_answered"] == f"amqp://guest:***@127.0.0.1:{broker.port}/%2F"
    text = run_cli("status", "-c", str(wqd.config_path)).stdout
    assert f"(RabbitMQ {version} at amqp://guest:***@127.0.0.1:{broker.port}/%2F)" in text.splitlines()[1], text


def test_channels_and_queues_use_nothing_that_rabbitmq_4_removes(broker, queue_name, make_wqd):
    """Per-consumer prefetch (no global QoS) and durable queues only (no transient
    non-exclusive ones, delay queues included), read from the broker itself."""
    quorum_queue = queue_name + ".quorum"
    wqd = make_wqd([pool(queue_name, workers=2, prefetch=3, max_retries=1, retry_delay=SLOW_RETRY),
                    pool(quorum_queue, name="quorum", workers=1, queue_type="quorum", max_retries=1,
                         retry_delay=SLOW_RETRY)]).start()
    try:
        for queue in (queue_name, quorum_queue):  # each fails once: its retry waits in a delay queue
            broker.publish(queue, task_body("fails", action="fail").encode(), declare=False)
        wait_for(lambda: wqd.metric("wqd_tasks_total", pool="default", outcome="retried") == 1
                 and wqd.metric("wqd_tasks_total", pool="quorum", outcome="retried") == 1, 30, message="2 retries")
        wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == 2
                 and len(wqd.worker_pids("quorum", consuming_only=True)) == 1, 30, message="3 consuming")

        channels = _channels(broker)
        assert channels and all(channel["global_prefetch_count"] == 0 for channel in channels), channels
        consuming = sorted(channel["prefetch_count"] for channel in channels if channel["consumer_count"])
        assert consuming == [1, 3, 3], channels  # basic.qos per consumer: the pools' prefetch

        queues = {row["name"]: row for row in broker.list_queues(
            "name", "durable", "auto_delete", "exclusive", "type") if row["name"].startswith(queue_name)}
        assert {name.split(".delay.")[0] for name in queues if ".delay." in name} == {queue_name, quorum_queue}
        assert set(queues) >= {queue_name, queue_name + ".dead", quorum_queue, quorum_queue + ".dead"}
        for row in queues.values():
            # (a quorum queue cannot be exclusive: 3.10 shows "" for it)
            assert row["durable"] is True and row["auto_delete"] is False and row["exclusive"] in (False, ""), row
        assert {row["type"] for name, row in queues.items() if name.startswith(quorum_queue)} == {"quorum"}
        assert {row["type"] for name, row in queues.items() if not name.startswith(quorum_queue)} == {"classic"}
    finally:
        wqd.stop()
        for name in [quorum_queue, quorum_queue + ".dead"]:
            broker.delete_queue(name)
