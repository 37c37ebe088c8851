"""Messages, handlers and brokers that try to break a worker: malformed headers,
handlers that return a coroutine, messages that would expire in the
dead-letter queue, a poison message after its spell, an orphaned worker, a
broker that never answers. Driven from outside: a real broker, `wqd run`."""

import decimal
import os
import signal
import socket
import struct
import threading
import time

import pika
import pytest

from tests.support.daemon import pool, run_cli, task_body, wait_gone
from tests.support.waiting import wait_for

FAST_RETRY = {"initial": 0.2, "max": 0.2}


def _dead_letters(broker, queue):
    """Every message in ``<queue>.dead`` as (properties, body), left in the queue."""
    connection = broker.connection()
    channel = connection.channel()
    found = []
    while True:
        method, properties, body = channel.basic_get(queue + ".dead", auto_ack=False)
        if method is None:
            break
        found.append((properties, body))
    connection.close()  # unacked: back to the queue
    return found


def _publish(broker, queue, body, properties):
    """Publish with exactly these properties (a transient one, say), confirmed."""
    with broker.connection() as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue, body, properties, mandatory=True)


def _ready(broker, queue):
    stats = broker.queue_stats(queue)
    return stats["messages_ready"] if stats else 0


def _restarts(wqd):
    return sum(value for (name, _), value in wqd.metrics().items() if name == "wqd_worker_restarts_total")


@pytest.mark.parametrize("handler", ["handlers:returns_coroutine", "handlers:returns_generator"])
def test_a_handler_that_returns_a_coroutine_or_generator_fails_without_its_body_counted_done(
        broker, queue_name, make_wqd, handler):
    wqd = make_wqd([pool(queue_name, handler=handler, workers=1, max_retries=1, retry_delay=FAST_RETRY)]).start()
    broker.publish(queue_name, task_body("unrun").encode(), declare=False, message_id="m-1")
    wait_for(lambda: _ready(broker, queue_name + ".dead") == 1, 30, message=lambda: wqd.logs())
    ((properties, _),) = _dead_letters(broker, queue_name)
    assert properties.headers["x-wqd-exception"] == "HandlerResultNotRun"
    assert "its body never ran" in properties.headers["x-wqd-error"]
    assert wqd.records() == [], "the body must not have run"
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="succeeded") == 0
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="retried") == 1
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="dead_lettered") == 1
    wqd.stop()
    assert "never awaited" not in wqd.logs() and "Traceback" not in wqd.logs()


HOSTILE_ATTEMPTS = ["abc", "", "-1", "1e3", "\u00b2", "12345678901234567890", b"\xff\xfe", b"2", -5, 0, True,
                    decimal.Decimal("1.5"), 10**18, -(10**18), {"nested": {"x-wqd-attempt": 1}}, [1, 2], None]


def test_malformed_or_out_of_range_headers_never_crash_a_worker_nor_loop(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2, max_retries=2, retry_delay=FAST_RETRY)]).start()
    for index, value in enumerate(HOSTILE_ATTEMPTS):
        headers = {"x-wqd-attempt": value, "x-wqd-lost": value, "x-delivery-count": value}
        broker.publish(queue_name, task_body(f"ok-{index}").encode(), headers=headers, declare=False)
    # Failing tasks with a negative or absurd attempt: retried at most max_retries times, then dead-lettered.
    for index, value in enumerate([-3, "-3", 10**9]):
        broker.publish(queue_name, task_body(f"fail-{index}", action="fail").encode(),
                       headers={"x-wqd-attempt": value}, declare=False)
    # The operator's way of setting one: a string header from the command line.
    result = run_cli("publish", "-c", str(wqd.config_path), "--header", "x-wqd-attempt=abc", task_body("cli"),
                     env=wqd.env)
    assert result.returncode == 0, result.stderr
    wanted = {f"ok-{index}" for index in range(len(HOSTILE_ATTEMPTS))} | {"cli"}
    wait_for(lambda: set(wqd.ended_ids()) == wanted, 30, message=lambda: wqd.logs())
    wait_for(lambda: _ready(broker, queue_name + ".dead") == 3, 30, message=lambda: wqd.logs())
    starts = wqd.records("start")
    assert all(1 <= start["attempt"] <= 3 for start in starts), starts
    ok_attempts = {start["id"]: start["attempt"] for start in starts if start["id"].startswith("ok")}
    assert ok_attempts["ok-12"] == 3, "an absurdly high attempt counts as the last one"
    assert ok_attempts["ok-7"] == 2, "bytes of ASCII digits are a number"
    assert {attempt for name, attempt in ok_attempts.items() if name not in ("ok-7", "ok-12")} == {1}, ok_attempts
    fail_starts = [start["attempt"] for start in starts if start["id"].startswith("fail")]
    assert sorted(fail_starts) == [1, 1, 2, 2, 3, 3, 3], "retried as from the first attempt, or the last"
    assert _restarts(wqd) == 0
    assert sorted(wqd.ended_ids()) == sorted(wanted), "each ran once"
    wqd.stop()
    assert "Traceback" not in wqd.logs()


