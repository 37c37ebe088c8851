"""Publishing throughput: wqd.Publisher.publish (one confirm round trip each)
against publish_many (a batch sent at once, its confirms awaited together),
and AsyncPublisher.publish_many, on a throwaway node, persistent 100-byte
messages into a durable classic queue (purged between rounds).

    .venv/bin/python -m bench.publishing [--messages 5000] [--batch 500] [--rounds 3]
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import wqd
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with BrokerNode(Path(tempfile.mkdtemp(prefix="wqd-bench-publishing-"))) as node:
        node.declare_queue(QUEUE)
        for name, run in (("publish", one_by_one), ("publish_many", batches), ("async publish_many", async_batches)):
            rates = []
            for _ in range(args.rounds):
                rates.append(args.messages / run(node.url, args.messages, args.batch))
                node.purge_queue(QUEUE)
            print(f"{name:>20}: {statistics.median(rates):8.0f} msgs/s (median of {args.rounds}; "
                  f"{', '.join(f'{rate:.0f}' for rate in rates)})", flush=True)


if __name__ == "__main__":
    main()
