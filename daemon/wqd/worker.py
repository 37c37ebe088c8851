"""One worker process's life, from just after the fork to its exit.

Threads: the main thread waits for signals (they are blocked in every thread
and taken with sigtimedwait, so no Python signal handler ever runs in the
middle of pika code); the consumer thread runs the Consumer: the connection
and the handlers; the keeper thread serves the connection while a handler runs
long; a thread reads the master's pipe. TERM makes the consumer stop
gracefully; QUIT exits at once.
"""

import logging
import os
import signal
import threading

from setproctitle import setproctitle

from wqd import logs, reporting
from wqd.consumer import Consumer

log = logging.getLogger("wqd.worker")

# How often the main thread checks that the master is still its parent.
PARENT_CHECK_INTERVAL = 1.0
# The consumer thread sends this to the main thread when it is done, ending the wait at once.
IO_THREAD_DONE = signal.SIGUSR1
WAITED_SIGNALS = {signal.SIGTERM, signal.SIGQUIT, IO_THREAD_DONE}


def run(pool, broker, handler, slot: int, report_fd: int, command_fd: int, record, lost_attempts: dict,
        master_pid: int) -> int:
    """Run the worker; return its exit code (the caller os._exit()s with it)."""
    name = f"{pool.name}[{slot}]"
    setproctitle(f"wqd: worker {name}")
    logs.set_process_name(f"worker {name}")
    # children.fork() reset the master's signal handlers and asked for SIGTERM
    # when the master dies. Blocked before any thread starts, so every thread
    # inherits the mask and only sigtimedwait in the main thread takes these.
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED_SIGNALS)

    lost = reporting.LostAttempts(command_fd, lost_attempts)
    consumer = Consumer(pool, broker, handler, name, slot, reporting.Reporter(report_fd), record, lost)
    exit_code = []
    main_thread = threading.main_thread().ident

    def consume() -> None:
        try:
            exit_code.append(consumer.run())
        finally:
            signal.pthread_kill(main_thread, IO_THREAD_DONE)

    consumer_thread = threading.Thread(target=consume, name="consumer", daemon=True)
    consumer_thread.start()
    while consumer_thread.is_alive():
        signum = signal.sigtimedwait(WAITED_SIGNALS, PARENT_CHECK_INTERVAL)
        signo = signum.si_signo if signum else None
        if signo == signal.SIGQUIT:
            log.info("Fast stop (SIGQUIT): exiting now; unacked messages return to the queue.")
            return 0
        if signo == signal.SIGTERM:
            consumer.request_stop("SIGTERM")
        elif signo is None and os.getppid() != master_pid:
            consumer.request_stop("the master process died")
    consumer_thread.join()
    return exit_code[0] if exit_code else 1
