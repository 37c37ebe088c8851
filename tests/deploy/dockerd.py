"""A Docker engine of the test's own, on loopback terms.

`dockerd --bridge=none --iptables=false --ip-masq=false`: no bridge, no
firewall rules, so containers run with --network host only. Its socket, pid
file and exec root are in a directory of the test's; its data root (the
images) is cached under .cache/deploy/docker. The client is Debian's
/usr/bin/docker (the engine's own version: another client on PATH may be far
newer), with BuildKit (the Dockerfile's RUN --mount needs it).
"""

import json
import os
import signal
import subprocess
from pathlib import Path

from mounts import descendants, terminate, unmount_below

from tests.support.waiting import wait_for

DOCKER = "/usr/bin/docker"


class Dockerd:
    def __init__(self, data_root: Path, run_dir: Path):
        self.data_root = data_root
        self.run_dir = run_dir
        self.exec_root = run_dir / "exec"
        self.socket = run_dir / "docker.sock"
        self.log_path = run_dir / "dockerd.log"
        self.proc = None
        self.env = {"PATH": os.environ["PATH"], "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "1",
                    "DOCKER_CONFIG": str(run_dir / "client-config"), "HOME": str(run_dir)}

    def start(self, timeout: float = 60) -> "Dockerd":
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        command = ["dockerd", "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
                   "--pidfile", str(self.run_dir / "dockerd.pid"), "--host", f"unix://{self.socket}",
                   "--bridge=none", "--iptables=false", "--ip-masq=false"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        wait_for(lambda: self._alive_or_fail() and self.docker("version", check=False).returncode == 0, timeout,
                 message=lambda: f"dockerd did not answer:\n{self.log()}")
        return self

    def _alive_or_fail(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"dockerd exited with {self.proc.returncode}:\n{self.log()}")
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def docker(self, *args: str, check: bool = True, timeout: float = 600):
        result = subprocess.run([DOCKER, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def inspect(self, name: str) -> dict:
        return json.loads(self.docker("inspect", name).stdout)[0]

    def has_image(self, name: str) -> bool:
        return self.docker("image", "inspect", name, check=False).returncode == 0

    def stop(self, timeout: float = 60) -> None:
        """Remove every container, stop the engine, SIGKILL what is left of its
        tree (containerd, shims) and unmount what it left mounted."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            ids = self.docker("ps", "--all", "--quiet", check=False, timeout=60).stdout.split()
            if ids:
                self.docker("rm", "--force", *ids, check=False, timeout=120)
            tree = {pid: _comm(pid) for pid in descendants(self.proc.pid)[1:]}
            terminate(self.proc, timeout)
            for pid, comm in tree.items():  # a containerd that outlived its dockerd
                if comm is not None and _comm(pid) == comm:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        unmount_below(self.exec_root)
        unmount_below(self.data_root)


def _comm(pid: int):
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
