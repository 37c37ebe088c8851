"""Partitions between hosts (issue 15, part 3), injected from outside wqd:
a 3-node cluster (pause_minority) and two wqd hosts, each in a network
namespace of its own (conftest.py). Faults: a host's cable pulled for longer
than two heartbeats; 200 ms of delay each way and 5 % packet loss on a
host's link; one node cut off from the other two.

Ledger of each: 0 lost; duplicates counted, each attributed to a task in
hand when the fault began (at most one per delivery in hand on the cut
connections: workers x prefetch); how long until the cut host's tasks ran
again elsewhere; no stale ack (the node log line of an unknown delivery tag, whose
detection the cluster fixture demonstrates); every worker consuming again
after the heal. The figures are printed at the end of the run; docs/clusters.md
("Partitions between hosts") gives those of several runs.
"""

import datetime
import json
import re
import time
import uuid
from pathlib import Path

import pika
import pytest

from tests.partitions.ledger import FIGURES, Ledger, stale_ack_errors, wait_until
from tests.partitions.nodes import NamespacedWqd
from tests.partitions.proxy import DelayProxy
from tests.support.daemon import pool, task_body
from tests.support.waiting import wait_for
from wqd.broker import queues
from wqd.config import PoolConfig

HEARTBEAT = 3            # seconds, wqd's (the broker agrees to the client's)
CUT_SECONDS = 4 * HEARTBEAT  # at least; and until the cut host noticed
# pika notices a dead link at its first heartbeat check (every heartbeat + 5 s)
# that saw no traffic since the one before: 8-16 s after the cut.
NOTICE_BOUND = 2 * (HEARTBEAT + 5) + 10
WORKERS = 2              # per host, prefetch 1
TASKS = 300
TASK_SECONDS = 0.3
DELAY = 0.2              # seconds each way, on the delayed host's link
LOSS_PERCENT = 5
DEGRADED_SECONDS = 20
PROXY_PORT = 15670       # + node index, in the delayed host's namespace
# How long until the cut host's tasks run elsewhere: the broker notices two
# missed heartbeats, requeues, and another worker runs them (measured 6-9 s).
TAKEOVER_BOUND = 4 * HEARTBEAT + 10
# From the heal until every worker consumes: the reconnect backoff doubles
# up to 30 s with 50 % jitter while the link is down.
RECONNECT_BOUND = 60
# Node 1's partition lasts this long at least (and until its worker moved on);
# net_ticktime is 10 s (tests/partitions/nodes.py): the nodes see each other
# gone after 7.5-12.5 s, node 1 then pauses.
PARTITION_SECONDS = 25
PARTITION_BOUND = 60
REJOIN_BOUND = 60        # measured 4.7-12.7 s
# A task finished this shortly before a cut may have had its ack on the wire.
ACK_SLACK = 0.5


def _quorum_queue(cluster) -> str:
    """A fresh quorum queue, declared from node 1 as wqd declares it, so its leader is there."""
    queue = f"wqdtest.partitions.{uuid.uuid4().hex[:8]}"
    settings = PoolConfig(name="p", queue=queue, handler="m:f", queue_type="quorum", max_retries=20,
                          dead_letter_queue=queue + ".dead")
    cluster.nodes[0].declare_queue(queue, arguments=queues.work_queue_arguments(settings))
    return queue


def _preload(node, queue, count) -> None:
    """``count`` persistent tasks, each with its message_id, every publish confirmed."""
    with node.connection() as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        for task_id in range(count):
            channel.basic_publish("", queue, task_body(task_id, sleep=TASK_SECONDS), pika.BasicProperties(
                delivery_mode=2, message_id=f"task-{task_id}"), mandatory=True)


