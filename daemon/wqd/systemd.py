"""sd_notify: tell systemd about readiness, reloads, stops and liveness.

The protocol is one datagram per notification to $NOTIFY_SOCKET (a path, or
an abstract socket when it starts with "@"); without that variable every call
is a no-op, so wqd runs the same outside systemd.
"""

import os
import socket


class Notifier:
    def __init__(self, environ=os.environ):
        address = environ.get("NOTIFY_SOCKET")
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address
        watchdog_usec = environ.get("WATCHDOG_USEC")
        watchdog_pid = environ.get("WATCHDOG_PID")
        self.watchdog_interval = None
        if watchdog_usec and (not watchdog_pid or int(watchdog_pid) == os.getpid()):
            self.watchdog_interval = int(watchdog_usec) / 1_000_000 / 2
        self._socket = None
        if self.address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.set_inheritable(False)

    def notify(self, *fields: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            pass  # systemd went away or is restarting; nothing useful to do
