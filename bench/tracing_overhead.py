"""Per-task cost of tracing (tracing: {enabled: true}) next to tracing off.

Starts its own RabbitMQ node (tests/support/broker.py) and, for each mode,
one `wqd run` with one worker (handler wqd.examples:noop, prefetch 1):
preloads the queue with messages carrying a W3C traceparent, as a traced
publisher sends them, then times the drain until every message is acked, and
reads the worker's CPU time (utime + stime, all its threads: the span
processor's export thread included) over the same interval:

- baseline: with --baseline PATH only: another wqd executable (e.g. a
            checkout from before tracing existed, run with this venv's
            Python), with a config that has no tracing section;
- off:      this wqd, tracing not enabled (nothing of OpenTelemetry loaded);
- none:     tracing on, OTEL_TRACES_EXPORTER=none: spans made and ended,
            exported nowhere;
- otlp:     tracing on, exported over OTLP/HTTP (batches, every 5 s or 512
            spans) to a sink on loopback that reads and discards them.

Modes alternate round by round, so a load spike on this shared machine hits
them all. Prints figures (no targets asserted):

    .venv/bin/python -m bench.tracing_overhead [--messages 3000] [--rounds 3] [--baseline PATH]
"""

from __future__ import annotations

import argparse
import http.server
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.support.broker import BrokerNode
from tests.support.daemon import Wqd, pool
from tests.support.procfs import proc_stat
from tests.support.queues import queue_counts
from tests.support.waiting import wait_for

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Sink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that takes every export and keeps nothing."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def modes(sink_endpoint: str, baseline: str | None) -> dict:
    """{mode: (executable or None, tracing section or None, extra environment)}."""
    found = {} if baseline is None else {"baseline": (baseline, None, {})}
    found.update({
        "off": (None, None, {}),
        "none": (None, {"enabled": True}, {"OTEL_TRACES_EXPORTER": "none"}),
        "otlp": (None, {"enabled": True}, {"OTEL_EXPORTER_OTLP_ENDPOINT": sink_endpoint}),
    })
    return found


def drain(node: BrokerNode, workdir: Path, mode: str, setup: tuple, count: int) -> tuple:
    """(wall seconds, worker CPU seconds) of one drain of ``count`` messages."""
    executable, tracing, env = setup
    queue = f"bench.tracing.{mode}"
    options = {"executable": executable} if executable else {}
    wqd = Wqd(workdir / mode, node.url, [pool(queue, name=mode, handler="wqd.examples:noop", workers=1)],
              logging_level="warning", extra_env=env, **options)
    if tracing is not None:
        wqd.config["tracing"] = tracing
        wqd.write_config()
    wqd.start()  # declares the queue as wqd does; stopped, then the preloaded queue is drained
    wqd.stop()
    try:
        node.publish_many(queue, [b"x"] * count, headers={"traceparent": TRACEPARENT}, declare=False)
        wqd.start(wait_ready=False)
        wait_for(lambda: queue_counts(node, queue)["messages_ready"] < count, 60, interval=0.005,
                 message=lambda: f"{mode}: the first task taken\n{wqd.logs()}")
        (worker,) = wait_for(lambda: wqd.worker_pids(mode), 30, message=f"{mode}: the worker")
        started, ticks = time.perf_counter(), proc_stat(worker).cpu_ticks
        wait_for(lambda: wqd.metric("wqd_tasks_total", pool=mode, outcome="succeeded") >= count, 600,
                 interval=0.02, message=lambda: f"{mode}: every task acked\n{wqd.logs()}")
        wall, cpu = time.perf_counter() - started, (proc_stat(worker).cpu_ticks - ticks) / CLOCK_TICKS
        return wall, cpu
    finally:
        wqd.stop()
        node.delete_queue(queue)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="messages per drain")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", metavar="PATH", help="another wqd executable to measure too (no tracing key)")
    args = parser.parse_args(argv)
    sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    setups = modes(f"http://127.0.0.1:{sink.server_address[1]}", args.baseline)
    with tempfile.TemporaryDirectory(prefix="wqd-bench-tracing-") as tmp:
        node = BrokerNode(Path(tmp) / "rabbitmq")
        node.start()
        try:
            wall = {mode: [] for mode in setups}
            cpu = {mode: [] for mode in setups}
            for round_number in range(args.rounds):
                for mode, setup in setups.items():
                    seconds, cpu_seconds = drain(node, Path(tmp) / f"round{round_number}", mode, setup, args.messages)
                    wall[mode].append(seconds / (args.messages - 1))  # timed from the first task's start
                    cpu[mode].append(cpu_seconds / (args.messages - 1))
        finally:
            node.stop()
            sink.shutdown()
    print(f"{args.rounds} round(s) of {args.messages} messages (each with a traceparent), one worker, prefetch 1;"
          f" medians")
    print(f"{'mode':<9} {'wall/task':>10} {'over off':>10} {'ratio':>6} {'worker CPU/task':>16} {'over off':>10} "
          f"{'tasks/s':>8}")
    off_wall, off_cpu = statistics.median(wall["off"]), statistics.median(cpu["off"])
    for mode in setups:
        median_wall, median_cpu = statistics.median(wall[mode]), statistics.median(cpu[mode])
        print(f"{mode:<9} {median_wall * 1e6:>7.0f} us {(median_wall - off_wall) * 1e6:>+7.0f} us "
              f"{median_wall / off_wall:>6.2f} {median_cpu * 1e6:>13.0f} us {(median_cpu - off_cpu) * 1e6:>+7.0f} us "
              f"{1 / median_wall:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
