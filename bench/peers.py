"""Celery and Dramatiq as systems of the benchmark (`make bench PEERS=1`).

Each runs from its own virtualenv (PEERS_VENV, built by the Makefile from
bench/requirements-peers.txt), at settings equal to wqd's and the bare
consumer's: N worker processes each holding one unacked message at a time,
the ack sent after the task returns, a no-op task, persistent messages. The
benchmark publishes every system's messages itself (one fast pika
publisher), so a peer's message is built here in that peer's own format:
Celery's task protocol 2 and Dramatiq's JSON message.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pika

from bench.common import BenchError, process_tree
from tests.support.procfs import rss_kib

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PEERS_VENV = Path(os.environ.get("WQD_BENCH_PEERS_VENV", REPO / ".cache" / "bench-peers"))
STOP_TIMEOUT = 60.0


class Peer:
    """A peer's worker command, started in a session of its own; its processes
    (a parent and its pool's children) count together as "workers"."""

    name = ""
    executable = ""

    def __init__(self, node, workdir: Path, spawn):
        self.node = node
        self.workdir = workdir
        self._spawn = spawn
        self.proc: subprocess.Popen | None = None
        self.latency_path: Path | None = None

    def command(self, workers: int, queue: str) -> list[str]:
        raise NotImplementedError

    def env(self, queue: str) -> dict:
        env = dict(os.environ, WQD_BENCH_AMQP_URL=self.node.url, WQD_BENCH_QUEUE=queue,
                   PYTHONPATH=str(BENCH_DIR))
        env.pop("WQD_BENCH_LATENCY", None)
        if self.latency_path is not None:
            env["WQD_BENCH_LATENCY"] = str(self.latency_path)
        return env

    def start(self, workers: int, queue: str) -> Peer:
        self.proc = self._spawn(self.command(workers, queue), self.workdir / f"{self.name}.log",
                                env=self.env(queue), cwd=str(BENCH_DIR))
        return self

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}; see {self.workdir / self.name}.log")

    def pids(self) -> dict:
        return {"workers": process_tree(self.proc.pid)}

    def rss(self) -> dict:
        return {"workers": [rss_kib(pid) for pid in self.pids()["workers"]]}

    def stop(self) -> None:
        """Its warm shutdown (SIGTERM), then SIGKILL of the group if it lingers."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # pool children left behind, if any

    # -- the queue and the messages, in this peer's format --

    def declare(self, channel, queue: str) -> None:
        channel.queue_declare(queue, durable=True)

    def message(self, queue: str, published: float | None) -> tuple[bytes, pika.BasicProperties]:
        """A no-op task's message for ``queue``; with ``published``, a latency probe."""
        raise NotImplementedError


class Celery(Peer):
    name = "celery"

    def command(self, workers, queue):
        return [str(PEERS_VENV / "bin" / "celery"), "-A", "peer_celery", "worker", "--pool", "prefork",
                "--concurrency", str(workers), "-Q", queue, "--loglevel", "WARNING",
                "--without-gossip", "--without-mingle", "--without-heartbeat"]

    def message(self, queue, published):
        task_id = str(uuid.uuid4())
        args = [] if published is None else [published]
        body = json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
        headers = {"lang": "py", "task": "bench.noop", "id": task_id, "root_id": task_id, "parent_id": None,
                   "group": None, "retries": 0, "eta": None, "expires": None, "shadow": None,
                   "timelimit": [None, None], "argsrepr": repr(tuple(args)), "kwargsrepr": "{}",
                   "origin": "bench", "ignore_result": True}
        return body.encode(), pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent, content_type="application/json",
            content_encoding="utf-8", correlation_id=task_id, headers=headers, priority=0)


class Dramatiq(Peer):
    name = "dramatiq"

    def command(self, workers, queue):
        return [str(PEERS_VENV / "bin" / "dramatiq"), "peer_dramatiq", "--processes", str(workers),
                "--threads", "1", "--queues", queue]

    def env(self, queue):
        # Otherwise Dramatiq prefetches twice its threads per process.
        return dict(super().env(queue), dramatiq_queue_prefetch="1")

    def declare(self, channel, queue):
        # The arguments Dramatiq's RabbitmqBroker declares its queues with.
        for name in (queue, f"{queue}.DQ"):
            channel.queue_declare(name, durable=True, arguments={
                "x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{queue}.XQ"})
        channel.queue_declare(f"{queue}.XQ", durable=True, arguments={"x-message-ttl": 86400000 * 7})

    def message(self, queue, published):
        message = {"queue_name": queue, "actor_name": "bench_noop",
                   "args": [] if published is None else [published], "kwargs": {}, "options": {},
                   "message_id": str(uuid.uuid4()), "message_timestamp": int(time.time() * 1000)}
        return json.dumps(message, separators=(",", ":")).encode(), pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent)


PEER_CLASSES = (Celery, Dramatiq)


def available() -> str | None:
    """None when the peers' virtualenv is there, else what is missing."""
    for cls in PEER_CLASSES:
        path = PEERS_VENV / "bin" / cls.name
        if not os.access(path, os.X_OK):
            return f"{path} not found: `make bench PEERS=1` builds {PEERS_VENV} from bench/requirements-peers.txt"
    return None
