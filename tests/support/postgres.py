"""A throwaway PostgreSQL instance for the outbox tests: Debian's initdb and
pg_ctl on a free loopback port, its data and socket in a temporary directory
of its own; never the machine's own server (5432).

PostgreSQL refuses to run as root, and CI runs as root: then the instance
runs as the ``postgres`` user (Debian's package creates it) through
``runuser``, in a directory under /tmp that user owns (pytest's own temporary
directories are private to root).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.broker import free_port, port_open

MISSING_POSTGRESQL_MESSAGE = ("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): install Debian's "
                              "postgresql package (`make test` does, as root)")
RUN_AS_WHEN_ROOT = "postgres"
_live = []


def bin_dir() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl (Debian 12: 15, Debian 13: 17)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def postgresql_available() -> bool:
    return bin_dir() is not None


class PostgresError(RuntimeError):
    """The instance failed to start or stop."""


class PostgresNode:
    """One instance: ``start()``, ``stop()``, ``restart()``, ``kill()``; ``dsn`` to connect (user ``wqd``)."""

    def __init__(self) -> None:
        self.bin = bin_dir()
        if self.bin is None:
            raise PostgresError(MISSING_POSTGRESQL_MESSAGE)
        self.as_root = os.geteuid() == 0
        self.dir = Path(tempfile.mkdtemp(prefix="wqd-test-postgres-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user = "wqd"
        self.dsn = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"
        if self.as_root:
            os.chown(self.dir, pwd.getpwnam(RUN_AS_WHEN_ROOT).pw_uid, -1)
        _live.append(self)

    def _run(self, *argv: str, timeout: float = 120) -> str:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.as_root:
            command = ["runuser", "-u", RUN_AS_WHEN_ROOT, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=self.dir)
        if done.returncode != 0:
            raise PostgresError(f"{' '.join(argv[:2])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                                f"{self.log_tail()}")
        return done.stdout

    def log_tail(self, lines: int = 30) -> str:
        log = self.dir / "postgres.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def start(self, timeout: float = 60) -> PostgresNode:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8",
                      "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off "
                   f"-c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "postgres.log"), "-o", options, "-w",
                  "-t", str(int(timeout)), "start", timeout=timeout + 10)
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if time.monotonic() > deadline:
                raise PostgresError(f"PostgreSQL did not listen on {self.port}:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    @property
    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, mode: str = "fast") -> None:
        if self.pid is not None:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def ensure_running(self) -> PostgresNode:
        """Start it again if a test left it stopped."""
        return self if self.pid is not None and port_open(self.port) else self.start()

    def restart(self) -> PostgresNode:
        self.stop()
        return self.start()

    def close(self) -> None:
        try:
            self.stop("immediate")
        except (PostgresError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
        if self in _live:
            _live.remove(self)

    def create_database(self, name: str) -> str:
        """A new database; returns its DSN."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.dsn.rsplit("/", 1)[0] + "/" + name


@atexit.register
def _close_leftovers() -> None:
    for node in list(_live):
        node.close()
