"""`make bench`: what wqd costs compared with a bare pika consumer.

Starts its own RabbitMQ node (tests/support/broker.py, on free loopback ports) and
measures, in one run:

- throughput: the steady-state drain rate (msg/s) of a preloaded queue of
  persistent messages, by N = 1, 2, 4, 8, 16 wqd workers (handler
  wqd.examples:noop, prefetch 1, metrics on), by N processes of
  bench/baseline_consumer.py and, with --peers, by Celery and Dramatiq at the
  same settings (bench/peers.py). Systems alternate round by round (the
  order reversed every other round), so a load spike on this shared machine
  hits all; the rate is taken between 10 % and 90 % consumed (start-up and
  the tail excluded), from the queue's ready count polled every
  POLL_INTERVAL through a passive queue.declare; each round's rate over that
  round's baseline rate is a ratio (median and geometric mean reported); and
  the CPU time per message of the consumers, of wqd's master and of the
  broker (utime + stime from /proc between the same two points);
- pickup latency: publish to handler start at a paced load of half the
  baseline's drain rate (bench/latency.py), p50 and p99;
- memory: PSS of every process after 10,000 tasks at N = 16 (bench/big_pools.py);
- large pools: `wqd run` to 64 workers consuming, the master's CPU per
  /metrics scrape at 64 workers, 600 workers started, SIGTERMed, gone;
- start-up: `wqd run` until every worker consumes (N = 1, 4, 8), next to N
  baseline processes until the queue has N consumers;
- respawn: SIGKILL of an idle worker until /status shows a new consuming pid;
- redelivery: SIGKILL of a busy worker until its task starts on another worker
  (bench/bench_handlers.py:hold records task starts with their time);
- resources: RSS of the master and of each worker, CPU of the idle master.

Prints a table, writes everything (raw rounds included) as JSON to
bench/results/<timestamp>-<git short sha>.json and prints that path.

    .venv/bin/python -m bench.run [--rounds 5] [--latency-rounds 20] [--seconds 6] [--workers 1 2 4 8 16]
                                  [--phases PHASE...] [--wqd NAME=PATH/TO/wqd]...
                                  [--peers] [--quick]

--wqd replaces the measured wqd by one or more others (e.g. the executables
of two checkouts' venvs), which then alternate with the baseline and each
other: the way to measure a change to the hot path on a noisy machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pika

from bench import big_pools, latency, peers
from bench.common import (
    BENCH_DIR,
    POLL_INTERVAL,
    REPO,
    TIMEOUT,
    Baseline,
    BenchError,
    QueueWatch,
    Wqd,
    cpu_ticks,
    delete_queues,
    kill_leftovers,
    preload,
    spawn,
    wait_for,
)
from tests.support.broker import BrokerNode

RESULTS_DIR = BENCH_DIR / "results"
PHASES = ("throughput", "latency", "startup", "respawn", "redelivery", "resources", "memory", "scale")
WORKER_COUNTS = (1, 2, 4, 8, 16)  # throughput (default of --workers)
ROUNDS = 5
# Pickup latency: at these N, LATENCY_PROBES probes a round, published at
# LATENCY_LOAD times the baseline's drain rate at that N.
LATENCY_WORKER_COUNTS = (1, 4)
LATENCY_PROBES = 2000
# A round's p99 (its 20 slowest of 2,000 probes) is set by whether a stall of
# the machine lands in it, and pooled over 5 rounds by one or two stalls: the
# latency phase takes more rounds than the others (about 10 s a round).
LATENCY_ROUNDS = 20
LATENCY_LOAD = 0.5
STARTUP_WORKER_COUNTS = (1, 4, 8)
IDLE_CPU_SECONDS = 10.0
# wqd's master restarts a worker that dies this soon after its start with a
# backoff (master.EARLY_DEATH_SECONDS): kill only older ones when timing respawns.
EARLY_DEATH_SECONDS = 5.0
# Drain sizes are calibrated from a short warm-up drain (a load spike during
# it would make them too small: never below MIN_DRAIN_MESSAGES).
CALIBRATION_MESSAGES = 3000
MIN_DRAIN_MESSAGES = 20000
# Messages the resources phase has its workers handle before measuring RSS.
RESOURCES_MESSAGES = 2000
# A drain during which no message leaves the queue for this long has failed
# (e.g. workers that crash at start and are respawned with a backoff).
STALL_TIMEOUT = 20.0

TARGETS = {
    "ratio": 0.95,           # wqd / baseline drain rate at every N (median and geometric mean of the rounds)
    "latency_p99": 1.1,      # wqd's p99 pickup latency / the baseline's
    "pss_mib": 8.0,          # PSS per worker after PSS_MESSAGES tasks at N = 16
    "scrape_ms": 20.0,       # master CPU per /metrics scrape with 64 workers
    "start_64": 2.0,         # seconds, `wqd run` to 64 workers consuming
    "startup_4": 1.0,        # seconds, `wqd run` to 4 workers consuming
    "respawn": 0.5,          # seconds
    "master_idle_cpu": 1.0,  # percent of one core
}
# --quick (BENCH_QUICK=1): a smoke run of every phase, minutes instead of tens.
QUICK = {"rounds": 2, "workers": [1, 4], "min_messages": 5000, "latency_probes": 500, "latency_rounds": 2}


# --------------------------------------------------------------------------
# measurements


def drain(node: BrokerNode, system, workers: int, queue: str, count: int) -> dict:
    """Preload ``count`` messages, let ``system`` consume them; return its rate,
    and the CPU time its processes and the broker spent per message.

    Both are taken from the first poll that saw at least 10 % consumed with
    every consumer of the system registered on the queue (so no process
    start-up is in it: a pool that starts its workers one after another is
    not charged for it) to the poll that saw 90 % consumed."""
    preload(node, queue, count, system)
    watch = QueueWatch(node, queue)
    samples, cpu = [], []
    wanted = latency.expected_consumers(system, workers)
    started = progress = time.monotonic()
    system.start(workers, queue)
    try:
        while True:
            now = time.monotonic()
            ready, consumers = watch.counts()
            if samples and ready < samples[-1][1]:
                progress = now
            samples.append((now, ready))
            if not cpu and count - ready >= count * 0.1 and consumers >= wanted:
                cpu.append((now, count - ready, cpu_snapshot(system.pids(), node)))
            elif len(cpu) == 1 and count - ready >= count * 0.9:
                cpu.append((now, count - ready, cpu_snapshot(system.pids(), node)))
            if ready == 0:
                break
            system.check_alive()
            if now - progress > STALL_TIMEOUT:
                raise BenchError(f"{system.name} consumed nothing for {STALL_TIMEOUT:g} s "
                                 f"({ready} of {count} messages left); see its log in {system.workdir}")
            time.sleep(max(0.0, POLL_INTERVAL - (time.monotonic() - now)))
        rss = system.rss()
    finally:
        watch.close()
        system.stop()
    if len(cpu) < 2:
        raise BenchError(f"{system.name} had its {wanted} consumers registered only after 90 % of the "
                         f"{count} messages were consumed: make the drains longer (--seconds, --min-messages)")
    (t0, consumed0, ticks0), (t1, consumed1, ticks1) = cpu
    hz = os.sysconf("SC_CLK_TCK")
    cpu_us = {role: 1e6 * (ticks1[role] - ticks0[role]) / hz / (consumed1 - consumed0) for role in ticks0}
    return {"rate": (consumed1 - consumed0) / (t1 - t0), "messages": count, "window_seconds": t1 - t0,
            "window_from": consumed0 / count, "seconds_total": samples[-1][0] - started,
            "cpu_us_per_message": cpu_us, "rss_kib": rss}


def cpu_snapshot(pids: dict, node: BrokerNode) -> dict:
    """CPU ticks so far of each role's processes together, the broker's too."""
    ticks = {role: sum(cpu_ticks(pid) for pid in role_pids) for role, role_pids in pids.items()}
    ticks["broker"] = cpu_ticks(int(node.pid_file.read_text()))
    return ticks


def calibrate(node: BrokerNode, workdir: Path, seconds: float, worker_counts,
              min_messages: int = MIN_DRAIN_MESSAGES) -> dict[int, int]:
    """Messages per drain for each N, so that a drain lasts about ``seconds``
    (from a short baseline drain, which also warms the broker up)."""
    counts = {}
    for workers in worker_counts:
        result = drain(node, Baseline(node, workdir), workers, "bench.calibrate", CALIBRATION_MESSAGES)
        counts[workers] = max(min_messages, round(result["rate"] * seconds / 1000) * 1000)
    delete_queues(node, "bench.calibrate")
    return counts


def baseline_rate(node: BrokerNode, workdir: Path, results: dict, workers: int) -> float:
    """The baseline's drain rate at ``workers``: the throughput phase's median, or a short drain's."""
    if workers in results.get("throughput", {}):
        return statistics.median(r["rate"] for r in results["throughput"][workers]["baseline"])
    rate = drain(node, Baseline(node, workdir), workers, "bench.calibrate", CALIBRATION_MESSAGES)["rate"]
    delete_queues(node, "bench.calibrate")
    return rate


