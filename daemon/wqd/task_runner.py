"""The worker's handler thread: one long-lived thread that runs handlers.

Handlers run off the connection's I/O thread so that a long task never
starves AMQP heartbeats; the I/O thread is told about each finished task
through ``on_finished``, which must be thread-safe.
"""

import queue
import threading
import time


class Task:
    __slots__ = ("generation", "delivery_tag", "message", "lost_total", "duration", "error", "route_failures")

    def __init__(self, generation, delivery_tag, message, lost_total=0):
        self.generation = generation
        self.delivery_tag = delivery_tag
        self.message = message
        self.lost_total = lost_total  # the master's count of attempts lost with a worker
        self.duration = 0.0
        self.error = None
        self.route_failures = 0  # republishes (retry or dead letter) the broker refused


class TaskRunner:
    def __init__(self, handler, on_finished):
        self._handler = handler
        self._on_finished = on_finished
        self._pending = queue.SimpleQueue()
        self.current = None  # the task whose handler is running
        self._thread = threading.Thread(target=self._run, name="handler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, task: Task) -> None:
        self._pending.put(task)

    def take_pending(self) -> list:
        """Withdraw tasks not yet started (they are to be returned to the queue)."""
        taken = []
        while True:
            try:
                taken.append(self._pending.get_nowait())
            except queue.Empty:
                return taken

    def _run(self) -> None:
        while True:
            task = self._pending.get()
            self.current = task
            started = time.perf_counter()
            try:
                self._handler(task.message)
            except BaseException as exc:  # a handler's failure, whatever it raised, is the task's
                task.error = exc
            task.duration = time.perf_counter() - started
            self._on_finished(task)
            self.current = None
