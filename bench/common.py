"""What bench/run.py's phases share: the processes it starts, the broker side,
and the systems under test (wqd and the bare pika consumer; the peers are in
bench/peers.py)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pika
import pika.exceptions

from tests.support import daemon as support_daemon
from tests.support import waiting
from tests.support.broker import BrokerNode
from tests.support.procfs import proc_stat, rss_kib

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
POLL_INTERVAL = 0.05            # queue length polling during a drain
STATUS_POLL_INTERVAL = 0.01     # /status polling while timing start-up and respawn
MESSAGE_BODY = b"bench"
TIMEOUT = 120.0


class BenchError(RuntimeError):
    """A system under test failed or did not get there in time."""


# Every process the benchmark starts (each in a session of its own), so that
# an error or Ctrl-C leaves none of them behind.
_started: list[subprocess.Popen] = []


def spawn(args: list[str], log_path: Path, **kw) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True, **kw)
    _started.append(proc)
    return proc


def kill_leftovers() -> None:
    """SIGKILL the process group of every started process still running
    (a wqd master leads the group of its workers)."""
    for proc in _started:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --------------------------------------------------------------------------
# the broker side


def preload(node: BrokerNode, queue: str, count: int, system=None) -> None:
    """Declare ``queue`` and put ``count`` persistent messages into it, in
    ``system``'s format (a peer's task messages; default wqd's and the
    baseline's plain body).

    Published without confirms (fast), then the queue is polled until it
    holds them all, so that no publishing overlaps the drain."""
    system = system or PlainMessages
    with node.connection() as connection:
        channel = connection.channel()
        system.declare(channel, queue)
        channel.queue_purge(queue)
        for _ in range(count):
            body, properties = system.message(queue, None)
            channel.basic_publish("", queue, body, properties)
        deadline = time.monotonic() + TIMEOUT
        while channel.queue_declare(queue, passive=True).method.message_count < count:
            if time.monotonic() > deadline:
                raise BenchError(f"queue {queue} did not fill up to {count} messages")
            time.sleep(POLL_INTERVAL)


def delete_queues(node: BrokerNode, *queues: str) -> None:
    for queue in queues:
        node.delete_queue(queue)


class QueueWatch:
    """A connection of its own that reads a queue's counts (passive declare)."""

    def __init__(self, node: BrokerNode, queue: str):
        self.queue = queue
        self.connection = node.connection()
        self.channel = self.connection.channel()

    def counts(self) -> tuple[int, int]:
        """(messages ready, consumers)."""
        method = self.channel.queue_declare(self.queue, passive=True).method
        return method.message_count, method.consumer_count

    def close(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError):
            self.connection.close()

    def __enter__(self) -> QueueWatch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------
# the systems under test


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    stat = proc_stat(pid)
    if stat is None:
        raise BenchError(f"process {pid} is gone")
    return stat.cpu_ticks


def wait_for(predicate, timeout: float, what: str, interval: float = STATUS_POLL_INTERVAL):
    """The tests' wait loop, failing with a BenchError."""
    try:
        return waiting.wait_for(predicate, timeout, interval=interval, message=f"waiting for {what}")
    except AssertionError as exc:
        raise BenchError(str(exc)) from None


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/PID/task/TID/children)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(child) for child in children.read().split())
    return tree


class PlainMessages:
    """wqd's and the baseline's queue (durable, no arguments) and messages (a
    short body; a latency probe's body is its publish time)."""

    _persistent = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)

    @staticmethod
    def declare(channel, queue: str) -> None:
        channel.queue_declare(queue, durable=True)

    @classmethod
    def message(cls, queue: str, published: float | None) -> tuple[bytes, pika.BasicProperties]:
        return (MESSAGE_BODY if published is None else f"{published:.6f}".encode()), cls._persistent