def throughput(node: BrokerNode, systems: list, rounds: int, counts: dict[int, int]) -> dict:
    results = {workers: {system.name: [] for system in systems} for workers in counts}
    for round_no in range(rounds):
        for workers in counts:
            # Alternate the order too, so no system always follows the same one.
            order = systems if round_no % 2 == 0 else systems[::-1]
            for system in order:
                queue = f"bench.drain.{system.name}.{workers}.{round_no}"
                result = drain(node, system, workers, queue, counts[workers])
                results[workers][system.name].append(result)
                delete_queues(node, queue, f"{queue}.dead")
                print(f"  round {round_no + 1}/{rounds}  N={workers}  {system.name:10s} "
                      f"{result['rate']:7.0f} msg/s", flush=True)
    return results


def startup(node: BrokerNode, daemons: list, workdir: Path, rounds: int) -> dict:
    """Seconds from `wqd run` to ready and to all workers consuming; the
    baseline's N processes until the queue has N consumers, for comparison."""
    results = {}
    for workers in STARTUP_WORKER_COUNTS:
        results[workers] = {daemon.name: [] for daemon in daemons}
        results[workers]["baseline"] = []
        for round_no in range(rounds):
            for daemon in daemons:
                results[workers][daemon.name].append(_time_wqd_start(daemon, workers))
            results[workers]["baseline"].append(_time_baseline_start(node, workdir, workers))
            print(f"  round {round_no + 1}/{rounds}  N={workers}  " + "  ".join(
                f"{name} {values[-1]['consuming']:.2f} s" for name, values in results[workers].items()),
                flush=True)
    delete_queues(node, "bench.startup", "bench.startup.dead")
    return results


