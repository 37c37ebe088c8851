"""wqd's own per-message work, without a broker: the consumer's real code
(consumer.py: _handle, the record writes, the keeper hand-over, the ack
call) on deliveries made up in memory, acked on a stand-in channel.

    valgrind --tool=callgrind .venv/bin/python -m bench.hot_path_steps STEP [--count 10000]

STEP: none (the loop and the set-up alone), handle (a first delivery with
no header: the common case), handle-id (the same with a message_id, which
duplicate suppression records before the ack), key, started, finished.
(STEP's total minus none's) / count is the step's cost per message in
instructions, repeatable where CPU time is not: what wqd adds to each
message, against what its transport (pika_transport.py) saves of pika's
(bench/profile_worker.py's callgrind counts show both together).
"""

import argparse
import os

from pika.spec import Basic, BasicProperties

from wqd import config, lost_attempts, reporting
from wqd.consumer import Consumer
from wqd.deduplication import FinishedRing
from wqd.quiet import QuietSwitch
from wqd.task_stats import Outcome
from wqd.worker import WorkerContext
from wqd.worker_record import WorkerRecord

STEPS = ("none", "handle", "handle-id", "key", "started", "finished")


def noop(message) -> None:
    return None


class StandInChannel:
    """Takes acks and stays open: what the consumer asks of its channel per task."""

    is_closed = False

    def basic_ack(self, delivery_tag) -> None:
        pass


def consumer() -> Consumer:
    """A worker's Consumer as the worker builds it (duplicate suppression on,
    the default), its channel a stand-in."""
    pool = config.PoolConfig("bench", "bench", "m:f")
    report_fd = os.open(os.devnull, os.O_WRONLY)
    command_fd, _ = os.pipe()  # the master's end is never written: no counts arrive
    context = WorkerContext(pool=pool, broker=config.BrokerConfig(), handler=noop, slot=1, quiet=QuietSwitch(),
                            report_fd=report_fd, command_fd=command_fd, record=WorkerRecord(),
                            lost_attempts={}, master_pid=os.getppid(), finished_ring=FinishedRing())
    made = Consumer(context, reporting.Reporter(report_fd))
    made._channel = made.router._channel = StandInChannel()
    made.keeper.lock.acquire()  # the consumer thread holds it, except around the handler
    return made


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hot_path_steps", description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--count", type=int, default=10000)
    args = parser.parse_args(argv)
    body = b"bench"
    properties = BasicProperties(delivery_mode=2, message_id="m-1" if args.step == "handle-id" else None)
    handling = consumer()
    record = WorkerRecord()
    key = lost_attempts.message_key(properties, body)
    deliveries = [Basic.Deliver(delivery_tag=tag) for tag in range(1, args.count + 1)]
    for delivery in deliveries:
        if args.step.startswith("handle"):
            handling._handle(delivery, properties, body)
        elif args.step == "key":
            lost_attempts.message_key(properties, body)
        elif args.step == "started":
            record.task_started(key)
        elif args.step == "finished":
            record.task_finished(Outcome.SUCCEEDED, 0.0001)
    if args.step.startswith("handle"):
        outcomes = handling.record.read().outcomes
        assert outcomes[Outcome.SUCCEEDED] == args.count, outcomes  # every delivery ran and was acked


if __name__ == "__main__":
    main()