class Baseline(PlainMessages):
    """N processes of bench/baseline_consumer.py, in one session (its --processes)."""

    name = "baseline"

    def __init__(self, node: BrokerNode, workdir: Path):
        self.node = node
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.latency_path: Path | None = None  # set: the consumers record pickup latencies there

    def start(self, workers: int, queue: str) -> Baseline:
        args = [sys.executable, str(BENCH_DIR / "baseline_consumer.py"), self.node.url, queue,
                "--processes", str(workers)]
        env = dict(os.environ)
        if self.latency_path is not None:
            args.append("--latency")
            env["WQD_BENCH_LATENCY"] = str(self.latency_path)
        self.proc = spawn(args, self.workdir / "baseline.log", env=env)
        return self

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"the baseline consumers exited with {self.proc.returncode}; "
                             f"see {self.workdir / 'baseline.log'}")

    def pids(self) -> dict:
        return {"workers": process_tree(self.proc.pid)[1:]}

    def rss(self) -> dict:
        return {"workers": [rss_kib(pid) for pid in self.pids()["workers"]]}

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        self.proc.wait(TIMEOUT)
        self.proc = None


class Wqd(PlainMessages):
    """One `wqd run` at a time (the tests' runner, tests/support/daemon.py) of
    one wqd executable, with a one-pool config and metrics on a free port."""

    def __init__(self, name: str, executable: str, node: BrokerNode, workdir: Path):
        self.name = name
        self.executable = executable
        self.node = node
        self.workdir = workdir
        self.runner: support_daemon.Wqd | None = None
        self.runs = 0
        self.latency_path: Path | None = None  # set: handler bench_handlers:stamp records latencies there

    def start(self, workers: int, queue: str, handler: str | None = None, logging_level: str = "info") -> Wqd:
        self.prepare(workers, queue, handler, logging_level)
        self.runner.start(wait_ready=False)
        _started.append(self.runner.proc)
        return self

    def prepare(self, workers: int, queue: str, handler: str | None = None, logging_level: str = "info") -> None:
        """The runner of the next `wqd run`, its config written, not started."""
        self.runs += 1
        pythonpath = os.pathsep.join(filter(None, [str(BENCH_DIR), os.environ.get("PYTHONPATH")]))
        env = {"PYTHONPATH": pythonpath, "WQD_BENCH_RECORD": str(self.workdir / "record.txt")}
        if handler is None:
            handler = "wqd.examples:noop" if self.latency_path is None else "bench_handlers:stamp"
        if self.latency_path is not None:
            env["WQD_BENCH_LATENCY"] = str(self.latency_path)
        self.runner = support_daemon.Wqd(
            self.workdir / f"{self.name}-{self.runs}", self.node.url,
            [support_daemon.pool(queue, name="bench", handler=handler, workers=workers, prefetch=1)],
            executable=self.executable, extra_env=env, logging_level=logging_level)

    @property
    def proc(self) -> subprocess.Popen:
        return self.runner.proc

    @property
    def log_path(self) -> Path:
        return self.runner.stderr_path

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")

    def http(self, path: str) -> tuple[int | None, bytes]:
        return self.runner.http(path)

    def status(self) -> dict | None:
        """The pool's /status entry, None while the master does not answer."""
        self.check_alive()
        code, body = self.http("/status")
        return json.loads(body)["pools"][0] if code == 200 else None

    def consuming_pids(self) -> set[int]:
        status = self.status() or {"worker_processes": []}
        return {w["pid"] for w in status["worker_processes"]
                if w["state"] == "consuming" and not w["stopping"]}

    def wait_consuming(self, workers: int, timeout: float = TIMEOUT) -> set[int]:
        return wait_for(lambda: (pids := self.consuming_pids()) and len(pids) == workers and pids,
                        timeout, f"{workers} consuming workers of {self.name}")

    def pids(self) -> dict:
        status = self.status() or {"worker_processes": []}
        return {"master": [self.proc.pid], "workers": [w["pid"] for w in status["worker_processes"]]}

    def rss(self) -> dict:
        return {role: [rss_kib(pid) for pid in pids] for role, pids in self.pids().items()}

    def stop(self) -> float:
        """SIGTERM (graceful stop); return how long the exit took."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise BenchError(f"{self.name} did not stop within {TIMEOUT:g} s; see {self.log_path}") from None
        if code != 0:
            raise BenchError(f"{self.name} exited with {code} after SIGTERM; see {self.log_path}")
        return time.monotonic() - started