class Scenario:
    """A fresh queue with TASKS tasks, host h1 on the nodes directly (worker
    k on node k), host h2 through DelayProxy's (worker k on node k+1)."""

    def __init__(self, cluster, network, workdir: Path):
        self.cluster, self.network = cluster, network
        self.h1, self.h2 = network.machines["h1"], network.machines["h2"]
        cluster.wait_healthy(timeout=120)
        self.queue = _quorum_queue(cluster)
        _preload(cluster.nodes[0], self.queue, TASKS)
        self.proxies = []
        for index, node in enumerate(cluster.nodes):
            self.proxies.append(DelayProxy(self.h2.netns, PROXY_PORT + index, (node.machine.address, node.port)))
            self.proxies[-1].start()
        proxied = [f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F" for proxy in self.proxies]
        settings = dict(workers=WORKERS, queue_type="quorum", max_retries=20, dead_letter_queue=self.queue + ".dead",
                        retry_delay={"initial": 0.2, "max": 2})
        self.hosts = {
            "h1": NamespacedWqd(workdir / "h1", self.h1, cluster.lan_urls, [pool(self.queue, **settings)],
                                heartbeat=HEARTBEAT),
            "h2": NamespacedWqd(workdir / "h2", self.h2, proxied[1:] + proxied[:1], [pool(self.queue, **settings)],
                                heartbeat=HEARTBEAT),
        }
        self.stale_acks_before = len(stale_ack_errors(cluster))

    def start(self) -> None:
        for wqd in self.hosts.values():
            wqd.start()
        self.wait_all_consuming(60)
        wait_for(lambda: all(wqd.records("end") for wqd in self.hosts.values())
                 and self.ledger().done_count() >= 20, 120, interval=0.2,
                 message=lambda: f"progress on both hosts before the fault:\n{self.logs()}")

    def wait_busy(self, host: str, workers: set) -> None:
        """Wait until each of ``workers`` of ``host`` is running a task (strike then:
        the fault finds a task in hand)."""
        wait_for(lambda: workers <= {run.worker for run in self.ledger().runs if run.host == host and run.end is None},
                 30, interval=0.02, message=lambda: f"{host} {sorted(workers)} running tasks:\n{self.logs()}")

    def consuming(self) -> dict:
        """{host: its workers consuming} (from each master's /status)."""
        found = {}
        for name, wqd in self.hosts.items():
            try:
                found[name] = len(wqd.worker_pids(consuming_only=True))
            except (AssertionError, OSError):
                found[name] = 0
        return found

    def wait_all_consuming(self, timeout) -> float:
        began = time.time()
        wait_for(lambda: self.consuming() == {"h1": WORKERS, "h2": WORKERS}, timeout, interval=0.2,
                 message=lambda: f"every worker consuming: {self.consuming()}\n{self.logs()}")
        return time.time() - began

    def ledger(self) -> Ledger:
        return Ledger.read(range(TASKS), self.hosts)

    def wait_all_done(self) -> Ledger:
        wait_for(lambda: not self.ledger().lost, 300, interval=0.5,
                 message=lambda: f"{len(self.ledger().lost)} tasks never done: "
                                 f"{sorted(self.ledger().lost)[:20]}\n{self.logs()}")
        return self.ledger()

    def worker_nodes(self, asked) -> dict:
        """{(host, worker name): node} of every worker's connection, as node ``asked`` lists them."""
        by_port = {node.port: node for node in self.cluster.nodes}
        out = asked.ctl("list_connections", "-q", "--formatter", "json", "port", "client_properties")
        found = {}
        for row in json.loads(out) if out.strip() else []:
            name = {item[0]: item[-1] for item in row["client_properties"]}.get("connection_name", "")
            if name.startswith("wqd worker "):
                pid = int(name.split()[-1])
                host = next((h for h, wqd in self.hosts.items() if pid in wqd.all_worker_pids()), "?")
                found[host, name.split()[2]] = by_port[row["port"]]
        return found

    def check_after(self, ledger: Ledger) -> None:
        """What every fault must leave: nothing lost or dead-lettered, no stale ack."""
        assert ledger.lost == set()
        stale = stale_ack_errors(self.cluster)[self.stale_acks_before:]
        assert stale == [], f"a worker acked an unknown delivery tag: {stale}"
        for name, wqd in self.hosts.items():
            text = wqd.logs()
            assert "PRECONDITION_FAILED" not in text and "unknown delivery tag" not in text, f"{name}:\n{text}"
        wait_for(lambda: self.cluster.message_count(self.queue + ".dead") == 0, 10, interval=0.5,
                 message="nothing dead-lettered")
        # The broker's side: nothing left in the queue or unacked, every worker a consumer
        # (rabbitmqctl's counts of a quorum queue lag by up to 5 s).
        drained = {"messages_ready": 0, "messages_unacknowledged": 0, "consumers": 2 * WORKERS}
        wait_for(lambda: self.cluster.nodes[1].queue_stats(self.queue) == drained, 30, interval=0.5,
                 message=lambda: f"the queue drained, every worker consuming: "
                                 f"{self.cluster.nodes[1].queue_stats(self.queue)}")

    def log_times(self, host: str, pattern: str) -> list[float]:
        """time.time() of each line of ``host``'s log that matches ``pattern``
        (wqd stamps its lines in local time, to the millisecond)."""
        times = []
        for line in self.hosts[host].stderr_path.read_text().splitlines():
            if re.search(pattern, line):
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                times.append(stamp.timestamp())
        return times

    def logs(self) -> str:
        return "\n".join(f"=== {name}\n{wqd.logs()}" for name, wqd in self.hosts.items())

    def close(self) -> None:
        for wqd in self.hosts.values():
            wqd.cleanup()
        for proxy in self.proxies:
            proxy.stop()
        for machine in self.network.machines.values():
            self.network.plug(machine)
            machine.nft("flush ruleset")


@pytest.fixture
def scenario(cluster, network, tmp_path):
    made = []

    def make():
        made.append(Scenario(cluster, network, tmp_path))
        return made[-1]

    yield make
    for scenario in made:
        scenario.close()


def _report(fault: str, ledger: Ledger, explained: list, **figures) -> None:
    """Print the fault's figures, and keep them for the end of the run."""
    lines = [f"{fault}: {len(ledger.published)} tasks, {ledger.done_count()} done, {len(ledger.lost)} lost, "
             f"{ledger.duplicate_count()} duplicates; "
             + "; ".join(f"{key.replace('_', ' ')} {value}" for key, value in figures.items())]
    lines += ["  " + line for line in explained]
    print("\n" + "\n".join(lines))
    FIGURES.extend(lines)


def test_a_host_cut_off_longer_than_two_heartbeats(scenario):
    s = scenario()
    s.start()
    s.wait_busy("h1", {"default[1]", "default[2]"})
    s.network.unplug(s.h1)
    cut_at = time.time()  # once in place: a task may start while the command runs
    held = s.ledger().held_at(cut_at, "h1")
    assert held, "host h1 had tasks in hand when it was cut off"

    def taken_over():
        ledger = s.ledger()
        elsewhere = {task: ledger.rerun(task, run, cut_at) for task, run in held.items()}
        return all(run is not None and run.host == "h2" for run in elsewhere.values()) and elsewhere

    elsewhere = wait_for(taken_over, TAKEOVER_BOUND, interval=0.2,
                         message=lambda: f"h2 ran the tasks h1 held {sorted(held)}:\n{s.logs()}")
    takeover = max(run.end for run in elsewhere.values()) - cut_at
    # The cut lasts until the cut host noticed too: pika checks the heartbeats
    # every heartbeat + 5 s, and gives up after a check that saw no traffic.
    wait_for(lambda: s.consuming()["h1"] == 0, NOTICE_BOUND, interval=0.2,
             message=lambda: f"h1's workers noticed the cut: {s.consuming()}\n{s.logs()}")
    noticed = time.time() - cut_at
    h1_during = [run for run in s.ledger().runs if run.host == "h1" and run.start > cut_at + 1]
    wait_until(cut_at + CUT_SECONDS)
    healed_at = time.time()
    s.network.plug(s.h1)
    reconnect = s.wait_all_consuming(RECONNECT_BOUND)
    wait_for(lambda: any(run.host == "h1" and run.start > healed_at for run in s.ledger().runs), 60,
             interval=0.2, message=lambda: f"h1 running tasks again after the heal:\n{s.logs()}")
    ledger = s.wait_all_done()
    s.check_after(ledger)
    explained = ledger.explain(ledger.held_at(cut_at, "h1", slack=ACK_SLACK), "cut", cut_at)
    _report("host cut off", ledger, explained, cut_seconds=round(healed_at - cut_at, 1),
            held_by_cut_host=len(held), takeover_seconds=round(takeover, 2), cut_host_noticed_seconds=round(noticed, 1),
            reconnect_after_heal_seconds=round(reconnect, 2))
    assert h1_during == [], "the cut host started no task while cut off"
    # At most one duplicate per delivery the cut host had in hand (workers x prefetch).
    assert ledger.duplicate_count() <= WORKERS


def test_delay_and_loss_on_a_host_link(scenario):
    s = scenario()
    s.start()
    began = time.time()
    for proxy in s.proxies:
        proxy.delay = DELAY
    s.h2.nft(f"""table inet wqdtest_loss {{
        chain input {{ type filter hook input priority 0; iifname "eth0" numgen random mod 100 < {LOSS_PERCENT} counter drop; }}
        chain output {{ type filter hook output priority 0; oifname "eth0" numgen random mod 100 < {LOSS_PERCENT} counter drop; }}
    }}""")
    wait_until(began + DEGRADED_SECONDS)
    dropped = _dropped_packets(s.h2)
    s.h2.nft("delete table inet wqdtest_loss")
    for proxy in s.proxies:
        proxy.delay = 0.0
    healed_at = time.time()
    reconnect = s.wait_all_consuming(RECONNECT_BOUND)
    ledger = s.wait_all_done()
    s.check_after(ledger)
    h2_done = [run for run in ledger.runs if run.host == "h2" and run.end and began + 2 < run.end < healed_at]
    lost_connections = s.hosts["h2"].logs().count("Broker connection lost")
    explained = ledger.explain(_in_hand_during(ledger, "h2", began, healed_at), "degraded link", began)
    _report("200 ms delay and 5 % loss", ledger, explained, seconds=DEGRADED_SECONDS, packets_dropped=dropped,
            tasks_done_by_h2_meanwhile=len(h2_done), h2_connection_failures=lost_connections,
            reconnect_after_heal_seconds=round(reconnect, 2))
    assert dropped > 0, "the loss rules dropped packets"
    assert h2_done, "the slow, lossy host kept working"
    # A task can run twice only if a connection dropped with it in hand (prefetch 1).
    assert ledger.duplicate_count() <= lost_connections


def _in_hand_during(ledger, host, began, ended) -> dict:
    """{task: run} of the host's runs that overlapped [began, ended]."""
    return {run.task: run for run in ledger.runs
            if run.host == host and run.start <= ended and (run.end is None or run.end >= began - ACK_SLACK)}


def _dropped_packets(machine) -> int:
    """Packets the loss rules of ``machine`` dropped so far."""
    listing = machine.exec("nft", "list", "table", "inet", "wqdtest_loss").stdout
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))


