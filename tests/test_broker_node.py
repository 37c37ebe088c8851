"""The test broker itself: isolated from the system broker, durable across a
kill, restarted only once its ports are free."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from tests.support import broker as broker_module
from tests.support.broker import BrokerError, BrokerNode, epmd_names, port_open
from tests.support.procfs import proc_stat, tcp_listeners
from tests.support.waiting import wait_for

SYSTEM_AMQP_PORT = 5672


def _system_broker():
    """(pid, start time) of the process that holds the listening socket of the
    system broker's port 5672, or None when nothing listens there. Found by
    its socket, not by its name: other test sessions' nodes are beam.smp too,
    and come and go."""
    for inode, pids in tcp_listeners(SYSTEM_AMQP_PORT).items():
        st = proc_stat(pids[0]) if pids else None
        return (pids[0], st.starttime) if st else ("socket of an unknown process", inode)
    return None


def test_node_is_isolated(broker):
    assert broker.port not in (SYSTEM_AMQP_PORT, 25672)
    assert broker.dist_port not in (SYSTEM_AMQP_PORT, 25672)
    assert broker.nodename != "rabbit@localhost"
    # listens on loopback only, for AMQP and for Erlang distribution
    assert port_open(broker.port)
    assert epmd_names()[broker.name] == broker.dist_port
    with open("/proc/net/tcp") as f:
        listening = [line.split()[1] for line in f if line.split()[3] == "0A"]
    for port in (broker.port, broker.dist_port):
        assert f"0100007F:{port:04X}" in listening, f"port {port} not bound to 127.0.0.1 only"
        assert f"00000000:{port:04X}" not in listening


def test_messages_survive_kill(broker, queue_name):
    system_broker = _system_broker()
    old_beam = broker.beam_pid()

    broker.declare_queue(queue_name)
    bodies = [f"task {i}".encode() for i in range(5)]
    for body in bodies:
        broker.publish(queue_name, body, headers={"n": body.decode()})
    assert broker.queue_stats(queue_name) == {
        "messages_ready": 5, "messages_unacknowledged": 0, "consumers": 0,
    }

    # Mnesia (RabbitMQ's metadata store up to 4.0) writes the queue's definition
    # to disk a moment after the declare: a queue declared and killed within
    # the same second can vanish. The messages (confirmed) are on disk already;
    # make the definition so too, since this test is about the node's data surviving.
    broker.sync_definitions()
    broker.kill()
    assert not broker.running
    assert not port_open(broker.port)
    assert broker.name not in (epmd_names() or {})
    broker.start()
    assert broker.beam_pid() != old_beam

    assert broker.queue_stats(queue_name)["messages_ready"] == 5
    messages = broker.get_all_messages(queue_name)
    assert [body for body, _ in messages] == bodies
    assert [props.headers for _, props in messages] == [{"n": b.decode()} for b in bodies]
    assert all(props.delivery_mode == 2 for _, props in messages)
    assert broker.get_all(queue_name) == []

    # the system broker (if this machine has one) was not touched: the same
    # process (pid and start time) still listens on its port
    assert _system_broker() == system_broker


def test_queue_stats(broker, queue_name):
    assert broker.queue_stats(queue_name) is None
    broker.publish_many(queue_name, [b"a", b"b", b"c"])
    with broker.connection() as conn:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1)
        received = []
        ch.basic_consume(queue_name, lambda c, m, p, b: received.append(m))
        wait_for(lambda: conn.process_data_events(time_limit=0.05) or received,
                 timeout=10, message="no delivery")
        stats = wait_for(
            lambda: (s := broker.queue_stats(queue_name))["messages_unacknowledged"] == 1 and s,
            timeout=10, interval=0.5, message="unacked count not reported",
        )
        assert stats == {"messages_ready": 2, "messages_unacknowledged": 1, "consumers": 1}
    # closing the channel requeues the unacked message
    wait_for(lambda: broker.queue_stats(queue_name)["messages_ready"] == 3, timeout=10,
             interval=0.5, message="unacked message not requeued")
    assert broker.purge_queue(queue_name) == 3
    assert broker.purge_queue(queue_name + ".nope") is None


def test_pause_resume(broker, queue_name):
    broker.publish(queue_name, b"x")
    broker.pause()
    try:
        beam = broker.beam_pid()
        wait_for(lambda: proc_stat(beam)[1] == "T", timeout=5, message="beam.smp not stopped")
        # the kernel still accepts the TCP connection, but no AMQP handshake comes
        try:
            broker.connection(socket_timeout=0.5, stack_timeout=1).close()
        except Exception as exc:  # pika: AMQPConnectorStackTimeout (not an AMQPError)
            assert "timeout" in repr(exc).lower(), exc
        else:
            raise AssertionError("a paused broker answered AMQP")
    finally:
        broker.resume()
    assert broker.get_all(queue_name) == [b"x"]


@pytest.mark.broker
def test_start_waits_for_a_port_still_held_and_names_who_holds_it(tmp_path, monkeypatch):
    node = BrokerNode(tmp_path)
    holder = socket.create_server(("127.0.0.1", node.dist_port))
    try:
        monkeypatch.setattr(broker_module, "PORT_FREE_SECONDS", 0.5)
        with pytest.raises(BrokerError, match=rf"port {node.dist_port} of .* held by pid {os.getpid()} \("):
            node.start()
        assert not node.running
        # Let go of it while the node waits (what start() does first): the wait ends.
        monkeypatch.setattr(broker_module, "PORT_FREE_SECONDS", 60)
        threading.Timer(1.0, holder.close).start()
        node._wait_port_free(node.dist_port)
    finally:
        holder.close()
    assert not port_open(node.dist_port)
