"""Failed attempts whose copy (a retry, a dead letter) the broker will not take
as it is: a dead-letter queue deleted while wqd runs, a delay queue that
exists with other arguments, a body over a max_message_size lowered since it
was queued, headers that leave a dead letter no room in a frame. Each ends in
a bounded number of handler runs, and a one-worker pool goes on with the next
message. Driven from outside: a real broker, `wqd run`."""

import signal

import pika
import pika.exceptions
import pytest

from tests.support.daemon import pool, task_body
from tests.support.queues import queue_counts, wait_queue
from tests.support.waiting import wait_for
from wqd.worker import refused_copies

FAST_RETRY = {"initial": 0.2, "max": 0.2}  # delay queue <queue>.delay.200; a parked message is held 1 s
FRAME_MAX = 131072  # what pika and the broker negotiate by default
HEADER_FRAME_OVERHEAD = 20


def _ready(broker, queue):
    counts = queue_counts(broker, queue)
    return counts["messages_ready"] if counts else 0


def _runs(wqd, task_id):
    return [start["attempt"] for start in wqd.records("start") if start["id"] == task_id]


def _processes_the_next_message(broker, queue, wqd):
    """A message published now is run by the same (one) worker."""
    (worker,) = wqd.worker_pids()
    broker.publish(queue, task_body("next").encode(), declare=False)
    wait_for(lambda: "next" in wqd.ended_ids(), 30, message=lambda: wqd.logs())
    assert [end["pid"] for end in wqd.records("end") if end["id"] == "next"] == [worker]


def _max_message_size(broker) -> int:
    answer = broker.ctl("eval", "{ok, Size} = application:get_env(rabbit, max_message_size), Size.")
    return int(answer.strip())


def _set_max_message_size(broker, size: int) -> None:
    """RabbitMQ 3.x reads max_message_size from the application environment at
    each publish; 4.0 from a persistent term it writes once at boot: set both."""
    broker.ctl("eval", f"application:set_env(rabbit, max_message_size, {size}), "
                       f"persistent_term:put(max_message_size, {size}).")


def test_a_dead_letter_queue_deleted_while_wqd_runs_is_declared_again(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1, max_retries=0)]).start()
    broker.delete_queue(queue_name + ".dead")
    broker.publish(queue_name, task_body("doomed", action="fail").encode(), declare=False, message_id="m-1")
    wait_queue(broker, queue_name + ".dead", 30, "dead-lettered into the queue declared again", messages_ready=1)
    assert _runs(wqd, "doomed") == [1]
    assert f"Queue '{queue_name}.dead' is gone; declaring it again." in wqd.logs()
    _processes_the_next_message(broker, queue_name, wqd)
    assert _runs(wqd, "doomed") == [1]
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="dead_lettered") == 1
    assert wqd.metric("wqd_copies_refused_total", pool="default") == 0


def test_a_delay_queue_with_other_arguments_dead_letters_at_once_saying_why(broker, queue_name, make_wqd):
    delay_queue = queue_name + ".delay.200"
    broker.declare_queue(delay_queue)  # without the dead-letter arguments wqd gives it
    try:
        wqd = make_wqd([pool(queue_name, workers=1, max_retries=3, retry_delay=FAST_RETRY)]).start()
        broker.publish(queue_name, task_body("doomed", action="fail").encode(), declare=False, message_id="m-1")
        wait_queue(broker, queue_name + ".dead", 30, "dead-lettered", messages_ready=1)
        ((_, properties),) = broker.get_all_messages(queue_name + ".dead")
        assert properties.headers["x-wqd-exception"] == "RuntimeError"
        reason = properties.headers["x-wqd-reason"]
        assert reason.startswith(f"its delay queue '{delay_queue}' cannot be declared: 406 PRECONDITION_FAILED"), \
            reason
        assert "Task m-1 cannot be retried" in wqd.logs()
        _processes_the_next_message(broker, queue_name, wqd)
        assert _runs(wqd, "doomed") == [1]
        assert _ready(broker, delay_queue) == 0
    finally:
        broker.delete_queue(delay_queue)


