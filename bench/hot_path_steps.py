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

from pika.spec import Basic, BasicProperties

from tests.support.stand_in import consumer
from wqd.ipc.task_stats import Outcome
from wqd.ipc.worker_record import WorkerRecord
from wqd.redelivery import lost_attempts

STEPS = ("none", "handle", "handle-id", "key", "started", "finished")


def noop(message) -> None:
    return None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hot_path_steps", description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--count", type=int, default=10000)
    args = parser.parse_args(argv)
    body = b"bench"
    properties = BasicProperties(delivery_mode=2, message_id="m-1" if args.step == "handle-id" else None)
    handling = consumer(noop, recording=False)
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
