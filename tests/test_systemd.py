"""systemd: the sd_notify protocol against a real datagram socket, and the unit
file as systemd-analyze sees it.

No systemd runs the tests, so the test plays its part: it binds the notify
socket ($NOTIFY_SOCKET, a path or an abstract "@name"), sets WATCHDOG_USEC and
reads what the master sends, while the broker says what really happened.
"""

import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

from tests.support.daemon import WQD, pool, task_body
from tests.support.queues import queue_counts, wait_queue
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "wqd.service"
SYSUSERS = REPO / "systemd" / "wqd.sysusers.conf"
WATCHDOG_USEC = 2_000_000
MAX_EXPOSURE = 2.0


class NotifySocket:
    """Plays systemd's notify socket: a thread receives every datagram and keeps
    (arrival time, fields). ``on_ready`` runs in that thread as soon as a
    READY=1 arrives, so it sees the world at that moment; datagrams that come
    meanwhile wait in the socket and get late arrival times, so timing checks
    look only at what arrived after ``ready_checked_at``."""

    def __init__(self, address: str, on_ready=None):
        self.address = address
        self.on_ready = on_ready
        self.ready_results = []
        self.ready_checked_at = 0.0
        self.messages = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self._sock.settimeout(0.2)
        self._closed = False
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self):
        while not self._closed:
            try:
                data = self._sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            arrived = time.monotonic()
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            if fields.get("READY") == "1" and self.on_ready:
                self.ready_results.append(self.on_ready())
                self.ready_checked_at = time.monotonic()
            self.messages.append((arrived, fields))

    def close(self):
        self._closed = True
        self._thread.join(2)
        self._sock.close()

    def times(self, key: str, value: str = None) -> list:
        return [t for t, fields in list(self.messages) if key in fields and value in (None, fields[key])]

    def states(self) -> list:
        """READY, RELOADING and STOPPING in arrival order."""
        order = []
        for _, fields in list(self.messages):
            for key in ("READY", "RELOADING", "STOPPING"):
                if key in fields:
                    order.append(key)
        return order

    def wait(self, key: str, value: str = "1", count: int = 1, timeout: float = 30, after: float = 0.0):
        wait_for(lambda: len([t for t in self.times(key, value) if t > after]) >= count, timeout,
                 message=lambda: f"{key}={value} x{count} not received; got {self.messages[-8:]}")
        return [t for t in self.times(key, value) if t > after][count - 1]


def _notify_env(address: str) -> dict:
    return {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}


