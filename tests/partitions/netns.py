"""Network namespaces, a bridge and veth pairs for the partition tests.

A ``Network`` is a "switch" namespace holding a Linux bridge, and one
namespace per machine (a RabbitMQ node or a wqd host), each linked to the
bridge by a veth pair: ``eth0`` inside the machine's namespace, with an
address of 10.231.0.0/24 that exists only in that namespace, and its peer
on the bridge in the switch namespace. Nothing is routed out of these
namespaces: no address of theirs exists in the machine's own namespace.

Names start with a per-run prefix (``wqdp<pid>``), so two runs never clash
and cleanup removes exactly what this run made (and, at the start of a run,
what a run whose process is gone left behind). ``remove()`` kills every
process still in one of our namespaces (only our nodes, their epmd and our
wqd hosts ever enter them) and deletes the namespaces; the veth pairs go
with them.

The test process reaches into a namespace without a subprocess: ``entered()``
moves the calling thread alone into it (setns(2) changes only the calling
thread's network namespace); a socket belongs to the namespace it was
created in, and a child forked meanwhile inherits it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
SUBNET = "10.231.0"
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    """A namespace, link or nft command failed."""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed with code {result.returncode}: {result.stderr.strip()}")
    return result


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NetnsError(f"setns(CLONE_NEWNET) failed: {os.strerror(errno)}")


@contextlib.contextmanager
def entered(name: str):
    """Run the block with the calling thread in network namespace ``name``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def enter_for_good(name: str) -> None:
    """Move the calling thread into namespace ``name`` for the rest of its life."""
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
    finally:
        os.close(target)


@dataclass
class Machine:
    """One namespace on the bridge: ``eth0`` inside, ``peer`` on the bridge."""

    netns: str
    address: str
    peer: str

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.netns, *argv, check=check)

    def nft(self, script: str) -> None:
        """Apply an nft script in this machine's namespace."""
        result = subprocess.run(["ip", "netns", "exec", self.netns, "nft", "-f", "-"], input=script,
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise NetnsError(f"nft in {self.netns} failed: {result.stderr.strip()}\n{script}")


@dataclass
class Network:
    """The switch and the machines; ``add()`` one, ``remove()`` them all."""

    prefix: str = field(default_factory=lambda: f"wqdp{os.getpid()}")
    machines: dict = field(default_factory=dict)
    made: list = field(default_factory=list)  # namespaces made so far, to remove

    @property
    def switch(self) -> str:
        return f"{self.prefix}sw"

    def create(self) -> Network:
        remove_stale()
        self._add_netns(self.switch)
        run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.switch, "link", "set", "br0", "up")
        return self

    def _add_netns(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.made.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")

    def add(self, name: str, host_number: int) -> Machine:
        """A machine namespace ``<prefix><name>`` at 10.231.0.<host_number>."""
        netns = f"{self.prefix}{name}"
        peer = f"{self.prefix}{name}"[:15]  # interface names: 15 characters at most
        self._add_netns(netns)
        # Made in the switch, then one end moved into the machine's namespace.
        run("ip", "-n", self.switch, "link", "add", peer, "type", "veth", "peer", "name", "eth0",
            "netns", netns)
        run("ip", "-n", self.switch, "link", "set", peer, "master", "br0", "up")
        address = f"{SUBNET}.{host_number}"
        run("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        run("ip", "-n", netns, "link", "set", "eth0", "up")
        machine = Machine(netns, address, peer)
        self.machines[name] = machine
        return machine

    def unplug(self, machine: Machine) -> None:
        """Pull the machine's cable: its port on the switch goes down."""
        run("ip", "-n", self.switch, "link", "set", machine.peer, "down")

    def plug(self, machine: Machine) -> None:
        run("ip", "-n", self.switch, "link", "set", machine.peer, "up")

    def remove(self) -> None:
        """Kill what still runs in our namespaces, then delete them (the veth
        pairs and the bridge go with them)."""
        _remove(self.made)
        self.made.clear()

    def leftovers(self) -> list[str]:
        """Namespaces of this run that `ip netns list` still shows."""
        return [name for name in _namespaces() if _PREFIX.fullmatch(name)
                and _PREFIX.fullmatch(name).group(1) == self.prefix]


_PREFIX = re.compile(r"(wqdp(\d+))(?:sw|[nh]\d+)")


def _namespaces() -> list[str]:
    return [line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines() if line.strip()]


def remove_stale() -> None:
    """Remove the namespaces of runs whose test process is gone (killed before
    its cleanup could run)."""
    stale = [name for name in _namespaces() if (match := _PREFIX.fullmatch(name))
             and not os.path.exists(f"/proc/{match.group(2)}")]
    _remove(stale)


def _remove(namespaces: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    for netns in namespaces:
        while pids := [int(pid) for pid in run("ip", "netns", "pids", netns, check=False).stdout.split()]:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise NetnsError(f"processes {pids} in {netns} survive SIGKILL")
            time.sleep(0.05)
    errors = []
    for netns in reversed(namespaces):
        result = run("ip", "netns", "delete", netns, check=False)
        if result.returncode != 0:
            errors.append(f"{netns}: {result.stderr.strip()}")
    if errors:
        raise NetnsError("could not delete namespaces: " + "; ".join(errors))
