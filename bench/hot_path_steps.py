"""wqd's own per-message steps in a loop, without a broker: what they cost in
instructions, next to an empty loop.

    valgrind --tool=callgrind .venv/bin/python -m bench.hot_path_steps STEP [--count 10000]

STEP: none (the loop and the imports alone), all (every step a worker takes
per message besides pika's: consumer.py _task, _handle and _settle), key,
attempt, started, finished. (STEP's total minus none's) / count is the
step's cost per message; `all` matches the difference between wqd's
consumer and the bare one in bench/profile_worker.py's callgrind counts.
"""

import argparse
import time

from pika.spec import BasicProperties

from wqd import amqp, lost_attempts
from wqd.connection_keeper import ConnectionKeeper
from wqd.message import Message
from wqd.routing import Task
from wqd.task_stats import Outcome
from wqd.worker_record import WorkerRecord

STEPS = ("none", "all", "key", "attempt", "started", "finished")


def noop(message) -> None:
    return None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hot_path_steps", description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--count", type=int, default=10000)
    args = parser.parse_args(argv)
    properties, body = BasicProperties(delivery_mode=2), b"bench"
    record, keeper = WorkerRecord(), ConnectionKeeper()
    keeper.lock.acquire()  # the consumer thread holds it, except around the handler
    counts = lost_attempts.WorkerCounts.__new__(lost_attempts.WorkerCounts)  # no master link: never asked
    key = lost_attempts.message_key(properties, body)
    for _ in range(args.count):
        if args.step == "all":
            key = lost_attempts.message_key(properties, body)
            attempt, lost = counts.attempt(properties.headers, key, False, 4, delivery_count=False)
            task = Task(1, Message(body, properties, False, attempt, "queue", "pool", "pool[1]"), key, lost)
            record.task_started(task.key)
            with keeper:
                started = time.perf_counter()
                noop(task.message)
                task.duration = time.perf_counter() - started
            keeper.take_error() or amqp.broker_closed(None)
            record.task_finished(Outcome.SUCCEEDED, task.duration)
        elif args.step == "key":
            lost_attempts.message_key(properties, body)
        elif args.step == "attempt":
            counts.attempt(properties.headers, key, False, 4, delivery_count=False)
        elif args.step == "started":
            record.task_started(key)
        elif args.step == "finished":
            record.task_finished(Outcome.SUCCEEDED, 0.0001)


if __name__ == "__main__":
    main()
