"""Throwaway RabbitMQ nodes for wqd's tests and demo.

A ``BrokerNode`` runs Debian's ``/usr/lib/rabbitmq/bin/rabbitmq-server`` in the
foreground as a child process, with everything (config, data, logs, pid file,
Erlang cookie) under one base directory and on free loopback ports, so it never
touches the system broker on 127.0.0.1:5672 (node ``rabbit@localhost``, dist
port 25672) nor its data in /var/lib/rabbitmq. The only thing it shares with
the system broker is the epmd daemon on 127.0.0.1:4369 (the name registry of
Erlang nodes), which it never stops.

The data directory (``<base>/mnesia``) survives ``kill()``/``stop()``, so
``restart()`` brings back durable queues and persistent messages.

Timings measured on the dev machine (Debian 12, 2 cores, Erlang 25.2.3,
RabbitMQ 3.10.8; ``python -m tests.support.broker measure DIR``, several runs of 3,
the spread is mostly the load of the machine):
    start (fresh data dir, until AMQP + ``await_startup`` ok):  3.0-4.7 s
    start (existing data dir, 1 durable queue):                2.8-5.1 s
    kill  (SIGKILL the tree, until port closed + epmd clean):   0.02 s
    restart (kill + start, data kept):                          2.7-4.4 s
    stop  (graceful SIGTERM, until exited):                     1.1 s
    ctl() call (one rabbitmqctl, e.g. list_queues):             0.25-0.35 s
Nearly all of a start is the Erlang VM booting RabbitMQ; the AMQP port opens
last, and ``await_startup`` then adds one ctl() call. queue_stats() is one
ctl() call, so poll it at intervals of 0.2 s or more. tests/test_broker_node.py
(4 tests: one start, one kill + start) takes 10-12 s.

Process tree of a running node (as root, in the foreground)::

    sh rabbitmq-server            <- our Popen child, session/group leader
     `- beam.smp                   <- the Erlang VM (the broker)
         `- erl_child_setup        <- calls setsid(): its OWN session and group
             |- inet_gethost 4     <- (same, own session)
             `- sh -s rabbit_disk_monitor
So "the process group" is not enough to find every process: ``kill()`` and
``pause()`` walk the tree of descendants through /proc (parent pids), and
never signal a process named ``epmd`` (erl starts ``epmd -daemon`` if none runs;
it detaches and is shared by every node on the machine).

Addressing the node from a shell (the cookie lives in the base dir, which is
used as HOME for the node and for rabbitmqctl)::

    HOME=<base> /usr/lib/rabbitmq/bin/rabbitmqctl -n <nodename> list_queues

Another RabbitMQ version: with ``WQD_TEST_RABBITMQ_ROOT=DIR`` in the
environment, nodes and rabbitmqctl run the RabbitMQ of the Debian root file
system DIR (made by scripts/rabbitmq-rootfs.sh; ``make test-rabbitmq4``, ``make test-rabbitmq43``), in a
chroot, each process in a mount namespace of its own (``unshare --mount``)
where /proc, /dev and the node's directories are bind-mounted into DIR at the
same paths as on the host, on a private /tmp: the mounts exist only while that
process lives and vanish with it, even when the tests are killed, and the
cached DIR stays unchanged. Nothing but the variables given here reaches
the node (``env -i``): DIR's /etc/rabbitmq is not read, and the host's could
not be. ``WQD_TEST_RABBITMQ_METADATA=khepri`` makes new nodes move their
definitions to Khepri right after their first start (RabbitMQ 4.0's metadata
store when its feature flag is enabled; the only one from 4.3, which removed
Mnesia).

Command line (used by scripts/demo.sh)::

    python -m tests.support.broker serve DIR [--conf LINE]...  # prints the URL, runs until TERM/INT
    python -m tests.support.broker measure DIR                 # prints the timings above
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from tests.support.procfs import all_pids as _all_pids
from tests.support.procfs import proc_stat as _proc_stat
from tests.support.procfs import tcp_listeners

RABBITMQ_BIN_DIR = Path(os.environ.get("WQD_RABBITMQ_BIN_DIR", "/usr/lib/rabbitmq/bin"))
RABBITMQ_SERVER = RABBITMQ_BIN_DIR / "rabbitmq-server"
RABBITMQCTL = RABBITMQ_BIN_DIR / "rabbitmqctl"
# A Debian root file system whose RabbitMQ the nodes run instead (see above).
RABBITMQ_ROOT = Path(os.environ["WQD_TEST_RABBITMQ_ROOT"]) if os.environ.get("WQD_TEST_RABBITMQ_ROOT") else None
METADATA_STORE = os.environ.get("WQD_TEST_RABBITMQ_METADATA", "")

MISSING_RABBITMQ_MESSAGE = (
    f"{RABBITMQ_SERVER} not found: the tests need Debian's RabbitMQ server. "
    "Install it with `make rabbitmq` (as root), or: "
    "apt-get update && DEBIAN_FRONTEND=noninteractive "
    "apt-get install -y --no-install-recommends rabbitmq-server"
)
if RABBITMQ_ROOT is not None:
    MISSING_RABBITMQ_MESSAGE = (
        f"{RABBITMQ_ROOT}{RABBITMQ_SERVER} not found (WQD_TEST_RABBITMQ_ROOT={RABBITMQ_ROOT}): "
        "build that root file system with scripts/rabbitmq-rootfs.sh SUITE DIR "
        "(as root; `make test-rabbitmq4` does it)"
    )

# Ports the system broker and the rabbitmqctl CLI use: never hand them to a node.
# 35672-35682 is the range rabbitmqctl's own Erlang node listens on.
_RESERVED_PORTS = {4369, 5671, 5672, 15672, 25672, *range(35672, 35683)}
# How long start() waits for a port of the node to be free.
PORT_FREE_SECONDS = 15

_counter = itertools.count(1)

# Nodes run in their own session, so they outlive this process unless killed:
# kill whatever is still running when the interpreter exits (not on SIGKILL).
_live_nodes: set[BrokerNode] = set()


@atexit.register
def _kill_leftover_nodes() -> None:
    for node in list(_live_nodes):
        try:
            node.kill()
        except Exception:
            pass


class BrokerError(RuntimeError):
    """The throwaway node failed to start, stop, or answer a command."""


def rabbitmq_available() -> bool:
    root = str(RABBITMQ_ROOT or "")
    return os.access(root + str(RABBITMQ_SERVER), os.X_OK) and os.access(root + str(RABBITMQCTL), os.X_OK)


def in_root(argv: list[str], env: dict[str, str], shared_dirs: Iterable[Path]) -> list[str]:
    """The command that runs ``argv`` with exactly ``env`` in RABBITMQ_ROOT's
    chroot, in a mount namespace of its own where /proc, /dev and each of
    ``shared_dirs`` are bind-mounted at their own paths, over a private /tmp."""
    mounts = ["/proc", "/dev", *(str(d) for d in shared_dirs)]
    script = f'set -e; r={shlex.quote(str(RABBITMQ_ROOT))}; mount -t tmpfs tmpfs "$r/tmp"'
    for path in mounts:
        quoted = shlex.quote(path)
        script += f'; mkdir -p "$r"{quoted}; mount --bind {quoted} "$r"{quoted}'
    script += '; exec chroot "$r" env -i "$@"'
    variables = [f"{key}={value}" for key, value in env.items()]
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *variables, *argv]


# --------------------------------------------------------------------------
# small OS helpers


def _ports_below_ephemeral() -> range:
    """Ports no outgoing connection takes: those below the kernel's ephemeral
    range (a node's port picked from that range can be taken as a connection's
    source port while the node restarts its listener, and its start then
    fails with eaddrinuse)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(1024, low - 20000), low)


