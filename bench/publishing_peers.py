"""The peers' side of bench/publishing.py (run by the interpreter of
.cache/bench-peers): COUNT persistent 100-byte task messages sent the way an
application sends them with Celery (apply_async, confirm_publish) or
Dramatiq (Actor.send, confirm_delivery), each waiting for its publisher
confirm as wqd.Publisher.publish does; prints the seconds they took.

    .cache/bench-peers/bin/python bench/publishing_peers.py celery|dramatiq URL QUEUE COUNT
"""

import sys
import time


def noop(body) -> None:
    """The task; never run here (only sent)."""


def celery_sender(url: str, queue: str):
    from celery import Celery

    app = Celery("bench", broker=url)
    app.conf.update(broker_transport_options={"confirm_publish": True}, task_default_queue=queue,
                    task_ignore_result=True, broker_connection_retry_on_startup=True)
    task = app.task(name="bench.noop")(noop)
    return lambda body: task.apply_async((body,))


def dramatiq_sender(url: str, queue: str):
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    dramatiq.set_broker(RabbitmqBroker(url=url, confirm_delivery=True))
    actor = dramatiq.actor(noop, actor_name="bench_noop", queue_name=queue)
    return actor.send


def main() -> None:
    system, url, queue, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    send = {"celery": celery_sender, "dramatiq": dramatiq_sender}[system](url, queue)
    body = "x" * 100
    send(body)  # connect and declare outside the timing, as wqd's rounds connect before their first message too
    began = time.perf_counter()
    for _ in range(count):
        send(body)
    print(time.perf_counter() - began)


if __name__ == "__main__":
    main()
