"""What the master's children that are not workers (the queue monitor, the
outbox relay) share: one process with a report pipe, started when wanted
(after its RespawnBackoff), its reports read only when the pipe is readable,
reaped and started again, replaced after a reload (not a failure), stopped
and closed with the master. Every method returns at once but ``close``,
which the master calls as it exits. A subclass says what runs in the child
(``child_main``), what its reports mean (``on_report``) and what it forgets
when the child is gone (``forget``)."""

import logging
import os
import signal
import time

from wqd import exits
from wqd.ipc import reporting
from wqd.master import children
from wqd.master.supervision import RespawnBackoff

log = logging.getLogger("wqd.master")

# A child that exits sooner than this after its start is started again after a growing delay.
STABLE_SECONDS = 60.0


class ServiceChild:
    title = "Child"  # in log lines and the fork's description
    logger = log  # where its start and unasked exits are logged
    close_grace = 0.0  # seconds the master's exit lets it finish (SIGTERM first), 0: SIGKILL at once

    def __init__(self):
        self.pid = None
        self._reader = None
        self._started_at = 0.0
        self._respawn = RespawnBackoff(STABLE_SECONDS)
        self._replacing = False  # asked to exit for a reload: not a failure
        self._stopped = False

    # -- what a subclass says

    def wanted(self) -> bool:
        """Whether a child should run (the outbox relay: only with an outbox section)."""
        return True

    def child_main(self, report_fd: int) -> int:
        raise NotImplementedError

    def on_report(self, event: str, fields: dict) -> None:
        raise NotImplementedError

    def forget(self) -> None:
        """What the master knew from a child that is gone or being replaced."""

    def died(self, status: int) -> None:
        """The child exited unasked (it is started again after its backoff)."""

    # -- the master's loop

    def tick(self, now: float, close_inherited) -> None:
        """Start the child when there is none. ``close_inherited()`` runs in the
        new child to close what it inherited from the master."""
        if self.wanted() and self.pid is None and not self._stopped and self._respawn.may_start(now):
            self.pid, read_fd, _ = children.fork_with_pipes(lambda report_fd, _: self.child_main(report_fd),
                                                            self.title, close_inherited)
            self._reader = reporting.EventReader(read_fd)
            self._started_at = time.monotonic()
            self.logger.debug("%s started (pid %d).", self.title, self.pid)

    def fileno(self):
        """The pipe to select() on for reading, or None."""
        return self._reader.fd if self._reader else None

    def read(self) -> None:
        """The pipe is readable: take the child's reports (never blocks)."""
        if self._reader is None:
            return
        events, eof = self._reader.read()
        for event, fields in events:
            self.on_report(event, fields)
        if eof:
            self._close_reader()

    def reaped(self, pid: int, status: int) -> bool:
        """The master reaped a child that is not a worker: True if it was this
        one (started again soon; at once after a reload)."""
        if pid is None or pid != self.pid:
            return False
        self.read()
        self._close_reader()
        self.pid = None
        self.forget()
        if self._stopped:
            return True
        if self._replacing:
            self._replacing = False
            return True
        now = time.monotonic()
        delay = self._respawn.exited(now - self._started_at, now)
        self.died(status)
        self.logger.warning("%s (pid %d) %s; restarting it in %.0f s.", self.title, pid, exits.describe(status), delay)
        return True

    def replace(self) -> None:
        """After a reload that changes what the child does: end it (reaped as
        usual, not counted as a failure) and start another at once."""
        self.forget()
        if self.pid is not None:
            self._replacing = True
            self._signal(signal.SIGTERM)
        self._respawn.reset()

    def stop(self) -> None:
        """The master stops: end the child, do not start another."""
        self._stopped = True
        self._signal(signal.SIGTERM)

    def close(self) -> None:
        """The master exits: the child must not outlive it (close_grace to finish, then SIGKILL)."""
        self._stopped = True
        if self.pid is not None:
            self._signal(signal.SIGTERM if self.close_grace else signal.SIGKILL)
            deadline = time.monotonic() + self.close_grace
            try:
                while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                    if time.monotonic() >= deadline:
                        self._signal(signal.SIGKILL)
                        os.waitpid(self.pid, 0)
                        break
                    time.sleep(0.05)
            except ChildProcessError:
                pass
            self.pid = None
        self._close_reader()

    def close_in_child(self) -> None:
        """In any process the master forks: let go of the pipe."""
        self._close_reader()

    def _signal(self, signum: int) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass  # already dead; the master reaps it

    def _close_reader(self) -> None:
        if self._reader is not None:
            os.close(self._reader.fd)
            self._reader = None