def test_a_dead_letter_keeps_no_expiration_and_copies_are_persistent(broker, queue_name, make_wqd):
    cc_queue = queue_name + ".cc"
    broker.declare_queue(cc_queue)
    try:
        wqd = make_wqd([pool(queue_name, handler="handlers:fail_always", workers=1, max_retries=1,
                             retry_delay=FAST_RETRY)]).start()
        published = time.monotonic()
        _publish(broker, queue_name, b"short-lived", pika.BasicProperties(
            message_id="m-exp", expiration="2000", delivery_mode=1))
        _publish(broker, queue_name, b"copied", pika.BasicProperties(message_id="m-cc", headers={"CC": [cc_queue]}))
        wait_for(lambda: _ready(broker, queue_name + ".dead") == 2, 30, message=lambda: wqd.logs())
        assert [start["attempt"] for start in wqd.records("start")] == [1, 1, 2, 2]
        time.sleep(max(0.0, published + 3.0 - time.monotonic()))  # past the message's own expiration
        dead = {properties.message_id: (properties, body) for properties, body in _dead_letters(broker, queue_name)}
        properties, body = dead["m-exp"]
        assert body == b"short-lived" and properties.expiration is None and properties.delivery_mode == 2
        assert "x-wqd-attempt" not in properties.headers
        properties, body = dead["m-cc"]
        assert "CC" not in properties.headers
        # The original's CC went to the other queue once; the copies wqd made did not.
        assert _ready(broker, cc_queue) == 1
    finally:
        broker.delete_queue(cc_queue)


def test_a_poison_message_runs_again_once_its_spell_is_over(broker, queue_name, make_wqd, tmp_path):
    flag = tmp_path / "crash"
    flag.touch()
    wqd = make_wqd([pool(queue_name, handler="handlers:kill_on_boom", workers=2, max_retries=1)],
                   extra_env={"WQD_TEST_FLAG": str(flag)}).start()

    def dead_lettered(count):
        wait_for(lambda: _ready(broker, queue_name + ".dead") == count, 60, message=lambda: wqd.logs())

    broker.publish(queue_name, b"boom", declare=False)
    dead_lettered(1)
    assert [start["attempt"] for start in wqd.records("start")] == [1, 2]
    ((properties, _),) = _dead_letters(broker, queue_name)
    assert properties.headers["x-wqd-exception"] == "WorkerLost"
    assert "died on each of its last 2 attempts" in properties.headers["x-wqd-error"]
    # Its lineage ended: the same body again gets all its attempts, not one.
    broker.publish(queue_name, b"boom", declare=False)
    dead_lettered(2)
    assert [start["attempt"] for start in wqd.records("start")] == [1, 2, 1, 2]
    # The spell is over: the same body, and then the same message_id, run and succeed.
    flag.unlink()
    broker.publish(queue_name, b"boom", declare=False)
    wait_for(lambda: wqd.ended_ids() == ["boom"], 30, message=lambda: wqd.logs())
    broker.publish(queue_name, b"boom", declare=False, message_id="m-boom")
    wait_for(lambda: wqd.ended_ids() == ["boom", "boom"], 30, message=lambda: wqd.logs())
    # (the handler records its end before its worker acks and counts it)
    wait_for(lambda: wqd.metric("wqd_tasks_total", pool="default", outcome="succeeded") == 2, 10,
             message="both counted as succeeded")


def test_an_orphaned_worker_enforces_its_time_limit_and_the_task_goes_back(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1, time_limit=3)], graceful_timeout=60).start()
    broker.publish(queue_name, task_body("hang", sleep=600).encode(), declare=False)
    (start,) = wait_for(lambda: wqd.records("start"), 30, message=lambda: wqd.logs())
    os.kill(wqd.proc.pid, signal.SIGKILL)
    wqd.wait_exit(10)
    wait_gone(start["pid"], timeout=max(0.0, start["t"] + 3 + 4 - time.time()))
    wait_for(lambda: _ready(broker, queue_name) == 1, 15, message="the hung task back in the queue")
    assert "the master died and the task outlived its time_limit" in wqd.logs()


