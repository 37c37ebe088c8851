"""The outbox relay (issue 27): throughput, and commit-to-handler-start
latency at a steady rate, on a throwaway RabbitMQ node and PostgreSQL
instance (tests/support), through `wqd run` with an outbox section.

    throughput  ROWS rows committed in one transaction while the relay waits;
                rows/s from the commit until the table is empty (published,
                confirmed, deleted). Baseline of the same run: the same
                messages sent by wqd.Publisher.publish_many in batches of
                outbox.batch (what the relay does, without the database).
                The pool is quiet (SIGTSTP) meanwhile, so its workers do not
                take the CPU from either; it drains between rounds.
    latency     RATE transactions a second of one row each for SECONDS; for
                each, the time from its COMMIT returning to its handler
                starting (CLOCK_MONOTONIC, system-wide): p50, p99, max.

Issue 27's targets are printed as PASS/FAIL lines (the exit status does not
depend on them: a loaded machine is not a regression).

    .venv/bin/python -m bench.outbox [--rows 20000] [--rate 500] [--seconds 10] [--rounds 3]
"""

import argparse
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import psycopg

import wqd
from bench.peers import BENCH_DIR
from tests.support.broker import BrokerNode
from tests.support.daemon import Wqd, pool, run_cli
from tests.support.postgres import PostgresNode
from tests.support.waiting import wait_for
from wqd.outbox import enqueue, enqueue_many

QUEUE = "bench.outbox"
BODY = {"order": 17, "note": "x" * 60}  # about 100 bytes, as bench/publishing.py's
BATCH = 500
TARGET_ROWS_PER_SECOND = 5000
TARGET_P50, TARGET_P99 = 0.020, 0.100


def rows_left(dsn: str) -> int:
    with psycopg.connect(dsn) as connection:
        return connection.execute("SELECT count(*) FROM wqd_outbox").fetchone()[0]


def relay_throughput(dsn: str, rows: int) -> float:
    with psycopg.connect(dsn) as connection:
        enqueue_many(connection, QUEUE, [BODY] * rows)
        connection.commit()
        committed = time.monotonic()
    wait_for(lambda: rows_left(dsn) == 0, 300, interval=0.02, message="the relay did not empty the outbox")
    return rows / (time.monotonic() - committed)


def publish_many_throughput(url: str, rows: int) -> float:
    with wqd.Publisher(url) as publisher:
        publisher.connect()
        started = time.monotonic()
        for first in range(0, rows, BATCH):
            publisher.publish_many(QUEUE, [BODY] * min(BATCH, rows - first))
        return rows / (time.monotonic() - started)


def commit_to_start(dsn: str, record: Path, rate: int, seconds: float) -> list:
    """Latencies (seconds) of RATE one-row transactions a second."""
    committed = {}
    with psycopg.connect(dsn) as connection:
        start = time.monotonic()
        for number in range(int(rate * seconds)):
            due = start + number / rate
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            message_id = enqueue(connection, QUEUE, BODY)
            connection.commit()
            committed[message_id] = time.monotonic()
    started = {}
    wait_for(lambda: _read_starts(record, started) >= len(committed), 120, interval=0.05,
             message="not every task started")
    return sorted(started[message_id] - at for message_id, at in committed.items())


def _read_starts(record: Path, into: dict) -> int:
    into.clear()
    for line in record.read_text().splitlines():
        message_id, _, at = line.partition(" ")
        into[message_id] = float(at)
    return len(into)


def percentile(values: list, fraction: float) -> float:
    return values[min(len(values) - 1, int(len(values) * fraction))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"load average (1, 5, 15 min) before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="wqd-bench-outbox-"))
    database = PostgresNode().start()
    try:
        with BrokerNode(workdir / "rabbitmq") as node:
            record = workdir / "starts.txt"
            record.touch()
            daemon = Wqd(workdir / "wqd", node.url, [pool(QUEUE, handler="bench_handlers:started", workers=2)],
                         extra_env={"PYTHONPATH": str(BENCH_DIR), "WQD_BENCH_LATENCY": str(record)})
            daemon.config["outbox"] = {"dsn": database.dsn, "batch": BATCH}
            daemon.write_config()
            assert run_cli("outbox", "init", "-c", str(daemon.config_path), env=daemon.env).returncode == 0
            daemon.start()
            try:
                relay, direct = [], []
                for number in range(1, args.rounds + 1):
                    daemon.signal(signal.SIGTSTP)
                    wait_for(lambda: daemon.status()["quiet"], 30)
                    relay.append(relay_throughput(database.dsn, args.rows))
                    direct.append(publish_many_throughput(node.url, args.rows))
                    daemon.signal(signal.SIGCONT)
                    wait_for(lambda: _read_starts(record, {}) >= 2 * number * args.rows, 300,
                             message="the queue did not drain")
                    print(f"round {number}: relay {relay[-1]:8.0f} rows/s   publish_many {direct[-1]:8.0f} msgs/s"
                          f"   ({relay[-1] / direct[-1]:.2f}x)", flush=True)
                rate = statistics.median(relay)
                ratio = statistics.median(r / d for r, d in zip(relay, direct))
                print(f"relay throughput, median of {args.rounds}: {rate:.0f} rows/s, {ratio:.2f}x publish_many's")
                record.write_text("")
                latencies = commit_to_start(database.dsn, record, args.rate, args.seconds)
            finally:
                daemon.stop()
    finally:
        database.close()
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    print(f"commit to handler start at {args.rate} commits/s for {args.seconds:g} s ({len(latencies)} rows): "
          f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    print(f"{'PASS' if rate >= TARGET_ROWS_PER_SECOND else 'FAIL'}: relay throughput >= "
          f"{TARGET_ROWS_PER_SECOND} rows/s: {rate:.0f}")
    print(f"{'PASS' if p50 <= TARGET_P50 else 'FAIL'}: commit-to-start p50 <= {TARGET_P50 * 1000:.0f} ms: "
          f"{p50 * 1000:.1f} ms")
    print(f"{'PASS' if p99 <= TARGET_P99 else 'FAIL'}: commit-to-start p99 <= {TARGET_P99 * 1000:.0f} ms: "
          f"{p99 * 1000:.1f} ms")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
