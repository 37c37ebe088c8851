"""Durability across a broker crash, heartbeats during long tasks, queue mismatch."""

import json

import pika

from tests.support.daemon import pool, run_cli, task_body, wqd_env
from tests.support.queues import wait_queue
from tests.support.waiting import wait_for


def test_persistent_messages_survive_a_broker_sigkill_and_are_processed(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1)]).start()
    wqd.stop()  # the queue now exists, declared durable by wqd
    for task_id in range(5):
        broker.publish(queue_name, task_body(task_id, sleep=0.2).encode())
    broker.sync_definitions()  # the queue's definition, too (see test_broker_node)
    broker.kill()
    broker.start()
    assert broker.queue_stats(queue_name)["messages_ready"] == 5
    wqd.start()
    wait_for(lambda: sorted(set(wqd.ended_ids())) == list(range(5)), 60, message="all 5 processed")


def test_workers_reconnect_after_a_broker_restart_mid_run(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    for task_id in range(10):
        broker.publish(queue_name, task_body(task_id, sleep=0.5).encode())
    wait_for(lambda: len(wqd.ended_ids()) >= 2, 30, message="some tasks done")
    broker.kill()
    wait_for(lambda: wqd.http("/readyz")[0] == 503, 30, message="not ready while the broker is down")
    assert wqd.proc.poll() is None, "the master stays up"
    broker.start()
    wait_for(lambda: set(wqd.ended_ids()) == set(range(10)), 90, message="every task done after the restart")
    wait_for(lambda: wqd.http("/readyz")[0] == 200, 60, message="ready again")
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="crashed") == 0


def _worker_heartbeats(broker) -> dict:
    """{connection name: heartbeat timeout the broker negotiated} of wqd's workers."""
    out = broker.ctl("list_connections", "-q", "--formatter", "json", "timeout", "client_properties")
    found = {}
    for row in json.loads(out) if out.strip() else []:
        properties = {item[0]: item[-1] for item in row["client_properties"]}
        if str(properties.get("connection_name", "")).startswith("wqd worker"):
            found[properties["connection_name"]] = row["timeout"]
    return found


def test_a_task_longer_than_many_heartbeats_runs_once(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1)], heartbeat=1).start()
    broker.publish(queue_name, task_body("long", sleep=8).encode())
    wait_for(lambda: len(wqd.records("start")) == 1, 30, message="long task started")
    heartbeats = _worker_heartbeats(broker)  # while the task runs
    assert list(heartbeats.values()) == [1], f"the broker negotiated a 1 s heartbeat: {heartbeats}"
    wait_for(lambda: wqd.ended_ids() == ["long"], 30, message="long task done")
    wait_queue(broker, queue_name, 10, "acked", messages_unacknowledged=0)
    assert len(wqd.records("start")) == 1
    assert broker.queue_stats(queue_name)["messages_ready"] == 0
    assert "connection lost" not in wqd.logs()


def test_queue_declared_with_other_arguments_is_a_config_error(broker, queue_name, make_wqd):
    connection = broker.connection()
    connection.channel().queue_declare(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
    connection.close()
    wqd = make_wqd([pool(queue_name, workers=2, queue_type="classic")]).start(wait_ready=False)
    assert wqd.wait_exit(60) == 78
    logs = wqd.logs()
    assert f"queue {queue_name!r} already exists with other arguments" in logs
    assert "x-queue-type" in logs
    assert logs.count("spawned") == 2, "no restart loop"
    assert "Traceback" not in logs


def test_a_quorum_pool_declares_a_quorum_queue(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1, queue_type="quorum")]).start()
    broker.publish(queue_name, task_body("q").encode())
    wait_for(lambda: wqd.ended_ids() == ["q"], 30, message="processed")
    connection = broker.connection()
    channel = connection.channel()
    try:
        channel.queue_declare(queue_name, durable=True)  # classic arguments: must be refused
        raise AssertionError("the queue is not a quorum queue")
    except pika.exceptions.ChannelClosedByBroker as exc:
        assert exc.reply_code == 406 and "quorum" in exc.reply_text
    finally:
        connection.close()


def test_workers_and_publish_fail_over_to_the_next_broker_url(broker, queue_name, make_wqd, free_tcp_port, tmp_path):
    """Slot 1 starts on a dead address and moves on to the live one."""
    dead = f"amqp://guest:guest@127.0.0.1:{free_tcp_port}/%2F"
    wqd = make_wqd([pool(queue_name, workers=2)], broker_url=[dead, broker.url]).start()
    wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == 2, 60, message="both workers consuming")
    assert "127.0.0.1:%d" % free_tcp_port in wqd.logs(), "slot 1 tried the first URL"
    result = run_cli("publish", "-c", str(wqd.config_path), task_body("via-failover"),
                     env=wqd_env(tmp_path / "r"))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: wqd.ended_ids() == ["via-failover"], 30, message="published and processed")


def test_a_connection_closed_during_a_long_task_leaves_the_task_to_the_broker(broker, queue_name, make_wqd):
    """While a handler runs, the worker's keeper thread serves the connection and
    sees it closed; the finished task is then not acked on a dead connection (the
    broker has requeued it): it counts failed and runs again on a new connection."""
    wqd = make_wqd([pool(queue_name, workers=1)]).start()
    # Long enough for rabbitmqctl to close the connection before the task ends:
    # a call takes 0.3 s on an idle machine, 1.5-5 s on a loaded one (more on 4.0).
    broker.publish(queue_name, task_body("long", sleep=10).encode())
    wait_for(lambda: len(wqd.records("start")) == 1, 30, message="the task started")
    broker.ctl("close_all_connections", "closed by the test")
    wait_for(lambda: wqd.ended_ids() == ["long", "long"], 60, message=lambda: f"ran again:\n{wqd.logs()}")
    wait_for(lambda: wqd.metric("wqd_tasks_total", pool="default", outcome="succeeded") == 1, 30,
             message="the second run succeeded")
    stats = broker.queue_stats(queue_name)
    assert stats["messages_ready"] == 0 and stats["messages_unacknowledged"] == 0
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="failed") == 1
    logs = wqd.logs()
    assert "finished after its connection was lost" in logs
    assert "closed by the test" in logs  # the reason the keeper saw, in the reconnect warning
