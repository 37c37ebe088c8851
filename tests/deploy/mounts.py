"""Mounts and process trees the deployment tests must leave behind them clean."""

import os
import signal
import subprocess
from pathlib import Path


def mounts_below(path: Path) -> list:
    """Mount points at or below ``path`` (deepest first), from /proc/self/mountinfo."""
    root = str(Path(path).resolve())
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == root or point.startswith(root + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_below(path: Path) -> None:
    """Unmount whatever is still mounted below ``path`` (a debootstrap or a
    Docker engine that died half-way leaves /proc, overlays, shm...)."""
    for point in mounts_below(path):
        subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=60)


def descendants(pid: int) -> list:
    """``pid`` and every process below it, from /proc (parents first)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants (collected first, so none is orphaned)."""
    for member in descendants(pid):
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def terminate(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM ``proc`` and wait up to ``timeout`` s for its orderly exit;
    past that, SIGKILL its whole tree."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait(30)
