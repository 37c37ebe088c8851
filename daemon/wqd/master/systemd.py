"""sd_notify: tell systemd about readiness, reloads, stops and liveness.

The protocol is one datagram per notification to $NOTIFY_SOCKET (a path, or
an abstract socket when it starts with "@"), with newline-separated
``KEY=VALUE`` fields; without that variable every call is a no-op, so wqd runs
the same outside systemd. Like sd_notify(unset_environment=1), the variables
are taken out of the environment: workers and the programs handlers start
must not speak for the service (with NotifyAccess=main, systemd would log a
warning for every message they sent).
"""

import os
import socket
import time

ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
# While workers drain during a stop, the master keeps asking systemd for this
# much more time (EXTEND_TIMEOUT_USEC), at most once a second, so a
# graceful_timeout longer than the unit's TimeoutStopSec is honoured, and a
# master that hangs is still killed.
STOP_EXTEND_SECONDS = 10.0


class Notifier:
    def __init__(self, environ=os.environ):
        address, watchdog_usec, watchdog_pid = (environ.pop(name, None) for name in ENVIRONMENT)
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        elif address and not address.startswith("/"):
            address = None  # e.g. "vsock:": not a socket this process can use
        self.address = address
        # systemd recommends pinging at half the timeout; WATCHDOG_PID says
        # whether the watchdog is meant for this process or for a parent of it.
        self.watchdog_interval = None
        if _positive_int(watchdog_usec) and (not watchdog_pid or watchdog_pid == str(os.getpid())):
            self.watchdog_interval = int(watchdog_usec) / 1_000_000 / 2
        self._socket = None
        self.last_watchdog = 0.0
        self._last_status = ""
        self._last_extend = 0.0
        if self.address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def notify(self, *fields: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            pass  # systemd went away or is restarting; nothing useful to do

    def reloading(self) -> None:
        """RELOADING=1 with the time it began, which Type=notify-reload (systemd
        253+) requires; READY=1 must follow once the reload is done."""
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def status(self, line) -> None:
        """STATUS=, when it changed; ``line()`` makes it (only when systemd listens)."""
        if self._socket is not None and (text := line()) != self._last_status:
            self._last_status = text
            self.notify("STATUS=" + text)

    def stopping(self, status: str) -> None:
        """While workers finish their tasks: keep systemd's stop timeout from
        firing for STOP_EXTEND_SECONDS more, and say why. systemd applies it
        only once the unit's own TimeoutStopSec= has passed, and only until
        STOP_EXTEND_SECONDS after the last such message: the master bounds the
        stop itself (graceful_timeout, then SIGKILL), and a hung master is
        still killed."""
        now = time.monotonic()
        if now - self._last_extend >= 1.0:
            self._last_extend = now
            self.notify(f"EXTEND_TIMEOUT_USEC={int(STOP_EXTEND_SECONDS * 1_000_000)}", f"STATUS={status}")

    def watchdog(self) -> None:
        """WATCHDOG=1 when it is due."""
        if self.watchdog_interval and time.monotonic() - self.last_watchdog >= self.watchdog_interval:
            self.last_watchdog = time.monotonic()
            self.notify("WATCHDOG=1")

    def close(self) -> None:
        """In a forked worker: let go of the master's socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _positive_int(text) -> bool:
    return bool(text) and text.isdigit() and int(text) > 0