def free_port(exclude: Iterable[int] = ()) -> int:
    """A TCP port below the ephemeral range that is free on 127.0.0.1 right
    now, picked at random (so that parallel test processes rarely pick the same)."""
    exclude = set(exclude) | _RESERVED_PORTS
    candidates = _ports_below_ephemeral()
    for _ in range(200):
        port = random.choice(candidates)
        if port in exclude:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use (also on 0.0.0.0), or lingering in TIME_WAIT
                continue
        return port
    raise BrokerError(f"could not find a free TCP port on 127.0.0.1 in {candidates}")


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tree(root_pids: Iterable[int]) -> dict[int, tuple[str, int]]:
    """{pid: (comm, starttime)} for the given pids and all their descendants,
    except epmd (shared by every Erlang node: never ours to signal)."""
    children: dict[int, list[int]] = {}
    info: dict[int, tuple[str, str, int, int]] = {}
    for pid in _all_pids():
        st = _proc_stat(pid)
        if st is not None:
            info[pid] = st
            children.setdefault(st[2], []).append(pid)
    found: dict[int, tuple[str, int]] = {}
    todo = [p for p in root_pids if p in info]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        comm, _state, _ppid, start = info[pid][:4]
        if comm == "epmd":
            continue
        found[pid] = (comm, start)
        todo.extend(children.get(pid, ()))
    return found


