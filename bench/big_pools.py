"""Large pools: memory at N = 16, the master's cost of a scrape at 64 workers,
how fast 64 workers consume, and a pool of 600 that starts and stops cleanly.

Memory is PSS (proportional set size, /proc/PID/smaps_rollup): a page shared
by k processes counts 1/k in each, so the sum over a pool is what it really
takes, and a worker's PSS shows what copy-on-write did not share.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.common import (
    TIMEOUT,
    Baseline,
    BenchError,
    QueueWatch,
    Wqd,
    cpu_ticks,
    delete_queues,
    preload,
    process_tree,
    wait_for,
)
from tests.support import procfs

PSS_WORKERS = 16
PSS_MESSAGES = 10_000
SCRAPE_WORKERS = 64
SCRAPES = 100
HUGE_POOL = 600
HUGE_POOL_TIMEOUT = 600.0


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise BenchError(f"no Pss line in /proc/{pid}/smaps_rollup")


def memory(node, systems: list) -> dict:
    """PSS of each system's processes after its PSS_WORKERS workers handled PSS_MESSAGES tasks."""
    results = {}
    for system in systems:
        queue = f"bench.memory.{system.name}"
        preload(node, queue, PSS_MESSAGES, system)
        system.start(PSS_WORKERS, queue)
        try:
            with QueueWatch(node, queue) as watch:
                wait_for(lambda: system.check_alive() or watch.counts()[0] == 0, TIMEOUT,
                         f"{system.name} to drain {queue}", interval=0.2)
            time.sleep(1.0)  # the last acks
            if isinstance(system, Wqd):
                roles = {"master": [system.proc.pid], "workers": sorted(system.consuming_pids())}
            elif isinstance(system, Baseline):
                roles = system.pids()
            else:  # a peer: its parent process and its pool's children
                tree = process_tree(system.proc.pid)
                roles = {"master": tree[:1], "workers": tree[1:]}
            pss = {role: [pss_kib(pid) for pid in pids] for role, pids in roles.items()}
        finally:
            system.stop()
            delete_queues(node, queue, f"{queue}.dead", f"{queue}.DQ", f"{queue}.XQ")
        total = sum(sum(values) for values in pss.values())
        results[system.name] = {"pss_kib": pss, "total_kib": total}
        print(f"  {system.name:10s} PSS per worker {sorted(pss['workers'])[len(pss['workers']) // 2] / 1024:.1f} MiB "
              f"(median of {len(pss['workers'])}), total {total / 1024:.0f} MiB", flush=True)
    return results


def scale(node, daemon, workdir: Path) -> dict:
    """`wqd run` with SCRAPE_WORKERS workers: seconds until all consume; the
    master's CPU per /metrics scrape; then a pool of HUGE_POOL workers from
    start to all consuming, and from SIGTERM to a clean exit."""
    results = {}
    queue = "bench.scale"
    node.declare_queue(queue)
    started = time.monotonic()
    daemon.start(SCRAPE_WORKERS, queue, logging_level="warning")
    try:
        daemon.wait_consuming(SCRAPE_WORKERS, TIMEOUT)
        results["start_64_s"] = time.monotonic() - started
        daemon.http("/metrics")  # a first scrape builds what later ones reuse
        hz = os.sysconf("SC_CLK_TCK")
        before, wall = cpu_ticks(daemon.proc.pid), time.monotonic()
        for _ in range(SCRAPES):
            code, body = daemon.http("/metrics")
            if code != 200:
                raise BenchError(f"/metrics answered {code}")
        wall = time.monotonic() - wall
        results["scrape_cpu_ms"] = 1000 * (cpu_ticks(daemon.proc.pid) - before) / hz / SCRAPES
        results["scrape_wall_ms"] = 1000 * wall / SCRAPES
        results["scrape_bytes"] = len(body)
    finally:
        results["stop_64_s"] = daemon.stop()
    print(f"  {SCRAPE_WORKERS} workers: consuming after {results['start_64_s']:.2f} s; /metrics: "
          f"{results['scrape_cpu_ms']:.1f} ms of master CPU, {results['scrape_wall_ms']:.1f} ms wall per scrape "
          f"({results['scrape_bytes']} bytes)", flush=True)

    started = time.monotonic()
    daemon.start(HUGE_POOL, queue, logging_level="warning")
    try:
        wait_for(lambda: len(daemon.consuming_pids()) == HUGE_POOL, HUGE_POOL_TIMEOUT,
                 f"{HUGE_POOL} consuming workers", interval=0.25)
        results["start_600_s"] = time.monotonic() - started
        with QueueWatch(node, queue) as watch:
            results["consumers_600"] = watch.counts()[1]
        results["pss_600_total_mib"] = sum(
            pss_kib(pid) for pid in process_tree(daemon.proc.pid)) / 1024
    finally:
        results["stop_600_s"] = daemon.stop()
    leftovers = procfs.group_members(daemon.proc.pid)
    if leftovers:
        raise BenchError(f"{len(leftovers)} processes of the 600-worker pool outlived its master: {leftovers[:10]}")
    with QueueWatch(node, queue) as watch:
        results["consumers_after_600"] = watch.counts()[1]
    results["exit_code_600"] = daemon.proc.returncode
    delete_queues(node, queue, f"{queue}.dead")
    print(f"  {HUGE_POOL} workers: consuming after {results['start_600_s']:.1f} s "
          f"({results['consumers_600']} consumers on the queue, {results['pss_600_total_mib']:.0f} MiB PSS in all); "
          f"SIGTERM to exit 0 in {results['stop_600_s']:.1f} s, no process left", flush=True)
    return results
