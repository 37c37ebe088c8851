"""Publish tasks from an asyncio application (FastAPI, aiohttp) with
wqd.AsyncPublisher (pip install 'wqd[asyncio]').

    python examples/publishing/publish_tasks_async.py -c examples/publishing/wqd.yaml

In a FastAPI app, make it in the lifespan and close it there:

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with wqd.AsyncPublisher.from_config() as app.state.publisher:
            yield
"""

import argparse
import asyncio
import sys

import wqd


async def main(config, queue: str) -> int:
    async with wqd.AsyncPublisher.from_config(config, timeout=10) as publisher:
        try:
            first = await publisher.publish(queue, {"path": "a.jpg"})  # JSON
            ids = await publisher.publish_many(queue, [f"Async {n}." for n in range(10)])
        except wqd.PublishError as exc:
            print(f"not sent: {exc}", file=sys.stderr)
            return 1
    print(f"sent {first} and {len(ids)} more")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="the wqd YAML (default: $WQD_CONFIG, else /etc/wqd/wqd.yaml)")
    parser.add_argument("--queue", default="task_queue")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main(arguments.config, arguments.queue)))
