"""Run `wqd` as an operator does: a subprocess with a YAML file and real signals."""

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import procfs
from tests.support.broker import free_port
from tests.support.waiting import wait_for

TESTS_DIR = Path(__file__).resolve().parent.parent  # on the workers' PYTHONPATH: handlers.py
WQD = str(Path(sys.executable).with_name("wqd"))


def http_get(port: int, path: str):
    """(status, body) of a GET on the master's endpoint; (None, b"") if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return None, b""


def pool(queue: str, name: str = "default", handler: str = "handlers:task", workers: int = 2, **settings):
    return {"name": name, "queue": queue, "handler": handler, "workers": workers, **settings}


def wqd_env(record: Path, extra=None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(TESTS_DIR)
    env["WQD_TEST_RECORD"] = str(record)
    env.pop("WQD_BROKER_URL", None)
    env.pop("WQD_BROKER_PASSWORD", None)
    env.pop("NOTIFY_SOCKET", None)
    env.update(extra or {})
    return env


def url_option(url: str) -> tuple:
    """(``url`` without its password, for `wqd publish --url`; the environment
    that gives the password, which --url refuses)."""
    scheme, _, rest = url.partition("://")
    userinfo, _, host = rest.rpartition("@")
    user, _, password = userinfo.partition(":")
    return f"{scheme}://{user}@{host}", {"WQD_BROKER_PASSWORD": password}


def run_cli(*args, env=None, input=None, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([WQD, *args], env=env, input=input, capture_output=True, text=True, timeout=timeout)


class Wqd:
    """One `wqd run` process with its config, record file and logs in ``workdir``
    (the tests' runner, and bench/run.py's with another ``executable``)."""

    def __init__(self, workdir: Path, broker_url: str, pools: list, graceful_timeout: float = 30,
                 heartbeat: int = 60, metrics: bool = True, extra_env=None, logging_level: str = "info",
                 executable: str = WQD):
        self.executable = executable
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.record = workdir / "record.jsonl"
        self.record.touch()
        self.port = free_port() if metrics else None
        self.config = {
            "broker": {"url": broker_url, "heartbeat": heartbeat},
            "metrics": {"listen": f"127.0.0.1:{self.port}" if metrics else None},
            "logging": {"level": logging_level},
            "shutdown": {"graceful_timeout": graceful_timeout},
            "pools": pools,
        }
        self.config_path = workdir / "wqd.yaml"
        self.write_config()
        self.env = wqd_env(self.record, extra_env)
        self.stdout_path = workdir / "stdout.log"
        self.stderr_path = workdir / "stderr.log"
        self.proc = None

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    # -- lifecycle --

    def start(self, wait_ready: bool = True, timeout: float = 60) -> "Wqd":
        self.proc = subprocess.Popen(
            [self.executable, "run", "-c", str(self.config_path)], env=self.env, cwd=self.workdir,
            stdout=open(self.stdout_path, "ab"), stderr=open(self.stderr_path, "ab"),
            start_new_session=True)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(lambda: self._alive_or_fail() and self.http("/readyz")[0] == 200, timeout,
                 message=lambda: f"wqd did not become ready:\n{self.logs()}")

    def _alive_or_fail(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"wqd exited with {self.proc.returncode}:\n{self.logs()}")
        return True

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"wqd did not exit within {timeout} s:\n{self.logs()}") from None

    def stop(self, timeout: float = 60) -> int:
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def cleanup(self) -> None:
        """Kill whatever is left of the process group (the master and its workers)."""
        if self.proc is None:
            return
        for pid in [self.proc.pid, *self.all_worker_pids()]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    # -- observation --

    def logs(self) -> str:
        out = self.stdout_path.read_text() if self.stdout_path.exists() else ""
        err = self.stderr_path.read_text() if self.stderr_path.exists() else ""
        return f"--- stderr ---\n{err[-6000:]}\n--- stdout ---\n{out[-3000:]}"

    def http(self, path: str):
        return http_get(self.port, path)

    def status(self) -> dict:
        code, body = self.http("/status")
        assert code == 200, f"/status answered {code}"
        return json.loads(body)

    def workers(self, pool_name: str = "default") -> list:
        for pool_status in self.status()["pools"]:
            if pool_status["name"] == pool_name:
                return pool_status["worker_processes"]
        return []

    def worker_pids(self, pool_name: str = "default", consuming_only: bool = False) -> list:
        return [w["pid"] for w in self.workers(pool_name)
                if not w["stopping"] and (w["state"] == "consuming" or not consuming_only)]

    def all_worker_pids(self) -> list:
        """Workers of the master, from /proc (works when the master is gone too):
        they stay in the master's process group (the master leads it)."""
        return procfs.group_members(self.proc.pid, b"wqd: worker")

    def queue_monitor_pids(self) -> list:
        """The master's queue monitor process, from /proc (like all_worker_pids)."""
        return procfs.group_members(self.proc.pid, b"wqd: queue monitor")

    def metrics(self) -> dict:
        """{(name, frozenset(labels.items())): value} of every sample."""
        code, body = self.http("/metrics")
        assert code == 200, f"/metrics answered {code}"
        samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                samples[sample.name, frozenset(sample.labels.items())] = sample.value
        return samples

    def metric(self, name: str, **labels) -> float:
        return self.metrics().get((name, frozenset(labels.items())), 0.0)

    def records(self, event: str = None) -> list:
        entries = [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]
        return [e for e in entries if event is None or e["event"] == event]

    def ended_ids(self) -> list:
        return [e["id"] for e in self.records("end")]


def task_body(task_id, sleep: float = 0, action: str = None) -> str:
    spec = {"id": task_id, "sleep": sleep}
    if action:
        spec["action"] = action
    return json.dumps(spec)


def wait_gone(pid: int, timeout: float = 30) -> None:
    """Wait until ``pid`` no longer runs code (a zombie counts as gone)."""
    wait_for(lambda: procfs.gone(pid), timeout, message=f"process {pid} still alive")

