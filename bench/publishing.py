"""Publishing throughput and latency: wqd's publishers against the two ways an
application publishes with confirms without wqd, on a throwaway node,
persistent 100-byte mandatory messages into a durable classic queue (purged
after every run). The systems take turns round by round, so that a change in
the machine's load falls on all of them alike:

    naive pika         BlockingConnection, confirm_delivery(), one basic_publish at a time
    aio-pika           a confirm channel, one awaited publish at a time
    publish            wqd.Publisher.publish (one confirm round trip each)
    publish_many       wqd.Publisher.publish_many (a batch sent at once, its confirms awaited together)
    async x100         wqd.AsyncPublisher: asyncio.gather of 100 publish calls at a time
    async publish_many wqd.AsyncPublisher.publish_many

With --peers, Celery's apply_async and Dramatiq's send with publisher confirms
too (bench/publishing_peers.py, in the virtualenv `make bench PEERS=1` builds).
With --baseline DIR, the wqd package under DIR (another checkout's daemon/,
e.g. of `git worktree add /tmp/before COMMIT`) runs publish, publish_many and
async x100 too, each round in a child process that imports it: a change's
before and after, side by side in the same rounds.
The order is reversed every other round. Prints msgs/s (and, for one publish
at a time, each message's latency: p50, p99) per round and as medians, the
median of each round's ratio against that round's naive loop, and issue 26's
targets checked on those ratios as PASS/FAIL lines (the exit status does not
depend on them: a loaded machine is not a regression).

    .venv/bin/python -m bench.publishing [--messages 5000] [--batch 500] [--rounds 3] [--peers] [--baseline DIR]
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Optional

import aio_pika
import pika

import wqd
from bench.peers import BENCH_DIR, PEERS_VENV, REPO
from tests.support.broker import BrokerNode

QUEUE = "bench.publishing"
BODY = b"x" * 100
CONCURRENCY = 100  # AsyncPublisher.publish calls in flight at once
NAIVE = "naive pika"  # the baseline of every ratio


class Run(NamedTuple):
    seconds: float
    latencies: Optional[list] = None  # seconds per message, for one publish at a time


def naive_pika(url: str, count: int, batch: int) -> Run:
    """What the pika documentation shows: each basic_publish waits for its confirm."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        latencies = []
        began = time.perf_counter()
        for _ in range(count):
            sent = time.perf_counter()
            channel.basic_publish("", QUEUE, BODY, properties, mandatory=True)
            latencies.append(time.perf_counter() - sent)
        return Run(time.perf_counter() - began, latencies)
    finally:
        connection.close()


def plain_aio_pika(url: str, count: int, batch: int) -> Run:
    async def main() -> Run:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = channel.default_exchange
            latencies = []
            began = time.perf_counter()
            for _ in range(count):
                sent = time.perf_counter()
                await exchange.publish(aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                       QUEUE, mandatory=True)
                latencies.append(time.perf_counter() - sent)
            return Run(time.perf_counter() - began, latencies)
    return asyncio.run(main())


def one_by_one(url: str, count: int, batch: int) -> Run:
    with wqd.Publisher(url) as publisher:
        publisher.connect()
        latencies = []
        began = time.perf_counter()
        for _ in range(count):
            sent = time.perf_counter()
            publisher.publish(QUEUE, BODY)
            latencies.append(time.perf_counter() - sent)
        return Run(time.perf_counter() - began, latencies)


def batches(url: str, count: int, batch: int) -> Run:
    with wqd.Publisher(url) as publisher:
        publisher.connect()
        began = time.perf_counter()
        for start in range(0, count, batch):
            publisher.publish_many(QUEUE, [BODY] * min(batch, count - start))
        return Run(time.perf_counter() - began)


def async_concurrent(url: str, count: int, batch: int) -> Run:
    async def main() -> Run:
        async with wqd.AsyncPublisher(url) as publisher:
            await publisher.connect()
            began = time.perf_counter()
            for start in range(0, count, CONCURRENCY):
                await asyncio.gather(*(publisher.publish(QUEUE, BODY)
                                       for _ in range(min(CONCURRENCY, count - start))))
            return Run(time.perf_counter() - began)
    return asyncio.run(main())


def async_batches(url: str, count: int, batch: int) -> Run:
    async def main() -> Run:
        async with wqd.AsyncPublisher(url) as publisher:
            await publisher.connect()
            began = time.perf_counter()
            for start in range(0, count, batch):
                await publisher.publish_many(QUEUE, [BODY] * min(batch, count - start))
            return Run(time.perf_counter() - began)
    return asyncio.run(main())


def peer(system: str):
    """A round of a peer: its publishing script in the peers' virtualenv, to a
    queue of its own (each declares its queue with its own arguments)."""
    def run(url: str, count: int, batch: int) -> Run:
        result = subprocess.run([str(PEERS_VENV / "bin" / "python"), str(BENCH_DIR / "publishing_peers.py"), system,
                                 url, f"{QUEUE}.{system}", str(count)], capture_output=True, text=True, timeout=600)
        if result.returncode:
            raise SystemExit(f"{system}'s publishing failed:\n{result.stderr}")
        return Run(float(result.stdout.split()[-1]))
    run.queue = f"{QUEUE}.{system}"
    return run


