"""Fault injection under load: worker SIGKILLs, broker SIGKILLs and SIGSTOPs.

Shared by the chaos test in `make test` and the longer one in `make soak`.
Every published task id must end up done at least once (or, never expected
here, in the dead-letter queue); duplicates are counted and each must be
explained by a fault between its first completion and its rerun: a killed
worker may have finished its task without acking it (one duplicate per kill
at most, prefetch 1); a broker crash or freeze may do the same to every
worker's task, and a classic queue's broker, SIGKILLed, also forgets acks it
had not yet written to disk, so it redelivers recently acked messages.
Every task has a message_id, so duplicate suppression (pools[].deduplicate)
acks those redeliveries without running them: with it, a run has at most one
duplicate per fault.
"""

import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass

import pika

from tests.support.daemon import pool
from tests.support.queues import wait_queue
from tests.support.waiting import wait_for

BROKER_SLACK = 1.0  # seconds; see _explain_duplicates


@dataclass
class ChaosReport:
    tasks: int
    worker_kills: int
    broker_restarts: int
    broker_pauses: int
    done: int
    duplicates: int
    dead_lettered: int
    seconds: float
    deduplicate: bool = True
    suppressed: int = 0  # redeliveries acked without running (outcome duplicate)
    after_worker_kills: int = 0  # duplicates only a worker kill explains
    queue_type: str = "classic"

    @property
    def faults(self) -> int:
        return self.worker_kills + self.broker_restarts + self.broker_pauses

    def line(self) -> str:
        return (f"{self.queue_type} queue, deduplicate {'on' if self.deduplicate else 'off'}: {self.tasks} tasks, "
                f"{self.worker_kills} worker SIGKILLs, {self.broker_restarts} broker SIGKILL+restarts, "
                f"{self.broker_pauses} broker SIGSTOPs: {self.done} done, 0 lost, {self.duplicates} duplicates "
                f"({self.after_worker_kills} after worker kills, {self.duplicates - self.after_worker_kills} "
                f"after broker faults), {self.suppressed} redeliveries acked without running, "
                f"{self.dead_lettered} dead-lettered, in {self.seconds:.0f} s")


def preload(broker, queue: str, count: int, task_seconds: float) -> None:
    """Publish ``count`` persistent tasks; the queue must exist (wqd declared it).
    Each publish waits for the broker's confirm: only a confirmed message is
    sure to be on disk. RabbitMQ 4.0's classic queues keep unconfirmed ones in
    memory a while, and a broker SIGKILLed seconds after the preload came back
    with the queue empty (3.10 happened to have written them)."""
    connection = broker.connection()
    channel = connection.channel()
    channel.confirm_delivery()
    for task_id in range(count):
        properties = pika.BasicProperties(delivery_mode=2, message_id=f"chaos-{task_id}")
        channel.basic_publish("", queue, json.dumps({"id": task_id, "sleep": task_seconds}), properties)
    connection.close()
    wait_queue(broker, queue, 120, f"{count} messages queued", messages_ready=count)