def _time_wqd_start(daemon: Wqd, workers: int) -> dict:
    started = time.monotonic()
    daemon.start(workers, "bench.startup")
    ready = None

    def all_consuming():
        nonlocal ready
        status = daemon.status()
        if status is None:
            return False
        if ready is None and status["consuming"] >= 1:
            ready = time.monotonic() - started
        return status["consuming"] == workers

    wait_for(all_consuming, TIMEOUT, f"{workers} workers of {daemon.name} to consume")
    consuming = time.monotonic() - started
    return {"ready": ready, "consuming": consuming, "stop": daemon.stop()}


def _time_baseline_start(node: BrokerNode, workdir: Path, workers: int) -> dict:
    node.declare_queue("bench.startup")
    watch = QueueWatch(node, "bench.startup")
    baseline = Baseline(node, workdir)
    started = time.monotonic()
    baseline.start(workers, "bench.startup")
    try:
        wait_for(lambda: baseline.check_alive() or watch.counts()[1] == workers, TIMEOUT,
                 f"{workers} baseline consumers")
        return {"consuming": time.monotonic() - started}
    finally:
        watch.close()
        baseline.stop()


def respawn(daemons: list, rounds: int) -> dict:
    """SIGKILL an idle worker; seconds until /status shows its replacement consuming.

    One worker per round, each killed once and only after EARLY_DEATH_SECONDS
    (a worker that dies younger is restarted with a backoff)."""
    results = {daemon.name: [] for daemon in daemons}
    running = [daemon.start(rounds, "bench.respawn") for daemon in daemons]
    try:
        for daemon in running:
            daemon.wait_consuming(rounds)
        time.sleep(EARLY_DEATH_SECONDS)
        for round_no in range(rounds):
            for daemon in running:
                workers = sorted(daemon.status()["worker_processes"], key=lambda w: w["name"])
                victim = workers[round_no]["pid"]
                survivors = daemon.consuming_pids() - {victim}
                started = time.monotonic()
                os.kill(victim, signal.SIGKILL)
                wait_for(lambda: len(daemon.consuming_pids() - survivors - {victim}) == 1, TIMEOUT,
                         f"a replacement worker of {daemon.name}")
                results[daemon.name].append(time.monotonic() - started)
            print(f"  round {round_no + 1}/{rounds}  " + "  ".join(
                f"{name} {values[-1]:.3f} s" for name, values in results.items()), flush=True)
    finally:
        for daemon in running:
            daemon.stop()
    return results


