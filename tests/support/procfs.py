"""The one reader of /proc for the tests and the benchmarks: process state,
parents and groups (to find a daemon's or a broker's processes), CPU ticks,
resident memory, and who listens on a port."""

from __future__ import annotations

import os
from typing import NamedTuple


class ProcStat(NamedTuple):
    """The fields of /proc/<pid>/stat the tests use (``proc(5)``)."""

    comm: str
    state: str
    ppid: int
    starttime: int
    pgrp: int
    cpu_ticks: int  # utime + stime


def proc_stat(pid: int) -> ProcStat | None:
    """The stat fields of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    # comm is in parentheses and may itself contain spaces or parentheses
    lpar, rpar = data.index("("), data.rindex(")")
    fields = data[rpar + 2 :].split()
    return ProcStat(comm=data[lpar + 1 : rpar], state=fields[0], ppid=int(fields[1]), starttime=int(fields[19]),
                    pgrp=int(fields[2]), cpu_ticks=int(fields[11]) + int(fields[12]))


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def cmdline(pid: int) -> bytes:
    """The raw command line (NUL-separated), b"" if the process is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def rss_kib(pid: int) -> int | None:
    """Resident memory in KiB, None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def gone(pid: int) -> bool:
    """True once a process no longer runs code (exited, or a zombie)."""
    stat = proc_stat(pid)
    return stat is None or stat.state in ("Z", "X")


def group_members(pgrp: int, cmdline_prefix: bytes = b"") -> list[int]:
    """Live processes of process group ``pgrp`` whose command line starts with ``cmdline_prefix``."""
    return [pid for pid in all_pids()
            if (stat := proc_stat(pid)) is not None and stat.pgrp == pgrp and stat.state not in ("Z", "X")
            and cmdline(pid).startswith(cmdline_prefix)]


def children(ppid: int, cmdline_prefix: bytes = b"") -> list[int]:
    """Live children of ``ppid`` whose command line starts with ``cmdline_prefix``."""
    return [pid for pid in all_pids()
            if (stat := proc_stat(pid)) is not None and stat.ppid == ppid and stat.state not in ("Z", "X")
            and cmdline(pid).startswith(cmdline_prefix)]


def age(pid: int) -> float | None:
    """Seconds since the process started, None if it is gone."""
    stat = proc_stat(pid)
    if stat is None:
        return None
    with open("/proc/uptime") as uptime:
        now = float(uptime.read().split()[0])
    return now - stat.starttime / os.sysconf("SC_CLK_TCK")


def tcp_listeners(port: int) -> dict[int, list[int]]:
    """{socket inode: pids holding it} for every TCP socket listening on ``port``
    (any address) in the calling thread's network namespace; a socket no
    process shows (one being closed, or another user's) has no pids."""
    inodes = []
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/thread-self/net/{table}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # TCP_LISTEN
                        inodes.append(int(fields[9]))
        except OSError:
            pass
    holders: dict[int, list[int]] = {inode: [] for inode in inodes}
    targets = {f"socket:[{inode}]": inode for inode in inodes}
    for pid in all_pids() if targets else ():
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                inode = targets.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
                if inode is not None and pid not in holders[inode]:
                    holders[inode].append(pid)
        except OSError:  # gone, or a descriptor closed while we looked
            continue
    return holders
