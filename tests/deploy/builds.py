"""What the deployment tests install, built on the host and cached.

- the wqd wheel, built from this worktree at every run;
- a wheelhouse of its dependencies (and of setuptools and wheel, which a
  Docker build of the source needs), for CPython 3.11, Debian bookworm's
  python3, so that neither container needs the network; cached, and made
  again when the wheel's requirements change;
- a Debian bookworm root filesystem from debootstrap, cached.

A cached item is built under a ".partial" name and renamed when complete, so
an interrupted build is never taken for a cached one.
"""

import json
import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from mounts import unmount_below

REPO = Path(__file__).resolve().parent.parent.parent
CACHE = REPO / ".cache" / "deploy"
MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
ROOTFS_PACKAGES = "systemd,systemd-sysv,dbus,python3,python3-venv"
CONTAINER_PYTHON = "3.11"  # bookworm's python3
BUILD_TOOLS = ["setuptools>=61", "wheel"]  # pyproject.toml's build requirements


def _run(command, timeout=900, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _replace(partial: Path, final: Path) -> Path:
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    return final


def build_wheel(destination: Path) -> Path:
    """The wqd wheel of this worktree."""
    destination.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(destination), str(REPO)])
    return next(destination.glob("wqd-*.whl"))


def _requirements(wheel: Path) -> list:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    return sorted(line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")
                  and "extra ==" not in line)


def wheelhouse(wheel: Path) -> Path:
    """Wheels of everything ``wheel`` needs (not wqd itself), for the containers' Python."""
    final = CACHE / "wheelhouse"
    stamp = {"requirements": _requirements(wheel) + BUILD_TOOLS, "python": CONTAINER_PYTHON,
             "machine": platform.machine()}
    stamp_file = final / "stamp.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        return final
    partial = CACHE / "wheelhouse.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
          "--platform", f"manylinux2014_{platform.machine()}", "--python-version", CONTAINER_PYTHON,
          "--implementation", "cp", "--dest", str(partial), *stamp["requirements"]])
    stamp_file = partial / "stamp.json"
    stamp_file.write_text(json.dumps(stamp))
    return _replace(partial, final)


def rootfs() -> Path:
    """A bookworm root filesystem with systemd and python3 (debootstrap --variant=minbase)."""
    final = CACHE / f"{SUITE}-rootfs"
    if (final / "usr" / "lib" / "systemd" / "systemd").exists() and (final / "usr" / "bin" / "python3").exists():
        return final
    partial = CACHE / f"{SUITE}-rootfs.partial"
    unmount_below(partial)
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    try:
        _run(["debootstrap", "--variant=minbase", f"--include={ROOTFS_PACKAGES}", SUITE, str(partial), MIRROR],
             timeout=1500)
    finally:
        unmount_below(partial)  # debootstrap mounts /proc and /sys inside while it runs
    return _replace(partial, final)
