"""A worker's Consumer without a broker: built as the worker builds it, its
channels stand-ins that record what the consumer asks of them. For the fast
in-process tests of the consumer (tests/test_consumer_in_process.py) and for
bench/hot_path_steps.py, which counts the instructions of the real hot path."""

import os

from wqd import config
from wqd.ipc import reporting
from wqd.ipc.quiet import QuietSwitch
from wqd.ipc.worker_record import WorkerRecord
from wqd.redelivery.deduplication import FinishedRing
from wqd.worker.consumer import Consumer
from wqd.worker.main import WorkerContext

# The frame size pika negotiates with RabbitMQ by default (a copy's headers must fit one).
FRAME_MAX = 131072


class StandInChannel:
    """Takes acks, rejects, declares and publishes, and stays open; ``calls``
    lists them, unless ``recording`` is off (the benchmark's hot path)."""

    is_closed = False

    def __init__(self, recording: bool = True):
        self.calls = [] if recording else None

    def _note(self, *call) -> None:
        if self.calls is not None:
            self.calls.append(call)

    def basic_ack(self, delivery_tag) -> None:
        self._note("ack", delivery_tag)

    def basic_reject(self, delivery_tag, requeue=True) -> None:
        self._note("reject", delivery_tag, requeue)

    def queue_declare(self, queue, durable=False, arguments=None, passive=False) -> None:
        self._note("declare", queue)

    def basic_publish(self, exchange, routing_key, body, properties=None, mandatory=False) -> None:
        self._note("publish", routing_key, body, properties)


def consumer(handler, pool=None, recording: bool = True) -> Consumer:
    """A worker's Consumer as the worker builds it (duplicate suppression on,
    the default), running ``handler``; its channels stand-ins."""
    pool = pool or config.PoolConfig("stand-in", "stand-in", "m:f", dead_letter_queue="stand-in.dead")
    report_fd = os.open(os.devnull, os.O_WRONLY)
    command_fd, _ = os.pipe()  # the master's end is never written: no counts arrive
    context = WorkerContext(pool=pool, broker=config.BrokerConfig(), handler=handler, slot=1, quiet=QuietSwitch(),
                            report_fd=report_fd, command_fd=command_fd, record=WorkerRecord(),
                            lost_attempts={}, master_pid=os.getppid(), finished_ring=FinishedRing())
    made = Consumer(context, reporting.Reporter(report_fd))
    made._channel = made.router._channel = StandInChannel(recording)
    made.router._publish_channel = StandInChannel(recording)
    made.router._frame_max = FRAME_MAX
    made.keeper.lock.acquire()  # the consumer thread holds it, except around the handler
    return made