def redelivery(node: BrokerNode, daemons: list, workdir: Path, rounds: int) -> dict:
    """SIGKILL a worker in the middle of a task; seconds until the task starts
    on another worker (from the start times bench_handlers.hold records)."""
    record = workdir / "record.txt"
    results = {daemon.name: [] for daemon in daemons}
    for daemon in daemons:
        queue = f"bench.redelivery.{daemon.name}"
        daemon.start(2, queue, handler="bench_handlers:hold")
        try:
            daemon.wait_consuming(2)
            for round_no in range(rounds):
                label = f"{daemon.name}-{round_no}"
                node.publish(queue, f"{label} {TIMEOUT}")
                first = wait_for(lambda: _task_starts(record, label), TIMEOUT, f"task {label} to start")[0]
                killed = time.monotonic()
                os.kill(first["pid"], signal.SIGKILL)
                again = wait_for(lambda: [s for s in _task_starts(record, label) if s["pid"] != first["pid"]],
                                 TIMEOUT, f"task {label} to start again")[0]
                results[daemon.name].append(again["at"] - killed)
                print(f"  round {round_no + 1}/{rounds}  {daemon.name} {results[daemon.name][-1]:.3f} s",
                      flush=True)
                daemon.wait_consuming(2)
        finally:
            daemon.stop()
        delete_queues(node, queue, f"{queue}.dead")
    return results


def _task_starts(record: Path, label: str) -> list[dict]:
    starts = []
    with contextlib.suppress(FileNotFoundError):
        for line in record.read_text().splitlines():
            at, pid, line_label, redelivered = line.split()
            if line_label == label:
                starts.append({"at": float(at), "pid": int(pid), "redelivered": redelivered == "1"})
    return starts


def resources(node: BrokerNode, daemons: list, workdir: Path) -> dict:
    """RSS after some work, then CPU over IDLE_CPU_SECONDS of idleness, of two
    workers and their master (all daemons at once: idle ones do not disturb
    each other)."""
    results = {}
    running = []
    for daemon in daemons:
        queue = f"bench.resources.{daemon.name}"
        preload(node, queue, RESOURCES_MESSAGES)
        running.append((daemon.start(2, queue), queue))
    try:
        for daemon, queue in running:
            daemon.wait_consuming(2)
            with QueueWatch(node, queue) as watch:
                wait_for(lambda: watch.counts()[0] == 0, TIMEOUT, f"{daemon.name} to drain {queue}",
                         interval=POLL_INTERVAL)
        time.sleep(1.0)  # let the last acks and reports settle
        pids = {}
        for daemon, _queue in running:
            pids[daemon.name] = {"master": daemon.proc.pid, "workers": sorted(daemon.consuming_pids())}
            results[daemon.name] = {"rss_kib": daemon.rss()}
        before = {name: _ticks(p) for name, p in pids.items()}
        time.sleep(IDLE_CPU_SECONDS)
        after = {name: _ticks(p) for name, p in pids.items()}
        hz = os.sysconf("SC_CLK_TCK")
        for name in pids:
            results[name]["idle_cpu_percent"] = {
                "master": 100 * (after[name]["master"] - before[name]["master"]) / hz / IDLE_CPU_SECONDS,
                "workers": [100 * (a - b) / hz / IDLE_CPU_SECONDS
                            for a, b in zip(after[name]["workers"], before[name]["workers"])],
            }
    finally:
        for daemon, queue in running:
            daemon.stop()
            delete_queues(node, queue, f"{queue}.dead")
    return results


