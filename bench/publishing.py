"""Publishing throughput: wqd.Publisher.publish (one confirm round trip each)
against publish_many (a batch sent at once, its confirms awaited together),
and AsyncPublisher.publish_many, on a throwaway node, persistent 100-byte
messages into a durable classic queue (purged between rounds). With --peers,
Celery's apply_async and Dramatiq's send with publisher confirms too
(bench/publishing_peers.py, in the virtualenv `make bench PEERS=1` builds).

    .venv/bin/python -m bench.publishing [--messages 5000] [--batch 500] [--rounds 3] [--peers]
"""

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import wqd
from bench.peers import BENCH_DIR, PEERS_VENV
from tests.support.broker import BrokerNode

QUEUE = "bench.publishing"
BODY = b"x" * 100


def one_by_one(url: str, count: int, batch: int) -> float:
    with wqd.Publisher(url) as publisher:
        began = time.perf_counter()
        for _ in range(count):
            publisher.publish(QUEUE, BODY)
        return time.perf_counter() - began


def batches(url: str, count: int, batch: int) -> float:
    with wqd.Publisher(url) as publisher:
        began = time.perf_counter()
        for start in range(0, count, batch):
            publisher.publish_many(QUEUE, [BODY] * min(batch, count - start))
        return time.perf_counter() - began


def async_batches(url: str, count: int, batch: int) -> float:
    async def main():
        async with wqd.AsyncPublisher(url) as publisher:
            began = time.perf_counter()
            for start in range(0, count, batch):
                await publisher.publish_many(QUEUE, [BODY] * min(batch, count - start))
            return time.perf_counter() - began
    return asyncio.run(main())


def peer(system: str):
    """A round of a peer: its publishing script in the peers' virtualenv, to a
    queue of its own (each declares its queue with its own arguments)."""
    def run(url: str, count: int, batch: int) -> float:
        result = subprocess.run([str(PEERS_VENV / "bin" / "python"), str(BENCH_DIR / "publishing_peers.py"), system,
                                 url, f"{QUEUE}.{system}", str(count)], capture_output=True, text=True, timeout=600)
        if result.returncode:
            raise SystemExit(f"{system}'s publishing failed:\n{result.stderr}")
        return float(result.stdout.split()[-1])
    run.queue = f"{QUEUE}.{system}"
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", action="store_true", help="Celery and Dramatiq too")
    args = parser.parse_args()
    systems = [("publish", one_by_one), ("publish_many", batches), ("async publish_many", async_batches)]
    if args.peers:
        systems += [("celery apply_async", peer("celery")), ("dramatiq send", peer("dramatiq"))]
    with BrokerNode(Path(tempfile.mkdtemp(prefix="wqd-bench-publishing-"))) as node:
        node.declare_queue(QUEUE)
        for name, run in systems:
            rates = []
            for _ in range(args.rounds):
                rates.append(args.messages / run(node.url, args.messages, args.batch))
                node.purge_queue(getattr(run, "queue", QUEUE))
            print(f"{name:>20}: {statistics.median(rates):8.0f} msgs/s (median of {args.rounds}; "
                  f"{', '.join(f'{rate:.0f}' for rate in rates)})", flush=True)


if __name__ == "__main__":
    main()
