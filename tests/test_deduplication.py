"""Duplicate suppression against a real broker, with `wqd run`: a redelivery
of a message finished here is acked without running, and one whose handler
did not return runs again."""

import json
import signal
from collections import Counter

from tests.support.daemon import pool, task_body
from tests.support.queues import wait_queue
from tests.support.waiting import wait_for


def settle_and_die_body(task_id, die_at, fail=False) -> str:
    return json.dumps({"id": task_id, "die_at": die_at, "fail": fail})


def give_back_redelivered(broker, queue: str, count: int) -> None:
    """Take ``count`` messages and close the channel without acking: the broker
    puts them back flagged redelivered, as after a lost ack."""
    with broker.connection() as connection:
        channel = connection.channel()
        for _ in range(count):
            method, _, _ = channel.basic_get(queue)
            assert method is not None, f"{queue} has fewer than {count} messages"


def runs(wqd) -> Counter:
    return Counter(entry["id"] for entry in wqd.records("start"))


def ends(wqd) -> Counter:
    return Counter(entry["id"] for entry in wqd.records("end"))


def duplicates(wqd, pool_name="default") -> float:
    return wqd.metric("wqd_tasks_total", pool=pool_name, outcome="duplicate")


def test_after_a_broker_crash_forgets_acks_a_finished_message_is_not_run_again(broker, queue_name, make_wqd):
    """The broker is frozen while three handlers finish and ack (the acks wait
    in its socket buffers), then SIGKILLed: restarted, its classic queue
    redelivers all three. The one with a message_id in a deduplicating pool
    is acked without running; the one without an id, and the one in a pool
    with deduplicate: false, run again."""
    other_queue = queue_name + ".nodedup"
    wqd = make_wqd([pool(queue_name, workers=2), pool(other_queue, name="nodedup", workers=1, deduplicate=False)])
    wqd.start()
    broker.publish(queue_name, task_body("with-id", sleep=1.0), message_id="m-1")
    broker.publish(queue_name, task_body("no-id", sleep=1.0))
    broker.publish(other_queue, task_body("not-deduplicated", sleep=1.0), message_id="m-2")
    wait_for(lambda: len(runs(wqd)) == 3, 30, message=lambda: f"all three started: {runs(wqd)}\n{wqd.logs()}")
    broker.pause()
    try:
        wait_for(lambda: len(ends(wqd)) == 3, 30, message=lambda: f"all three ended: {ends(wqd)}")
        wait_for(lambda: not any(w["busy"] for name in ("default", "nodedup") for w in wqd.workers(name)), 30,
                 message="every worker acked and went idle")
        broker.kill()
    finally:
        broker.resume()
    broker.start()
    wait_for(lambda: ends(wqd)["no-id"] == 2 and ends(wqd)["not-deduplicated"] == 2, 90,
             message=lambda: f"the two that take no part ran again: {ends(wqd)}\n{wqd.logs()}")
    wait_for(lambda: duplicates(wqd) == 1, 30, message=lambda: f"one duplicate acked:\n{wqd.logs()}")
    wait_queue(broker, queue_name, 30, "nothing left", messages_ready=0, messages_unacknowledged=0)
    assert runs(wqd)["with-id"] == 1, "the finished message was not run again"
    assert duplicates(wqd, "nodedup") == 0
    assert "Task m-1 already finished here; acking its redelivery without running it" in wqd.logs()
    assert wqd.stop() == 0
    broker.delete_queue(other_queue)


def test_a_worker_killed_after_its_handler_returned_and_before_the_ack(broker, queue_name, make_wqd):
    """The handler returns, wqd records it, and the worker is SIGKILLed as it
    calls basic_ack: the broker redelivers the message, and it is not run again."""
    wqd = make_wqd([pool(queue_name, handler="handlers:settle_and_die", workers=2)])
    wqd.start()
    broker.publish(queue_name, settle_and_die_body("a", die_at="basic_ack"), message_id="m-a")
    wait_for(lambda: duplicates(wqd) == 1, 60, message=lambda: f"the redelivery acked as a duplicate:\n{wqd.logs()}")
    wait_queue(broker, queue_name, 30, "nothing left", messages_ready=0, messages_unacknowledged=0)
    assert runs(wqd) == {"a": 1} and ends(wqd) == {"a": 1}
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="succeeded") == 0, "its worker died before the ack"
    assert wqd.stop() == 0


