"""What the console shows of the master, gathered from what it holds (no I/O):
/status's pools and workers, plus each busy worker's task id, each pool's
restarts, its queues' depth and consumers, and the broker."""

import time

import wqd
from wqd.master import views


def overview(master) -> dict:
    status = views.status(master)
    task_ids = {proc.pid: proc.record.read().message_key for proc in master.workers.values()}
    restarts = _restarts(master.metrics)
    queues = {}
    for pool, queue, kind, messages, consumers in master.queue_monitor.fresh_counts():
        queues[pool, kind] = {"queue": queue, "messages": messages, "consumers": consumers}
    for pool in status["pools"]:
        name = pool["name"]
        config = next((p.config for p in master.pools if p.config.name == name), None)
        pool["autoscaled"] = bool(config and config.workers.autoscaled)
        pool["dead_letter_queue"] = config.dead_letter_queue if config else None
        pool["restarts"] = restarts.get(name, 0)
        pool["queue_counts"] = queues.get((name, "queue"))
        pool["dead_letter_counts"] = queues.get((name, "dead_letter"))
        for worker in pool["worker_processes"]:
            worker["task_id"] = task_ids.get(worker["pid"]) if worker["busy"] else None
    status["version"] = wqd.__version__
    status["time"] = time.time()
    return status


def _restarts(metrics) -> dict:
    """pool -> workers replaced since the start, whatever the reason."""
    found = {}
    for family in metrics.restarts.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                pool = sample.labels.get("pool")
                found[pool] = found.get(pool, 0) + int(sample.value)
    return found
