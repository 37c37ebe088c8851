"""The console's cost to the master: /healthz and /metrics latency while
browsers fetch the console, against the same endpoints with no console traffic.

Starts its own RabbitMQ node and one `wqd run` (two pools of two workers, a
stream of tasks, DEAD_LETTERS dead letters of 2 KiB, some of them hostile),
then times sequential GETs of /healthz and /metrics in two phases that take
turns round by round: quiet (no other client), and loaded (CLIENTS processes,
so that they do not share this one's GIL, fetching /, /dead and a dead
letter's page as fast as they are answered: far more than browsers that
reload every 5 s).
Prints p50, p99 and max per phase and endpoint, the loaded/quiet ratio of
each, and the console pages served per second (no targets asserted: a shared
machine makes the figures noisy).

    .venv/bin/python -m bench.console [--requests 300] [--rounds 2] [--clients 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import pika

from tests.support.broker import BrokerNode
from tests.support.daemon import Wqd, pool
from tests.support.dead_letters import publish_letters
from tests.support.waiting import wait_for

DEAD_LETTERS = 200
PAGES = ("/", "/dead", "/dead/letter?pool=work&id=dead-7")


def get(port: int, path: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        response.read()
        assert response.status == 200, (path, response.status)
    return time.perf_counter() - started


def timings(port: int, path: str, count: int) -> list:
    return [get(port, path) for _ in range(count)]


def browse(port: int, stop, served) -> None:
    """One client process: console pages, one after the other, until ``stop``."""
    number = 0
    while not stop.is_set():
        get(port, PAGES[number % len(PAGES)])
        number += 1
        with served.get_lock():
            served.value += 1


def loaded(port: int, clients: int, measure) -> tuple:
    """(what ``measure()`` returned while ``clients`` processes fetch the console, console pages per second)."""
    stop, served = multiprocessing.Event(), multiprocessing.Value("l", 0)
    processes = [multiprocessing.Process(target=browse, args=(port, stop, served)) for _ in range(clients)]
    for process in processes:
        process.start()
    try:
        wait_for(lambda: served.value >= clients, 60, message="the console clients started")
        started, before = time.perf_counter(), served.value
        result = measure()
        rate = (served.value - before) / (time.perf_counter() - started)
    finally:
        stop.set()
        for process in processes:
            process.join(60)
    return result, rate


def describe(values: list) -> dict:
    ordered = sorted(values)
    return {"p50": statistics.median(ordered), "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            "max": ordered[-1]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="timed GETs per endpoint, phase and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4, help="processes fetching the console in the loaded phase")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wqd-bench-console-") as tmp:
        node = BrokerNode(Path(tmp) / "rabbitmq")
        node.start()
        wqd = Wqd(Path(tmp) / "wqd", node.url, [pool("bench.console", name="work", handler="wqd.examples:noop",
                                                      workers=2),
                                                 pool("bench.console.other", name="other",
                                                      handler="wqd.examples:noop", workers=2)],
                  logging_level="warning")
        try:
            wqd.start()
            publish_letters(node, "bench.console.dead", [
                (b"<script>alert(1)</script>" + b"x" * 2048, pika.BasicProperties(
                    message_id=f"dead-{number}", headers={"x-wqd-exception": "ValueError" if number % 2 else
                                                          "<img src=x onerror=alert(1)>",
                                                          "x-wqd-error": "e" * 500}))
                for number in range(DEAD_LETTERS)])
            node.publish_many("bench.console", [b"x"] * 20000, declare=False)
            wait_for(lambda: b"dead-7" in urllib.request.urlopen(
                f"http://127.0.0.1:{wqd.port}/dead", timeout=30).read(), 60, interval=0.2, message="dead letters read")
            results = {(phase, path): [] for phase in ("quiet", "loaded") for path in ("/healthz", "/metrics")}
            rates = []
            for _ in range(args.rounds):
                for path in ("/healthz", "/metrics"):
                    results["quiet", path] += timings(wqd.port, path, args.requests)
                    times, rate = loaded(wqd.port, args.clients, lambda: timings(wqd.port, path, args.requests))
                    results["loaded", path] += times
                    rates.append(rate)
        finally:
            wqd.stop()
            node.stop()
    print(f"console pages served while measuring: {statistics.median(rates):.0f}/s "
          f"({args.clients} clients fetching {', '.join(PAGES)})")
    for path in ("/healthz", "/metrics"):
        quiet, busy = describe(results["quiet", path]), describe(results["loaded", path])
        for phase, figures in (("quiet", quiet), ("loaded", busy)):
            print(f"{path:9} {phase:7} p50 {figures['p50'] * 1000:7.2f} ms  p99 {figures['p99'] * 1000:7.2f} ms  "
                  f"max {figures['max'] * 1000:7.2f} ms")
        print(f"{path:9} loaded/quiet: p50 x{busy['p50'] / quiet['p50']:.2f}, p99 x{busy['p99'] / quiet['p99']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
