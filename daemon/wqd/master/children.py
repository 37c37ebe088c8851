"""Forking the master's children (workers, the queue monitor, the reload's
loading child), the pipes they talk to the master over, and the setup every
child does first: its own signal handling, and death with the master."""

import ctypes
import errno
import gc
import logging
import os
import signal
import sys

log = logging.getLogger("wqd.master")

PR_SET_PDEATHSIG = 1
# The master's commands (stop, reload, scale, quiet). A terminal's Ctrl-C or
# Ctrl-Z, a `kill` of the whole process group, or `systemctl kill`, delivers
# them to every child too: the master decides for all, so a child ignores them
# (SIGTSTP, SIGTTIN and SIGTTOU would by default stop it; a worker takes
# SIGTSTP with sigtimedwait, which a blocked signal reaches even when ignored).
MASTER_COMMANDS = (signal.SIGINT, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGTSTP)


def fork(child_main, description: str) -> int:
    """Fork; the child sets itself up, runs ``child_main()`` and exits with the code it returns.

    The child never returns into the master's code, whatever happens in it.
    """
    parent = os.getpid()
    sys.stdout.flush()  # or the child would print the master's buffered output again
    sys.stderr.flush()
    # Everything the child inherits goes to the collector's permanent
    # generation: the child's collections never walk (and so never write to)
    # the master's objects, whose pages stay shared copy-on-write. The master
    # thaws its own at once, so its garbage stays collectable.
    gc.freeze()
    pid = os.fork()
    if pid != 0:
        gc.unfreeze()
        return pid
    code = 1
    try:
        if _set_up_child(parent):
            code = child_main()
        else:
            code = 0  # the master died before prctl took effect: nothing to do
    except SystemExit as exc:  # sys.exit() in user code, a handler module's import say: exit as asked
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        log.warning("%s called sys.exit(%.200r).", description, exc.code)
    except BaseException:
        log.exception("%s failed.", description)
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def fork_with_pipes(child_main, description: str, close_inherited, command_pipe: bool = False):
    """Fork a child that writes to the master over a pipe and, with
    ``command_pipe``, reads from it over another. In the child,
    ``close_inherited()`` lets go of the master's descriptors, then
    ``child_main(report_fd, command_fd)`` runs (command_fd None without the
    command pipe). Returns (pid, the report pipe's read end, the command
    pipe's write end or None), both non-blocking: the master never waits on a child."""
    report_read, report_write = os.pipe()
    command_read, command_write = os.pipe() if command_pipe else (None, None)

    def in_child() -> int:
        os.close(report_read)
        if command_pipe:
            os.close(command_write)
        close_inherited()
        return child_main(report_write, command_read)

    pid = fork(in_child, description)
    os.close(report_write)
    os.set_blocking(report_read, False)
    if command_pipe:
        os.close(command_read)
        os.set_blocking(command_write, False)
    return pid, report_read, command_write


def drain(fd: int) -> None:
    """Read a non-blocking pipe empty (the master's signal wakeup pipe)."""
    try:
        while os.read(fd, 4096):
            pass
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise


def _set_up_child(parent: int) -> bool:
    """Start from default signal handling, not the master's, and die with the
    master. Return False when the master is already gone."""
    # First: a signal must no longer write to the master's wakeup pipe, which
    # the child is about to close (its fd number could be reused).
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        if callable(signal.getsignal(signum)):  # a Python handler: the master's
            signal.signal(signum, signal.SIG_DFL)
    for signum in MASTER_COMMANDS:
        signal.signal(signum, signal.SIG_IGN)
    _die_with_parent()
    return os.getppid() == parent


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM when the master dies (even by SIGKILL)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the workers' parent check and the monitor's closed pipe cover it