def _ticks(pids: dict) -> dict:
    return {"master": cpu_ticks(pids["master"]), "workers": [cpu_ticks(pid) for pid in pids["workers"]]}



# --------------------------------------------------------------------------
# report


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(values: list[float], spec: str = ".0f", unit: str = "") -> str:
    s = summary(values)
    return f"{s['median']:{spec}}{unit} [{s['min']:{spec}}-{s['max']:{spec}}]"


def geomean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values))


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(results: dict) -> list[str]:
    """The printed table (also stored in the JSON, as lines)."""
    env, names = results["environment"], results["wqd_names"]
    lines = [f"Machine: {env['nproc']} CPUs ({env['cpu_model']}), RabbitMQ {env['rabbitmq']} on "
             f"{env['erlang']}, Python {env['python']}, pika {env['pika']}; wqd at {env['git']}; "
             f"load average {env['loadavg_start']} at start, {env['loadavg_end']} at the end.",
             "Measured: " + "; ".join(f"{name} = {w['path']} ({w['version']})" for name, w in results["wqd"].items())
             + f"; baseline = bench/baseline_consumer.py. Values: median [min-max] of {results['rounds']} rounds."]
    systems = results["systems"]
    others = [name for name in systems if name != "baseline"]
    if "throughput" in results:
        lines += ["", "Throughput: steady-state drain rate, msg/s (from 10 % consumed with every consumer "
                  "registered, to 90 %; no-op task, prefetch 1, ack after the task, persistent messages)",
                  "  N  messages  " + "".join(f"{name:>20s}" for name in systems),
                  "", "Ratio to the baseline: median [min-max] of the rounds' ratios, geometric mean (gm)",
                  "   N" + "".join(f"{name + '/baseline':>30s}" for name in others) + "   target (wqd)"]
        rate_lines, ratio_lines = [], []
        for workers, by_system in results["throughput"].items():
            rates = {name: [r["rate"] for r in runs] for name, runs in by_system.items()}
            ratios = {name: [w / b for w, b in zip(rates[name], rates["baseline"])] for name in others}
            ok = all(min(statistics.median(ratios[name]), geomean(ratios[name])) >= TARGETS["ratio"]
                     for name in names)
            rate_lines.append(f"  {workers:>2}  {by_system['baseline'][0]['messages']:7d}  "
                              + "".join(f"{fmt(rates[name]):>20s}" for name in systems))
            ratio_lines.append(f"  {workers:>2}" + "".join(
                f"{fmt(ratios[name], '.2f') + f' gm {geomean(ratios[name]):.2f}':>30s}" for name in others)
                + f"   >= {TARGETS['ratio']:.2f} {verdict(ok)}")
        lines[-3:-3] = rate_lines
        lines += ratio_lines
        lines += ["", "CPU time per message, microseconds (the same window; "
                  "the processes of a role together)",
                  f"  N  {'system':12s}{'workers':>20s}{'master':>20s}{'broker':>20s}"]
        for workers, by_system in results["throughput"].items():
            for name in systems:
                per_role = [r["cpu_us_per_message"] for r in by_system[name]]
                lines.append(f"  {workers}  {name:12s}" + "".join(
                    f"{fmt([c[role] for c in per_role]) if role in per_role[0] else '-':>20s}"
                    for role in ("workers", "master", "broker")))
    if "latency" in results:
        lines += ["", "Pickup latency, ms: publish to handler start, at a paced load of "
                  f"{LATENCY_LOAD:g} x the baseline's drain rate ({results.get('latency_rounds', results['rounds'])} "
                  f"rounds, the first {latency.WARMUP_SECONDS:g} s of each left out; p50 and p99 of all rounds' probes pooled; "
                  "per-round p99 median [min-max])",
                  f"   N   rate  {'system':12s}{'p50':>8s}{'p99':>8s}{'round p99':>26s}{'p99/baseline':>14s}"]
        for workers, by_system in results["latency"].items():
            base = by_system["baseline"]["p99_ms"]
            for name, r in by_system.items():
                ratio = r["p99_ms"] / base
                target = (f"   <= {TARGETS['latency_p99']:g} {verdict(ratio <= TARGETS['latency_p99'])}"
                          if name in names else "")
                lines.append(f"  {workers:>2} {r['rate']:6.0f}  {name:12s}{r['p50_ms']:8.2f}{r['p99_ms']:8.2f}"
                             f"{fmt([x['p99_ms'] for x in r['rounds']], '.2f'):>26s}{ratio:14.2f}{target}")
    if "memory" in results:
        lines += ["", f"Memory: PSS after {big_pools.PSS_MESSAGES} tasks at N = {big_pools.PSS_WORKERS}, MiB "
                  "(per worker: median [min-max]; master: wqd's master, a peer's parent process)"]
        for name, r in results["memory"].items():
            workers_mib = [kib / 1024 for kib in r["pss_kib"]["workers"]]
            master = r["pss_kib"].get("master")
            target = (f"   per worker <= {TARGETS['pss_mib']:g} "
                      f"{verdict(statistics.median(workers_mib) <= TARGETS['pss_mib'])}" if name in names else "")
            lines.append(f"  {name:12s} workers {fmt(workers_mib, '.1f')}, "
                         + (f"master {master[0] / 1024:.1f}, " if master else "")
                         + f"total {r['total_kib'] / 1024:.0f}{target}")
    if "scale" in results:
        lines += ["", "Large pools (wqd)"]
        for name, r in results["scale"].items():
            lines += [f"  {name}: {big_pools.SCRAPE_WORKERS} workers consuming {r['start_64_s']:.2f} s after "
                      f"`wqd run` (target < {TARGETS['start_64']:g} s {verdict(r['start_64_s'] < TARGETS['start_64'])}); "
                      f"/metrics at {big_pools.SCRAPE_WORKERS} workers: {r['scrape_cpu_ms']:.1f} ms of master CPU, "
                      f"{r['scrape_wall_ms']:.1f} ms wall per scrape (target < {TARGETS['scrape_ms']:g} ms "
                      f"{verdict(r['scrape_cpu_ms'] < TARGETS['scrape_ms'])})",
                      f"  {name}: {big_pools.HUGE_POOL} workers consuming {r['start_600_s']:.1f} s after `wqd run` "
                      f"({r['consumers_600']} consumers, {r['pss_600_total_mib']:.0f} MiB PSS in all); SIGTERM to "
                      f"exit {r['exit_code_600']} in {r['stop_600_s']:.1f} s, no process left, "
                      f"{r['consumers_after_600']} consumers after"]
    if "startup" in results:
        lines += ["", "Start-up, seconds: `wqd run` to the first worker consuming (ready) and to all "
                  "(consuming); baseline: N processes started to N consumers on the queue",
                  "  N  " + "".join(f"{name + ' ready':>22s}{name + ' consuming':>22s}" for name in names)
                  + f"{'baseline consuming':>22s}"]
        for workers, by_system in results["startup"].items():
            line = f"  {workers}  "
            for name in names:
                line += (f"{fmt([r['ready'] for r in by_system[name]], '.2f'):>22s}"
                         f"{fmt([r['consuming'] for r in by_system[name]], '.2f'):>22s}")
            line += f"{fmt([r['consuming'] for r in by_system['baseline']], '.2f'):>22s}"
            if int(workers) == 4:
                ok = all(statistics.median(r["consuming"] for r in by_system[n]) < TARGETS["startup_4"]
                         for n in names)
                line += f"   target < {TARGETS['startup_4']:g} s {verdict(ok)}"
            lines.append(line)
    for phase, title, target in (
            ("respawn", "Respawn after SIGKILL of an idle worker, until the replacement consumes",
             TARGETS["respawn"]),
            ("redelivery", "Redelivery after SIGKILL of a busy worker, until its task starts on another",
             None)):
        if phase in results:
            lines += ["", f"{title}, seconds"]
            for name, values in results[phase].items():
                line = f"  {name:12s} {fmt(values, '.3f')}"
                if target is not None:
                    line += f"   target < {target:g} s {verdict(statistics.median(values) < target)}"
                lines.append(line)
    if "resources" in results:
        lines += ["", f"Resources: RSS (MiB) after draining {RESOURCES_MESSAGES} messages with 2 workers; "
                  f"CPU (% of one core) over {IDLE_CPU_SECONDS:g} s idle (resolution: one clock tick, "
                  f"{100 / os.sysconf('SC_CLK_TCK') / IDLE_CPU_SECONDS:g} %)"]
        for name, r in results["resources"].items():
            workers_rss = ", ".join(f"{kib / 1024:.1f}" for kib in r["rss_kib"]["workers"])
            workers_cpu = ", ".join(f"{p:.2f}" for p in r["idle_cpu_percent"]["workers"])
            master_cpu = r["idle_cpu_percent"]["master"]
            lines.append(f"  {name:12s} master {r['rss_kib']['master'][0] / 1024:.1f} MiB, workers {workers_rss} MiB; "
                         f"idle CPU master {master_cpu:.2f} %, workers {workers_cpu} %   "
                         f"target master < {TARGETS['master_idle_cpu']:g} % "
                         f"{verdict(master_cpu < TARGETS['master_idle_cpu'])}")
        if "throughput" in results:
            baseline_rss = [kib for runs in results["throughput"].values() for r in runs["baseline"]
                            for kib in r["rss_kib"]["workers"] if kib]
            lines.append(f"  {'baseline':12s} consumer {fmt([k / 1024 for k in baseline_rss], '.1f')} MiB "
                         "(at the end of its drains)")
    return lines


