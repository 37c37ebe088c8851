"""Fixtures of `make test-partitions`: a 3-node RabbitMQ cluster and two wqd
hosts, each in a network namespace of its own, on one bridge
(tests/partitions/netns.py). Root only.

The network and the cluster are made once for the module; every namespace,
veth pair and process they hold is removed at the end, also when a test
fails (``Network.remove()``), and the test run fails if `ip netns list`
still shows one of them. These tests are collected only when
tests/partitions is named on the command line, so `make test` never needs
root.
"""

from pathlib import Path

import pytest

from tests.partitions import ledger
from tests.partitions.netns import Network
from tests.partitions.nodes import NamespacedCluster
from tests.support.broker import MISSING_RABBITMQ_MESSAGE, rabbitmq_available
from tests.support.root_suites import collected_only_when_named, root_only

PARTITIONS_DIR = Path(__file__).resolve().parent
NOT_ROOT = ("make test-partitions needs root: it makes network namespaces, veth pairs and nft rules. "
            "Run it as root (sudo make test-partitions).")
pytest_ignore_collect = collected_only_when_named(PARTITIONS_DIR)
as_root = root_only(NOT_ROOT)

NODE_MEMORY_MIB = 512


def pytest_terminal_summary(terminalreporter):
    if ledger.FIGURES:
        terminalreporter.section("partitions")
        for line in ledger.FIGURES:
            terminalreporter.write_line(line)


    if not rabbitmq_available():
        pytest.fail(MISSING_RABBITMQ_MESSAGE, pytrace=False)


@pytest.fixture(scope="module")
def network():
    """Namespaces n1-n3 (10.231.0.11-13) for the nodes, h1-h2 (10.231.0.21-22) for wqd."""
    net = Network()
    try:
        net.create()
        for index in (1, 2, 3):
            net.add(f"n{index}", 10 + index)
        for index in (1, 2):
            net.add(f"h{index}", 20 + index)
        yield net
    finally:
        net.remove()
        assert net.leftovers() == [], f"namespaces left after the test: {net.leftovers()}"


@pytest.fixture(scope="module")
def cluster(network, tmp_path_factory):
    machines = [network.machines[f"n{index}"] for index in (1, 2, 3)]
    cluster = NamespacedCluster(tmp_path_factory.mktemp("cluster"), machines, extra_conf="\n".join([
        "cluster_partition_handling = pause_minority",
        f"vm_memory_high_watermark.absolute = {NODE_MEMORY_MIB}MiB",
    ]))
    try:
        cluster.start()
        ledger.FIGURES.append(f"cluster of 3 nodes in namespaces started in {cluster.start_seconds:.1f} s")
        ledger.check_stale_ack_detection(cluster)
        yield cluster
    finally:
        cluster.kill_all()
