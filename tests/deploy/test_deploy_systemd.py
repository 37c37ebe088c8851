"""The unit under systemd as PID 1: wqd installed in a booted Debian bookworm
container the way docs/deployment.md's "systemd" section says, then driven with
systemctl against the test broker on loopback.

systemd/wqd.service and systemd/wqd.sysusers.conf are installed unchanged;
the only drop-in is systemd/venv.conf (ExecStart in the virtualenv).
"""

import json
import re
import threading
import time
import uuid

import pytest
import yaml
from deploy_tasks import records

from tests.support.waiting import wait_for

# The commands of docs/deployment.md, run in the container from the checkout (mounted on
# /srv/wqd) with the wheel and the wheelhouse of its dependencies.
INSTALL = """
cd /srv/wqd
python3 -m venv /opt/wqd
/opt/wqd/bin/pip install --no-index --find-links /srv/wheelhouse /srv/dist/wqd-*.whl
install -m 0644 systemd/wqd.service /etc/systemd/system/wqd.service
install -D -m 0644 systemd/venv.conf /etc/systemd/system/wqd.service.d/venv.conf
install -D -m 0644 systemd/wqd.sysusers.conf /etc/sysusers.d/wqd.conf
systemd-sysusers
install -d -m 0750 -g wqd /etc/wqd
install -m 0640 -g wqd etc/wqd.yaml /etc/wqd/wqd.yaml
systemctl daemon-reload
"""
MAX_EXPOSURE = 2.0
LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) \[(master|worker \S+|queue monitor) pid \d+\] \S")
PROCESS = re.compile(r"\[(master|worker \S+|queue monitor) pid \d+\]")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d|\d\d:\d\d:\d\d")


