"""Per-task cost of exec handlers next to a Python handler.

Starts its own RabbitMQ node (tests/support/broker.py) and, for each handler
kind, one `wqd run` with one worker: preloads the queue, then times the drain
until every message is acked. The handlers do nothing, so the figures are
wqd's cost per task for each kind:

- python:     wqd.examples:noop, called in the worker;
- exec:       {exec: [/bin/true]}, one process per message;
- exec-sh:    {exec: [/bin/sh, -c, "cat > /dev/null"]}, a shell that reads the body;
- persistent: {exec: [python, bench/exec_noop.py], persistent: true}, one
              process per worker answering {"id": ..., "status": "ok"} per line.

Prints figures (no targets asserted; a shared machine makes them noisy):

    .venv/bin/python -m bench.exec_overhead [--messages 300] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tests.support.broker import BrokerNode
from tests.support.daemon import Wqd, pool
from tests.support.queues import queue_counts
from tests.support.waiting import wait_for

BENCH_DIR = Path(__file__).resolve().parent
KINDS = {
    "python": "wqd.examples:noop",
    "exec": {"exec": ["/bin/true"]},
    "exec-sh": {"exec": ["/bin/sh", "-c", "cat > /dev/null"]},
    "persistent": {"exec": [sys.executable, str(BENCH_DIR / "exec_noop.py")], "persistent": True},
}
# A Python task costs far less than a process start: it gets more messages, for a steadier figure.
PYTHON_FACTOR = 10


def drain_seconds(node: BrokerNode, workdir: Path, kind: str, count: int) -> float:
    queue = f"bench.exec.{kind}"
    wqd = Wqd(workdir / kind, node.url, [pool(queue, name=kind, handler=KINDS[kind], workers=1)],
              logging_level="warning")
    wqd.start()  # declares the queue as wqd does; stopped, then the preloaded queue is drained
    wqd.stop()
    try:
        node.publish_many(queue, [b"x"] * count, declare=False)
        wqd.start(wait_ready=False)
        wait_for(lambda: queue_counts(node, queue)["messages_ready"] < count, 60, interval=0.005,
                 message=lambda: f"{kind}: the first task taken\n{wqd.logs()}")
        started = time.perf_counter()
        wait_for(lambda: wqd.metric("wqd_tasks_total", pool=kind, outcome="succeeded") >= count, 600,
                 interval=0.02, message=lambda: f"{kind}: every task acked\n{wqd.logs()}")
        return time.perf_counter() - started
    finally:
        wqd.stop()
        node.delete_queue(queue)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300, help="messages per drain of an exec kind")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wqd-bench-exec-") as tmp:
        node = BrokerNode(Path(tmp) / "rabbitmq")
        node.start()
        try:
            per_task = {kind: [] for kind in KINDS}
            for round_number in range(args.rounds):  # kinds alternate, so a load spike hits them all
                for kind in KINDS:
                    count = args.messages * (PYTHON_FACTOR if kind == "python" else 1)
                    seconds = drain_seconds(node, Path(tmp) / f"round{round_number}", kind, count)
                    per_task[kind].append(seconds / (count - 1))  # timed from the first task's start
        finally:
            node.stop()
    python = statistics.median(per_task["python"])
    print(f"{'handler':<12} {'per task (median)':>18} {'over python':>12} {'tasks/s':>9}")
    print(f"{args.rounds} round(s), {args.messages} messages per exec drain, one worker, prefetch 1")
    for kind, samples in per_task.items():
        median = statistics.median(samples)
        print(f"{kind:<12} {median * 1e3:>15.3f} ms {(median - python) * 1e3:>9.3f} ms {1 / median:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
