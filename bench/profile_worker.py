"""Where a worker's time per message goes, wqd's next to the bare consumer's.

    .venv/bin/python -m bench.profile_worker [--messages 3000] [--tools cpu strace callgrind]

One consumer (N = 1, prefetch 1, a no-op task) of each system on its own
broker node (tests/support/broker.py). Once it consumes, a counter is
attached or zeroed, MESSAGES persistent messages are published to it and
drained, and the counter is read:

- cpu: utime + stime of the consumer process (/proc), µs per message;
- strace: `strace -c -f -p PID` over the drain: system calls per message,
  by name;
- py-spy (if on PATH): sampled Python stacks of the consumer over the drain,
  collapsed (flame graph input), kept in the printed directory;
- callgrind: the consumer runs under `valgrind --tool=callgrind` (wqd's
  master too: valgrind follows the fork), counters zeroed once it consumes
  (callgrind_control -z) and dumped after the drain (-d): instructions per
  message, repeatable where CPU time is not (this machine is shared); the
  dump files stay in the printed directory for callgrind_annotate.

The publisher is the same for both systems, and so is its interference.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pika

from bench.common import (
    BENCH_DIR,
    TIMEOUT,
    Baseline,
    QueueWatch,
    Wqd,
    cpu_ticks,
    kill_leftovers,
    spawn,
    wait_for,
)
from tests.support.broker import BrokerNode

TOOLS = ("cpu", "strace", "callgrind", "py-spy")
QUEUE = "bench.profile"


def publish(node: BrokerNode, count: int) -> None:
    properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    with node.connection() as connection:
        channel = connection.channel()
        for _ in range(count):
            channel.basic_publish("", QUEUE, b"bench", properties)


def consumer_pid(system) -> int:
    if isinstance(system, Baseline):
        return (system.pids()["workers"] or [system.proc.pid])[0]  # under valgrind: no launcher
    return next(iter(system.wait_consuming(1)))


def start(system, node: BrokerNode, workdir: Path, under_valgrind: bool):
    """Start one consumer of ``system``; with ``under_valgrind``, under callgrind."""
    if not under_valgrind:
        system.start(1, QUEUE)
        return
    valgrind = ["valgrind", "--tool=callgrind", "--trace-children=yes",
                f"--callgrind-out-file={workdir}/callgrind.{system.name}.%p"]
    if isinstance(system, Baseline):
        system.proc = spawn([*valgrind, sys.executable, str(BENCH_DIR / "baseline_consumer.py"), node.url, QUEUE],
                            workdir / "baseline.log")
        return
    system.prepare(1, QUEUE)
    runner = system.runner
    runner.proc = spawn([*valgrind, sys.executable, "-m", "wqd", "run", "-c", str(runner.config_path)],
                        runner.stderr_path, env=runner.env, cwd=str(runner.workdir))


def measure(system, node: BrokerNode, workdir: Path, tool: str, messages: int) -> dict:
    node.declare_queue(QUEUE)
    start(system, node, workdir, tool == "callgrind")
    try:
        with QueueWatch(node, QUEUE) as watch:
            wait_for(lambda: watch.counts()[1] == 1, 600 if tool == "callgrind" else TIMEOUT, "the consumer")
            pid = consumer_pid(system)
            time.sleep(1.0)  # settled: the connection's first exchanges are over
            result = {}
            if tool == "strace":
                out = workdir / f"strace.{system.name}"
                tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
                                          stderr=subprocess.DEVNULL)
                time.sleep(1.0)  # attached
            elif tool == "callgrind":
                subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
            elif tool == "py-spy":
                out = workdir / f"py-spy.{system.name}.txt"
                tracer = subprocess.Popen([shutil.which("py-spy") or "py-spy", "record", "--nonblocking", "--threads",
                                           "-r", "1000", "-f", "raw", "-o", str(out), "-p", str(pid)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)
            ticks = cpu_ticks(pid)
            publish(node, messages)
            wait_for(lambda: watch.counts()[0] == 0, 3600, "the drain", interval=0.2)
            time.sleep(0.5)  # the last ack
            hz = os.sysconf("SC_CLK_TCK")
            result["cpu_us"] = 1e6 * (cpu_ticks(pid) - ticks) / hz / messages
            if tool == "strace":
                tracer.send_signal(signal.SIGINT)
                tracer.wait(TIMEOUT)
                result["syscalls"] = parse_strace(out.read_text(), messages)
            elif tool == "py-spy":
                tracer.send_signal(signal.SIGINT)
                tracer.wait(TIMEOUT)
                result["py_spy_file"] = str(out)
            elif tool == "callgrind":
                subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
                dumps = sorted(workdir.glob(f"callgrind.{system.name}.{pid}*"), key=os.path.getmtime)
                result["instructions"] = parse_callgrind(dumps[-1].read_text()) / messages
                result["callgrind_file"] = str(dumps[-1])
    finally:
        if isinstance(system, Baseline):
            system.stop()
        else:
            system.proc.send_signal(signal.SIGTERM)
            system.proc.wait(TIMEOUT)
        node.delete_queue(QUEUE)
    return result


def parse_strace(text: str, messages: int) -> dict:
    calls = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[-1] not in ("total", "syscall") and fields[3].isdigit():
            calls[fields[-1]] = int(fields[3]) / messages
    return dict(sorted(calls.items(), key=lambda item: -item[1]))


def parse_callgrind(text: str) -> int:
    match = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    return int(match.group(1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_worker", description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--wqd", default=str(Path(sys.executable).with_name("wqd")), metavar="PATH")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="wqd-profile-"))
    print(f"Working directory: {workdir}", flush=True)
    node = BrokerNode(workdir / "rabbitmq")
    node.start()
    results = {}
    try:
        for tool in args.tools:
            messages = args.messages // 3 if tool == "callgrind" else args.messages
            for system in (Baseline(node, workdir), Wqd("wqd", args.wqd, node, workdir)):
                results.setdefault(tool, {})[system.name] = r = measure(system, node, workdir, tool, messages)
                print(f"{tool:9s} {system.name:8s} " + json.dumps(r)[:600], flush=True)
    finally:
        kill_leftovers()
        node.stop()
    if "strace" in results:
        print("\nSystem calls per message (strace -c -f):")
        names = sorted({n for r in results["strace"].values() for n in r["syscalls"]})
        for name in names:
            print(f"  {name:20s}" + "".join(f"{r['syscalls'].get(name, 0):10.2f}" for r in results["strace"].values()))
        print(f"  {'total':20s}" + "".join(f"{sum(r['syscalls'].values()):10.2f}" for r in results["strace"].values()))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
