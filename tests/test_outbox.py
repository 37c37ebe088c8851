"""The outbox against a real PostgreSQL (tests/support/postgres.py) and a real
broker: enqueue in a transaction, the supervised relay, rows set aside,
the CLI, the metrics. The fault runs are in test_outbox_faults.py."""

import datetime
import json

import psycopg
import pytest

from tests.support.daemon import pool, run_cli
from tests.support.outbox import enqueue_rows, kill_relay, relay_pids, rows_left, with_outbox
from tests.support.waiting import wait_for
from wqd import config
from wqd.outbox import enqueue, enqueue_many


def test_committed_rows_run_once_and_rolled_back_rows_never(make_wqd, queue_name, outbox_dsn):
    wqd = with_outbox(make_wqd([pool(queue_name)]), outbox_dsn).start()
    committed = enqueue_rows(outbox_dsn, queue_name, range(0, 20))
    enqueue_rows(outbox_dsn, queue_name, range(100, 110), commit=False)
    with psycopg.connect(outbox_dsn) as connection:  # a message id of the caller's choosing, and enqueue_many
        own = enqueue(connection, queue_name, {"id": 20}, message_id="order-20-receipt")
        more = enqueue_many(connection, queue_name, [{"id": 21}, {"id": 22}])
    wait_for(lambda: sorted(wqd.ended_ids()) == list(range(23)), 60,
             message=lambda: f"tasks ended: {sorted(wqd.ended_ids())}\n{wqd.logs()}")
    ran = {entry["id"]: entry["message_id"] for entry in wqd.records("end")}
    assert [ran[n] for n in range(20)] == committed  # each under its row's message id
    assert ran[20] == own and [ran[21], ran[22]] == more
    wait_for(lambda: rows_left(outbox_dsn) == 0, 30, message="confirmed rows were not deleted")
    wait_for(lambda: wqd.metric("wqd_outbox_relayed_total") == 23 and wqd.metric("wqd_outbox_pending") == 0, 30,
             message=lambda: f"metrics: {wqd.http('/metrics')[1].decode()}")
    assert wqd.metric("wqd_outbox_relay_up") == 1
    status = wqd.status()["outbox"]
    assert status["relay_up"] is True and status["relayed"] == 23 and status["pending"] == 0
    shown = run_cli("status", "-c", str(wqd.config_path), env=wqd.env)
    assert "outbox wqd_outbox: relay up, 0 waiting" in shown.stdout, shown.stdout + shown.stderr
    assert sorted(wqd.ended_ids()) == list(range(23))  # nothing rolled back ran
    assert relay_pids(wqd)
    assert wqd.stop() == 0 and not relay_pids(wqd), "the relay outlived its master's stop"


def test_a_relay_sigkilled_mid_run_is_restarted_and_loses_nothing(make_wqd, queue_name, outbox_dsn):
    wqd = with_outbox(make_wqd([pool(queue_name, workers=2)]), outbox_dsn, batch=20).start()
    killed = []
    for batch in range(6):
        enqueue_rows(outbox_dsn, queue_name, range(batch * 30, batch * 30 + 30))
        if batch in (1, 3):
            killed.append(kill_relay(wqd))
    wait_for(lambda: set(wqd.ended_ids()) == set(range(180)), 90,
             message=lambda: f"{len(set(wqd.ended_ids()))} of 180 tasks ran\n{wqd.logs()}")
    assert len(wqd.ended_ids()) == 180, "a task ran twice"
    assert wait_for(lambda: relay_pids(wqd), 30) and not set(killed) & set(relay_pids(wqd))
    assert "Outbox relay (pid" in wqd.logs()  # the master told of the killed relay and started another


def test_a_row_the_broker_refuses_is_set_aside_and_listed(make_wqd, queue_name, outbox_dsn):
    wqd = with_outbox(make_wqd([pool(queue_name)]), outbox_dsn).start()
    with psycopg.connect(outbox_dsn) as connection:
        enqueue(connection, queue_name + ".nowhere", {"id": 1}, message_id="to-nowhere")
        # a plain INSERT from another language, with a content type no AMQP message can carry
        connection.execute("INSERT INTO wqd_outbox (message_id, queue, body, content_type) VALUES (%s, %s, %s, %s)",
                           ("bad-type", queue_name, b'{"id": 2}', "x" * 300))
        enqueue(connection, queue_name, {"id": 3})
    wait_for(lambda: wqd.ended_ids() == [3], 60, message=lambda: wqd.logs())
    wait_for(lambda: wqd.metric("wqd_outbox_refused_total") == 2, 30, message=lambda: wqd.logs())
    listed = run_cli("outbox", "list", "-c", str(wqd.config_path), env=wqd.env)
    assert listed.returncode == 0, listed.stderr
    assert "0 waiting, 2 set aside" in listed.stdout
    assert "to-nowhere" in listed.stdout and "does not exist" in listed.stdout
    assert "bad-type" in listed.stdout and "content_type" in listed.stdout
    found = json.loads(run_cli("outbox", "list", "--json", "-c", str(wqd.config_path), env=wqd.env).stdout)
    assert {row["message_id"] for row in found["set_aside"]} == {"to-nowhere", "bad-type"}
    assert rows_left(outbox_dsn) == 2  # set aside, not retried and not dropped
    wait_for(lambda: wqd.status()["outbox"]["set_aside"] == 2, 30)


