"""Serves the worker's AMQP connection while the consumer thread runs a handler.

The consumer thread receives a message, runs its handler and acks it, all on
one thread, so a fast task costs no thread hand-off (measured: the hand-off to
a handler thread and back cost about 55 us of CPU and 50 us of latency per
message, more than the rest of wqd together). pika's BlockingConnection is not
thread-safe, so a lock guards it: the consumer thread holds it except while a
handler runs. The keeper thread looks every LOOK_INTERVAL; when it finds the
same handler run as at its last look, it takes the lock and processes the
connection's I/O (heartbeats, a broker's close, timers) until the handler
returns; so a long task never starves heartbeats, and a short one never
meets the keeper.
"""

import threading
import time

import pika.exceptions

# How often the keeper looks; a handler is relieved 1-2 intervals after its
# start: within the shortest heartbeat send interval (0.5 s, heartbeat 1 s),
# and wake-ups cheap enough for an idle worker (4 a second).
LOOK_INTERVAL = 0.25
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
        self._serving = False
        self._thread = threading.Thread(target=self._keep, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def __enter__(self):
        self._runs += 1
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
        last_seen = None
        while True:
            time.sleep(LOOK_INTERVAL)
            run = self._run
            if run is not None and run == last_seen:  # it has run for at least LOOK_INTERVAL
                self._serve(run)
            last_seen = run

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
