"""The master's loop in process, with its operating system faked where it
touches children: fork returns a made-up pid and runs nothing, kill is
recorded, waitpid reports the exits a test scripts. What it decides (spawn,
respawn with backoff, stop) is checked in milliseconds; the same paths with
real processes are in test_supervision.py, test_respawn.py and
test_lifecycle.py."""

import os
import signal

import pytest

from wqd import config
from wqd.handlers.code_version import CodeVersion
from wqd.master import arbiter as master
from wqd.master import children

CONFIG = """\
metrics: {listen: null}
pools:
  - {name: a, queue: a, handler: 'm:f', workers: 2}
"""


class FakeOS:
    """fork, kill and waitpid for the master, recorded and scripted."""

    def __init__(self, monkeypatch):
        self.forked = []  # (pid, description)
        self.killed = []  # (pid, signal)
        self.exits = []  # (pid, wait status) waitpid reports next
        self._next_pid = 4_000_000
        monkeypatch.setattr(children, "fork", self.fork)
        monkeypatch.setattr(master.os, "kill", self.kill)
        monkeypatch.setattr(master.os, "waitpid", self.waitpid)

    def fork(self, child_main, description: str) -> int:
        self._next_pid += 1
        self.forked.append((self._next_pid, description))
        return self._next_pid

    def kill(self, pid: int, signum: int) -> None:
        self.killed.append((pid, signum))

    def waitpid(self, pid: int, options: int):
        return self.exits.pop(0) if self.exits else (0, 0)

    def exit(self, pid: int, code: int = 0) -> None:
        self.exits.append((pid, code << 8))

    def workers(self) -> list:
        return [(pid, description) for pid, description in self.forked if description.startswith("Worker")]


@pytest.fixture
def fake_os(monkeypatch):
    return FakeOS(monkeypatch)


@pytest.fixture
def arbiter(tmp_path, fake_os):
    path = tmp_path / "wqd.yaml"
    path.write_text(CONFIG)
    made = master.Master(config.load(str(path)), {"a": lambda message: None}, CodeVersion((), ""))
    made._wakeup_r, made._wakeup_w = os.pipe()
    yield made
    for proc in list(made.workers.values()):
        os.close(proc.reader.fd)
        os.close(proc.command_fd)
    os.close(made._wakeup_r)
    os.close(made._wakeup_w)


def test_a_pass_forks_a_worker_per_slot_and_the_queue_monitor(arbiter, fake_os):
    arbiter._manage()
    assert [description for _, description in fake_os.workers()] == ["Worker a[1]", "Worker a[2]"]
    assert any(description == "Queue monitor" for _, description in fake_os.forked)
    assert sorted(proc.slot for proc in arbiter.workers.values()) == [1, 2]
    arbiter._manage()  # nothing more: every slot has its worker
    assert len(fake_os.workers()) == 2


def test_a_worker_that_dies_early_again_is_respawned_with_backoff(arbiter, fake_os):
    arbiter._manage()
    first = fake_os.workers()[0][0]
    fake_os.exit(first, 1)
    arbiter._manage()  # reaped; its slot respawned at once (the first early death)
    (pid, description), = fake_os.workers()[2:]
    assert description == "Worker a[1]" and first not in arbiter.workers and pid in arbiter.workers
    fake_os.exit(pid, 1)
    arbiter._manage()  # a second early death: the slot waits
    assert len(fake_os.workers()) == 3 and pid not in arbiter.workers
    assert arbiter.pools[0].respawn.next_start(master.time.monotonic()) is not None


def test_sigterm_asks_every_worker_to_stop_and_the_loop_ends_when_they_are_gone(arbiter, fake_os):
    arbiter._manage()
    workers = [pid for pid, _ in fake_os.workers()]
    arbiter.signals.append(signal.SIGTERM)
    arbiter._manage()
    assert arbiter.stopping and {(pid, signal.SIGTERM) for pid in workers} <= set(fake_os.killed)
    for pid in workers:
        fake_os.exit(pid, 0)
    arbiter._manage()
    assert not arbiter.workers and len(fake_os.workers()) == 2  # none replaced while stopping
