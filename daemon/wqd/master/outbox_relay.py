"""The master's side of the outbox relay: starts the child, reads its reports, serves the gauges.

Like the queue monitor (queue_monitor.py), the relay lives in a child
process, so the master's loop never waits on the database or the broker:
every method here returns at once. A relay that exits soon after its start
is started again after a growing delay (supervision.RespawnBackoff).
"""

import logging
import os
import signal
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from wqd import exits
from wqd.ipc import reporting
from wqd.master import children
from wqd.master.supervision import RespawnBackoff
from wqd.outbox import relay

log = logging.getLogger("wqd.outbox")

STABLE_SECONDS = 60.0
# Counts older than this are not served: the relay is stuck or the database hangs.
STALE_AFTER = 15.0


class OutboxRelay:
    """Also a prometheus_client collector (the master registers it)."""

    def __init__(self, outbox, broker):
        self._outbox, self._broker = outbox, broker
        self.pid = None
        self._reader = None
        self._started_at = 0.0
        self._respawn = RespawnBackoff(STABLE_SECONDS)
        self._stopped = self._replacing = False
        self.relayed = self.refused = 0  # totals since the master started
        self._connected = None  # {database, broker} while the relay is connected to both
        self.problem = "starting"
        self._stats, self._stats_at = None, None

    # -- the master's loop

    def tick(self, now: float, close_inherited) -> None:
        if self._outbox is not None and self.pid is None and not self._stopped and self._respawn.may_start(now):
            self._spawn(close_inherited)

    def fileno(self):
        return self._reader.fd if self._reader else None

    def read(self) -> None:
        """The pipe is readable: take the child's reports (never blocks)."""
        if self._reader is None:
            return
        events, eof = self._reader.read()
        for event, fields in events:
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
        if eof:
            self._close_reader()

    def reaped(self, pid: int, status: int) -> bool:
        """The master reaped a child: True if it was the relay (started again later)."""
        if pid != self.pid or pid is None:
            return False
        self.read()
        self._close_reader()
        self.pid, self._connected = None, None
        if self._stopped:
            return True
        if self._replacing:
            self._replacing = False
            return True
        now = time.monotonic()
        delay = self._respawn.exited(now - self._started_at, now)
        self.problem = f"the relay {exits.describe(status)}"
        log.warning("Outbox relay (pid %d) %s; restarting it in %.0f s.", pid, exits.describe(status), delay)
        return True

    def configure(self, outbox, broker) -> None:
        """After a reload: another outbox or broker means another child."""
        if (outbox, broker) == (self._outbox, self._broker):
            return
        self._outbox, self._broker = outbox, broker
        self._connected, self._stats, self.problem = None, None, "starting"
        if self.pid is not None:
            self._replacing = True
            self._signal(signal.SIGTERM)
        self._respawn.reset()

    def stop(self) -> None:
        self._stopped = True
        self._signal(signal.SIGTERM)

    def close(self) -> None:
        """The master exits: the child must not outlive it (it finishes its round: SIGTERM, then waits)."""
        self._stopped = True
        if self.pid is not None:
            self._signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            try:
                while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                    if time.monotonic() > deadline:
                        self._signal(signal.SIGKILL)
                        os.waitpid(self.pid, 0)
                        break
                    time.sleep(0.05)
            except ChildProcessError:
                pass
            self.pid = None
        self._close_reader()

    def close_in_child(self) -> None:
        if self._reader is not None:
            os.close(self._reader.fd)
            self._reader = None

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

    # -- helpers

    def _spawn(self, close_inherited) -> None:
        outbox, broker = self._outbox, self._broker
        self.pid, read_fd, _ = children.fork_with_pipes(lambda report_fd, _: relay.run(outbox, broker, report_fd),
                                                        "Outbox relay", close_inherited)
        self._reader = reporting.EventReader(read_fd)
        self._started_at = time.monotonic()
        log.debug("Outbox relay started (pid %d).", self.pid)

    def _signal(self, signum: int) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def _close_reader(self) -> None:
        if self._reader is not None:
            os.close(self._reader.fd)
            self._reader = None
