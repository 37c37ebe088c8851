"""The master's side of the outbox relay: starts the child, reads its reports, serves the gauges.

Like the queue monitor (queue_monitor.py), the relay lives in a child
process, so the master's loop never waits on the database or the broker:
every method here returns at once. A relay that exits soon after its start
is started again after a growing delay (supervision.RespawnBackoff).
"""

import logging
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from wqd import exits
from wqd.master.service_child import ServiceChild
from wqd.outbox import relay

log = logging.getLogger("wqd.outbox")

# Counts older than this are not served: the relay is stuck or the database hangs.
STALE_AFTER = 15.0


class OutboxRelay(ServiceChild):
    """Also a prometheus_client collector (the master registers it)."""

    title = "Outbox relay"
    logger = log
    close_grace = 10.0  # it finishes its round: a batch published is deleted, not published again

    def __init__(self, outbox, broker):
        super().__init__()
        self._outbox, self._broker = outbox, broker
        self.relayed = self.refused = 0  # totals since the master started
        self._connected = None  # {database, broker} while the relay is connected to both
        self.problem = "starting"
        self._stats, self._stats_at = None, None

    def wanted(self) -> bool:
        return self._outbox is not None

    def child_main(self, report_fd: int) -> int:
        return relay.run(self._outbox, self._broker, report_fd)

    def on_report(self, event: str, fields: dict) -> None:
        if event == relay.UP:
            self._connected, self.problem = fields, None
            self._stats, self._stats_at = None, time.monotonic()  # its first count comes after its first round
        elif event == relay.DOWN:
            self._connected, self.problem = None, fields.get("reason")
        elif event == relay.RELAYED:
            self.relayed += int(fields.get("relayed", 0))
            self.refused += int(fields.get("refused", 0))
        elif event == relay.STATS:
            self._stats, self._stats_at = fields, time.monotonic()

    def forget(self) -> None:
        self._connected = None

    def died(self, status: int) -> None:
        self.problem = f"the relay {exits.describe(status)}"

    def configure(self, outbox, broker) -> None:
        """After a reload: another outbox or broker means another child."""
        if (outbox, broker) == (self._outbox, self._broker):
            return
        self._outbox, self._broker = outbox, broker
        self._stats, self.problem = None, "starting"
        self.replace()

    # -- what it shows

    @property
    def up(self) -> bool:
        """Connected, and counting the rows every second (a relay stuck in a query is not up)."""
        return (self.pid is not None and self._connected is not None
                and time.monotonic() - self._stats_at <= STALE_AFTER)

    def fresh_stats(self):
        if self._stats_at is None or time.monotonic() - self._stats_at > STALE_AFTER:
            return None
        return self._stats

    def status(self):
        """The /status entry (None without an outbox section)."""
        if self._outbox is None:
            return None
        stats = self.fresh_stats() or {}
        problem = None if self.up else self.problem
        if not self.up and self._connected is not None:
            problem = (f"the relay has not counted the outbox rows for {STALE_AFTER:.0f} s: the database or the "
                       f"broker does not answer?")
        return {"table": self._outbox.table, "relay_up": self.up, "problem": problem,
                "pending": stats.get("pending"), "oldest_age_seconds": stats.get("oldest_age"),
                "set_aside": stats.get("set_aside"), "relayed": self.relayed, "refused": self.refused}

    def describe(self):
        return []

    def collect(self):
        """Every family, always (so the names are there to alert on); samples only with an outbox section."""
        pending = GaugeMetricFamily("wqd_outbox_pending", "Outbox rows waiting to be published (absent when unknown).")
        oldest = GaugeMetricFamily("wqd_outbox_oldest_age_seconds",
                                   "Age of the oldest waiting outbox row, 0 when none waits (absent when unknown).")
        relayed = CounterMetricFamily("wqd_outbox_relayed", "Outbox rows published, confirmed and deleted.")
        refused = CounterMetricFamily("wqd_outbox_refused", "Outbox rows the broker refused for good, set aside "
                                                            "(wqd outbox list).")
        up = GaugeMetricFamily("wqd_outbox_relay_up", "1 while the outbox relay is connected to its database "
                                                      "and the broker.")
        stats = self.fresh_stats()
        if stats is not None:
            pending.add_metric([], stats["pending"])
            oldest.add_metric([], stats["oldest_age"] or 0.0)
        if self._outbox is not None:
            relayed.add_metric([], self.relayed)
            refused.add_metric([], self.refused)
            up.add_metric([], 1 if self.up else 0)
        yield from (pending, oldest, relayed, refused, up)