def test_a_body_over_max_message_size_stays_in_its_queue_and_runs_a_bounded_number_of_times(
        broker, queue_name, make_wqd):
    """No copy of it can be published anywhere: it is parked (held, then
    returned, each time counted as an attempt), never lost, logged once."""
    broker.declare_queue(queue_name)
    body = task_body("big", action="fail").encode() + b" " * 5000
    broker.publish(queue_name, body, declare=False, message_id="m-big")
    original_limit = _max_message_size(broker)
    _set_max_message_size(broker, 1024)
    try:
        wqd = make_wqd([pool(queue_name, workers=1, max_retries=2, retry_delay=FAST_RETRY)]).start()
        # Its three attempts run (each parked 1 s), then it is parked without a run (for 60 s).
        wait_for(lambda: wqd.metric("wqd_copies_refused_total", pool="default") == 4, 60,
                 message=lambda: wqd.logs())
        _processes_the_next_message(broker, queue_name, wqd)
        assert _runs(wqd, "big") == [1, 2, 3]
        assert wqd.metric("wqd_copies_refused_total", pool="default") == 4, "held, not spinning"
        logs = wqd.logs()
        assert logs.count("Task m-big cannot be copied") == 1, logs
        assert "message size" in logs and "max_message_size" in logs
        assert "given up without running" not in logs
        wqd.stop()
    finally:
        _set_max_message_size(broker, original_limit)
    wait_for(lambda: _ready(broker, queue_name) == 1, 15, message="the original back in the queue")
    ((got, properties),) = broker.get_all_messages(queue_name)
    assert got == body and properties.message_id == "m-big"
    assert _ready(broker, queue_name + ".dead") == 0
    assert "Traceback" not in wqd.logs()


@pytest.mark.parametrize("workers, queue_type", [(2, "classic"), (1, "quorum")])
def test_a_message_too_large_to_copy_runs_a_bounded_number_of_times_in_a_larger_pool_or_a_quorum_queue(
        broker, queue_name, make_wqd, workers, queue_type):
    """The master counts each parking for every worker (classic queues); a
    quorum queue counts each return in x-delivery-count."""
    settings = {"workers": workers, "max_retries": 2, "retry_delay": FAST_RETRY, "queue_type": queue_type}
    make_wqd([pool(queue_name, **settings)]).start().stop()  # the queues, declared as the pool declares them
    body = task_body("big", action="fail").encode() + b" " * 5000
    broker.publish(queue_name, body, declare=False, message_id="m-big")
    original_limit = _max_message_size(broker)
    _set_max_message_size(broker, 1024)
    try:
        wqd = make_wqd([pool(queue_name, **settings)]).start()
        wait_for(lambda: wqd.metric("wqd_copies_refused_total", pool="default") == 4, 60,
                 message=lambda: wqd.logs())
        broker.publish(queue_name, task_body("next").encode(), declare=False)
        wait_for(lambda: "next" in wqd.ended_ids(), 30, message=lambda: wqd.logs())
        assert sorted(_runs(wqd, "big")) == [1, 2, 3]
        assert wqd.metric("wqd_copies_refused_total", pool="default") == 4, "held, not spinning"
        wqd.stop()
    finally:
        _set_max_message_size(broker, original_limit)
    wait_for(lambda: _ready(broker, queue_name) == 1, 15, message="the original back in the queue")
    ((got, _),) = broker.get_all_messages(queue_name)
    assert got == body


def test_an_unstarted_delivery_too_large_to_give_back_as_it_came_goes_back_as_a_redelivery(
        broker, queue_name, make_wqd):
    """At a quiet (or a stop) with prefetch above 1, a delivery that never
    started is republished as it came; one over max_message_size is returned
    with a reject instead, and the connection stays up."""
    broker.declare_queue(queue_name)
    broker.publish(queue_name, task_body("running", sleep=3).encode(), declare=False)
    body = task_body("big").encode() + b" " * 5000
    broker.publish(queue_name, body, declare=False, message_id="m-big")
    original_limit = _max_message_size(broker)
    _set_max_message_size(broker, 1024)
    try:
        wqd = make_wqd([pool(queue_name, workers=1, prefetch=2)]).start()
        wait_for(lambda: _runs(wqd, "running") == [1], 30, message=lambda: wqd.logs())
        wqd.signal(signal.SIGTSTP)
        wait_for(lambda: _ready(broker, queue_name) == 1 and "running" in wqd.ended_ids(), 30,
                 message=lambda: wqd.logs())
        assert "Could not give back delivery m-big as it came" in wqd.logs()
    finally:
        _set_max_message_size(broker, original_limit)
    wqd.signal(signal.SIGCONT)
    wait_for(lambda: "big" in wqd.ended_ids(), 30, message=lambda: wqd.logs())
    assert _runs(wqd, "big") == [1] and _runs(wqd, "running") == [1]
    assert "connection lost" not in wqd.logs()


