"""One worker process's life, from just after the fork to its exit.

Threads: the main thread waits for signals (they are blocked in every thread
and taken with sigtimedwait, so no Python signal handler ever runs in the
middle of pika code); the consumer thread runs the Consumer: the connection
and the handlers; the keeper thread serves the connection while a handler runs
long; a thread reads the master's pipe. The main thread also stamps the
record at every turn of its wait, so the master sees that the process still
runs (stalls.py). TERM makes the consumer stop
gracefully; QUIT exits at once; TSTP and CONT (quiet and resume, from the
master) make it look at the master's quiet switch.
"""

import dataclasses
import logging
import os
import signal
import threading
import time
from typing import Callable, Optional

from setproctitle import setproctitle

from wqd import logs
from wqd.config import BrokerConfig, PoolConfig
from wqd.errors import ConfigError, bounded
from wqd.handlers import code_version
from wqd.handlers import loading as handlers
from wqd.ipc import reporting
from wqd.ipc.quiet import QuietSwitch
from wqd.ipc.worker_record import WorkerRecord
from wqd.redelivery.deduplication import FinishedRing
from wqd.worker.consumer import Consumer

log = logging.getLogger("wqd.worker")

# How often the main thread checks that the master is still its parent, and
# at least how often it stamps its record as alive (stalls.py counts on it).
PARENT_CHECK_INTERVAL = 1.0
# The consumer thread sends this to the main thread when it is done, ending the wait at once.
IO_THREAD_DONE = signal.SIGUSR1
WAITED_SIGNALS = {signal.SIGTERM, signal.SIGQUIT, IO_THREAD_DONE, signal.SIGTSTP, signal.SIGCONT}


@dataclasses.dataclass(frozen=True)
class WorkerContext:
    """What the master hands a worker at its fork."""

    pool: PoolConfig
    broker: BrokerConfig
    handler: Optional[Callable]  # None: a pool from a reload, whose handler this worker imports
    slot: int  # 1..workers within the pool; a replacement takes its predecessor's slot
    quiet: QuietSwitch  # the master's: on, the worker finishes its task and stops consuming
    report_fd: int  # worker -> master: events (reporting.py)
    command_fd: int  # master -> worker: attempts lost with a worker (lost_attempts.py)
    record: WorkerRecord  # shared memory: the running task, the totals
    lost_attempts: dict  # the master's counts of lost attempts at the fork
    master_pid: int
    graceful_timeout: float = 30.0  # shutdown.graceful_timeout: an orphan's deadline to finish its task
    tracing: bool = False  # tracing.enabled: a span per task (tracing.py)
    finished_ring: Optional[FinishedRing] = None  # shared memory: messages finished; None: no deduplication
    config_path: str = ""  # named in an import error
    preloaded: tuple = ()  # the master's handler modules: forgotten before importing from disk

    @property
    def name(self) -> str:
        return f"{self.pool.name}[{self.slot}]"


def run(context: WorkerContext) -> int:
    """Run the worker; return its exit code (the caller os._exit()s with it)."""
    name = context.name
    context.record.stamp_alive()  # from here on the master watches for stalls
    setproctitle(f"wqd: worker {name}")
    logs.set_process_name(f"worker {name}")
    # children.fork() reset the master's signal handlers and asked for SIGTERM
    # when the master dies. Blocked before any thread starts, so every thread
    # inherits the mask and only sigtimedwait in the main thread takes these.
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED_SIGNALS)

    reporter = reporting.Reporter(context.report_fd)
    if context.handler is None:
        handler = _import_handler(context, reporter)
        if handler is None:
            return os.EX_CONFIG
        context = dataclasses.replace(context, handler=handler)
    consumer = Consumer(context, reporter)
    exit_code = []
    main_thread = threading.main_thread().ident

    def consume() -> None:
        try:
            consumer.run()
            exit_code.append(0)
        except ConfigError as exc:  # the queue exists with other arguments: do not restart
            log.error("%s", exc)
            reporter.send(reporting.FATAL, error=str(exc))
            exit_code.append(os.EX_CONFIG)
        finally:
            signal.pthread_kill(main_thread, IO_THREAD_DONE)

    consumer.set_quiet(context.quiet.on)  # a worker forked while quiet starts quiet
    consumer_thread = threading.Thread(target=consume, name="consumer", daemon=True)
    consumer_thread.start()
    orphaned_at = None  # monotonic time the master was found gone
    while consumer_thread.is_alive():
        context.record.stamp_alive()
        signum = signal.sigtimedwait(WAITED_SIGNALS, PARENT_CHECK_INTERVAL)
        signo = signum.si_signo if signum else None
        consumer.set_quiet(context.quiet.on)  # TSTP and CONT only wake this wait: the switch says which
        if signo == signal.SIGQUIT:
            log.info("Fast stop (SIGQUIT): exiting now; unacked messages return to the queue.")
            return 0
        if signo == signal.SIGTERM:
            consumer.request_stop("SIGTERM")
        if orphaned_at is None and os.getppid() != context.master_pid:
            orphaned_at = time.monotonic()
            consumer.request_stop("the master process died")
        if orphaned_at is not None and _orphan_must_exit(context, orphaned_at):
            # Nobody else will kill this worker: enforce the master's limits
            # here. Exiting closes the connection; the broker requeues the task.
            log.warning("Exiting without finishing the current task: the master died and the task outlived "
                        "its time_limit or shutdown.graceful_timeout; the broker requeues it.")
            return 1
    consumer_thread.join()
    return exit_code[0] if exit_code else 1


def _import_handler(context: WorkerContext, reporter):
    """The handler of a pool the master holds none for (a pool from a reload),
    imported from disk after forgetting the master's copies of the handler
    modules. On failure the master is told the pool has a configuration error
    and None is returned (the worker exits EX_CONFIG)."""
    try:
        code_version.forget(context.preloaded)
        return handlers.load(context.pool)
    except BaseException as exc:  # any import-time failure of user code (sys.exit too) is a configuration error
        error = bounded(f"{context.config_path}: pool {context.pool.name!r}: cannot import handler "
                        f"{context.pool.handler!r}: {type(exc).__name__}: {exc}")
    log.error("%s", error)
    reporter.send(reporting.FATAL, error=error)
    return None


def _orphan_must_exit(context: WorkerContext, orphaned_at: float) -> bool:
    """Whether a worker whose master died is past a deadline the master would
    have enforced: graceful_timeout since the master's death, or the pool's
    time_limit on the running task."""
    now = time.monotonic()
    if now - orphaned_at >= context.graceful_timeout:
        return True
    limit = context.pool.time_limit
    return bool(limit) and context.record.read().past_time_limit(limit, now)
