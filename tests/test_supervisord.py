"""wqd under a real supervisord, configured by etc/supervisor/wqd.conf.

The shipped [program:wqd] section is used as it is, except for what must point
into the test's directory (command, log file, user, autostart: the test starts
it with supervisorctl). supervisord gets the environment the Wqd helper builds
(PYTHONPATH for the test handlers, WQD_TEST_RECORD), and passes it on to wqd.
"""

import configparser
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import procfs
from tests.support.daemon import WQD, pool, task_body
from tests.support.queues import wait_queue
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
PROGRAM_CONF = REPO / "etc" / "supervisor" / "wqd.conf"
BIN = Path(sys.executable).parent
SUPERVISORD, SUPERVISORCTL = BIN / "supervisord", BIN / "supervisorctl"


class Supervisord:
    """One supervisord (in the foreground, -n) with its socket, logs and config in ``workdir``."""

    def __init__(self, workdir: Path, wqd):
        for tool in (SUPERVISORD, SUPERVISORCTL):
            assert tool.exists(), f"{tool} not found: install the test extras (pip install -e '.[test]')"
        self.workdir = workdir
        self.wqd = wqd
        self.conf = workdir / "supervisord.conf"
        self.log = workdir / "supervisord.log"
        self.program_log = workdir / "wqd.log"
        self.conf.write_text(self._conf_text())
        self.proc = None
        self.master_pid = None

    def _conf_text(self) -> str:
        program = configparser.RawConfigParser()
        program.read_string(PROGRAM_CONF.read_text())
        section = program["program:wqd"]
        section["command"] = f"{WQD} run -c {self.wqd.config_path}"
        section["directory"] = str(self.wqd.workdir)
        section["stdout_logfile"] = str(self.program_log)
        section["autostart"] = "false"
        del section["user"]  # the tests run as whoever runs them; there is no wqd account
        sock = self.workdir / "supervisor.sock"
        lines = [
            "[unix_http_server]", f"file={sock}", "",
            "[supervisord]", f"logfile={self.log}", f"pidfile={self.workdir / 'supervisord.pid'}",
            f"childlogdir={self.workdir}", "loglevel=info", "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
            "[supervisorctl]", f"serverurl=unix://{sock}", "",
            "[program:wqd]",
        ]
        lines += [f"{key}={value}" for key, value in section.items()]
        return "\n".join(lines) + "\n"

    def start(self) -> "Supervisord":
        self.proc = subprocess.Popen([str(SUPERVISORD), "-n", "-c", str(self.conf)], env=self.wqd.env,
                                     cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_for(lambda: self.ctl("status", "wqd").stdout.split()[1:2] == ["STOPPED"], 30,
                 message=lambda: f"supervisord did not come up:\n{self.logs()}")
        return self

    def ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
        return subprocess.run([str(SUPERVISORCTL), "-c", str(self.conf), *args], env=self.wqd.env,
                              capture_output=True, text=True, timeout=timeout)

    def logs(self) -> str:
        text = self.log.read_text() if self.log.exists() else ""
        program = self.program_log.read_text() if self.program_log.exists() else ""
        return f"--- supervisord.log ---\n{text[-3000:]}\n--- wqd.log ---\n{program[-5000:]}"

    def cleanup(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # supervisord stops wqd first
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.master_pid:
            try:
                os.killpg(self.master_pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _process_group(pgid: int) -> list:
    """Live (not zombie) processes of a process group."""
    return procfs.group_members(pgid)


@pytest.fixture
def supervisord(tmp_path, make_wqd, queue_name):
    wqd = make_wqd([pool(queue_name, workers=2)], graceful_timeout=30)
    supervisor = Supervisord(tmp_path, wqd)
    yield supervisor
    supervisor.cleanup()


def test_start_consumes_and_stop_lets_the_task_finish_and_ack(broker, queue_name, supervisord):
    wqd = supervisord.wqd
    supervisord.start()
    started = supervisord.ctl("start", "wqd")
    assert started.returncode == 0 and "wqd: started" in started.stdout, (started, supervisord.logs())
    supervisord.master_pid = int(supervisord.ctl("pid", "wqd").stdout)
    wait_queue(broker, queue_name, 30, lambda: f"2 consumers:\n{supervisord.logs()}", consumers=2)

    # A reload reaches the master alone (supervisorctl signal is not a group signal).
    wqd.config["pools"][0]["workers"] = 3
    wqd.write_config()
    assert supervisord.ctl("signal", "HUP", "wqd").returncode == 0
    wait_queue(broker, queue_name, 30, lambda: f"3 consumers after HUP:\n{supervisord.logs()}", consumers=3)

    broker.publish(queue_name, task_body("long", sleep=3).encode())
    wait_for(lambda: wqd.records("start"), 30, message="task started")
    stop_began = time.monotonic()
    stopped = supervisord.ctl("stop", "wqd")
    assert stopped.returncode == 0 and "wqd: stopped" in stopped.stdout, (stopped, supervisord.logs())
    assert time.monotonic() - stop_began < 30, "stopped well before stopwaitsecs"

    assert wqd.ended_ids() == ["long"], f"the task ran to its end:\n{supervisord.logs()}"
    assert len(wqd.records("start")) == 1, "nothing was redelivered"
    assert "stopped: wqd (exit status 0)" in supervisord.log.read_text(), supervisord.logs()
    assert not _process_group(supervisord.master_pid), "the master and its workers are gone"
    assert broker.queue_stats(queue_name) == {"messages_ready": 0, "messages_unacknowledged": 0, "consumers": 0}
    assert "Graceful stop" in supervisord.program_log.read_text()