def test_ready_only_once_the_broker_has_consumers_and_watchdog_at_half_interval(
        broker, queue_name, make_wqd, tmp_path):
    # An exclusive consumer holds the queue: wqd's workers connect, but the
    # broker refuses their basic.consume, so they cannot be ready yet.
    holder = broker.connection()
    channel = holder.channel()
    channel.queue_declare(queue_name, durable=True)
    channel.basic_consume(queue_name, lambda *args: None, exclusive=True)
    notify = NotifySocket(str(tmp_path / "notify.sock"),
                          on_ready=lambda: queue_counts(broker, queue_name)["consumers"])
    try:
        wqd = make_wqd([pool(queue_name, workers=2)], extra_env=_notify_env(notify.address))
        wqd.start(wait_ready=False)
        wait_for(lambda: wqd.logs().count("in exclusive use") >= 2, 30,
                 message=lambda: f"workers were not refused by the exclusive consumer:\n{wqd.logs()}")
        notify.wait("WATCHDOG", count=2)
        assert notify.times("STATUS"), "STATUS= lines while starting"
        assert not notify.times("READY"), "READY=1 while no worker could consume"
        assert wqd.http("/readyz")[0] == 503

        released = time.monotonic()
        holder.close()
        ready_at = notify.wait("READY", timeout=60)
        assert ready_at > released
        assert notify.ready_results[0] >= 1, "the broker showed no consumer when READY=1 arrived"
        assert notify.ready_results == [notify.ready_results[0]], "READY=1 was sent once"
        ready_status = next(fields["STATUS"] for t, fields in notify.messages if "READY" in fields)
        assert "default:" in ready_status and "connected" in ready_status

        # WATCHDOG_USEC=2 s: a ping about every second, never close to 2 s apart.
        # (Only pings after the READY check: on a slow machine rabbitmqctl takes a second.)
        notify.wait("WATCHDOG", count=6, after=notify.ready_checked_at)
        pings = [t for t in notify.times("WATCHDOG", "1") if t > notify.ready_checked_at]
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        assert 0.8 <= sorted(gaps)[len(gaps) // 2] <= 1.3, gaps
        assert max(gaps) < 1.6, gaps
        assert wqd.stop() == 0
    finally:
        if holder.is_open:
            holder.close()
        notify.close()


def test_reload_and_stop_over_an_abstract_socket(broker, queue_name, make_wqd):
    notify = NotifySocket(f"@wqd-test-{uuid.uuid4().hex}")
    try:
        wqd = make_wqd([pool(queue_name, workers=1)], extra_env=_notify_env(notify.address))
        wqd.start()
        notify.wait("READY")

        wqd.config["pools"][0]["workers"] = 2
        wqd.write_config()
        hup_at = time.monotonic()
        before_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        wqd.signal(signal.SIGHUP)
        reloading_at = notify.wait("RELOADING", after=hup_at)
        ready_at = notify.wait("READY", after=reloading_at)
        reloading = next(fields for t, fields in notify.messages if t == reloading_at)
        # MONOTONIC_USEC is CLOCK_MONOTONIC, the clock systemd compares it with.
        assert 0 <= int(reloading["MONOTONIC_USEC"]) - before_usec < 10_000_000, reloading
        assert ready_at >= reloading_at

        # An invalid file: RELOADING=1, then READY=1 again on the old configuration.
        wqd.config_path.write_text("pools: [\n")
        failed_at = time.monotonic()
        wqd.signal(signal.SIGHUP)
        notify.wait("READY", after=notify.wait("RELOADING", after=failed_at))
        assert any("Reload failed" in fields.get("STATUS", "") for t, fields in notify.messages if t > failed_at)
        wait_queue(broker, queue_name, 30, "still 2 consumers", consumers=2)

        stop_at = time.monotonic()
        wqd.signal(signal.SIGTERM)
        notify.wait("STOPPING", after=stop_at)
        assert wqd.wait_exit(30) == 0
        assert notify.states() == ["READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"]
    finally:
        notify.close()


def test_a_stop_extends_the_timeout_while_a_task_drains(broker, queue_name, make_wqd, tmp_path):
    notify = NotifySocket(str(tmp_path / "notify.sock"))
    try:
        wqd = make_wqd([pool(queue_name, workers=1)], extra_env=_notify_env(notify.address)).start()
        broker.publish(queue_name, task_body("long", sleep=3).encode())
        wait_for(lambda: wqd.records("start"), 30, message="task started")
        stop_at = time.monotonic()
        wqd.signal(signal.SIGTERM)
        assert wqd.wait_exit(30) == 0
        assert wqd.ended_ids() == ["long"]
        extends = [(t, fields) for t, fields in notify.messages if "EXTEND_TIMEOUT_USEC" in fields]
        assert len(extends) >= 2, f"EXTEND_TIMEOUT_USEC repeated while the task ran: {notify.messages[-8:]}"
        assert all(int(fields["EXTEND_TIMEOUT_USEC"]) > 2 * 1_000_000 for _, fields in extends)
        assert "1 finishing a task" in extends[0][1]["STATUS"]
        assert notify.times("STOPPING")[0] >= stop_at
        assert notify.times("STOPPING")[0] <= extends[0][0]
    finally:
        notify.close()


# -- the unit file --


def _systemd_analyze():
    path = shutil.which("systemd-analyze")
    assert path, "systemd-analyze not found: install Debian's systemd package (apt-get install systemd)"
    return path


def _unit_settings() -> dict:
    """{key: [values]} of the [Service] section."""
    settings, section = {}, None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif line and not line.startswith("#") and section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_exposure_is_2_or_less_and_keeps_what_wqd_needs():
    result = subprocess.run([_systemd_analyze(), "security", "--offline=true", "--no-pager", str(UNIT)],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for wqd\.service: (\d+\.\d+)", result.stdout)
    assert match, f"no exposure level in:\n{result.stdout}\n{result.stderr}"
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout
    settings = _unit_settings()
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    assert settings["KillMode"] == ["mixed"] and settings["ExecReload"] == ["/bin/sh -c 'kill -HUP $$MAINPID'"]
    assert settings["Restart"] == ["on-failure"] and settings["RestartPreventExitStatus"] == ["78"]
    assert float(settings["TimeoutStopSec"][0]) > 30, "above the default shutdown.graceful_timeout"
    assert set(settings["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert "PrivateNetwork" not in settings and "IPAddressDeny" not in settings, "the broker is on the network"
    assert settings["StateDirectory"] == ["wqd"], "$STATE_DIRECTORY: where the ledger of finished messages is kept"
    denied = " ".join(v for v in settings["SystemCallFilter"] if v.startswith("~"))
    assert "@process" not in denied, "the master forks its workers"


def test_unit_verifies_clean(tmp_path):
    # verify insists that ExecStart exists; /usr/local/bin/wqd does not here,
    # so the copy that is verified runs the wqd of the test's virtualenv.
    unit = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/wqd run -c /etc/wqd/wqd.yaml\n" in unit
    copy = tmp_path / "wqd.service"
    copy.write_text(unit.replace("ExecStart=/usr/local/bin/wqd ", f"ExecStart={WQD} "))
    result = subprocess.run([_systemd_analyze(), "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result

    # The check is not blind: verify reports an unknown key (with exit code 0).
    bad = tmp_path / "bad" / "wqd.service"
    bad.parent.mkdir()
    bad.write_text(copy.read_text().replace("KillMode=mixed", "KillMode=mixed\nKilMode=mixed"))
    result = subprocess.run([_systemd_analyze(), "verify", str(bad)], capture_output=True, text=True, timeout=60)
    assert "Unknown key 'KilMode'" in result.stderr, result


def test_sysusers_creates_an_unprivileged_account(tmp_path):
    sysusers = shutil.which("systemd-sysusers")
    assert sysusers, "systemd-sysusers not found: install Debian's systemd package"
    (tmp_path / "etc").mkdir()
    result = subprocess.run([sysusers, f"--root={tmp_path}", str(SYSUSERS)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result
    entry = next(line for line in (tmp_path / "etc" / "passwd").read_text().splitlines()
                 if line.startswith("wqd:"))
    name, _, uid, gid, _, home, shell = entry.split(":")
    assert 0 < int(uid) < 1000 and shell == "/usr/sbin/nologin", entry
