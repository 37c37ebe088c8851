"""Moving in: queues that exist before wqd, as a hand-written worker or an
application declared them. `wqd check --broker` says how each differs from
what wqd declares, `wqd run` says the same with the fix that fits the pool,
and `queue_arguments` or `declare: passive` adopt the queue."""

import pika

from tests.support.daemon import pool, run_cli, task_body, wqd_env
from tests.support.waiting import wait_for

LEGACY = {"x-max-priority": 10, "x-dead-letter-exchange": "legacy.dlx"}  # a hand-written worker's queue


def check_broker(wqd, tmp_path):
    return run_cli("check", "--broker", "-c", str(wqd.config_path), env=wqd_env(tmp_path / "record"))


def test_a_legacy_queue_is_named_with_the_fix_then_adopted_with_its_arguments(broker, queue_name, make_wqd,
                                                                             tmp_path):
    broker.declare_queue(queue_name, arguments=LEGACY)
    plain = make_wqd([pool(queue_name, workers=1)])
    result = check_broker(plain, tmp_path)
    assert result.returncode == 78, result
    assert f"queue {queue_name!r} already exists with other arguments than wqd declares" in result.stdout
    assert "queue_arguments: {x-" in result.stdout and "declare: passive" in result.stdout
    assert "quorum" not in result.stdout.split("To fix it:")[1] and "Traceback" not in result.stderr
    assert f"queue '{queue_name}.dead' does not exist yet: wqd declares it at start" in result.stdout
    assert plain.start(wait_ready=False).wait_exit(60) == 78
    assert "queue_arguments: {x-" in plain.logs()

    adopted = make_wqd([pool(queue_name, workers=1, queue_arguments=LEGACY)])
    result = check_broker(adopted, tmp_path)
    assert result.returncode == 0, result
    assert f"pool 'default': queue {queue_name!r} matches what wqd declares" in result.stdout
    adopted.start()
    broker.publish(queue_name, task_body("urgent").encode(), declare=False, priority=9)
    wait_for(lambda: adopted.ended_ids() == ["urgent"], 30, message=lambda: adopted.logs())


def test_declare_passive_uses_a_queue_as_it_is_and_says_what_it_cannot_promise(broker, queue_name, make_wqd,
                                                                               tmp_path):
    """A quorum queue an application declared first, tutorial-style (no delivery limit, no dead-letter target)."""
    broker.declare_queue(queue_name, arguments={"x-queue-type": "quorum"})
    strict = make_wqd([pool(queue_name, workers=1, queue_type="quorum")])
    result = check_broker(strict, tmp_path)
    assert result.returncode == 78 and "declare: passive" in result.stdout, result

    passive = make_wqd([pool(queue_name, workers=1, queue_type="quorum", declare="passive")])
    result = check_broker(passive, tmp_path)
    assert result.returncode == 0, result
    assert f"queue {queue_name!r} exists (used as it is: declare: passive)" in result.stdout
    passive.start()
    broker.publish(queue_name, task_body("as-it-is").encode(), declare=False)
    wait_for(lambda: passive.ended_ids() == ["as-it-is"], 30, message=lambda: passive.logs())
    warnings = [line for line in passive.logs().splitlines() if "(declare: passive)" in line]
    assert len(warnings) == 1 and "delivery limit" in warnings[0], passive.logs()


def test_declare_passive_on_a_missing_queue_is_a_configuration_error(broker, queue_name, make_wqd, tmp_path):
    passive = make_wqd([pool(queue_name, workers=1, declare="passive")])
    result = check_broker(passive, tmp_path)
    assert result.returncode == 78 and f"queue {queue_name!r} missing: declare: passive needs it" in result.stdout
    assert passive.start(wait_ready=False).wait_exit(60) == 78
    assert f"queue {queue_name!r} does not exist, and a pool with declare: passive uses a queue as it is" \
        in passive.logs()
    with broker.connection() as connection:  # and it was not created
        try:
            connection.channel().queue_declare(queue_name, passive=True)
            raise AssertionError("the queue was created")
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 404


def test_check_broker_creates_nothing_and_says_a_matching_setup_is_ok(broker, queue_name, make_wqd, tmp_path):
    wqd = make_wqd([pool(queue_name, workers=1)])
    result = check_broker(wqd, tmp_path)
    assert result.returncode == 0, result
    assert f"queue {queue_name!r} does not exist yet: wqd declares it at start" in result.stdout
    assert broker.queue_stats(queue_name) is None