def test_a_failed_attempt_whose_retry_copy_was_confirmed_makes_no_second_copy(broker, queue_name, make_wqd):
    """The handler raises; the retry copy is confirmed and the worker killed as
    it acks the original: the original's redelivery is acked without running,
    and the copy runs once."""
    wqd = make_wqd([pool(queue_name, handler="handlers:settle_and_die", workers=2,
                         retry_delay={"initial": 0.5, "max": 1})])
    wqd.start()
    broker.publish(queue_name, settle_and_die_body("b", die_at="basic_ack", fail=True), message_id="m-b")
    wait_for(lambda: ends(wqd) == {"b": 1}, 60, message=lambda: f"the retry copy ran:\n{wqd.logs()}")
    wait_for(lambda: duplicates(wqd) == 1, 30, message=lambda: f"the original acked as a duplicate:\n{wqd.logs()}")
    wait_queue(broker, queue_name, 30, "nothing left", messages_ready=0, messages_unacknowledged=0)
    attempts = Counter(entry["attempt"] for entry in wqd.records("start"))
    assert attempts == {1: 1, 2: 1}, f"one first attempt and one retry copy, no second copy: {wqd.records('start')}"
    assert wqd.stop() == 0


def test_a_handler_that_did_not_return_runs_again(broker, queue_name, make_wqd):
    """Killed before its retry copy was sent: run again. Then the same id
    again (a new message), killed at its time_limit: its redelivery runs too,
    though the ledger held the id as finished."""
    wqd = make_wqd([pool(queue_name, handler="handlers:settle_and_die", workers=2, time_limit=1, max_retries=1,
                         retry_delay={"initial": 0.5, "max": 1})], graceful_timeout=3)
    wqd.start()
    broker.publish(queue_name, settle_and_die_body("c", die_at="basic_publish", fail=True), message_id="m-c")
    wait_for(lambda: ends(wqd)["c"] == 1, 60, message=lambda: f"c ran again and ended:\n{wqd.logs()}")
    assert runs(wqd)["c"] == 2 and duplicates(wqd) == 0
    assert [e["redelivered"] for e in wqd.records("start")] == [False, True]

    broker.publish(queue_name, json.dumps({"id": "hang", "die_at": "none", "sleep": 30}), message_id="m-c")
    wait_for(lambda: runs(wqd)["hang"] == 2, 60, message=lambda: f"the hung task ran again:\n{wqd.logs()}")
    assert duplicates(wqd) == 0
    assert wqd.stop() == 0


def test_a_later_lineage_of_a_finished_message_runs(broker, queue_name, make_wqd):
    """Dead-lettered (finished here at attempt 1): a redelivery of attempt 1 is
    acked without running, one of a retry copy (attempt 2) runs."""
    wqd = make_wqd([pool(queue_name, workers=1, max_retries=0)])
    wqd.start()
    broker.publish(queue_name, task_body("first", action="fail"), message_id="m-d")
    wait_for(lambda: wqd.metric("wqd_tasks_total", pool="default", outcome="dead_lettered") == 1, 30,
             message=lambda: f"dead-lettered:\n{wqd.logs()}")
    wqd.signal(signal.SIGTSTP)  # quiet: the test takes the messages and gives them back redelivered
    wait_for(lambda: all(w["state"] == "quiet" for w in wqd.workers()), 30, message="quiet")
    broker.publish(queue_name, task_body("same-lineage"), message_id="m-d")
    broker.publish(queue_name, task_body("retry-copy"), message_id="m-d", headers={"x-wqd-attempt": 2})
    give_back_redelivered(broker, queue_name, 2)
    wqd.signal(signal.SIGCONT)
    wait_for(lambda: ends(wqd)["retry-copy"] == 1 and duplicates(wqd) == 1, 30,
             message=lambda: f"the copy ran, the other was a duplicate: {ends(wqd)}\n{wqd.logs()}")
    assert runs(wqd)["same-lineage"] == 0
    assert wqd.stop() == 0


def test_the_ledger_is_kept_across_a_master_restart(broker, queue_name, make_wqd, tmp_path):
    """Finished, stopped, started again: a redelivery of the finished message
    is acked without running; with the state file unreadable, it runs (and
    wqd says why in one warning)."""
    state_file = tmp_path / "finished-ids"
    wqd = make_wqd([pool(queue_name, workers=1)])
    wqd.config["deduplication"] = {"state_file": str(state_file)}
    wqd.write_config()
    wqd.start()
    broker.publish(queue_name, task_body("e"), message_id="m-e")
    wait_for(lambda: ends(wqd) == {"e": 1}, 30, message=lambda: f"e ran:\n{wqd.logs()}")
    assert wqd.stop() == 0
    assert state_file.stat().st_size > 0 and state_file.stat().st_mode & 0o077 == 0

    broker.publish(queue_name, task_body("e"), message_id="m-e")
    give_back_redelivered(broker, queue_name, 1)
    wqd.start()
    wait_for(lambda: duplicates(wqd) == 1, 30, message=lambda: f"acked as a duplicate:\n{wqd.logs()}")
    assert ends(wqd) == {"e": 1}
    assert wqd.stop() == 0

    state_file.write_bytes(state_file.read_bytes()[:-1] + b"?")  # a corrupt checksum
    broker.publish(queue_name, task_body("e"), message_id="m-e")
    give_back_redelivered(broker, queue_name, 1)
    wqd.start()
    wait_for(lambda: ends(wqd) == {"e": 2}, 30, message=lambda: f"e ran again:\n{wqd.logs()}")
    assert "cannot use the state file" in wqd.logs() and "its checksum does not match" in wqd.logs()
    assert duplicates(wqd) == 0
    assert wqd.stop() == 0


