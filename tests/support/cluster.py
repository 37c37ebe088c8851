"""A throwaway three-node RabbitMQ cluster on loopback, for wqd's cluster test.

A ``Cluster`` is three ``BrokerNode``s (tests/support/broker.py): each with its own
name (``wqdtest-<pid>-<n>@localhost``), AMQP and distribution ports, data
directory and logs under ``<base>/node<i>``, and one Erlang cookie shared by
all three (written into each node's HOME before its first start, so the nodes
and rabbitmqctl can talk to each other). Like a BrokerNode, it never touches
the system broker on 127.0.0.1:5672 nor its epmd registration.

The nodes boot in parallel; then nodes 2 and 3 join node 1 the documented way
(``rabbitmqctl -n <node> stop_app; join_cluster <node1>; start_app``). A node
that is killed keeps its data and its membership: ``start_node()`` brings it
back into the cluster, and quorum queue members on it catch up from the log.

Timings measured on the dev machine (Debian 12, 2 cores, Erlang 25.2.3,
RabbitMQ 3.10.8; ``python -m tests.support.cluster measure DIR`` and about 20 runs of
tests/test_cluster.py; the three VMs share the two cores, and the spread is
mostly the load that other processes put on the machine):
    start (3 nodes booted in parallel, 2 joins, until healthy):  11-19 s
      (the two joins, each a stop_app and start_app, take ~6 s)
    quorum queue leader failover (leader SIGKILLed, until a
      survivor's list_queues names a new leader):                0.4-2.1 s
      (mostly the rabbitmqctl call; wqd's workers get deliveries
      again 0.2-0.5 s after the kill)
    restart of the killed node (until healthy, 3 of 3 running,
      quorum queue members all online):                          5.3-9.6 s
    stop (graceful, all three in parallel):                      1.1 s
rabbitmqctl calls against a cluster cost 0.3-0.5 s each: poll at 0.5 s.

Command line, for trying wqd against a cluster by hand::

    python -m tests.support.cluster serve DIR     # prints the three URLs, runs until TERM/INT
    python -m tests.support.cluster measure DIR   # prints the timings above
"""

from __future__ import annotations

import json
import secrets
import signal
import sys
import threading
import time
from pathlib import Path

from tests.support.broker import BrokerError, BrokerNode
from tests.support.waiting import wait_for

# How often to ask rabbitmqctl while waiting (each call takes 0.3-0.5 s).
POLL_INTERVAL = 0.5