# --------------------------------------------------------------------------


def environment(node: BrokerNode) -> dict:
    with node.connection() as connection:
        server = connection._impl.server_properties
    cpu_model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()

    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {
        "nproc": os.cpu_count(), "cpu_model": cpu_model,
        "rabbitmq": _text(server.get("version")), "erlang": _text(server.get("platform")),
        "python": platform.python_version(), "pika": pika.__version__,
        "kernel": platform.release(), "git_sha": sha, "git_dirty": dirty,
        "git": sha + (" (with uncommitted changes)" if dirty else ""),
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"rounds per measurement (default {ROUNDS})")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="about how long one throughput drain lasts (default 6)")
    parser.add_argument("--workers", nargs="+", type=int, default=list(WORKER_COUNTS), metavar="N",
                        help=f"worker counts for the throughput phase (default {' '.join(map(str, WORKER_COUNTS))})")
    parser.add_argument("--min-messages", type=int, default=MIN_DRAIN_MESSAGES, metavar="COUNT",
                        help=f"messages per drain at least (default {MIN_DRAIN_MESSAGES})")
    parser.add_argument("--latency-probes", type=int, default=LATENCY_PROBES, metavar="COUNT",
                        help=f"latency probes per system and round (default {LATENCY_PROBES})")
    parser.add_argument("--latency-rounds", type=int, default=LATENCY_ROUNDS, metavar="COUNT",
                        help=f"rounds of the latency phase (default {LATENCY_ROUNDS})")
    parser.add_argument("--peers", action="store_true",
                        help="also measure Celery and Dramatiq (from the virtualenv `make bench PEERS=1` builds)")
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: {QUICK['rounds']} rounds, N = {' '.join(map(str, QUICK['workers']))}, "
                             f"{QUICK['min_messages']} messages a drain, {QUICK['latency_probes']} latency probes")
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES), metavar="PHASE",
                        help=f"what to measure (default all: {' '.join(PHASES)})")
    parser.add_argument("--wqd", action="append", default=[], metavar="NAME=PATH",
                        help="a wqd executable to measure, by name (repeatable; default: "
                             "wqd=<the wqd next to this python>)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.workers = QUICK["rounds"], QUICK["workers"]
        args.min_messages, args.latency_probes = QUICK["min_messages"], QUICK["latency_probes"]
        args.latency_rounds = QUICK["latency_rounds"]
    if args.peers and (missing := peers.available()):
        parser.error(f"--peers: {missing}")
    if args.rounds < 1 or args.latency_rounds < 1:
        parser.error("--rounds and --latency-rounds must be at least 1")
    executables = {}
    for spec in args.wqd or [f"wqd={Path(sys.executable).with_name('wqd')}"]:
        name, sep, path = spec.partition("=")
        if not sep or not name or name == "baseline" or name in executables:
            parser.error(f"--wqd {spec!r}: expected a unique NAME=PATH (NAME not 'baseline')")
        if not os.access(path, os.X_OK):
            parser.error(f"--wqd {spec!r}: {path} is not an executable")
        executables[name] = path
    args.executables = executables
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="wqd-bench-"))
    print(f"Working directory (configs, logs, the broker): {workdir}", flush=True)
    node = BrokerNode(workdir / "rabbitmq")
    node.start()
    results = {"rounds": args.rounds, "latency_rounds": args.latency_rounds, "wqd_names": list(args.executables),
               "targets": TARGETS}
    try:
        results["environment"] = environment(node)
        results["wqd"] = {name: {"path": path, "version": _version(path)}
                          for name, path in args.executables.items()}
        daemons = [Wqd(name, path, node, workdir) for name, path in args.executables.items()]
        peer_systems = [cls(node, workdir, spawn) for cls in peers.PEER_CLASSES] if args.peers else []
        systems = [Baseline(node, workdir), *daemons, *peer_systems]
        results["systems"] = [system.name for system in systems]
        if "throughput" in args.phases:
            print("Calibrating the drain size...", flush=True)
            counts = calibrate(node, workdir, args.seconds, args.workers, args.min_messages)
            print("Throughput:", flush=True)
            results["throughput"] = throughput(node, systems, args.rounds, counts)
        if "latency" in args.phases:
            print("Pickup latency:", flush=True)
            results["latency"] = {}
            for workers in LATENCY_WORKER_COUNTS:
                rate = LATENCY_LOAD * baseline_rate(node, workdir, results, workers)
                results["latency"][workers] = latency.measure(
                    node, systems, workdir, workers, rate, args.latency_probes, args.latency_rounds)
        if "memory" in args.phases:
            print(f"Memory after {big_pools.PSS_MESSAGES} tasks at N = {big_pools.PSS_WORKERS}:", flush=True)
            results["memory"] = big_pools.memory(node, systems)
        if "scale" in args.phases:
            print("Large pools:", flush=True)
            results["scale"] = {daemon.name: big_pools.scale(node, daemon, workdir) for daemon in daemons}
        if "startup" in args.phases:
            print("Start-up:", flush=True)
            results["startup"] = startup(node, daemons, workdir, args.rounds)
        if "respawn" in args.phases:
            print("Respawn:", flush=True)
            results["respawn"] = respawn(daemons, args.rounds)
        if "redelivery" in args.phases:
            print("Redelivery:", flush=True)
            results["redelivery"] = redelivery(node, daemons, workdir, args.rounds)
        if "resources" in args.phases:
            print("Resources:", flush=True)
            results["resources"] = resources(node, daemons, workdir)
        results["environment"]["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except BenchError as exc:
        print(f"bench.run: {exc}\nLogs are kept in {workdir}.", file=sys.stderr)
        return 1
    finally:
        kill_leftovers()
        node.stop()
    results["seconds"] = time.monotonic() - started
    # JSON object keys are strings; so are the N keys in the report.
    results = json.loads(json.dumps(results))
    results["table"] = report(results)
    print("\n" + "\n".join(results["table"]))
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{time.strftime('%Y%m%d-%H%M%S')}-{results['environment']['git_sha']}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nTook {results['seconds']:.0f} s. Results: {path}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _version(executable: str) -> str:
    result = subprocess.run([executable, "--version"], capture_output=True, text=True)
    return (result.stdout or result.stderr).strip()


if __name__ == "__main__":
    sys.exit(main())
