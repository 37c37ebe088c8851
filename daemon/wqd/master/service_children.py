"""The master's children that are not workers: the queue monitor and the
outbox relay. Each is a ServiceChild (service_child.py): a process of its
own with a report pipe, started, read, reaped, reconfigured and stopped
alike, never waiting on the network, so the arbiter's loop does each duty
once for both, here."""

import selectors

from wqd.master.outbox_relay import OutboxRelay
from wqd.master.queue_monitor import QueueMonitor


class ServiceChildren:
    def __init__(self, config, registry):
        self.queue_monitor = QueueMonitor(config.broker, config.pools)
        self.outbox_relay = OutboxRelay(config.outbox, config.broker)  # idle without an outbox section
        self._all = (self.queue_monitor, self.outbox_relay)
        for child in self._all:
            registry.register(child)  # each is a prometheus_client collector

    def tick(self, now: float, close_inherited) -> None:
        """Start those that are not running (after their backoff)."""
        for child in self._all:
            child.tick(now, close_inherited)

    def watch(self, selector) -> None:
        """Register the report pipes to read when readable."""
        for child in self._all:
            if child.fileno() is not None:
                selector.register(child.fileno(), selectors.EVENT_READ, child.read)

    def reaped(self, pid: int, status: int) -> None:
        """The master reaped a child that is neither a worker nor the reload child."""
        any(child.reaped(pid, status) for child in self._all)

    def configure(self, config) -> None:
        """After a reload."""
        self.queue_monitor.configure(config.broker, config.pools)
        self.outbox_relay.configure(config.outbox, config.broker)

    def stop(self) -> None:
        for child in self._all:
            child.stop()

    def close(self) -> None:
        for child in self._all:
            child.close()

    def close_in_child(self) -> None:
        for child in self._all:
            child.close_in_child()