def test_an_orphaned_worker_enforces_the_graceful_timeout(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1)], graceful_timeout=2).start()
    broker.publish(queue_name, task_body("hang", sleep=600).encode(), declare=False)
    (start,) = wait_for(lambda: wqd.records("start"), 30, message=lambda: wqd.logs())
    os.kill(wqd.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    wqd.wait_exit(10)
    wait_gone(start["pid"], timeout=2 + 4)
    assert time.monotonic() - killed >= 1.5, "it finished what it could first"
    wait_for(lambda: _ready(broker, queue_name) == 1, 15, message="the hung task back in the queue")


class SilentBroker:
    """A TCP server on loopback that accepts connections and never answers."""

    def __init__(self):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.accepted = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def close(self):
        self.server.close()
        for connection in self.accepted:
            connection.close()


def test_a_broker_that_never_answers_gets_warnings_with_backoff_and_no_crash(broker, queue_name, make_wqd):
    silent = SilentBroker()
    try:
        wqd = make_wqd([pool(queue_name, workers=2)], broker_url=f"amqp://guest:guest@127.0.0.1:{silent.port}/")
        wqd.start(wait_ready=False)
        wait_for(lambda: wqd.http("/healthz")[0] == 200, 30, message=lambda: wqd.logs())
        deadline = time.monotonic() + 20
        wait_for(lambda: len(silent.accepted) >= 3, 30, message="workers and monitor connect")
        while time.monotonic() < deadline:
            assert wqd.proc.poll() is None, wqd.logs()
            assert _restarts(wqd) == 0, wqd.logs()
            time.sleep(1)
        logs = wqd.logs()
        assert "Traceback" not in logs, logs
        warnings = [line for line in logs.splitlines() if "reconnecting in" in line]
        assert 2 <= len(warnings) <= 12, logs  # one per attempt, with backoff
        # Pointed at a real broker by a reload, it becomes ready.
        wqd.config["broker"]["url"] = broker.url
        wqd.write_config()
        wqd.signal(signal.SIGHUP)
        wqd.wait_ready(60)
        assert _restarts(wqd) == 0
    finally:
        silent.close()


def test_a_quorum_queue_says_truthfully_what_its_delivery_count_means(broker, queue_name, make_wqd, tmp_path):
    flag = tmp_path / "crash"
    flag.touch()
    wqd = make_wqd([pool(queue_name, handler="handlers:kill_on_boom", workers=2, max_retries=1,
                         queue_type="quorum")], extra_env={"WQD_TEST_FLAG": str(flag)}).start()
    _publish(broker, queue_name, b"boom", pika.BasicProperties(delivery_mode=2))
    wait_for(lambda: _ready(broker, queue_name + ".dead") == 1, 60, message=lambda: wqd.logs())
    ((properties, _),) = _dead_letters(broker, queue_name)
    assert properties.headers["x-wqd-exception"] == "WorkerLost"
    assert "delivered 2 times without being settled" in properties.headers["x-wqd-error"]
    assert "died on each" not in wqd.logs()


class Raw:
    """A header value pika cannot encode itself, as its AMQP bytes (type octet first)."""

    def __init__(self, encoded: bytes):
        self.encoded = encoded

    @classmethod
    def packed(cls, kind: bytes, fmt: str, value):
        return cls(kind + struct.pack(fmt, value))

    @classmethod
    def nested_arrays(cls, depth: int):
        encoded = b"V"
        for _ in range(depth):
            encoded = b"A" + struct.pack(">I", len(encoded)) + encoded
        return cls(encoded)


@pytest.fixture
def raw_headers(monkeypatch):
    """Let this test's publisher send Raw header values (other clients can)."""
    encode_value = pika.data.encode_value

    def encode(pieces, value):
        if isinstance(value, Raw):
            pieces.append(value.encoded)
            return len(value.encoded)
        return encode_value(pieces, value)

    monkeypatch.setattr(pika.data, "encode_value", encode)


def test_header_values_pika_cannot_decode_never_crash_a_worker(broker, queue_name, make_wqd, raw_headers):
    """Doubles that are not finite, timestamps past year 9999: pika's decoder raises on them."""
    wqd = make_wqd([pool(queue_name, workers=1, max_retries=1, retry_delay=FAST_RETRY)]).start()
    # RabbitMQ refuses non-finite doubles itself; these it passes on.
    values = {"half": Raw.packed(b"d", ">d", 2.5), "far-time": Raw.packed(b"T", ">Q", 2**40),
              "huge-time": Raw.packed(b"T", ">Q", 2**63 + 5), "deep": Raw.nested_arrays(5000)}
    for name, value in values.items():
        for header in ("x-wqd-attempt", "tenant"):
            body = task_body(f"{name}-{header}", action="fail" if name == "huge-time" else None)
            broker.publish(queue_name, body.encode(), headers={header: value, "kept": "yes"}, declare=False)
    broker.publish(queue_name, task_body("after").encode(), declare=False)
    wanted = {f"{name}-{header}" for name in values for header in ("x-wqd-attempt", "tenant")
              if name != "huge-time"} | {"after"}
    wait_for(lambda: set(wqd.ended_ids()) == wanted, 30, message=lambda: wqd.logs())
    # The failing ones were retried and dead-lettered: their copies could be encoded again.
    wait_for(lambda: _ready(broker, queue_name + ".dead") == 2, 30, message=lambda: wqd.logs())
    for properties, _ in _dead_letters(broker, queue_name):
        assert properties.headers["kept"] == "yes"
    assert _restarts(wqd) == 0
    wqd.stop()
    assert "Traceback" not in wqd.logs()

