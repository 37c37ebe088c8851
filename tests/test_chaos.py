"""Chaos under load: nothing lost, duplicates bounded by the faults (at most
one per fault with duplicate suppression, the default)."""

import os

import pytest

from tests.support.chaos import run_chaos


def test_chaos_1000_tasks_10_worker_kills_and_a_broker_crash(broker, queue_name, make_wqd):
    report = run_chaos(broker, queue_name, make_wqd, tasks=1000, worker_kills=10, broker_restarts=1,
                       task_seconds=0.04, seed=1)
    print(report.line())


@pytest.mark.soak
@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
@pytest.mark.parametrize("deduplicate", [True, False], ids=["deduplicate", "no-deduplicate"])
def test_chaos_figures(broker, queue_name, make_wqd, deduplicate, queue_type):
    """`make soak`: the figures in docs/performance-history.md and docs/delivery-guarantees.md, with and without duplicate suppression,
    on both queue types: 1,500 tasks of 40 ms on 3 workers, 12 worker SIGKILLs
    and one broker SIGKILL (tasks long enough that the last fault strikes
    while tasks still run)."""
    report = run_chaos(broker, queue_name, make_wqd, tasks=1500, worker_kills=12, broker_restarts=1,
                       task_seconds=0.04, seed=3, deduplicate=deduplicate, queue_type=queue_type)
    print(report.line())


@pytest.mark.soak
@pytest.mark.parametrize("deduplicate", [True, False], ids=["deduplicate", "no-deduplicate"])
def test_soak(broker, queue_name, make_wqd, deduplicate):
    """`make soak`: by default 100,000 tasks of 12 ms, 100 worker kills, 5 broker
    restarts and a broker SIGSTOP longer than two heartbeats (heartbeat 5 s,
    pause 12 s), with duplicate suppression and without. The tasks last long
    enough for every fault to strike mid-run."""
    report = run_chaos(
        broker, queue_name, make_wqd,
        tasks=int(os.environ.get("SOAK_TASKS", 100_000)),
        worker_kills=int(os.environ.get("SOAK_WORKER_KILLS", 100)),
        broker_restarts=int(os.environ.get("SOAK_BROKER_RESTARTS", 5)),
        broker_pauses=1, pause_seconds=12, heartbeat=5, task_seconds=0.012, seed=2, deduplicate=deduplicate)
    print(report.line())
