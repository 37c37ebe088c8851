"""Prometheus metrics, owned by the master and computed at scrape time.

Task counts come from the workers' shared-memory records (worker_record.py)
plus the totals of workers that are gone, which the master folds in when it
reaps them. So there is no multiprocess directory to wipe or to grow, counters
survive a worker's death, and per-worker gauges (from the master's live
worker table) vanish with the worker.
"""

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from wqd.ipc.task_stats import DURATION_BUCKETS, Outcome
from wqd.master.supervision import RESTART_REASONS

# The *_created series double every counter and no dashboard of ours reads them.
prometheus_client.disable_created_metrics()


class TaskTotals:
    """One pool's task counts, summed over worker records (or their snapshots)."""

    def __init__(self):
        self.outcomes = dict.fromkeys(Outcome, 0)
        self.redelivered = 0
        self.copies_refused = 0
        self.duration_sum = 0.0
        self.duration_buckets = [0] * (len(DURATION_BUCKETS) + 1)

    def add(self, snapshot) -> None:
        for outcome, count in snapshot.outcomes.items():
            self.outcomes[outcome] += count
        self.redelivered += snapshot.redelivered
        self.copies_refused += snapshot.copies_refused
        self.duration_sum += snapshot.duration_sum
        self.duration_buckets = [a + b for a, b in zip(self.duration_buckets, snapshot.duration_buckets)]


class Metrics:
    def __init__(self, snapshot, live_records):
        """``snapshot()`` returns the master's view: (a dict of counts per pool, ready, quiet);
        ``live_records()`` yields (pool name, WorkerRecord) for every live worker."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.restarts = Counter("wqd_worker_restarts", "Worker processes replaced, by reason.",
                                ["pool", "reason"], registry=self.registry)
        self.registry.register(_LiveCollector(snapshot))
        self.registry.register(_TaskCollector(self))
        self._live_records = live_records
        self._gone = {}  # pool -> TaskTotals of workers that are gone, and the master's own counts

    def add_pool(self, pool: str) -> None:
        """Create every label set at zero, so rates and alerts see the series from the start."""
        self._gone.setdefault(pool, TaskTotals())
        for reason in RESTART_REASONS:
            self.restarts.labels(pool, reason)

    def worker_gone(self, pool: str, final) -> None:
        """Keep a reaped worker's totals (``final``: its record's last snapshot)."""
        self._gone[pool].add(final)

    def record_task(self, pool: str, outcome: Outcome) -> None:
        """A task the master saw end: its worker died running it."""
        self._gone[pool].outcomes[outcome] += 1

    def task_totals(self) -> dict:
        """Pool -> TaskTotals, over the live workers and those gone."""
        totals = {}
        for pool, gone in self._gone.items():
            totals[pool] = TaskTotals()
            totals[pool].add(gone)
        for pool, record in self._live_records():
            totals[pool].add(record.read())
        return totals

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _TaskCollector:
    """Task counters and the duration histogram, summed at scrape time."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def describe(self):
        return []

    def collect(self):
        tasks = CounterMetricFamily("wqd_tasks", "Tasks finished, by outcome.", labels=["pool", "outcome"])
        redelivered = CounterMetricFamily("wqd_messages_redelivered",
                                          "Deliveries flagged redelivered by the broker.", labels=["pool"])
        refused = CounterMetricFamily("wqd_copies_refused",
                                      "Failed attempts whose retry or dead-letter copy the broker would not take: "
                                      "the message stayed in its queue (parked, then returned).", labels=["pool"])
        duration = HistogramMetricFamily("wqd_task_duration_seconds", "Handler run time per task.",
                                         labels=["pool"])
        bounds = [floatToGoString(bound) for bound in DURATION_BUCKETS] + ["+Inf"]
        for pool, totals in self._metrics.task_totals().items():
            for outcome, count in totals.outcomes.items():
                tasks.add_metric([pool, outcome.value], count)
            redelivered.add_metric([pool], totals.redelivered)
            refused.add_metric([pool], totals.copies_refused)
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, totals.duration_buckets):
                cumulative += count
                buckets.append((bound, cumulative))
            duration.add_metric([pool], buckets, totals.duration_sum)
        yield from (tasks, duration, redelivered, refused)


class _LiveCollector:
    """Gauges read from the master's worker table at scrape time."""

    def __init__(self, snapshot):
        self._snapshot = snapshot

    def describe(self):
        return []

    def collect(self):
        families = {
            "workers": GaugeMetricFamily("wqd_workers", "Live worker processes.", labels=["pool"]),
            "desired": GaugeMetricFamily("wqd_workers_desired",
                                         "Worker processes the pool aims for: its configured count after "
                                         "TTIN/TTOU, or the autoscaler's, between min and max.", labels=["pool"]),
            "saturation": GaugeMetricFamily("wqd_pool_saturation",
                                            "Busy workers / live workers (1: every worker busy; 0 without workers).",
                                            labels=["pool"]),
            "consuming": GaugeMetricFamily("wqd_workers_consuming", "Workers with an active consumer.",
                                           labels=["pool"]),
            "busy": GaugeMetricFamily("wqd_tasks_in_progress", "Tasks being handled right now.",
                                      labels=["pool"]),
            "connected": GaugeMetricFamily("wqd_broker_connected", "Workers with an open broker connection.",
                                           labels=["pool"]),
        }
        ready = GaugeMetricFamily("wqd_ready", "1 when every pool has a consuming worker and wqd is not quiet.")
        quiet = GaugeMetricFamily("wqd_quiet", "1 while quiet (SIGTSTP): workers up, consuming nothing until SIGCONT.")
        pools, is_ready, is_quiet = self._snapshot()
        for pool in pools:
            for key, family in families.items():
                family.add_metric([pool["name"]], pool[key])
        ready.add_metric([], 1 if is_ready else 0)
        quiet.add_metric([], 1 if is_quiet else 0)
        yield from families.values()
        yield ready
        yield quiet
