"""The outbox under faults (issue 27): transactions committed and rolled back
while the relay, the master, the broker and the database are killed or
restarted; every committed row's task must run exactly once, no rolled-back
row's ever. Two wqd masters relaying one table publish no row twice."""

import collections
import threading

import psycopg

from tests.support.daemon import pool
from tests.support.outbox import kill_relay, rows_left, with_outbox
from tests.support.waiting import wait_for
from wqd.outbox import enqueue

TRANSACTIONS = 500
ROLLED_BACK_EVERY = 5  # a fifth of the transactions roll back


class Producer(threading.Thread):
    """The application: one task per transaction, every fifth rolled back.
    ``hold()`` lets its transaction in progress finish and holds the next
    (the test restarts the database only between transactions, so no commit's
    outcome is unknown)."""

    def __init__(self, dsn: str, queue: str):
        super().__init__(daemon=True)
        self.dsn, self.queue = dsn, queue
        self.committed, self.rolled_back = [], []
        self.error = None
        self._go = threading.Event()
        self._go.set()
        self._between = threading.Lock()

    def run(self) -> None:
        try:
            connection = psycopg.connect(self.dsn)
            for task_id in range(TRANSACTIONS):
                self._go.wait(120)
                with self._between:
                    try:
                        enqueue(connection, self.queue, {"id": task_id})
                    except psycopg.OperationalError:  # the database restarted since: nothing was committed
                        connection = psycopg.connect(self.dsn)
                        enqueue(connection, self.queue, {"id": task_id})
                    if task_id % ROLLED_BACK_EVERY == ROLLED_BACK_EVERY - 1:
                        connection.rollback()
                        self.rolled_back.append(task_id)
                    else:
                        connection.commit()
                        self.committed.append(task_id)
                if task_id % 10 == 9:
                    threading.Event().wait(0.1)  # about 50 transactions a second: the faults land mid-run
            connection.close()
        except Exception as exc:  # noqa: BLE001 - shown by the test
            self.error = exc

    def done(self, count: int) -> bool:
        return len(self.committed) + len(self.rolled_back) >= count or not self.is_alive()

    def hold(self) -> None:
        self._go.clear()
        with self._between:
            pass

    def resume(self) -> None:
        self._go.set()


def test_every_committed_row_runs_once_through_relay_master_broker_and_database_faults(
        make_wqd, queue_name, broker, postgres, outbox_dsn):
    wqd = with_outbox(make_wqd([pool(queue_name, workers=3)]), outbox_dsn, batch=50).start()
    producer = Producer(outbox_dsn, queue_name)
    producer.start()
    progress = lambda count: wait_for(lambda: producer.done(count), 60, message="the producer is stuck")  # noqa: E731

    progress(80)
    kill_relay(wqd)  # 1. the relay, mid-run

    progress(160)
    broker.kill()  # 2. the broker, SIGKILLed and started again
    broker.start()

    progress(260)  # 3. the master (and with it its workers and relay), SIGKILLed and started again
    producer.hold()
    wait_for(lambda: rows_left(outbox_dsn) == 0, 60, message=lambda: wqd.logs())
    wqd.proc.kill()
    wqd.proc.wait(30)
    wait_for(lambda: not wqd.all_worker_pids(), 30, message="the workers outlived their master")
    wqd.start()
    producer.resume()

    progress(380)  # 4. the database, restarted while the relay works
    producer.hold()
    postgres.restart()
    producer.resume()

    producer.join(120)
    assert producer.error is None and len(producer.committed) == TRANSACTIONS * 4 // 5, producer.error
    wait_for(lambda: set(wqd.ended_ids()) >= set(producer.committed), 120,
             message=lambda: f"{len(set(producer.committed) - set(wqd.ended_ids()))} committed tasks never ran\n"
                             f"{wqd.logs()}")
    wait_for(lambda: rows_left(outbox_dsn) == 0, 60, message="rows left in the outbox")
    runs = collections.Counter(wqd.ended_ids())
    assert not set(runs) & set(producer.rolled_back), "a rolled-back row's task ran"
    assert [task for task, count in runs.items() if count > 1] == [], "a task ran twice"
    assert sorted(runs) == sorted(producer.committed)


def test_two_masters_relaying_one_table_publish_no_row_twice(make_wqd, queue_name, outbox_dsn):
    hosts = [with_outbox(make_wqd([pool(queue_name, workers=2)]), outbox_dsn, batch=20).start() for _ in range(2)]
    with psycopg.connect(outbox_dsn) as connection:
        for transaction in range(40):
            for task_id in range(transaction * 10, transaction * 10 + 10):
                enqueue(connection, queue_name, {"id": task_id})
            connection.commit()
    ended = lambda: [task for host in hosts for task in host.ended_ids()]  # noqa: E731
    wait_for(lambda: set(ended()) == set(range(400)), 90,
             message=lambda: f"{len(set(ended()))} of 400 ran\n{hosts[0].logs()}\n{hosts[1].logs()}")
    assert len(ended()) == 400, "a task ran twice"
    relayed = lambda: [host.metric("wqd_outbox_relayed_total") for host in hosts]  # noqa: E731
    wait_for(lambda: sum(relayed()) == 400, 30, message=lambda: f"relayed: {relayed()}")
    assert rows_left(outbox_dsn) == 0
