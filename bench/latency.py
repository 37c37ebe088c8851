"""Pickup latency at a paced load: how long a message waits between its
publication and the start of its handler, when the consumers are not saturated.

Each system in turn (alternating order round by round) gets N consumers on
an empty queue; the benchmark then publishes latency probes at a fixed rate
(half the bare consumer's drain rate at that N, measured in the same run),
each body carrying its publish time on CLOCK_MONOTONIC; every system's
handler writes that and its own start time (bench/latency_record.py). The
probes of the first WARMUP_SECONDS (connections settling, first-call costs)
are left out, and PROBES more are measured.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

from bench.common import TIMEOUT, BenchError, QueueWatch, delete_queues, wait_for

# Left out at the start of every round, for every system. A freshly forked
# wqd worker's first deliveries pay first-call costs (among them, most
# likely, copy-on-write faults on pages shared with the master): in 10
# rounds of 8,000 probes at N = 1, 28 % of its probes in the first 40 ms
# took over 2 ms, 11 % up to 100 ms, about 1 % from 100 ms to 1 s (the bare
# consumer: 3-14 % throughout). Start-up itself is the startup and respawn
# phases' measure.
WARMUP_SECONDS = 0.3
MIN_WARMUP = 100


def warmup_probes(rate: float) -> int:
    return max(MIN_WARMUP, math.ceil(rate * WARMUP_SECONDS))


def expected_consumers(system, workers: int) -> int:
    """Celery's pool shares one consumer (its parent's); the others have one per process."""
    return 1 if system.name == "celery" else workers


def measure(node, systems: list, workdir: Path, workers: int, rate: float, probes: int, rounds: int) -> dict:
    results = {system.name: {"rounds": []} for system in systems}
    for round_no in range(rounds):
        order = systems if round_no % 2 == 0 else systems[::-1]
        for system in order:
            queue = f"bench.latency.{system.name}.{workers}.{round_no}"
            path = workdir / f"latency-{system.name}-{workers}-{round_no}.txt"
            latencies = _one(node, system, queue, path, workers, rate, probes)
            results[system.name]["rounds"].append(
                {"p50_ms": _percentile(latencies, 50), "p99_ms": _percentile(latencies, 99),
                 "probes": len(latencies)})
            results[system.name].setdefault("all_ms", []).extend(latencies)
            delete_queues(node, queue, f"{queue}.dead", f"{queue}.DQ", f"{queue}.XQ")
            print(f"  round {round_no + 1}/{rounds}  N={workers}  {system.name:10s} p50 "
                  f"{_percentile(latencies, 50):6.2f} ms  p99 {_percentile(latencies, 99):6.2f} ms", flush=True)
    for r in results.values():
        pooled = r.pop("all_ms")
        r.update(p50_ms=_percentile(pooled, 50), p99_ms=_percentile(pooled, 99), probes=len(pooled),
                 rate=rate, workers=workers)
    return results


def _one(node, system, queue: str, path: Path, workers: int, rate: float, probes: int) -> list[float]:
    with node.connection() as connection:
        channel = connection.channel()
        system.declare(channel, queue)
        channel.queue_purge(queue)
        system.latency_path = path
        try:
            system.start(workers, queue)
            with QueueWatch(node, queue) as watch:
                wanted = expected_consumers(system, workers)
                wait_for(lambda: system.check_alive() or watch.counts()[1] >= wanted, TIMEOUT,
                         f"{wanted} consumers of {system.name} on {queue}")
            interval = 1.0 / rate
            warmup = warmup_probes(rate)
            start = time.monotonic()
            for i in range(warmup + probes):
                due = start + i * interval
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                body, properties = system.message(queue, time.monotonic())
                channel.basic_publish("", queue, body, properties)
            wait_for(lambda: system.check_alive() or _lines(path) >= warmup + probes, TIMEOUT,
                     f"{system.name} to handle {warmup + probes} probes")
        finally:
            system.stop()
            system.latency_path = None
    records = sorted(tuple(map(float, line.split())) for line in path.read_text().splitlines())
    if len(records) < warmup + probes:
        raise BenchError(f"{system.name} recorded {len(records)} of {warmup + probes} probes ({path})")
    return [1000 * (started - published) for published, started in records[warmup:]]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _percentile(values: list[float], percent: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(percent) - 1] if len(values) > 1 else values[0]
