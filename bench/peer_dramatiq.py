"""The Dramatiq actor `make bench PEERS=1` runs (in .cache/bench-peers, with bench/
on sys.path): one no-op actor on $WQD_BENCH_QUEUE, settings equal to wqd's.

RabbitmqBroker; bench/run.py starts `dramatiq --processes N --threads 1` with
dramatiq_queue_prefetch=1 (Dramatiq's prefetch is otherwise twice the
threads), so each process holds one message at a time; Dramatiq acks after
the actor returns (its default). bench/peers.py publishes the messages
itself, in Dramatiq's JSON encoding, persistent.
"""

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from latency_record import record

dramatiq.set_broker(RabbitmqBroker(url=os.environ["WQD_BENCH_AMQP_URL"]))


@dramatiq.actor(actor_name="bench_noop", queue_name=os.environ["WQD_BENCH_QUEUE"])
def noop(published=None):
    if published is not None:
        record(published)
