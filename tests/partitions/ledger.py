"""The ledger of a partition test: every task's runs on every host, what was
lost, what ran twice and why, and the broker-side check that no worker acked
on a new connection a delivery of an old one.

Each host's handler (tests/handlers.py `task`) appends "start" and "end"
events (pid, worker, wall-clock time, task id) to that host's record file;
all hosts run on this machine, so their times compare.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from tests.support.waiting import wait_for

# The broker's words when a channel acks a delivery tag it never handed out:
# what a worker that acked, on its new connection, a delivery of its old one
# would cause (channel error PRECONDITION_FAILED, logged by the node). A stale
# tag that does exist on the new channel would instead settle another
# message without running it: the lost count catches that one.
STALE_ACK_LOG = "unknown delivery tag"

FIGURES: list[str] = []  # lines for the end of the run (conftest.py's terminal summary)


@dataclass
class Run:
    host: str
    task: int
    pid: int
    worker: str
    start: float
    end: float | None = None


@dataclass
class Ledger:
    published: set
    runs: list = field(default_factory=list)

    @classmethod
    def read(cls, published, hosts: dict) -> Ledger:
        """Runs of every host: ``hosts`` is {host name: Wqd}."""
        ledger = cls(set(published))
        for host, wqd in hosts.items():
            open_runs = {}
            for entry in wqd.records():
                key = (entry["pid"], entry["id"])
                if entry["event"] == "start":
                    open_runs[key] = Run(host, entry["id"], entry["pid"], entry["worker"], entry["t"])
                    ledger.runs.append(open_runs[key])
                elif key in open_runs:
                    open_runs.pop(key).end = entry["t"]
        ledger.runs.sort(key=lambda run: run.start)
        return ledger

    def completions(self) -> dict:
        """{task: its completed runs, in order}."""
        done = defaultdict(list)
        for run in self.runs:
            if run.end is not None:
                done[run.task].append(run)
        return done

    @property
    def lost(self) -> set:
        return self.published - set(self.completions())

    def duplicates(self) -> dict:
        """{task: its completed runs} of the tasks that completed more than once."""
        return {task: runs for task, runs in self.completions().items() if len(runs) > 1}

    def duplicate_count(self) -> int:
        return sum(len(runs) - 1 for runs in self.duplicates().values())

    def done_count(self) -> int:
        return len(set(self.completions()) & self.published)

    def held_at(self, moment: float, host: str, workers=None, slack: float = 0.0) -> dict:
        """{task: run} of the tasks a host (its ``workers`` only, if given) had in
        hand at ``moment``: started before it and not finished ``slack``
        seconds before it (with a slack: also those whose ack may not have
        reached the broker before a cut)."""
        return {run.task: run for run in self.runs
                if run.host == host and (workers is None or run.worker in workers) and run.start <= moment
                and (run.end is None or run.end >= moment - slack)}

    def rerun(self, task: int, than: Run, after: float) -> Run | None:
        """The first completed run of ``task`` other than ``than`` that started
        after ``after``: on another worker, or on the same worker's next connection."""
        for run in self.completions().get(task, []):
            if run is not than and (run.host, run.pid, run.start) != (than.host, than.pid, than.start) \
                    and run.start >= after:
                return run
        return None

    def explain(self, held: dict, fault: str, began: float) -> list[str]:
        """One line per duplicate: which runs, and why. Raises AssertionError for
        a duplicate whose first run was not in ``held`` (in hand, or its ack
        on the way, when the fault began)."""
        lines = []
        for task, runs in sorted(self.duplicates().items()):
            first, *again = runs
            assert task in held and held[task].pid == first.pid, (
                f"task {task} ran twice but was not in hand when the {fault} began at {began:.2f}: "
                f"{runs}")
            lines.append(
                f"task {task}: ran on {first.host} {first.worker} from {first.start - began:+.2f} s to "
                f"{first.end - began:+.2f} s of the {fault} (its ack lost with the connection), again on "
                + ", ".join(f"{run.host} {run.worker} at {run.start - began:+.2f} s" for run in again)
                + " (the broker requeued it)")
        return lines


def stale_ack_errors(cluster) -> list[str]:
    """The lines of every node's log where a channel acked an unknown delivery tag."""
    found = []
    for node in cluster.nodes:
        path = node.log_base / f"{node.nodename}.log"
        if path.exists():
            found.extend(line for line in path.read_text(errors="replace").splitlines() if STALE_ACK_LOG in line)
    return found


def check_stale_ack_detection(cluster) -> None:
    """Show that stale_ack_errors() sees a stale ack: ack, on a fresh channel,
    a delivery tag it never received, and wait for the node's log line."""
    before = len(stale_ack_errors(cluster))
    with cluster.nodes[0].connection() as connection:
        channel = connection.channel()
        channel.basic_ack(delivery_tag=4242)
        wait_for(lambda: connection.process_data_events(time_limit=0.2) or channel.is_closed, 10,
                 message="the node closed the channel of the stale ack")
    wait_for(lambda: len(stale_ack_errors(cluster)) == before + 1, 30, interval=0.2,
             message="the node logged the stale ack of the canary")


def wait_until(moment: float) -> None:
    """Let a fault last until ``moment`` (time.time()): its length is the fault."""
    time.sleep(max(0.0, moment - time.time()))