def test_one_node_partitioned_from_the_other_two(scenario):
    s = scenario()
    s.start()
    cut_off, majority = s.cluster.nodes[0], s.cluster.nodes[1]  # node 1 leads the queue
    assert s.cluster.node_for_leader(s.queue) is cut_off
    on_cut_node = {key for key, node in s.worker_nodes(majority).items() if node is cut_off}
    assert on_cut_node == {("h1", "default[1]")}, s.worker_nodes(majority)
    others = " , ".join(node.machine.address for node in s.cluster.nodes[1:])
    s.wait_busy("h1", {"default[1]"})
    cut_off.machine.nft(f"""table inet wqdtest_partition {{
        chain input {{ type filter hook input priority 0; ip saddr {{ {others} }} drop; }}
        chain output {{ type filter hook output priority 0; ip daddr {{ {others} }} drop; }}
    }}""")
    cut_at = time.time()  # once in place: a task may start while nft runs
    held = s.ledger().held_at(cut_at, "h1", workers={"default[1]"})
    assert held, "the worker on node 1 had a task in hand when the partition began"
    # Node 1 sees itself in a minority and pauses (net_ticktime); its worker moves on.
    wait_for(lambda: cut_off.ctl("eval", "rabbit:is_running().").strip() == "false", PARTITION_BOUND,
             interval=0.5, message=lambda: f"node 1 paused itself:\n{cut_off.log_tail()}")
    paused = time.time() - cut_at
    new_leader = wait_for(lambda: _leader(majority, s.queue) not in (None, cut_off.nodename)
                          and _leader(majority, s.queue), PARTITION_BOUND, interval=0.5,
                          message="a new leader on the majority side")
    wait_for(lambda: s.consuming() == {"h1": WORKERS, "h2": WORKERS}
             and cut_off not in s.worker_nodes(majority).values(), RECONNECT_BOUND, interval=0.5,
             message=lambda: f"every worker consuming from the majority: {s.consuming()}\n{s.logs()}")
    # From the worker's log: when the paused node closed its connection, and
    # when it consumed again from the majority.
    worker = r"\[worker default\[1\] pid \d+\] "
    closed = min(t for t in s.log_times("h1", worker + "Broker connection lost") if t > cut_at)
    consuming_again = min(t for t in s.log_times("h1", worker + "Consuming from") if t > closed)
    wait_until(cut_at + PARTITION_SECONDS)
    healed_at = time.time()
    cut_off.machine.nft("delete table inet wqdtest_partition")

    def taken_over():
        ledger = s.ledger()
        again = {task: ledger.rerun(task, run, cut_at) for task, run in held.items()}
        if all(again.values()):
            return "rerun", again
        # A redelivery of a task already done may be acked without running
        # (the daemon's duplicate suppression): then no rerun shows, every
        # task is done, and check_after() sees the queue drained.
        completed = ledger.completions()
        if not ledger.lost and all(completed.get(task) for task in held):
            return "no rerun", {}
        return None

    # Run again (by another worker, or by the same one on its next connection):
    # the majority's new leader returns what a consumer on the lost node held.
    _, again = wait_for(taken_over, PARTITION_BOUND * 3, interval=0.2,
                        message=lambda: f"the tasks held through node 1 {sorted(held)} ran again:\n{s.logs()}")
    takeover = max(run.end for run in again.values()) - cut_at if again else None
    rejoin = _rejoin(s.cluster, cut_off, healed_at)
    s.wait_all_consuming(RECONNECT_BOUND)
    ledger = s.wait_all_done()
    s.check_after(ledger)
    explained = ledger.explain(ledger.held_at(cut_at, "h1", workers={"default[1]"}, slack=ACK_SLACK),
                               "partition", cut_at)
    _report("node partitioned", ledger, explained, partition_seconds=round(healed_at - cut_at, 1),
            held_through_cut_node=len(held), takeover_seconds=takeover and round(takeover, 2),
            rerun_by=", ".join(f"{run.host} {run.worker}" for run in again.values()) or "nobody (redelivery acked as a duplicate)", node_paused_after_seconds=round(paused, 1), new_leader=new_leader.split("@")[-1],
            its_connection_closed_after_seconds=round(closed - cut_at, 1),
            reconnected_to_majority_in_seconds=round(consuming_again - closed, 2),
            rejoin_after_heal=rejoin)
    # One worker was connected to the cut node, with one delivery in hand.
    assert ledger.duplicate_count() <= len(on_cut_node)


def _rejoin(cluster, node, healed_at) -> str:
    """Wait until the paused node is back in the cluster; say how it went.
    RabbitMQ 3.10 on Erlang 25 can hang while a paused node restarts (its log
    says "Global hang workaround", 2 runs in 10 here): past REJOIN_BOUND the
    node is restarted, as an operator would, and the report says so."""
    try:
        cluster.wait_healthy(timeout=REJOIN_BOUND)
        return f"{time.time() - healed_at:.1f} s"
    except AssertionError:
        node.kill()
        node.start(timeout=120)
        cluster.wait_healthy(timeout=120)
        return f"stuck, restarted by the test: healthy {time.time() - healed_at:.1f} s after the heal"


def _leader(node, queue):
    for row in json.loads(node.ctl("list_queues", "-q", "--formatter", "json", "name", "leader") or "[]"):
        if row["name"] == queue:
            return row["leader"]
    return None