@pytest.fixture(scope="module")
def installed(machine):
    machine.sh(INSTALL, timeout=600)
    # The tests' handler, as a package of handlers would be: in the virtualenv.
    site = machine.run("/opt/wqd/bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    machine.run("install", "-m", "0644", "/srv/wqd/tests/deploy/deploy_tasks.py", site.stdout.strip())
    return machine


@pytest.fixture
def wqd(installed, broker, queue_name, free_tcp_port):
    service = Service(installed, broker, queue_name, free_tcp_port)
    yield service
    installed.systemctl("stop", "wqd", check=False)
    installed.systemctl("reset-failed", "wqd", check=False)


class Service:
    """wqd.service in the container, its config at /etc/wqd/wqd.yaml, and the broker's view."""

    def __init__(self, machine, broker, queue, port):
        self.machine = machine
        self.broker = broker
        self.queue = queue
        self.config = {
            "broker": {"url": broker.url},
            "metrics": {"listen": f"127.0.0.1:{port}"},
            "shutdown": {"graceful_timeout": 30},
            "pools": [{"name": "default", "queue": queue, "handler": "deploy_tasks:task", "workers": 1}],
        }
        self.restarts_before = int(self.show("NRestarts"))
        self.write_config()

    def write_config(self) -> None:
        self.machine.write("/etc/wqd/wqd.yaml", yaml.safe_dump(self.config), mode="0640", group="wqd")

    def show(self, name: str) -> str:
        return self.machine.show("wqd", name)[name]

    def main_pid(self) -> int:
        return int(self.show("MainPID"))

    def journal(self) -> list:
        return self.machine.journal("wqd")

    def logs(self) -> str:
        return "\n".join(str(entry.get("MESSAGE")) for entry in self.journal()[-60:])

    def tasks(self, event: str, task_id: str) -> list:
        lines = [entry.get("MESSAGE") for entry in self.journal() if isinstance(entry.get("MESSAGE"), str)]
        return [r for r in records(lines) if r["event"] == event and r["id"] == task_id]

    def publish(self, task_id: str, sleep: float = 0) -> None:
        self.broker.publish(self.queue, json.dumps({"id": task_id, "sleep": sleep}))

    def consumers(self) -> int:
        return self.broker.queue_stats(self.queue)["consumers"]

    def wait_started(self, task_id: str, timeout: float = 60) -> None:
        wait_for(lambda: self.tasks("start", task_id), timeout,
                 message=lambda: f"task {task_id} did not start:\n{self.logs()}")

    def wait_drained(self, timeout: float = 60) -> None:
        """Every message acked: none ready, none delivered and unacked."""
        def drained():
            stats = self.broker.queue_stats(self.queue)
            return stats["messages_ready"] == stats["messages_unacknowledged"] == 0

        wait_for(drained, timeout,
                 message=lambda: f"{self.queue} not drained: {self.broker.queue_stats(self.queue)}\n{self.logs()}")

    def sh(self, script: str):
        return self.machine.sh(script)


def _task_id() -> str:
    return uuid.uuid4().hex[:12]


def test_start_returns_only_once_workers_consume(wqd, broker, queue_name):
    # An exclusive consumer holds the queue: the workers connect, but the
    # broker refuses their basic.consume, so wqd cannot be ready yet.
    holder = broker.connection()
    channel = holder.channel()
    channel.queue_declare(queue_name, durable=True)
    channel.basic_consume(queue_name, lambda *args: None, exclusive=True)
    started = []
    thread = threading.Thread(target=lambda: started.append(wqd.machine.systemctl("start", "wqd", check=False)))
    try:
        thread.start()
        wait_for(lambda: "in exclusive use" in wqd.logs(), 60,
                 message=lambda: f"the worker was not refused by the exclusive consumer:\n{wqd.logs()}")
        assert not started, "systemctl start returned while no worker could consume"
        assert wqd.show("ActiveState") == "activating"
    finally:
        holder.close()
    thread.join(120)
    assert started and started[0].returncode == 0, (started, wqd.logs())
    assert wqd.consumers() >= 1, "READY=1 came before a worker consumed"
    assert wqd.show("ActiveState") == "active" and wqd.show("SubState") == "running"


def test_reload_applies_an_edited_pool_and_runs_the_task_in_flight_once(wqd):
    wqd.machine.systemctl("start", "wqd")
    task = _task_id()
    wqd.publish(task, sleep=4)
    wqd.wait_started(task)

    wqd.config["pools"][0]["workers"] = 3
    wqd.write_config()
    pid = wqd.main_pid()
    wqd.machine.systemctl("reload", "wqd")
    wait_for(lambda: wqd.consumers() == 3, 60, message=lambda: f"3 consumers after the reload:\n{wqd.logs()}")
    wait_for(lambda: wqd.tasks("end", task), 60, message=lambda: f"task {task} did not end:\n{wqd.logs()}")
    wqd.wait_drained()
    assert len(wqd.tasks("start", task)) == 1 and len(wqd.tasks("end", task)) == 1, wqd.logs()
    assert wqd.main_pid() == pid, "reloaded in place, not restarted"
    assert "Reloaded /etc/wqd/wqd.yaml" in wqd.logs()


def test_stop_during_a_task_lets_it_finish_and_ack(wqd):
    wqd.machine.systemctl("start", "wqd")
    task = _task_id()
    wqd.publish(task, sleep=4)
    wqd.wait_started(task)
    wqd.machine.systemctl("stop", "wqd")
    assert wqd.tasks("end", task), f"the task was cut short:\n{wqd.logs()}"
    assert wqd.show("Result") == "success" and wqd.show("ExecMainStatus") == "0", wqd.logs()
    assert wqd.broker.queue_stats(wqd.queue) == {"messages_ready": 0, "messages_unacknowledged": 0, "consumers": 0}


def test_a_sigkilled_master_is_restarted_and_no_task_is_lost(wqd):
    wqd.config["pools"][0]["workers"] = 2
    wqd.write_config()
    wqd.machine.systemctl("start", "wqd")
    tasks = [_task_id() for _ in range(4)]
    for task in tasks:
        wqd.publish(task, sleep=2)
    wqd.wait_started(tasks[0])
    killed = wqd.main_pid()
    wqd.sh(f"kill -KILL {killed}")
    wait_for(lambda: int(wqd.show("NRestarts")) == wqd.restarts_before + 1 and wqd.show("SubState") == "running",
             60, message=lambda: f"not restarted:\n{wqd.logs()}")
    assert wqd.main_pid() != killed
    for task in tasks:
        wait_for(lambda: wqd.tasks("end", task), 90, message=lambda: f"task {task} lost:\n{wqd.logs()}")
    wqd.wait_drained()


def test_a_sigstopped_master_is_killed_and_restarted_by_the_watchdog(wqd):
    wqd.machine.systemctl("start", "wqd")
    stopped = wqd.main_pid()
    assert wqd.show("WatchdogUSec") == "30s", "the unit's own WatchdogSec"
    wqd.sh(f"kill -STOP {stopped}")
    wait_for(lambda: int(wqd.show("NRestarts")) == wqd.restarts_before + 1 and wqd.show("SubState") == "running",
             120, message=lambda: f"the watchdog did not restart wqd:\n{wqd.logs()}")
    assert wqd.main_pid() != stopped
    assert "Watchdog timeout" in wqd.logs(), wqd.logs()
    task = _task_id()
    wqd.publish(task)
    wait_for(lambda: wqd.tasks("end", task), 60, message=lambda: f"the new master does not work:\n{wqd.logs()}")


def test_a_configuration_error_exits_78_and_is_not_restarted(wqd):
    wqd.config["pools"][0]["workers"] = 0
    wqd.write_config()
    result = wqd.machine.systemctl("start", "wqd", check=False)
    assert result.returncode != 0
    assert wqd.show("ExecMainStatus") == "78" and wqd.show("ActiveState") == "failed", wqd.logs()
    assert "configuration error" in wqd.logs()
    # RestartSec=2: a restart would have come by now.
    time.sleep(5)
    assert wqd.show("ActiveState") == "failed" and int(wqd.show("NRestarts")) == wqd.restarts_before, wqd.logs()


def test_the_journal_has_the_daemons_lines_with_levels_and_one_timestamp(wqd):
    wqd.config["pools"][0]["workers"] = 2
    wqd.write_config()
    wqd.machine.systemctl("start", "wqd")
    wqd.machine.systemctl("stop", "wqd")
    main = [e for e in wqd.journal() if e.get("_COMM", "").startswith("wqd") or e.get("SYSLOG_IDENTIFIER") == "wqd"]
    messages = [e["MESSAGE"] for e in main if isinstance(e.get("MESSAGE"), str)]
    daemon = [m for m in messages if not m.startswith("deploy-task ")]
    assert any(m.startswith("INFO [master pid ") and "Ready" in m for m in daemon), daemon
    assert any(m.startswith("INFO [worker default[2] pid ") for m in daemon), daemon
    # Every logged line starts with its level (the journal adds the time);
    # others are the command line's own (e.g. a configuration error's report).
    logged = [m for m in daemon if PROCESS.search(m)]
    assert logged and all(LINE.match(m) for m in logged), [m for m in logged if not LINE.match(m)]
    assert not [m for m in daemon if TIMESTAMP.search(m)], "the journal stamps lines itself"
    # The journal took each line's "<N>" prefix as its priority and stripped it.
    priorities = {(e["MESSAGE"].split(" ", 1)[0], e.get("PRIORITY")) for e in main
                  if isinstance(e.get("MESSAGE"), str) and LINE.match(e["MESSAGE"])}
    assert ("INFO", "6") in priorities and not [p for p in priorities if p[0] == "INFO" and p[1] != "6"], priorities
    assert not [m for m in daemon if m.startswith("<")], "no prefix left in a message"
    text = wqd.machine.run("journalctl", "--unit", "wqd", "--no-pager", "--lines", "5").stdout
    assert re.search(r"wqd\[\d+\]: INFO \[master pid \d+\] ", text), text


def test_security_exposure_is_2_or_less_while_the_daemon_runs_under_it(wqd):
    wqd.config["pools"][0]["workers"] = 2
    wqd.write_config()
    wqd.machine.systemctl("start", "wqd")
    out = wqd.machine.run("systemd-analyze", "security", "--no-pager", "wqd.service").stdout
    match = re.search(r"Overall exposure level for wqd\.service: (\d+\.\d+)", out)
    assert match and float(match.group(1)) <= MAX_EXPOSURE, out

    # The daemon really runs under it: as wqd, no capabilities, no new
    # privileges, a seccomp filter; and it works (the broker sees consumers).
    status = wqd.machine.run("cat", f"/proc/{wqd.main_pid()}/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    uid = wqd.machine.run("id", "-u", "wqd").stdout.strip()
    assert fields["Uid"].split()[0] == uid != "0", fields["Uid"]
    assert fields["CapEff"].strip() == fields["CapBnd"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2"
    wait_for(lambda: wqd.consumers() == 2, 30, message=lambda: wqd.logs())
    task = _task_id()
    wqd.publish(task)
    wait_for(lambda: wqd.tasks("end", task), 60, message=lambda: wqd.logs())
