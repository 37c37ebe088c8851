"""The suite's fixtures (a plugin: conftest.py names it in pytest_plugins).
Every test talks to a throwaway RabbitMQ node (tests/support/broker.py), never
to a broker already running on the machine."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from tests.support.broker import MISSING_RABBITMQ_MESSAGE, BrokerNode, rabbitmq_available
from tests.support.daemon import Wqd, free_port
from tests.support.postgres import MISSING_POSTGRESQL_MESSAGE, PostgresNode, postgresql_available

# A test that asks for one of these needs a RabbitMQ node: marked ``broker``,
# it is left out of `make test-unit` (-m "not broker").
BROKER_FIXTURES = {"broker", "queue_name", "make_wqd", "tls_broker", "small_message_broker"}
# A test that asks for one of these starts a PostgreSQL instance (a second or
# two): marked ``slow``, it is left out of `make test-unit` too.
POSTGRES_FIXTURES = {"postgres", "outbox_dsn"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if BROKER_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.broker)
        if POSTGRES_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Iterator[BrokerNode]:
    """One throwaway RabbitMQ node for the whole session. A test may kill,
    pause or restart it: ``queue_name`` (and ``broker.ensure_running()``)
    bring it back before the next test."""
    if not rabbitmq_available():
        # fail, never skip: CI must not go green without running the suite
        pytest.fail(MISSING_RABBITMQ_MESSAGE, pytrace=False)
    node = BrokerNode(tmp_path_factory.mktemp("rabbitmq"))
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresNode]:
    """One throwaway PostgreSQL instance for the whole session (tests/support/postgres.py)."""
    if not postgresql_available():
        pytest.fail(MISSING_POSTGRESQL_MESSAGE, pytrace=False)
    node = PostgresNode().start()
    yield node
    node.close()


@pytest.fixture
def outbox_dsn(postgres) -> str:
    """The DSN of a new, empty database of its own for this test."""
    postgres.ensure_running()
    return postgres.create_database(f"wqdtest_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def queue_name(request, broker) -> Iterator[str]:
    """A queue name unique to this test. After the test the queue and its
    ``<name>.dead`` dead-letter queue are deleted (errors ignored, e.g. when
    the test left the broker down)."""
    broker.ensure_running()
    test = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:60]
    name = f"wqdtest.{test}.{uuid.uuid4().hex[:8]}"
    yield name
    if broker.running and not broker.paused:
        for q in (name, f"{name}.dead"):
            try:
                broker.delete_queue(q)
            except Exception:
                pass


@pytest.fixture
def make_wqd(tmp_path, broker):
    """``make_wqd(pools, **options) -> Wqd``; every daemon is killed after the test."""
    daemons = []

    def make(pools, broker_url=None, **options):
        wqd = Wqd(tmp_path / f"wqd{len(daemons)}", broker_url or broker.url, pools, **options)
        daemons.append(wqd)
        return wqd

    yield make
    for wqd in daemons:
        wqd.cleanup()


@pytest.fixture
def free_tcp_port():
    return free_port()
