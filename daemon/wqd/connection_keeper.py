"""Serves the worker's AMQP connection while the consumer thread runs a handler.

The consumer thread receives a message, runs its handler and acks it, all on
one thread, so a fast task costs no thread hand-off (measured: the hand-off to
a handler thread and back cost about 55 us of CPU and 50 us of latency per
message, more than the rest of wqd together). pika's BlockingConnection is not
thread-safe, so a lock guards it: the consumer thread holds it except while a
handler runs. When a handler has run for RELIEF_AFTER, this keeper thread takes
the lock and processes the connection's I/O (heartbeats, a broker's close,
timers) until the handler returns; so a long task never starves heartbeats.
"""

import threading
import time

import pika.exceptions

# How long a handler runs before the keeper serves the connection; also how
# often the keeper looks. Far below the shortest heartbeat send interval (0.5 s).
RELIEF_AFTER = 0.1
# Longest single wait on the connection while serving; a finished handler ends it at once.
SERVE_SLICE = 1.0


class ConnectionKeeper:
    """Use as ``with keeper:`` around code that must not hold the connection
    (a handler); the consumer thread holds ``keeper.lock`` everywhere else."""

    def __init__(self):
        self.lock = threading.Lock()
        self.connection = None  # set by the consumer thread, under the lock
        self.error = None       # what serving the connection raised: the consumer thread's to handle
        self._run = None        # the number of the handler run in progress; None between runs
        self._runs = 0
        self._started = 0.0     # monotonic time the run in progress started
        self._served = None     # the run the keeper last served (it serves a run at most once)
        self._serving = False
        self._thread = threading.Thread(target=self._keep, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def __enter__(self):
        self._runs += 1
        self._started = time.monotonic()
        self._run = self._runs
        self.lock.release()
        return self

    def __exit__(self, *exc_info):
        self._run = None
        if self._serving:  # the keeper set this before checking _run: one of us sees the other
            self.interrupt()
        self.lock.acquire()
        return False

    def take_error(self):
        error, self.error = self.error, None
        return error

    def interrupt(self) -> None:
        """End the wait on the connection in progress, whichever thread waits (thread-safe)."""
        connection = self.connection
        try:
            connection.add_callback_threadsafe(_nothing)
        except (AttributeError, pika.exceptions.AMQPError):
            pass  # no open connection: nobody waits on it

    def _keep(self) -> None:
        while True:
            run = self._run
            if run is None or run == self._served:
                time.sleep(RELIEF_AFTER)
                continue
            wait = self._started + RELIEF_AFTER - time.monotonic()
            if wait > 0:
                time.sleep(wait)
                continue
            self._served = run
            self._serve(run)

    def _serve(self, run: int) -> None:
        with self.lock:
            self._serving = True
            try:
                while self._run == run and self.error is None:
                    connection = self.connection
                    if connection is None or not connection.is_open:
                        return
                    connection.process_data_events(time_limit=SERVE_SLICE)
            except Exception as exc:  # the connection's or a callback's: the consumer thread acts on it
                self.error = exc
            finally:
                self._serving = False


def _nothing() -> None:
    """A callback that only ends a wait on the connection."""