def test_a_database_that_is_down_is_shown_and_retried(make_wqd, queue_name, postgres, outbox_dsn):
    wqd = with_outbox(make_wqd([pool(queue_name)]), outbox_dsn).start()
    wait_for(lambda: wqd.metric("wqd_outbox_relay_up") == 1, 30, message=lambda: wqd.logs())
    postgres.stop()
    try:
        wait_for(lambda: wqd.metric("wqd_outbox_relay_up") == 0, 30, message=lambda: wqd.logs())
        assert "outbox database" in wqd.status()["outbox"]["problem"]
        assert wqd.http("/readyz")[0] == 200  # the outbox does not make the workers unready
    finally:
        postgres.start()
    enqueue_rows(outbox_dsn, queue_name, [1])
    wait_for(lambda: wqd.ended_ids() == [1], 90, message=lambda: wqd.logs())
    assert wqd.metric("wqd_outbox_relay_up") == 1
    assert len(relay_pids(wqd)) == 1  # the same relay reconnected: no crash loop


def test_enqueue_refuses_what_could_not_be_published(outbox_dsn, tmp_path):
    config = tmp_path / "wqd.yaml"
    config.write_text(f"outbox: {{dsn: '{outbox_dsn}'}}\npools: [{{name: p, queue: q, handler: 'handlers:task'}}]\n")
    assert run_cli("outbox", "init", "-c", str(config)).returncode == 0
    with psycopg.connect(outbox_dsn) as connection:
        with pytest.raises(ValueError, match="message_id"):
            enqueue(connection, "q", "x", message_id="")
        with pytest.raises(TypeError, match="JSON"):
            enqueue(connection, "q", "x", headers={"when": datetime.datetime(2026, 1, 1)})
        with pytest.raises(ValueError, match="delay must be at most"):
            enqueue(connection, "q", "x", delay=10 ** 9)
        with pytest.raises(ValueError, match="queue"):
            enqueue(connection, "", "x")
        with pytest.raises(ValueError, match="table"):
            enqueue(connection, "q", "x", table="orders; DROP TABLE x")
        assert connection.execute("SELECT count(*) FROM wqd_outbox").fetchone()[0] == 0


def test_outbox_init_sql_is_what_init_runs(outbox_dsn, tmp_path):
    config = tmp_path / "wqd.yaml"
    config.write_text(f"outbox: {{dsn: '{outbox_dsn}', table: jobs_outbox}}\n"
                      f"pools: [{{name: p, queue: q, handler: 'handlers:task'}}]\n")
    printed = run_cli("outbox", "init", "--sql", "-c", str(config))
    assert printed.returncode == 0, printed.stderr
    assert "CREATE TABLE IF NOT EXISTS jobs_outbox" in printed.stdout
    assert "wqd outbox, schema version 1" in printed.stdout
    with psycopg.connect(outbox_dsn) as connection:  # as a migration tool would run it
        connection.execute(printed.stdout)
    listed = run_cli("outbox", "list", "-c", str(config))
    assert listed.returncode == 0 and "jobs_outbox: 0 waiting, 0 set aside" in listed.stdout, listed.stderr
    assert run_cli("outbox", "init", "-c", str(config)).returncode == 0  # idempotent


def test_outbox_commands_name_what_is_wrong(outbox_dsn, tmp_path):
    config = tmp_path / "wqd.yaml"
    config.write_text("outbox: {dsn: 'postgresql://wqd:s3cret@127.0.0.1:1/x'}\n"
                      "pools: [{name: p, queue: q, handler: 'handlers:task'}]\n")
    down = run_cli("outbox", "list", "-c", str(config))
    assert down.returncode == 69 and "cannot connect to the outbox database" in down.stderr
    assert "s3cret" not in down.stderr and "***" in down.stderr
    config.write_text(f"outbox: {{dsn: '{outbox_dsn}'}}\npools: [{{name: p, queue: q, handler: 'handlers:task'}}]\n")
    missing = run_cli("outbox", "list", "-c", str(config))
    assert missing.returncode == 78 and "does not exist: create it with `wqd outbox init" in missing.stderr
    config.write_text("pools: [{name: p, queue: q, handler: 'handlers:task'}]\n")
    none = run_cli("outbox", "init", "-c", str(config))
    assert none.returncode == 78 and "no outbox section" in none.stderr



POOLS = "pools: [{name: p, queue: q, handler: 'm:f'}]\n"


def test_the_outbox_section_is_checked(monkeypatch):
    monkeypatch.delenv("WQD_OUTBOX_DSN", raising=False)
    assert config.parse(POOLS, "wqd.yaml").outbox is None
    loaded = config.parse("outbox: {dsn: 'postgresql://app:pw@db/shop'}\n" + POOLS, "wqd.yaml").outbox
    assert (loaded.table, loaded.batch) == ("wqd_outbox", 500)
    with pytest.raises(config.ConfigError) as raised:
        config.parse("outbox: {table: 'orders; DROP TABLE x', batch: 0}\n" + POOLS, "wqd.yaml")
    text = str(raised.value)
    assert "outbox.table: expected a lower-case SQL name" in text and "outbox.batch:" in text
    with pytest.raises(config.ConfigError, match="outbox.dsn: is missing: set outbox.dsn or"):
        config.parse("outbox: {}\n" + POOLS, "wqd.yaml")
    with pytest.raises(config.ConfigError) as raised:
        config.parse("outbox: {dsn: 'mysql://app:s3cret@db/shop'}\n" + POOLS, "wqd.yaml")
    assert "expected a postgresql:// URL" in str(raised.value) and "s3cret" not in str(raised.value)
    monkeypatch.setenv("WQD_OUTBOX_DSN", "postgresql://app:from-env@db/shop")
    assert config.parse("outbox: {}\n" + POOLS, "wqd.yaml").outbox.dsn == "postgresql://app:from-env@db/shop"
