"""What RabbitMQ 4.x changed, checked against the session's node, whichever
version it runs (3.10 with `make test`, 4.0 with `make test-rabbitmq4`):
the broker version shown; nothing 4.x removes (global QoS, transient
non-exclusive queues) in use; quorum queues that dead-letter instead of
dropping; attempts counted right; the consumer timeout."""

import json
import re

from tests.support.broker import BrokerNode
from tests.support.daemon import pool, run_cli, task_body
from tests.support.waiting import wait_for
from wqd import config
from wqd.broker import amqp, queues

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
    khepri_only = tuple(int(part) for part in version.split(".")[:2]) >= (4, 3)
    assert any("Khepri" in note for note in shown["broker_notes"]) == khepri_only, shown["broker_notes"]
    text = run_cli("status", "-c", str(wqd.config_path)).stdout
    # one URL, named once
    assert text.splitlines()[1] == f"broker RabbitMQ {version} at amqp://guest:***@127.0.0.1:{broker.port}/%2F", text
    assert (f"  RabbitMQ {version}: metadata store Khepri" in text) == khepri_only, text
    # the master's /status: the broker its queue monitor is connected to
    master = wait_for(lambda: wqd.status()["broker"], 30, message="the queue monitor connected")
    assert master == {"server": f"RabbitMQ {version}", "url": f"amqp://guest:***@127.0.0.1:{broker.port}/%2F"}
    connected = f"Connected to RabbitMQ {version} at amqp://guest:***@127.0.0.1:{broker.port}/%2F"
    assert f"{connected}{' (metadata store Khepri' if khepri_only else '.'}" in wqd.logs()


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


def test_a_message_that_kills_its_worker_every_time_is_dead_lettered_from_a_quorum_queue(
        broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2, queue_type="quorum", max_retries=2)]).start()
    broker.publish(queue_name, task_body("poison", action="exit").encode(), declare=False, message_id="poison-1")
    wait_for(lambda: (broker.queue_stats(queue_name + ".dead") or {}).get("messages_ready") == 1, 60,
             message=lambda: f"dead-lettered:\n{wqd.logs()}")
    assert [start["attempt"] for start in wqd.records("start")] == [1, 2, 3]
    ((body, properties),) = broker.get_all_messages(queue_name + ".dead")
    assert body == task_body("poison", action="exit").encode() and properties.message_id == "poison-1"
    headers = properties.headers
    assert headers["x-wqd-exception"] == "WorkerLost" and headers["x-wqd-attempts"] == 3, headers
    assert not [name for name in headers if name.startswith(("x-death", "x-first-death", "x-last-death"))], headers
    # the dead-letter queue's own count of this copy (3.10 sets 0 on a first delivery, 4.0 leaves it out)
    assert headers.get("x-delivery-count", 0) == 0, headers
    assert broker.queue_stats(queue_name) == {"messages_ready": 0, "messages_unacknowledged": 0, "consumers": 2}
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="dead_lettered") == 1


def test_past_its_delivery_limit_a_quorum_queue_dead_letters_with_reason_delivery_limit(broker, queue_name):
    """The broker's own limit, wqd's backstop: a message whose consumer keeps
    dropping it (here a channel closed with it unacked, max_retries + 12 times)."""
    pool_config = config.parse(f"pools: [{{name: p, queue: '{queue_name}', handler: 'm:f', queue_type: quorum, "
                               f"max_retries: 0}}]\n", "wqd.yaml").pools[0]
    with broker.connection() as connection:
        queues.declare_pool_queues(connection, pool_config, amqp.server_version(connection)[1])  # as a worker does
    broker.publish(queue_name, b"dropped again and again", declare=False, message_id="m-1")
    for _ in range(queues.delivery_limit(pool_config) + 1):
        with broker.connection() as connection:
            channel = connection.channel()
            method = wait_for(lambda: channel.basic_get(queue_name)[0], 10, message="a delivery")
            assert method is not None
            channel.close()  # returns it unacked: one more delivery counted
    dead = wait_for(lambda: broker.get_all_messages(queue_name + ".dead"), 10, message="dead-lettered by the broker")
    ((body, properties),) = dead
    assert body == b"dropped again and again" and properties.message_id == "m-1"
    assert properties.headers["x-first-death-reason"] == "delivery_limit", properties.headers
    (death,) = properties.headers["x-death"]
    assert death["reason"] == "delivery_limit" and death["queue"] == queue_name, death
    assert broker.queue_stats(queue_name)["messages_ready"] == 0


