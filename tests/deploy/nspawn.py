"""A booted container with systemd as PID 1, driven like a host with systemctl.

`systemd-nspawn -b` boots the cached root filesystem. --volatile=overlay puts
a tmpfs overlay on it, so everything a test installs or edits stays in memory
and the cache is never changed. There is no private network: the container
shares the host's, so the daemon in it reaches a test broker on loopback.
Commands run in it through `nsenter -t <its PID 1> -a`, with a clean
environment (nothing of the test's, such as PIP_* variables, leaks in).
"""

import json
import subprocess
from pathlib import Path

from mounts import terminate

from tests.support.waiting import wait_for

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Machine:
    def __init__(self, rootfs: Path, log_path: Path, binds: dict):
        """``binds``: {host path: path in the container}, mounted read-only."""
        self.rootfs = rootfs
        self.log_path = log_path
        self.binds = binds
        self.proc = None
        self.leader = None  # the host's pid of the container's PID 1

    def boot(self, timeout: float = 180) -> "Machine":
        command = ["systemd-nspawn", "--directory", str(self.rootfs), "--volatile=overlay", "--boot",
                   "--register=no", "--keep-unit", "--console=passive", "--machine=wqd-deploy",
                   *(f"--bind-ro={host}:{inside}" for host, inside in self.binds.items())]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        self.leader = wait_for(self._find_leader, 60, message=lambda: f"no PID 1 in the container:\n{self.log()}")
        wait_for(lambda: self.run("systemctl", "is-system-running", check=False).stdout.strip()
                 in ("running", "degraded"), timeout,
                 message=lambda: f"the container did not finish booting:\n{self.log()}")
        return self

    def _find_leader(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited with {self.proc.returncode}:\n{self.log()}")
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                comm = stat[stat.index("(") + 1:stat.rindex(")")]
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid and comm == "systemd":
                    return int(entry.name)
        return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def run(self, *args: str, input: str = None, check: bool = True, timeout: float = 300):
        """Run a command in the container, as root, like a shell on a host would."""
        command = ["nsenter", "--target", str(self.leader), "--all",
                   "env", "-i", f"PATH={PATH}", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", *args]
        result = subprocess.run(command, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def sh(self, script: str, **kwargs):
        return self.run("sh", "-euc", script, **kwargs)

    def systemctl(self, *args: str, check: bool = True, timeout: float = 300):
        return self.run("systemctl", "--no-pager", *args, check=check, timeout=timeout)

    def show(self, unit: str, *properties: str) -> dict:
        out = self.systemctl("show", unit, *(f"--property={name}" for name in properties)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def write(self, path: str, text: str, mode: str = "0644", group: str = "root") -> None:
        self.run("install", "-D", "-m", mode, "-g", group, "/dev/stdin", path, input=text)

    def journal(self, unit: str) -> list:
        """The unit's journal entries (dicts of journald's fields), oldest first."""
        out = self.run("journalctl", "--unit", unit, "--output=json", "--no-pager", "--all").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def shutdown(self, timeout: float = 60) -> None:
        """Power the container off (nspawn turns a TERM into systemd's orderly
        poweroff); SIGKILL what is left when that takes too long."""
        if self.proc is None or self.proc.poll() is not None:
            return
        terminate(self.proc, timeout)