def test_the_ledger_outlives_a_reload_and_the_worker_that_finished(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1)])
    wqd.start()
    broker.publish(queue_name, task_body("f"), message_id="m-f")
    wait_for(lambda: ends(wqd) == {"f": 1}, 30, message=lambda: f"f ran:\n{wqd.logs()}")
    wqd.config["pools"][0]["prefetch"] = 2  # a changed pool: its workers are replaced
    wqd.write_config()
    old_pids = wqd.worker_pids()
    wqd.signal(signal.SIGHUP)
    wait_for(lambda: wqd.worker_pids(consuming_only=True) and not set(wqd.worker_pids()) & set(old_pids), 30,
             message=lambda: f"workers replaced:\n{wqd.logs()}")
    wqd.signal(signal.SIGTSTP)  # quiet: the test takes the message and gives it back redelivered
    wait_for(lambda: wqd.status()["quiet"] and all(w["state"] == "quiet" for w in wqd.workers()), 30,
             message="quiet")
    broker.publish(queue_name, task_body("f"), message_id="m-f", headers={"other": "x"})
    give_back_redelivered(broker, queue_name, 1)
    wqd.signal(signal.SIGCONT)
    wait_for(lambda: duplicates(wqd) == 1, 30, message=lambda: f"acked as a duplicate:\n{wqd.logs()}")
    assert ends(wqd) == {"f": 1}
    assert wqd.stop() == 0


def test_a_quorum_queue_redelivery_is_deduplicated_too(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1, queue_type="quorum")])
    wqd.start()
    broker.publish(queue_name, task_body("g"), message_id="m-g", declare=False)
    wait_for(lambda: ends(wqd) == {"g": 1}, 30, message=lambda: f"g ran:\n{wqd.logs()}")
    wqd.signal(signal.SIGTSTP)
    wait_for(lambda: all(w["state"] == "quiet" for w in wqd.workers()), 30, message="quiet")
    broker.publish(queue_name, task_body("g"), message_id="m-g", declare=False)
    give_back_redelivered(broker, queue_name, 1)
    wqd.signal(signal.SIGCONT)
    wait_for(lambda: duplicates(wqd) == 1, 30, message=lambda: f"acked as a duplicate:\n{wqd.logs()}")
    assert ends(wqd) == {"g": 1}
    assert wqd.stop() == 0



def test_a_copy_published_again_with_the_check_header_is_acked_without_running(broker, queue_name, make_wqd):
    """A publisher that is not sure its first publish arrived (a PublishError,
    the outbox relay after a crash) flags the second copy with
    x-wqd-check-duplicate: it is acked as a duplicate when the first copy
    finished here. Without the flag, a second message of the same id is a new
    message and runs (no question costs a first delivery)."""
    wqd = make_wqd([pool(queue_name, workers=1)])
    wqd.start()
    broker.publish(queue_name, task_body("first"), message_id="m-again")
    wait_for(lambda: ends(wqd)["first"] == 1, 30, message=lambda: f"the first copy ran:\n{wqd.logs()}")
    broker.publish(queue_name, task_body("flagged"), message_id="m-again", headers={"x-wqd-check-duplicate": 1})
    wait_for(lambda: duplicates(wqd) == 1, 30, message=lambda: f"the flagged copy was a duplicate:\n{wqd.logs()}")
    broker.publish(queue_name, task_body("unflagged"), message_id="m-again")
    broker.publish(queue_name, task_body("new-id"), message_id="m-other", headers={"x-wqd-check-duplicate": 1})
    wait_for(lambda: ends(wqd)["unflagged"] == 1 and ends(wqd)["new-id"] == 1, 30,
             message=lambda: f"an unflagged copy and a flagged new id run:\n{wqd.logs()}")
    assert runs(wqd)["flagged"] == 0 and duplicates(wqd) == 1
    assert "acking its copy published again without running it" in wqd.logs()
    assert wqd.stop() == 0