def _alive(pid: int, starttime: int) -> bool:
    """The same process (pid not reused) still exists and is not a zombie."""
    st = _proc_stat(pid)
    return st is not None and st[3] == starttime and st[1] not in ("Z", "X")


def _describe(pid: int) -> str:
    st = _proc_stat(pid)
    return f"pid {pid} ({st.comm if st else 'gone'})"


def _signal_tree(tree: dict[int, tuple[str, int]], sig: int) -> None:
    for pid, (_comm, start) in tree.items():
        if _alive(pid, start):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def epmd_names(port: int = int(os.environ.get("ERL_EPMD_PORT", "4369"))) -> dict[str, int] | None:
    """Names registered with the local epmd ({name: dist port}), None if no epmd."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"\x00\x01n")  # NAMES_REQ
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    names = {}
    for line in data[4:].decode("utf-8", "replace").splitlines():
        parts = line.split()  # "name wqdtest-1-1 at port 41234"
        if len(parts) == 5 and parts[0] == "name":
            names[parts[1]] = int(parts[4])
    return names


# --------------------------------------------------------------------------


class BrokerNode:
    """A throwaway RabbitMQ node under ``base_dir`` on free loopback ports."""

    def __init__(self, base_dir: Path, extra_conf: str = "") -> None:
        self.base_dir = Path(base_dir).resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.extra_conf = extra_conf
        self.name = f"wqdtest-{os.getpid()}-{next(_counter)}"
        self.nodename = f"{self.name}@localhost"
        self.port = free_port()
        self.dist_port = free_port(exclude={self.port})
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        self.home = self.base_dir  # HOME of the node and of rabbitmqctl: holds .erlang.cookie
        self.mnesia_base = self.base_dir / "mnesia"
        self.log_base = self.base_dir / "log"
        self.console_log = self.base_dir / "console.log"
        self.conf_file = self.base_dir / "rabbitmq.conf"
        self.pid_file = self.base_dir / f"{self.name}.pid"
        # Host directories the node reads or writes (its files, TLS keys...):
        # bind-mounted into RABBITMQ_ROOT when the node runs there.
        self.shared_dirs = [self.base_dir]
        self._proc: subprocess.Popen | None = None
        self._paused = False
        self.last_start_seconds: float | None = None
        self._write_files()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<BrokerNode {self.nodename} port={self.port} {state}>"

    # ---- files and environment

    def _write_files(self) -> None:
        for d in (self.mnesia_base, self.log_base):
            d.mkdir(parents=True, exist_ok=True)
        (self.base_dir / "enabled_plugins").write_text("[].\n")
        # An empty env file: do not pick up /etc/rabbitmq/rabbitmq-env.conf
        # (on Debian it sets NODENAME=rabbit@localhost for the system broker).
        (self.base_dir / "rabbitmq-env.conf").write_text("")
        conf = [
            "# generated by tests/support/broker.py",
            f"listeners.tcp.default = 127.0.0.1:{self.port}",
            "loopback_users.guest = true",
            "log.console = false",
            "log.file.level = info",
            "",
            self.extra_conf.strip(),
            "",
        ]
        self.conf_file.write_text("\n".join(conf))
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            # written before the first start, so that the node and rabbitmqctl
            # never race to create two different cookies
            cookie.write_text(secrets.token_hex(20).upper())
            cookie.chmod(0o400)

    def env(self) -> dict[str, str]:
        """Environment for rabbitmq-server and rabbitmqctl addressing this node."""
        if RABBITMQ_ROOT is not None:  # the chroot's programs, none of the host's variables
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        else:
            env = {
                k: v for k, v in os.environ.items()
                if not k.startswith("RABBITMQ_") and k not in ("ERL_FLAGS", "ERL_AFLAGS", "ERL_ZFLAGS")
            }
        env.update(
            HOME=str(self.home),
            LANG=env.get("LANG") or os.environ.get("LANG", "C.UTF-8"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.mnesia_base),
            RABBITMQ_LOG_BASE=str(self.log_base),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base_dir / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.pid_file),
            RABBITMQ_CONFIG_FILE=str(self.conf_file),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base_dir / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.base_dir / "rabbitmq-env.conf"),
            # the distribution port listens on 0.0.0.0 unless told otherwise; the
            # schedulers sleep rather than spin when idle (+sbwt none, RabbitMQ's
            # advice for shared hosts): the suite's nodes share 2 cores with it
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=("-kernel inet_dist_use_interface {127,0,0,1} "
                                                 "+sbwt none +sbwtdcpu none +sbwtdio none"),
        )
        return env

    def command(self, *argv: str) -> list[str]:
        """The command line that runs a RabbitMQ program for this node (with
        ``env()``): directly, or in RABBITMQ_ROOT."""
        if RABBITMQ_ROOT is None:
            return list(argv)
        return in_root(list(argv), self.env(), self.shared_dirs)

    # ---- state

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused

    def _root_pids(self) -> list[int]:
        """Our rabbitmq-server wrapper (while not reaped, so its pid cannot have
        been reused) and the beam.smp of the pid file (if it is really ours)."""
        pids = []
        if self._proc is not None and self._proc.poll() is None:
            pids.append(self._proc.pid)
        try:
            beam = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            beam = 0
        if beam > 0 and self._owns(beam):
            pids.append(beam)
        return pids

    def _owns(self, pid: int) -> bool:
        """True if process ``pid`` runs with this node's RABBITMQ_NODENAME (a
        stale pid file must never make us signal someone else's process)."""
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            return False
        return f"RABBITMQ_NODENAME={self.nodename}".encode() in environ

    def beam_pid(self) -> int | None:
        for pid, (comm, _start) in _tree(self._root_pids()).items():
            if comm == "beam.smp":
                return pid
        return None

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for path in [self.console_log, self.log_base / f"{self.nodename}.log"]:
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {path} (last {len(text)} lines)")
            out.extend(text)
        return "\n".join(out) or "(no log written)"

    # ---- lifecycle

    def start(self, timeout: float = 90) -> BrokerNode:
        """Start the node; return when AMQP connections and rabbitmqctl work."""
        if self.running:
            raise BrokerError(f"{self.nodename} is already running")
        if os.environ.get("WQD_TEST_UNIT"):
            raise BrokerError("`make test-unit` runs no broker: mark a test that starts a node itself "
                              "@pytest.mark.broker (tests that ask for the broker fixture are marked already)")
        if not rabbitmq_available():
            raise BrokerError(MISSING_RABBITMQ_MESSAGE)
        for port in (self.port, self.dist_port):
            self._wait_port_free(port)
        self._write_files()
        fresh = not any(self.mnesia_base.iterdir())
        began = time.monotonic()
        deadline = began + timeout
        with open(self.console_log, "ab") as log:
            log.write(f"\n=== start {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command(str(RABBITMQ_SERVER)),
                env=self.env(),
                cwd=str(self.base_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._paused = False
        _live_nodes.add(self)
        try:
            self._wait_amqp(deadline)
            self._wait_ctl(deadline)
            if fresh and METADATA_STORE == "khepri":
                self.ctl("enable_feature_flag", "--experimental", "khepri_db")
        except BaseException:
            self.kill()
            raise
        self.last_start_seconds = time.monotonic() - began
        return self

    def _wait_port_free(self, port: int) -> None:
        """Wait until nothing accepts connections on ``port`` (in CI once, a
        port of the node killed a moment before still did); past
        PORT_FREE_SECONDS say who listens there."""
        deadline = time.monotonic() + PORT_FREE_SECONDS
        while port_open(port):
            if time.monotonic() > deadline:
                listeners = "; ".join(
                    f"socket {inode} held by " + (", ".join(_describe(pid) for pid in pids) or "no process")
                    for inode, pids in tcp_listeners(port).items()) or "no listening socket found"
                raise BrokerError(f"port {port} of {self.nodename} is already in use after "
                                  f"{PORT_FREE_SECONDS} s ({listeners})")
            time.sleep(0.1)

    def _check_alive(self, what: str) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is not None:
            raise BrokerError(
                f"rabbitmq-server {self.nodename} exited with code {code} while {what}\n"
                + self.log_tail()
            )

    def _wait_amqp(self, deadline: float) -> None:
        last = None
        while True:
            self._check_alive("starting")
            if port_open(self.port, timeout=0.5):
                try:
                    self.connection(socket_timeout=2, stack_timeout=5).close()
                    return
                except Exception as exc:  # not ready yet
                    last = exc
            if time.monotonic() > deadline:
                self._timeout(f"no AMQP connection to port {self.port} (last error: {last!r})")
            try:
                assert self._proc is not None
                self._proc.wait(timeout=0.1)  # returns early if the node dies
            except subprocess.TimeoutExpired:
                pass

    def _wait_ctl(self, deadline: float) -> None:
        last = ""
        while True:
            self._check_alive("waiting for rabbitmqctl await_startup")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._timeout(f"rabbitmqctl await_startup did not succeed: {last}")
            try:
                self.ctl("await_startup", "--timeout", str(max(1, int(remaining))),
                         timeout=remaining + 5)
                return
            except BrokerError as exc:
                last = str(exc)
                try:
                    assert self._proc is not None
                    self._proc.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    pass

    def _timeout(self, what: str) -> None:
        raise BrokerError(f"{self.nodename} did not start in time: {what}\n" + self.log_tail())

    def kill(self, timeout: float = 30) -> None:
        """SIGKILL the node's whole process tree; wait until its port is closed."""
        deadline = time.monotonic() + timeout
        # Signal until no process of the tree is left: a process forked
        # between the scan and the signal is caught by the next round, and
        # `known` keeps track of children orphaned when their parent died.
        known: dict[int, tuple[str, int]] = {}
        while True:
            known.update(_tree(self._root_pids()))
            tree = {p: v for p, v in known.items() if _alive(p, v[1])}
            if not tree:
                break
            _signal_tree(tree, signal.SIGKILL)
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=0.05)
                except subprocess.TimeoutExpired:
                    pass
            if time.monotonic() > deadline:
                raise BrokerError(f"processes of {self.nodename} survive SIGKILL: {tree}")
        if self._proc is not None:
            self._proc.wait(timeout=max(1, deadline - time.monotonic()))
        self._paused = False
        _live_nodes.discard(self)
        with contextlib.suppress(OSError):
            self.pid_file.unlink()
        self._wait_gone(deadline)

    def _wait_gone(self, deadline: float) -> None:
        """Wait until the node's ports are closed and epmd forgot the node name
        (else an immediate restart would fail with "node name in use")."""
        while True:
            names = epmd_names()
            open_ports = [port for port in (self.port, self.dist_port) if port_open(port, timeout=0.2)]
            if not open_ports and (names is None or self.name not in names):
                return
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"{self.nodename} is dead but its ports {open_ports} still accept "
                    f"connections or epmd still lists it ({names})"
                )
            time.sleep(0.02)

    def stop(self, timeout: float = 60) -> None:
        """Graceful stop (SIGTERM: the node closes connections and syncs);
        SIGKILL what is left after ``timeout``."""
        if not self.running:
            self.kill()  # reap and clean up leftovers, if any
            return
        if self._paused:
            self.resume()
        tree = _tree(self._root_pids())  # before the parents exit
        assert self._proc is not None
        # rabbitmq-server's shell wrapper traps TERM and forwards it to beam.smp,
        # which stops the node in order (same as `rabbitmqctl stop`).
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        # kill leftovers (and everything if the graceful stop timed out)
        _signal_tree(tree, signal.SIGKILL)
        self.kill()

    def restart(self, graceful: bool = False, timeout: float = 90) -> BrokerNode:
        """kill() (or stop() if graceful) then start() on the same ports and data."""
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start(timeout=timeout)

    def ensure_running(self) -> BrokerNode:
        """Resume a paused node, start a dead one (used between tests)."""
        if self._paused:
            self.resume()
        if not self.running:
            self.kill()
            self.start()
        return self

    def pause(self) -> None:
        """SIGSTOP the node (every process of its tree): TCP connections stay
        open but nothing answers, like a hung or partitioned broker."""
        _signal_tree(_tree(self._root_pids()), signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        _signal_tree(_tree(self._root_pids()), signal.SIGCONT)
        self._paused = False

    def __enter__(self) -> BrokerNode:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- rabbitmqctl

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl -n <nodename> ARGS``; return stdout, raise on failure."""
        cmd = [str(RABBITMQCTL), "-n", self.nodename, *args]
        try:
            res = subprocess.run(
                self.command(*cmd), env=self.env(), stdin=subprocess.DEVNULL, capture_output=True,
                text=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise BrokerError(f"{' '.join(cmd)} timed out after {timeout}s") from exc
        if res.returncode != 0:
            raise BrokerError(
                f"{' '.join(cmd)} failed with code {res.returncode}:\n"
                f"{res.stderr.strip()}\n{res.stdout.strip()}"
            )
        return res.stdout

    def metadata_store(self) -> str:
        """Where the node keeps its definitions (queues, bindings...):
        "khepri" (RabbitMQ 4.x, optional in 4.0) or "mnesia"."""
        answer = self.ctl("eval", "try rabbit_khepri:is_enabled() catch error:undef -> false end.")
        return "khepri" if answer.strip() == "true" else "mnesia"

    def sync_definitions(self) -> None:
        """Make the definitions the node has acknowledged survive a kill now.
        Mnesia writes its log to disk a moment after a declare-ok: a queue
        declared and killed within the same second can vanish. Khepri answers
        only once the change is in its Raft log on disk, so it needs nothing."""
        if self.metadata_store() == "mnesia":
            self.ctl("eval", "mnesia:sync_log().")

    def list_queues(self, *columns: str) -> list[dict]:
        """``rabbitmqctl list_queues`` as a list of dicts (default vhost)."""
        columns = columns or ("name", "messages_ready", "messages_unacknowledged", "consumers")
        out = self.ctl("list_queues", "-q", "--formatter", "json", *columns)
        try:
            rows = json.loads(out) if out.strip() else []
        except ValueError:  # older CLI: tab-separated, header line first
            rows = []
            for line in out.splitlines():
                parts = line.split("\t")
                if len(parts) == len(columns) and parts != list(columns):
                    rows.append({c: (int(v) if v.isdigit() else v) for c, v in zip(columns, parts)})
        return rows

    def queue_stats(self, name: str) -> dict | None:
        """{messages_ready, messages_unacknowledged, consumers} of a queue,
        None if the queue does not exist."""
        for row in self.list_queues():
            if row.get("name") == name:
                return {
                    "messages_ready": int(row["messages_ready"]),
                    "messages_unacknowledged": int(row["messages_unacknowledged"]),
                    "consumers": int(row["consumers"]),
                }
        return None

    # ---- AMQP helpers (each opens and closes its own connection)

    def connection(self, **params):
        """A pika BlockingConnection to this node (keyword args override
        pika.ConnectionParameters, e.g. heartbeat=5)."""
        import pika

        kw = dict(
            host="127.0.0.1",
            port=self.port,
            virtual_host="/",
            credentials=pika.PlainCredentials("guest", "guest"),
            connection_attempts=1,
            socket_timeout=5,
            stack_timeout=10,
            blocked_connection_timeout=30,
        )
        kw.update(params)
        return pika.BlockingConnection(pika.ConnectionParameters(**kw))

    def queue_exists(self, name: str) -> bool:
        import pika.exceptions

        with self.connection() as conn:
            try:
                conn.channel().queue_declare(name, passive=True)
                return True
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:
                    return False
                raise

    def declare_queue(self, name: str, arguments: dict | None = None, **kw) -> None:
        """Declare a durable queue (kw: exclusive, auto_delete, ...)."""
        kw.setdefault("durable", True)
        with self.connection() as conn:
            conn.channel().queue_declare(name, arguments=arguments, **kw)

    def delete_queue(self, name: str) -> None:
        """Delete a queue (no error if it does not exist)."""
        with self.connection() as conn:
            conn.channel().queue_delete(name)

    def purge_queue(self, name: str) -> int | None:
        """Purge a queue; return how many messages it dropped, None if no such queue."""
        import pika.exceptions

        with self.connection() as conn:
            try:
                return conn.channel().queue_purge(name).method.message_count
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:
                    return None
                raise

    def publish(self, queue: str, body, headers: dict | None = None,
                declare: bool = True, **properties) -> None:
        """Publish one persistent message to ``queue`` through the default
        exchange, with a publisher confirm and mandatory=True (an unroutable
        message raises). If ``declare`` and the queue does not exist yet, it is
        declared durable without arguments first; an existing queue is never
        re-declared (its arguments are whatever the daemon declared)."""
        self.publish_many(queue, [body], headers=headers, declare=declare, **properties)

    def publish_many(self, queue: str, bodies: Iterable, headers: dict | None = None,
                     declare: bool = True, **properties) -> None:
        import pika
        import pika.exceptions

        props = pika.BasicProperties(delivery_mode=2, headers=headers, **properties)
        with self.connection() as conn:
            ch = conn.channel()
            if declare:
                try:
                    ch.queue_declare(queue, passive=True)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code != 404:
                        raise
                    ch = conn.channel()
                    ch.queue_declare(queue, durable=True)
            ch.confirm_delivery()
            for body in bodies:
                if isinstance(body, str):
                    body = body.encode()
                ch.basic_publish("", queue, body, properties=props, mandatory=True)

    def get_all(self, queue: str) -> list[bytes]:
        """basic_get (and ack) every ready message of ``queue``; return the bodies."""
        return [body for body, _props in self.get_all_messages(queue)]

    def get_all_messages(self, queue: str) -> list:
        """Like get_all, but (body, pika.BasicProperties) pairs (for headers)."""
        out = []
        with self.connection() as conn:
            ch = conn.channel()
            while True:
                method, props, body = ch.basic_get(queue, auto_ack=False)
                if method is None:
                    return out
                out.append((body, props))
                ch.basic_ack(method.delivery_tag)


# --------------------------------------------------------------------------
# command line: python -m tests.support.broker serve|measure DIR


def _serve(base_dir: Path, conf_lines: list[str]) -> int:
    node = BrokerNode(base_dir, extra_conf="\n".join(conf_lines))
    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    # Handlers, not a blocked signal mask: a mask would be inherited by
    # rabbitmq-server, whose wrapper then never sees the TERM of stop().
    for sig in sigs:
        signal.signal(sig, on_signal)
    code = 0
    try:
        node.start()  # a signal here: start() kills the half-started node
        print(node.url, flush=True)
        print(f"tests.support.broker: node {node.nodename} on 127.0.0.1:{node.port} "
              f"(HOME={node.home} rabbitmqctl -n {node.nodename} ...); "
              "stop with TERM or INT", file=sys.stderr, flush=True)
        while True:
            signal.pause()
    except BrokerError as exc:
        print(f"tests.support.broker: {exc}", file=sys.stderr)
        code = 1
    except SystemExit:
        pass
    finally:
        for sig in sigs:
            signal.signal(sig, signal.SIG_IGN)
        node.stop()
    return code


def _measure(base_dir: Path, runs: int = 3) -> int:
    def timed(fn):
        t = time.monotonic()
        fn()
        return time.monotonic() - t

    results: dict[str, list[float]] = {}
    for i in range(runs):
        node = BrokerNode(base_dir / f"run{i}")
        try:
            results.setdefault("start (fresh)", []).append(timed(node.start))
            node.declare_queue("measure")
            node.publish("measure", b"x")
            t = time.monotonic()
            node.queue_stats("measure")
            results.setdefault("ctl call", []).append(time.monotonic() - t)
            results.setdefault("kill", []).append(timed(node.kill))
            results.setdefault("start (existing data)", []).append(timed(node.start))
            results.setdefault("restart (kill+start)", []).append(timed(node.restart))
            assert node.get_all("measure") == [b"x"], "message lost"
            results.setdefault("stop (graceful)", []).append(timed(node.stop))
        finally:
            node.kill()
            shutil.rmtree(base_dir / f"run{i}", ignore_errors=True)
    for what, values in results.items():
        print(f"{what:24s} mean {sum(values) / len(values):6.2f}s  "
              f"min {min(values):6.2f}s  max {max(values):6.2f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tests.support.broker", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve", help="run a throwaway node until TERM/INT; print its URL")
    p.add_argument("dir", type=Path)
    p.add_argument("--conf", action="append", default=[], help="extra rabbitmq.conf line")
    p = sub.add_parser("measure", help="time start/kill/restart/stop")
    p.add_argument("dir", type=Path)
    p.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        return _serve(args.dir, args.conf)
    return _measure(args.dir, args.runs)


if __name__ == "__main__":
    sys.exit(main())