def run_chaos(broker, queue, make_wqd, tasks, worker_kills, broker_restarts, broker_pauses=0,
              pause_seconds=0.0, workers=3, task_seconds=0.01, heartbeat=60, seed=None, deduplicate=True,
              queue_type="classic") -> ChaosReport:
    rng = random.Random(seed)
    wqd = make_wqd([pool(queue, workers=workers, max_retries=20, retry_delay={"initial": 0.2, "max": 2},
                         deduplicate=deduplicate, queue_type=queue_type)],
                   heartbeat=heartbeat)
    wqd.start()
    wqd.stop()  # wqd declared the queue; now preload it while nothing consumes
    preload(broker, queue, tasks, task_seconds)
    started = time.monotonic()
    wqd.start()

    fault_log = []  # (time, kind, killed worker pid)
    faults = ["worker"] * worker_kills + ["broker"] * broker_restarts + ["pause"] * broker_pauses
    rng.shuffle(faults)
    done_ids = lambda: {e["id"] for e in wqd.records("end")}  # noqa: E731
    for index, fault in enumerate(faults):
        # Spread the faults over the run: fault i waits for its share of progress.
        threshold = tasks * (index + 1) / (len(faults) + 2)
        wait_for(lambda: len(done_ids()) >= threshold, 300, interval=0.1,
                 message=f"progress to {threshold:.0f} before fault {index}")
        wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == workers, 120, interval=0.1,
                 message=lambda: f"pool at full strength before fault {index}:\n{wqd.logs()}")
        fault_log.append((time.time(), fault, None))
        if fault == "worker":
            victim = rng.choice(wqd.worker_pids())
            fault_log[-1] = (time.time(), fault, victim)
            os.kill(victim, signal.SIGKILL)
        elif fault == "broker":
            broker.kill()
            broker.start()
        else:
            broker.pause()
            time.sleep(pause_seconds)  # the fault itself: a broker frozen this long
            broker.resume()
    wait_for(lambda: len(done_ids()) == tasks, 600, interval=0.5,
             message=lambda: f"only {len(done_ids())} of {tasks} tasks done:\n{wqd.logs()}")
    seconds = time.monotonic() - started
    last_end = max(e["t"] for e in wqd.records("end"))
    assert fault_log[-1][0] < last_end, \
        f"every fault struck while tasks were still running (last fault {fault_log[-1][0] - last_end:.1f} s " \
        f"after the last task; faults took {fault_log[-1][0] - fault_log[0][0]:.0f} s)"
    ends = Counter(e["id"] for e in wqd.records("end"))
    assert set(ends) == set(range(tasks)), "every published task ran"
    dead = broker.queue_stats(queue + ".dead")
    by_worker_kill = _explain_duplicates(wqd.records(), fault_log)
    report = ChaosReport(tasks, worker_kills, broker_restarts, broker_pauses, len(ends),
                         sum(ends.values()) - len(ends), dead["messages_ready"] if dead else 0, seconds,
                         deduplicate, int(wqd.metric("wqd_tasks_total", pool="default", outcome="duplicate")),
                         sum(by_worker_kill.values()), queue_type)
    assert report.dead_lettered == 0
    assert max(by_worker_kill.values(), default=0) <= 1, "one duplicate per worker kill at most"
    if deduplicate:
        assert report.duplicates <= report.faults, f"at most one duplicate per fault: {report.line()}"
    else:
        assert report.suppressed == 0
    assert wqd.stop() == 0
    return report


def _explain_duplicates(records, fault_log) -> Counter:
    """Assert every rerun of a completed task follows a fault that explains it
    (a fault after its first run started: a broker crash during a task leaves
    it unacked, one after it may forget the ack); return how many duplicates
    each worker kill explains."""
    started, first_run, reruns = {}, {}, []
    for entry in records:
        if entry["event"] == "start":
            if entry["id"] in first_run:
                reruns.append(entry)
            started[entry["id"], entry["pid"]] = entry["t"]
        elif entry["id"] not in first_run:
            first_run[entry["id"]] = (started[entry["id"], entry["pid"]], entry["pid"])
    by_worker_kill = Counter()
    for rerun in reruns:
        began, pid = first_run[rerun["id"]]
        # A delivery can sit in a worker's socket buffer when the broker dies;
        # its run then starts just after the crash, hence the broker's slack.
        causes = [(kind, victim) for t, kind, victim in fault_log
                  if began - (0 if kind == "worker" else BROKER_SLACK) <= t <= rerun["t"]
                  and (kind != "worker" or victim == pid)]
        assert causes, f"task {rerun['id']} reran with no fault to explain it: {rerun}; faults: {fault_log}"
        if all(kind == "worker" for kind, _ in causes):
            by_worker_kill[causes[-1][1]] += 1
    return by_worker_kill