@pytest.mark.parametrize("left", [500, 100])
def test_headers_that_nearly_fill_a_frame_get_a_dead_letter_that_fits(broker, queue_name, make_wqd, left):
    """wqd's dead-letter headers would make its header frame larger than the
    connection's frame_max, and the broker would drop the connection: they
    give way instead (the traceback shortened; with less room, removed, and
    the other texts with it)."""
    wqd = make_wqd([pool(queue_name, workers=1, max_retries=0)]).start()
    properties = pika.BasicProperties(delivery_mode=2, message_id="m-wide", headers={"pad": ""})
    room = FRAME_MAX - HEADER_FRAME_OVERHEAD - len(b"".join(properties.encode()))
    properties.headers["pad"] = "p" * (room - left)  # less room than wqd's headers take
    with broker.connection() as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue_name, task_body("wide", action="fail").encode(), properties, mandatory=True)
    wait_queue(broker, queue_name + ".dead", 30, "dead-lettered", messages_ready=1)
    ((_, dead),) = broker.get_all_messages(queue_name + ".dead")
    assert dead.headers["pad"] == properties.headers["pad"]
    assert dead.headers["x-wqd-exception"] == "RuntimeError" and dead.headers["x-wqd-attempts"] == 1
    assert len(b"".join(dead.encode())) <= FRAME_MAX - HEADER_FRAME_OVERHEAD
    if left == 500:
        assert len(b"".join(dead.encode())) >= FRAME_MAX - HEADER_FRAME_OVERHEAD - 4, "shortened, not removed"
        assert dead.headers["x-wqd-traceback"].endswith("RuntimeError: task wide failed on purpose\n")
    else:
        assert "x-wqd-traceback" not in dead.headers
    _processes_the_next_message(broker, queue_name, wqd)
    assert _runs(wqd, "wide") == [1]
    assert "connection lost" not in wqd.logs()


# -- the pieces, without a broker --


def _dead_letter_properties(pad: int):
    return pika.BasicProperties(message_id="m-1", headers={
        "pad": "p" * pad, "x-wqd-exception": "RuntimeError", "x-wqd-error": "E" * 300,
        "x-wqd-traceback": "T" * 2000 + "last line\n", "x-wqd-attempts": 4, "x-wqd-pool": "default",
        "x-wqd-queue": "q", "x-wqd-host": "h", "x-wqd-failed-at": "2026-12-07T09:00:00Z"})


def _room_left(properties, frame_max=4096):
    return refused_copies.frame_room(frame_max) - refused_copies.header_block_size(properties)


def _with_room(left: int):
    """A dead letter whose header block leaves ``left`` bytes of a 4,096-byte frame (negative: too many)."""
    properties = _dead_letter_properties(pad=10)
    properties.headers["pad"] = "p" * (10 + _room_left(properties) - left)
    assert _room_left(properties) == left
    return properties


def test_a_dead_letter_that_fits_is_left_as_it_is():
    properties = _with_room(0)
    before = dict(properties.headers)
    assert refused_copies.fit_dead_letter(properties, 4096).headers == before


def test_a_dead_letter_gives_way_traceback_first_keeping_its_end():
    fitted = refused_copies.fit_dead_letter(_with_room(-1000), 4096)
    assert 0 <= _room_left(fitted) <= 4
    assert fitted.headers["x-wqd-traceback"].endswith("last line\n")
    assert fitted.headers["x-wqd-error"] == "E" * 300 and fitted.headers["x-wqd-host"] == "h"


def test_with_less_room_the_texts_go_then_the_names_and_exception_and_attempts_stay():
    fitted = refused_copies.fit_dead_letter(_with_room(-2400), 4096)
    assert _room_left(fitted) >= 0
    assert {"x-wqd-traceback", "x-wqd-error", "x-wqd-host"}.isdisjoint(fitted.headers)
    assert fitted.headers["x-wqd-exception"] == "RuntimeError" and fitted.headers["x-wqd-attempts"] == 4
    assert fitted.headers["pad"]


def test_a_message_whose_own_headers_fill_the_frame_cannot_be_dead_lettered():
    properties = _dead_letter_properties(pad=4096)
    with pytest.raises(refused_copies.Uncopyable, match="leave no room"):
        refused_copies.fit_dead_letter(properties, 4096)


@pytest.mark.parametrize("exc, lasting", [
    (pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED - message size 5043 is larger"), True),
    (pika.exceptions.ChannelClosedByBroker(403, "ACCESS_REFUSED - access to queue"), True),
    (pika.exceptions.ChannelClosedByBroker(404, "NOT_FOUND - no exchange"), False),
    (pika.exceptions.NackError([]), False),
    (pika.exceptions.UnroutableError([]), False),
])
def test_which_refusals_last(exc, lasting):
    assert refused_copies.for_good(exc) is lasting


@pytest.mark.parametrize("delay, ran, held", [(0.2, True, 1.0), (8, True, 8), (300, True, 60), (0.2, False, 60)])
def test_a_parked_delivery_is_held_within_bounds(delay, ran, held):
    assert refused_copies.hold_seconds(delay, ran) == held