def test_a_quorum_queue_without_the_delivery_limit_is_a_configuration_error_naming_it(broker, queue_name, make_wqd):
    broker.declare_queue(queue_name, arguments={"x-queue-type": "quorum"})  # as wqd declared it before
    wqd = make_wqd([pool(queue_name, workers=1, queue_type="quorum")]).start(wait_ready=False)
    assert wqd.wait_exit(60) == 78
    logs = wqd.logs()
    # (the broker names the first argument that differs, in its own order)
    named = re.search(rf"queue {re.escape(repr(queue_name))} already exists with other arguments than wqd "
                      rf"declares \(argument ([a-z-]+)\)", logs)
    assert named and named.group(1) in queues.QUORUM_PROTECTION, logs
    assert "re-create the queue" in logs and "Migrating a quorum queue" in logs and "Traceback" not in logs


def test_a_quorum_task_redelivered_once_then_retried_keeps_its_attempt_count(broker, queue_name, make_wqd):
    """Attempt 1 dies with its worker (the broker's redelivery counts it),
    attempt 2 fails (a retried copy, which must not carry the broker's
    x-delivery-count), attempt 3 succeeds: 3 attempts, each numbered right."""
    wqd = make_wqd([pool(queue_name, workers=1, queue_type="quorum", max_retries=3,
                         handler="rabbitmq4_handlers:die_then_fail_then_succeed",
                         retry_delay={"initial": 0.2, "max": 1, "factor": 1})]).start()
    broker.publish(queue_name, b"three attempts", declare=False, message_id="m-3")
    wait_for(lambda: wqd.records("end"), 60, message=lambda: f"the third attempt ran:\n{wqd.logs()}")
    starts = wqd.records("start")
    assert [start["attempt"] for start in starts] == [1, 2, 3], starts
    assert "x-delivery-count" not in starts[2]["headers"], starts[2]
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="retried") == 1
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="succeeded") == 1
    assert broker.queue_stats(queue_name + ".dead") in (None, {"messages_ready": 0, "messages_unacknowledged": 0,
                                                               "consumers": 0})


def test_the_consumer_timeout_never_cuts_a_task_within_time_limit_where_the_broker_allows(
        tmp_path_factory, make_wqd):
    """A node whose consumer_timeout is 3 s and two pools whose first delivery
    runs 8 s: one with time_limit 10 (its queue's x-consumer-timeout, 70 s,
    covers it from RabbitMQ 3.11.15), one without. Where the broker times a
    delivery out, the worker logs why and what to change, reconnects, and the
    task runs again. The node checks consumer timeouts every 0.5 s instead of
    once a minute (channel_tick_interval, as RabbitMQ's own tests set it).
    From RabbitMQ 4.3 classic queues have no consumer timeout: both run once,
    and neither pool is warned about it."""
    node = BrokerNode(tmp_path_factory.mktemp("consumer-timeout"), extra_conf="consumer_timeout = 3000")
    node.start()
    try:
        node.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 500).")  # read by each new channel
        version = tuple(int(part) for part in node.ctl("version").strip().split(".")[:3])
        honoured = version >= queues.QUEUE_CONSUMER_TIMEOUT_SINCE
        timed_out_runs = 0 if queues.queue_types_own_consumer_timeout(version) else 1 if honoured else 2
        handler = "rabbitmq4_handlers:long_on_first_delivery"
        wqd = make_wqd([pool("limited", name="limited", workers=1, time_limit=10, handler=handler),
                        pool("unlimited", name="unlimited", workers=1, handler=handler)],
                       broker_url=node.url).start()
        for queue in ("limited", "unlimited"):
            node.publish(queue, queue.encode(), declare=False)

        def settled(queue: str) -> bool:
            return node.queue_stats(queue) == {"messages_ready": 0, "messages_unacknowledged": 0, "consumers": 1}

        wait_for(lambda: len(wqd.records("end")) >= 2 + timed_out_runs and settled("limited")
                 and settled("unlimited"), 90, interval=1, message=lambda: f"both tasks acked:\n{wqd.logs()}")
        starts = {queue: [start["redelivered"] for start in wqd.records("start") if start["id"] == queue]
                  for queue in ("limited", "unlimited")}
        assert starts["unlimited"] == [False, True][:1 + bool(timed_out_runs)], starts
        assert starts["limited"] == [False, True][:1 + (timed_out_runs == 2)], starts
        logs = wqd.logs()
        timed_out = [line for line in logs.splitlines() if "outlived its consumer_timeout" in line]
        assert len(timed_out) == timed_out_runs, logs
        assert all("give the pool a time_limit" in line and "reconnecting" in line for line in timed_out), timed_out
        warnings = [line for line in logs.splitlines() if "takes back a delivery unacked" in line]
        assert len(warnings) == bool(timed_out_runs), logs
        assert all("pool 'unlimited' has no time_limit" in line for line in warnings), logs
    finally:
        node.stop()


