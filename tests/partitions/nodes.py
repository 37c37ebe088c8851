"""RabbitMQ nodes and wqd hosts, each in a network namespace of its own."""

from __future__ import annotations

from pathlib import Path

from tests.partitions.netns import Machine, entered
from tests.support.broker import BrokerNode
from tests.support.cluster import Cluster
from tests.support.daemon import Wqd

# Seconds; nodes that hear nothing from each other for 0.75-1.25 times this
# are disconnected: how soon pause_minority pauses a cut-off node (the
# default, 60 s, would make the partition test minutes long). rabbitmqctl
# gets the same, as Erlang expects of every node it talks to.
NET_TICKTIME = 10


class NamespacedNode(BrokerNode):
    """A BrokerNode run in ``machine``'s namespace, named ``wqdtest-...@<address>``
    (Erlang long names: the nodes find each other by address, no /etc/hosts),
    its AMQP port on every address of that namespace (127.0.0.1 for the
    test's own clients, which run in there too, and eth0's for wqd). Every
    method that starts a process or opens a socket runs in the namespace."""

    def __init__(self, base_dir: Path, machine: Machine, extra_conf: str = "") -> None:
        self.machine = machine
        super().__init__(base_dir, extra_conf)
        self.nodename = f"{self.name}@{machine.address}"
        self.lan_url = f"amqp://guest:guest@{machine.address}:{self.port}/%2F"

    def _write_files(self) -> None:
        """BrokerNode's files, with AMQP on every address of the namespace and
        guest allowed from other machines (there are only ours on the bridge)."""
        super()._write_files()
        conf = self.conf_file.read_text()
        for line, replacement in ((f"listeners.tcp.default = 127.0.0.1:{self.port}",
                                   f"listeners.tcp.default = {self.port}"),
                                  ("loopback_users.guest = true", "loopback_users = none")):
            assert line in conf, f"{self.conf_file} has no line {line!r} to replace"
            conf = conf.replace(line, replacement)
        self.conf_file.write_text(conf)

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            RABBITMQ_USE_LONGNAME="true",
            RABBITMQ_NODE_IP_ADDRESS="0.0.0.0",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=f"-kernel net_ticktime {NET_TICKTIME}",
            RABBITMQ_CTL_ERL_ARGS=f"-kernel net_ticktime {NET_TICKTIME}",
        )
        return env


def _in_namespace(name):
    method = getattr(BrokerNode, name)

    def wrapped(self, *args, **kwargs):
        with entered(self.machine.netns):
            return method(self, *args, **kwargs)

    wrapped.__name__ = name
    wrapped.__doc__ = method.__doc__
    return wrapped


for _name in ("start", "kill", "stop", "pause", "resume", "ctl", "connection"):
    setattr(NamespacedNode, _name, _in_namespace(_name))


class NamespacedCluster(Cluster):
    """tests/support/cluster.py's Cluster, node i in ``machines[i]``'s namespace."""

    def __init__(self, base_dir: Path, machines: list[Machine], extra_conf: str = "") -> None:
        self.machines = machines
        super().__init__(base_dir, size=len(machines), extra_conf=extra_conf)

    def _new_node(self, home: Path, extra_conf: str) -> BrokerNode:
        return NamespacedNode(home, self.machines[len(self.nodes)], extra_conf)

    @property
    def lan_urls(self) -> list[str]:
        return [node.lan_url for node in self.nodes]


class NamespacedWqd(Wqd):
    """A `wqd run` whose master and workers live in ``machine``'s namespace
    (its metrics endpoint on that namespace's loopback)."""

    def __init__(self, workdir: Path, machine: Machine, broker_urls: list[str], pools: list, **options) -> None:
        self.machine = machine
        super().__init__(workdir, broker_urls, pools, **options)

    def start(self, wait_ready: bool = True, timeout: float = 60) -> Wqd:
        with entered(self.machine.netns):
            super().start(wait_ready=False)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def http(self, path: str):
        with entered(self.machine.netns):
            return super().http(path)