class Cluster:
    """``size`` clustered throwaway RabbitMQ nodes under ``base_dir``."""

    def __init__(self, base_dir: Path, size: int = 3, extra_conf: str = "") -> None:
        self.base_dir = Path(base_dir).resolve()
        cookie = secrets.token_hex(20).upper()
        self.nodes: list[BrokerNode] = []
        for index in range(1, size + 1):
            home = self.base_dir / f"node{index}"
            home.mkdir(parents=True, exist_ok=True)
            # BrokerNode keeps an existing cookie file: this one, the same for all.
            cookie_file = home / ".erlang.cookie"
            if not cookie_file.exists():
                cookie_file.write_text(cookie)
                cookie_file.chmod(0o400)
            self.nodes.append(self._new_node(home, extra_conf))
        self.start_seconds: float | None = None

    def _new_node(self, home: Path, extra_conf: str) -> BrokerNode:
        """A node whose ports differ from those of the nodes made so far
        (free_port() can hand out a port twice when asked in a row)."""
        taken = {port for node in self.nodes for port in (node.port, node.dist_port)}
        for _ in range(10):
            node = BrokerNode(home, extra_conf)
            if not {node.port, node.dist_port} & taken:
                return node
        raise BrokerError("could not find distinct free ports for the cluster's nodes")

    def __repr__(self) -> str:
        return f"<Cluster {', '.join(repr(node) for node in self.nodes)}>"

    @property
    def urls(self) -> list[str]:
        """The AMQP URL of every node, in node order (also of stopped ones)."""
        return [node.url for node in self.nodes]

    def node(self, nodename: str) -> BrokerNode:
        for node in self.nodes:
            if node.nodename == nodename:
                return node
        raise KeyError(f"{nodename} is not a node of {self!r}")

    def running_nodes(self) -> list[BrokerNode]:
        return [node for node in self.nodes if node.running and not node.paused]

    # ---- lifecycle

    def start(self, timeout: float = 180) -> Cluster:
        """Boot every node, join them into one cluster, wait until healthy."""
        began = time.monotonic()
        try:
            _in_parallel([lambda node=node: node.start(timeout=timeout) for node in self.nodes])
            first = self.nodes[0]
            for node in self.nodes[1:]:
                # The documented way to add a node: its app stops, it resets
                # its (still empty) database to the cluster's, and restarts.
                node.ctl("stop_app")
                node.ctl("join_cluster", first.nodename)
                node.ctl("start_app")
            self.wait_healthy(timeout=max(10.0, timeout - (time.monotonic() - began)))
        except BaseException:
            self.kill_all()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def kill(self, node: BrokerNode) -> None:
        """SIGKILL one node (its data and cluster membership are kept)."""
        node.kill()

    def start_node(self, node: BrokerNode, timeout: float = 120) -> None:
        """Start a killed or stopped node again; it rejoins the cluster by itself."""
        node.start(timeout=timeout)

    def heal(self, timeout: float = 120) -> None:
        """Start every node that is not running, then wait until healthy
        (between tests: a test may leave a node killed)."""
        for node in self.nodes:
            if node.paused:
                node.resume()
            if not node.running:
                node.kill()  # reap and clean up leftovers, if any
                node.start(timeout=timeout)
        self.wait_healthy(timeout=timeout)

    def stop(self, timeout: float = 60) -> None:
        """Stop every node gracefully (in parallel); kill what does not stop."""
        _in_parallel([lambda node=node: node.stop(timeout=timeout) for node in self.nodes])

    def kill_all(self) -> None:
        _in_parallel([node.kill for node in self.nodes])

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- state, through rabbitmqctl on a running node

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl ARGS`` on the first running node."""
        running = self.running_nodes()
        if not running:
            raise BrokerError(f"no node of the cluster is running: {self!r}")
        return running[0].ctl(*args, timeout=timeout)

    def cluster_status(self, node: BrokerNode) -> dict:
        return json.loads(node.ctl("cluster_status", "--formatter", "json"))

    def healthy(self) -> bool:
        """Every node runs and every node sees all of them running, with no
        alarm and no partition."""
        every = {node.nodename for node in self.nodes}
        for node in self.nodes:
            if not node.running or node.paused:
                return False
            status = self.cluster_status(node)
            if set(status["running_nodes"]) != every or status["alarms"] or status["partitions"]:
                return False
        return True

    def wait_healthy(self, timeout: float = 120) -> float:
        """Wait until healthy(); return how long that took."""
        return _wait(self.healthy, timeout, lambda: f"cluster not healthy: {self.describe()}")

    def queue_info(self, queue: str) -> dict | None:
        """{name, type, leader, members, online} of a queue (a quorum queue has
        a leader and members), None if there is no such queue."""
        out = self.ctl("list_queues", "-q", "--formatter", "json", "name", "type", "leader", "members", "online")
        for row in json.loads(out) if out.strip() else []:
            if row["name"] == queue:
                return row
        return None

    def node_for_queue(self, queue: str) -> BrokerNode:
        """The node that holds a queue: a quorum queue's leader, a classic
        queue's home node (the one that lists it with ``--local``)."""
        info = self.queue_info(queue)
        if info is not None and info.get("leader"):
            return self.node(info["leader"])
        for node in self.running_nodes():
            if queue in node.ctl("list_queues", "--local", "-q", "-s", "name").split():
                return node
        raise BrokerError(f"no running node holds queue {queue!r}")

    def node_for_leader(self, queue: str) -> BrokerNode:
        """The node that holds the leader of quorum queue ``queue``."""
        info = self.queue_info(queue)
        if info is None or not info.get("leader"):
            raise BrokerError(f"queue {queue!r} has no leader: {info!r}")
        return self.node(info["leader"])

    def wait_new_leader(self, queue: str, old: BrokerNode, timeout: float = 60) -> BrokerNode:
        """Wait until a running node other than ``old`` leads ``queue``; return it."""

        def elected():
            info = self.queue_info(queue)
            leader = info and info.get("leader")
            if leader and leader != old.nodename and self.node(leader).running:
                return self.node(leader)
            return None

        return _wait(elected, timeout, lambda: f"no new leader for {queue!r}: {self.queue_info(queue)!r}",
                     value=True)

    def wait_members_online(self, queue: str, timeout: float = 120) -> float:
        """Wait until every member of quorum queue ``queue`` is online again."""

        def online():
            info = self.queue_info(queue)
            return bool(info) and sorted(info["online"]) == sorted(info["members"]) == sorted(
                node.nodename for node in self.nodes)

        return _wait(online, timeout, lambda: f"members of {queue!r} not all online: {self.queue_info(queue)!r}")

    def message_count(self, queue: str) -> int | None:
        """Ready messages in ``queue`` as its leader counts them right now (an
        AMQP passive declare on a running node; rabbitmqctl's counts of a
        quorum queue lag by up to the statistics interval, 5 s); None if there
        is no such queue."""
        import pika.exceptions

        node = self.running_nodes()[0]
        with node.connection() as connection:
            try:
                return connection.channel().queue_declare(queue, passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:
                    return None
                raise

    def connection_nodes(self) -> dict[str, str]:
        """{client-provided connection name: node name} of every AMQP connection
        (wqd names its workers' connections "wqd worker <pool>[<slot>] pid <pid>")."""
        by_port = {node.port: node.nodename for node in self.nodes}
        out = self.ctl("list_connections", "-q", "--formatter", "json", "port", "client_properties")
        found = {}
        for row in json.loads(out) if out.strip() else []:
            properties = {item[0]: item[-1] for item in row["client_properties"]}
            if "connection_name" in properties:
                found[properties["connection_name"]] = by_port.get(row["port"], f"port {row['port']}")
        return found

    def describe(self) -> str:
        return "; ".join(f"{node.nodename} port {node.port} "
                         f"{'running' if node.running else 'stopped'}" for node in self.nodes)

    def log_tails(self, lines: int = 20) -> str:
        return "\n".join(node.log_tail(lines) for node in self.nodes)


def _in_parallel(calls) -> None:
    """Run the calls in threads; re-raise the first exception once all ended."""
    errors: list[BaseException] = []

    def run(call):
        try:
            call()
        except BaseException as exc:  # noqa: B036 - handed to the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,), daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _wait(predicate, timeout: float, message, value: bool = False):
    """wait_for() at POLL_INTERVAL; return the predicate's value if ``value``,
    else the seconds waited."""
    began = time.monotonic()
    result = wait_for(predicate, timeout, interval=POLL_INTERVAL, message=message)
    return result if value else time.monotonic() - began


# --------------------------------------------------------------------------
# command line: python -m tests.support.cluster serve|measure DIR


def _serve(base_dir: Path) -> int:
    cluster = Cluster(base_dir)
    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in sigs:
        signal.signal(sig, on_signal)
    try:
        cluster.start()
        print(",".join(cluster.urls), flush=True)
        print(f"tests.support.cluster: {cluster.describe()} (started in {cluster.start_seconds:.1f} s; "
              f"HOME={cluster.nodes[0].home} rabbitmqctl -n {cluster.nodes[0].nodename} ...); "
              "stop with TERM or INT", file=sys.stderr, flush=True)
        while True:
            signal.pause()
    except BrokerError as exc:
        print(f"tests.support.cluster: {exc}", file=sys.stderr)
        return 1
    except SystemExit:
        return 0
    finally:
        for sig in sigs:
            signal.signal(sig, signal.SIG_IGN)
        cluster.stop()


def _measure(base_dir: Path, runs: int) -> int:
    results: dict[str, list[float]] = {}

    def note(what: str, seconds: float) -> None:
        results.setdefault(what, []).append(seconds)
        print(f"  {what}: {seconds:.2f} s", flush=True)

    for run in range(runs):
        print(f"run {run + 1}", flush=True)
        cluster = Cluster(base_dir / f"run{run}")
        try:
            cluster.start()
            note("start (boot, join, healthy)", cluster.start_seconds)
            cluster.nodes[0].declare_queue("measure", arguments={"x-queue-type": "quorum"})
            cluster.nodes[0].publish("measure", b"x")
            began = time.monotonic()
            cluster.queue_info("measure")
            note("rabbitmqctl list_queues", time.monotonic() - began)
            leader = cluster.node_for_leader("measure")
            began = time.monotonic()
            cluster.kill(leader)
            cluster.wait_new_leader("measure", leader)
            note("leader failover (kill, new leader)", time.monotonic() - began)
            began = time.monotonic()
            cluster.start_node(leader)
            cluster.wait_healthy()
            note("restart killed node (until healthy)", time.monotonic() - began)
            cluster.wait_members_online("measure")
            assert cluster.nodes[1].get_all("measure") == [b"x"], "message lost"
            began = time.monotonic()
            cluster.stop()
            note("stop (graceful, all)", time.monotonic() - began)
        finally:
            cluster.kill_all()
    for what, values in results.items():
        print(f"{what:38s} mean {sum(values) / len(values):6.2f} s  "
              f"min {min(values):6.2f} s  max {max(values):6.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.support.cluster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve", help="run a throwaway cluster until TERM/INT; print its URLs")
    p.add_argument("dir", type=Path)
    p = sub.add_parser("measure", help="time start, leader failover, node restart, stop")
    p.add_argument("dir", type=Path)
    p.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        return _serve(args.dir)
    return _measure(args.dir, args.runs)


if __name__ == "__main__":
    sys.exit(main())
