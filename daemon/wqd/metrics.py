"""Prometheus metrics, owned by the master and fed by worker reports.

Workers send events over their pipes; the master counts them here. So there
is no multiprocess directory to wipe or to grow, counters survive a worker's
death, and per-worker gauges (computed at scrape time from the master's live
worker table) vanish with the worker.
"""

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

OUTCOMES = ("succeeded", "failed", "retried", "dead_lettered")
RESTART_REASONS = ("crashed", "killed", "time_limit", "recycled")
# The *_created series double every counter and no dashboard of ours reads them.
prometheus_client.disable_created_metrics()

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    def __init__(self, snapshot):
        """``snapshot()`` returns the master's view: a list of PoolSnapshot-like dicts."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.tasks = Counter("wqd_tasks", "Tasks finished, by outcome.", ["pool", "outcome"],
                             registry=self.registry)
        self.duration = Histogram("wqd_task_duration_seconds", "Handler run time per task.", ["pool"],
                                  buckets=DURATION_BUCKETS, registry=self.registry)
        self.restarts = Counter("wqd_worker_restarts", "Worker processes replaced, by reason.",
                                ["pool", "reason"], registry=self.registry)
        self.redelivered = Counter("wqd_messages_redelivered", "Deliveries flagged redelivered by the broker.",
                                   ["pool"], registry=self.registry)
        self.registry.register(_LiveCollector(snapshot))
        self.task_totals = {}  # (pool, outcome) -> count, for status and STATUS= lines

    def record_task(self, pool: str, outcome: str, duration=None) -> None:
        self.tasks.labels(pool, outcome).inc()
        self.task_totals[pool, outcome] = self.task_totals.get((pool, outcome), 0) + 1
        if duration is not None:
            self.duration.labels(pool).observe(duration)

    def task_counts(self, pool: str) -> dict:
        return {outcome: self.task_totals.get((pool, outcome), 0) for outcome in OUTCOMES}

    def add_pool(self, pool: str) -> None:
        """Create every label set at zero, so rates and alerts see the series from the start."""
        for outcome in OUTCOMES:
            self.tasks.labels(pool, outcome)
        for reason in RESTART_REASONS:
            self.restarts.labels(pool, reason)
        self.redelivered.labels(pool)
        self.duration.labels(pool)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LiveCollector:
    """Gauges read from the master's worker table at scrape time."""

    def __init__(self, snapshot):
        self._snapshot = snapshot

    def describe(self):
        return []

    def collect(self):
        families = {
            "workers": GaugeMetricFamily("wqd_workers", "Live worker processes.", labels=["pool"]),
            "desired": GaugeMetricFamily("wqd_workers_desired", "Worker processes the config asks for.",
                                         labels=["pool"]),
            "consuming": GaugeMetricFamily("wqd_workers_consuming", "Workers with an active consumer.",
                                           labels=["pool"]),
            "busy": GaugeMetricFamily("wqd_tasks_in_progress", "Tasks being handled right now.",
                                      labels=["pool"]),
            "connected": GaugeMetricFamily("wqd_broker_connected", "Workers with an open broker connection.",
                                           labels=["pool"]),
        }
        ready = GaugeMetricFamily("wqd_ready", "1 when every pool has a consuming worker.")
        pools, is_ready = self._snapshot()
        for pool in pools:
            for key, family in families.items():
                family.add_metric([pool["name"]], pool[key])
        ready.add_metric([], 1 if is_ready else 0)
        yield from families.values()
        yield ready