def test_a_quorum_task_outliving_the_consumer_timeout_runs_once_and_the_worker_goes_on(tmp_path_factory, make_wqd):
    """A node whose consumer_timeout is 3 s and two quorum pools whose first
    delivery runs 8 s: 'limited' (time_limit 10: a consumer timeout of 70 s
    covers it, the queue's argument before RabbitMQ 4.3 and the consumer's
    from 4.3) and 'unlimited'. The broker times the unlimited delivery out:
    up to 4.2 it closes the channel, from 4.3 it cancels the consumer and
    takes the delivery back. Either way the same worker goes on consuming
    (no restart), and the task, which has a message id, ran once: its
    redelivery is acked as a duplicate."""
    node = BrokerNode(tmp_path_factory.mktemp("quorum-timeout"), extra_conf="consumer_timeout = 3000")
    node.start()
    try:
        node.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 500).")  # up to 4.2: read by each new channel
        version = tuple(int(part) for part in node.ctl("version").strip().split(".")[:3])
        honoured = version >= queues.QUEUE_CONSUMER_TIMEOUT_SINCE
        handler = "rabbitmq4_handlers:long_on_first_delivery"
        wqd = make_wqd([pool("q-limited", name="limited", workers=1, time_limit=10, handler=handler,
                             queue_type="quorum"),
                        pool("q-unlimited", name="unlimited", workers=1, handler=handler, queue_type="quorum")],
                       broker_url=node.url).start()
        workers = {name: wqd.worker_pids(name) for name in ("limited", "unlimited")}
        for queue in ("q-limited", "q-unlimited"):
            node.publish(queue, queue.encode(), declare=False, message_id=f"id-{queue}")

        def settled(queue: str) -> bool:
            return node.queue_stats(queue) == {"messages_ready": 0, "messages_unacknowledged": 0, "consumers": 1}

        def duplicates(name: str) -> float:
            return wqd.metric("wqd_tasks_total", pool=name, outcome="duplicate") or 0

        wait_for(lambda: len(wqd.records("end")) == 2 and duplicates("unlimited") == 1 and settled("q-limited")
                 and settled("q-unlimited"), 90, interval=1, message=lambda: f"both tasks acked:\n{wqd.logs()}")
        starts = {queue: [start["redelivered"] for start in wqd.records("start") if start["id"] == queue]
                  for queue in ("q-limited", "q-unlimited")}
        assert starts == {"q-limited": [False], "q-unlimited": [False]}, starts
        assert duplicates("limited") == (0 if honoured else 1)
        assert {name: wqd.worker_pids(name) for name in ("limited", "unlimited")} == workers
        logs = wqd.logs()
        if queues.queue_types_own_consumer_timeout(version):
            cancelled = [line for line in logs.splitlines() if "The broker cancelled the consumer on" in line]
            assert len(cancelled) == 1 and "'q-unlimited'" in cancelled[0], logs
            # the channel replaced, not the connection; the handler's success counted as one
            assert "outlived its consumer_timeout" not in logs and "Broker connection lost" not in logs, logs
            assert wqd.metric("wqd_tasks_total", pool="unlimited", outcome="succeeded") == 1
            assert (wqd.metric("wqd_tasks_total", pool="unlimited", outcome="failed") or 0) == 0
        assert "Traceback" not in logs
    finally:
        node.stop()


def test_a_quorum_queue_with_another_consumer_timeout_is_adopted_on_every_version(broker, queue_name, make_wqd):
    """The queue as an older wqd or broker made it (its x-consumer-timeout from
    another time_limit). RabbitMQ 4.3 compares the argument on a redeclare:
    wqd redeclares with the value the queue has, says so once, and consumes."""
    pool_config = config.parse(f"pools: [{{name: p, queue: '{queue_name}', handler: 'm:f', queue_type: quorum, "
                               f"time_limit: 10}}]\n", "wqd.yaml").pools[0]
    arguments = {**queues.work_queue_arguments(pool_config), "x-consumer-timeout": 999_000}
    broker.declare_queue(queue_name, arguments=arguments)
    wqd = make_wqd([pool(queue_name, workers=1, queue_type="quorum", time_limit=10)]).start()
    broker.publish(queue_name, task_body("adopted").encode(), declare=False, message_id="m-adopted")
    wait_for(lambda: wqd.ended_ids() == ["adopted"], 30, message=lambda: f"the task ran:\n{wqd.logs()}")
    adopted = [line for line in wqd.logs().splitlines() if "x-consumer-timeout 999000 ms" in line]
    with broker.connection() as connection:
        compared = queues.queue_types_own_consumer_timeout(amqp.server_version(connection)[1])
    assert len(adopted) == (1 if compared else 0), wqd.logs()
    assert "Configuration error" not in wqd.logs()