def baseline(source_root: str, system):
    """A round of ``system`` (one of the functions above) run by the wqd
    package under ``source_root``, in a child process (``--one``)."""
    def run(url: str, count: int, batch: int) -> Run:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([source_root, str(REPO)])}
        result = subprocess.run([sys.executable, "-m", "bench.publishing", "--one", system.__name__, url, str(count),
                                 str(batch)], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        if result.returncode:
            raise SystemExit(f"the baseline's {system.__name__} failed:\n{result.stderr}")
        return Run(*json.loads(result.stdout))
    return run


def run_one(argv: list) -> None:
    """``--one FUNCTION URL COUNT BATCH``: one round of FUNCTION, its Run as JSON (for baseline())."""
    name, url, count, batch = argv
    assert wqd.__file__.startswith(os.environ["PYTHONPATH"].split(os.pathsep)[0]), wqd.__file__
    print(json.dumps(globals()[name](url, int(count), int(batch))))


class Result(NamedTuple):
    rate: float  # msgs/s
    p50: Optional[float] = None  # ms
    p99: Optional[float] = None  # ms


def result(count: int, run: Run) -> Result:
    if run.latencies is None:
        return Result(count / run.seconds)
    cuts = statistics.quantiles(run.latencies, n=100)
    return Result(count / run.seconds, cuts[49] * 1000, cuts[98] * 1000)


def line(name: str, value: Result, note: str = "") -> str:
    latency = f"  p50 {value.p50:6.2f} ms  p99 {value.p99:6.2f} ms" if value.p50 is not None else f"{'':30}"
    return f"{name:>24}: {value.rate:8.0f} msgs/s{latency}{note}".rstrip()


def median(results: list) -> Result:
    if results[0].p50 is None:
        return Result(statistics.median(r.rate for r in results))
    return Result(*(statistics.median(column) for column in zip(*results)))


def ratios(results: dict, name: str, field: str) -> list:
    """Each round's value of NAME over the same round's naive loop: the rounds
    alternate, so a load spike moves both sides of a ratio."""
    return [getattr(mine, field) / getattr(naive, field) for mine, naive in zip(results[name], results[NAIVE])]


# Issue 26's targets against the naive pika loop: (what, system, field, holds(median ratio)).
TARGETS = [
    ("publish_many >= 5x the naive loop's msgs/s", "publish_many", "rate", lambda ratio: ratio >= 5),
    ("publish's p50 latency within 10 % of the naive loop's", "publish", "p50", lambda ratio: ratio <= 1.10),
    (f"AsyncPublisher, {CONCURRENCY} concurrent publishes, >= 3x the naive loop's msgs/s", "async x100", "rate",
     lambda ratio: ratio >= 3),
]


def load_average() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", action="store_true", help="Celery and Dramatiq too")
    parser.add_argument("--baseline", metavar="DIR", help="another wqd's source root (a checkout's daemon/) to measure too")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return run_one(args.one)
    systems = [(NAIVE, naive_pika), ("aio-pika", plain_aio_pika), ("publish", one_by_one),
               ("publish_many", batches), ("async x100", async_concurrent), ("async publish_many", async_batches)]
    if args.baseline:
        root = str(Path(args.baseline).resolve())
        systems += [(f"{name} (baseline)", baseline(root, system))
                    for name, system in (("publish", one_by_one), ("publish_many", batches),
                                         ("async x100", async_concurrent))]
    if args.peers:
        systems += [("celery apply_async", peer("celery")), ("dramatiq send", peer("dramatiq"))]
    print(f"{args.messages} messages a run, publish_many batches of {args.batch}, {args.rounds} rounds; "
          f"load average (1, 5, 15 min) before: {load_average()}", flush=True)
    results = {name: [] for name, _ in systems}
    with tempfile.TemporaryDirectory(prefix="wqd-bench-publishing-") as base, BrokerNode(Path(base)) as node:
        node.declare_queue(QUEUE)
        for number in range(1, args.rounds + 1):
            print(f"round {number}:", flush=True)
            for name, run in systems if number % 2 else reversed(systems):  # reversed every other round
                results[name].append(result(args.messages, run(node.url, args.messages, args.batch)))
                node.purge_queue(getattr(run, "queue", QUEUE))
                print(line(name, results[name][-1]), flush=True)
    print(f"medians of {args.rounds} rounds (x: the median of each round's msgs/s over that round's naive loop's):")
    for name, values in results.items():
        print(line(name, median(values), f"  {statistics.median(ratios(results, name, 'rate')):6.2f}x"))
    for what, name, field, holds in TARGETS:
        ratio = statistics.median(ratios(results, name, field))
        shown = f"{ratio:.2f}x" if field == "rate" else f"{ratio:.2f}x the naive loop's ({ratio - 1:+.0%})"
        if f"{name} (baseline)" in results:
            shown += f" (the baseline: {statistics.median(ratios(results, f'{name} (baseline)', field)):.2f}x)"
        print(f"{'PASS' if holds(ratio) else 'FAIL'}: {what}: {shown}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
