"""`wqd publish` and `wqd status` from the command line."""

import json
import time

import pytest

from tests.support.daemon import pool, run_cli, url_option, wqd_env
from tests.support.waiting import wait_for
from wqd import errors
from wqd.cli.publish import publish_lines
from wqd.config import BrokerConfig

TUTORIAL = ["First message.", "Second message..", "Third message...", "Fourth message....", "Fifth message....."]


def test_publish_prints_the_tutorial_lines_and_messages_are_persistent(broker, queue_name, tmp_path):
    url, password = url_option(broker.url)
    result = run_cli("publish", "--url", url, "--queue", queue_name, *TUTORIAL, env=wqd_env(tmp_path / "r", password))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f" [x] Sent {m!r}" for m in TUTORIAL]
    connection = broker.connection()
    channel = connection.channel()
    method, properties, body = channel.basic_get(queue_name, auto_ack=True)
    assert body == b"First message." and properties.delivery_mode == 2 and properties.message_id
    assert channel.queue_declare(queue_name, passive=True).method.message_count == 4
    connection.close()


def test_publish_reads_stdin_and_uses_the_config(broker, queue_name, tmp_path, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1)])
    result = run_cli("publish", "-c", str(wqd.config_path), "--header", "tenant=acme", "-",
                     env=wqd_env(tmp_path / "r"), input="one\ntwo\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [" [x] Sent 'one'", " [x] Sent 'two'"]
    connection = broker.connection()
    _, properties, body = connection.channel().basic_get(queue_name, auto_ack=True)
    assert body == b"one" and properties.headers == {"tenant": "acme"}
    connection.close()


def test_publish_and_status_exit_69_when_the_broker_is_unreachable(tmp_path, make_wqd, free_tcp_port):
    url = f"amqp://guest:hidden@127.0.0.1:{free_tcp_port}/%2F"
    env = wqd_env(tmp_path / "r")
    without_password, password = url_option(url)
    result = run_cli("publish", "--url", without_password, "--queue", "q", "hello", env={**env, **password})
    assert result.returncode == 69
    assert f"cannot reach the broker at amqp://guest:***@127.0.0.1:{free_tcp_port}/%2F" in result.stderr
    assert "hidden" not in result.stderr and "Traceback" not in result.stderr
    wqd = make_wqd([pool("q")], broker_url=url)
    result = run_cli("status", "-c", str(wqd.config_path), env=env)
    assert result.returncode == 69 and "cannot reach the broker" in result.stderr


def test_publish_raises_typed_errors_and_leaves_exit_codes_to_the_cli(free_tcp_port):
    broker = BrokerConfig(urls=(f"amqp://guest:hidden@127.0.0.1:{free_tcp_port}/%2F",))
    with pytest.raises(errors.BrokerUnavailable) as caught:
        list(publish_lines(broker, "q", None, [b"hello"], {}))
    assert "cannot reach the broker" in str(caught.value) and "hidden" not in str(caught.value)


def test_publish_to_a_queue_of_another_type_is_a_configuration_error(broker, queue_name, tmp_path, make_wqd):
    """The queue exists as a classic queue; the pool says quorum: the broker refuses (406), exit 78."""
    connection = broker.connection()
    connection.channel().queue_declare(queue_name, durable=True)
    connection.close()
    wqd = make_wqd([pool(queue_name, workers=1, queue_type="quorum")])
    result = run_cli("publish", "-c", str(wqd.config_path), "x", env=wqd_env(tmp_path / "r"))
    assert result.returncode == 78, result.stderr
    assert result.stderr.startswith(f"wqd: configuration error:\nConfiguration error in pool 'default': queue "
                                    f"{queue_name!r} already exists with other arguments than wqd declares "
                                    f"(argument x-queue-type); the broker said: PRECONDITION_FAILED"), result.stderr
    assert "Traceback" not in result.stderr


def test_publish_with_wrong_credentials_says_so(broker, tmp_path):
    url, password = url_option(broker.url.replace("guest:guest", "guest:wrong"))
    result = run_cli("publish", "--url", url, "--queue", "q", "x", env=wqd_env(tmp_path / "r", password))
    assert result.returncode == 69
    assert "refused the credentials" in result.stderr and "wrong" not in result.stderr


def test_publish_url_takes_its_password_from_the_environment_never_the_command_line(broker, queue_name, tmp_path):
    """Every local user can read a command line (/proc/PID/cmdline): --url
    refuses a password, sending nothing, and takes it from
    $WQD_BROKER_PASSWORD, every character as it is."""
    user, password = f"pub-{queue_name[-8:]}", "p@ss/w:rd%41 ,amqp:// S3CR"
    broker.ctl("add_user", user, password)
    try:
        broker.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        url = f"amqp://{user}@127.0.0.1:{broker.port}/%2F"
        env = wqd_env(tmp_path / "r")
        result = run_cli("publish", "--url", url, "--queue", queue_name, "sent",
                         env={**env, "WQD_BROKER_PASSWORD": password})
        assert (result.returncode, result.stdout) == (0, " [x] Sent 'sent'\n"), result.stderr

        on_the_command_line = url.replace("@", ":S3CR-typed@", 1)
        result = run_cli("publish", "--url", on_the_command_line, "--queue", queue_name, "refused",
                         env={**env, "WQD_BROKER_PASSWORD": password})
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == (
            f"wqd publish: --url holds a password (amqp://{user}:***@127.0.0.1:{broker.port}/%2F), and every user "
            f"of this machine can read a command line (ps, /proc/PID/cmdline); nothing was sent. Give the URL "
            f"without it (amqp://USER@HOST/VHOST) and the password in $WQD_BROKER_PASSWORD, or use -c CONFIG "
            f"(whose broker.url $WQD_BROKER_URL overrides); and change that password if others can log in here\n")

        result = run_cli("publish", "--url", url, "--queue", queue_name, "no password", env=env)
        assert (result.returncode, result.stderr) == (
            1, "wqd publish: --url names a user, and $WQD_BROKER_PASSWORD, which gives its password, is not set\n")
        result = run_cli("publish", "--url", url, "--queue", queue_name, "wrong",
                         env={**env, "WQD_BROKER_PASSWORD": "S3CR-wrong"})
        assert result.returncode == 69 and "refused the credentials" in result.stderr, result.stderr
        assert "S3CR" not in result.stderr
        assert broker.get_all(queue_name) == [b"sent"]
    finally:
        broker.ctl("delete_user", user)


def test_status_against_a_running_daemon(broker, queue_name, make_wqd, tmp_path):
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == 2, 30, message="2 consuming")
    env = wqd_env(tmp_path / "r")
    result = run_cli("status", "-c", str(wqd.config_path), "--json", env=env)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    (pool_status,) = status["pools"]
    assert status["master"]["running"] and status["master"]["ready"]
    assert pool_status["consumers"] == 2 and pool_status["workers_live"] == 2
    assert {w["state"] for w in pool_status["workers"]} == {"consuming"}
    text = run_cli("status", "-c", str(wqd.config_path), env=env).stdout
    assert "default[1]" in text and queue_name in text
    wqd.stop()
    result = run_cli("status", "-c", str(wqd.config_path), "--json", env=env)
    assert json.loads(result.stdout)["master"]["running"] is False


def test_publish_under_a_broker_memory_alarm_fails_after_the_blocked_timeout(broker, queue_name, tmp_path):
    """connection.blocked: publishing must end with a clear error, not hang."""
    broker.ctl("set_vm_memory_high_watermark", "0.000001")
    try:
        url, password = url_option(broker.url)
        result = run_cli("publish", "--url", url, "--queue", queue_name, "blocked",
                         env=wqd_env(tmp_path / "r", password), timeout=90)
    finally:
        broker.ctl("set_vm_memory_high_watermark", "0.4")
    assert result.returncode == 69, result.stderr
    assert ("blocked publishing (a memory or disk alarm: see `rabbitmq-diagnostics alarms`) until the timeout "
            "(30 s) ran out" in result.stderr)


def test_declare_declares_every_pools_queues_as_the_pool_will(broker, queue_name, tmp_path, make_wqd):
    quorum = queue_name + ".q"
    wqd = make_wqd([pool(queue_name), pool(quorum, name="q", queue_type="quorum")])
    env = wqd_env(tmp_path / "r")
    result = run_cli("declare", "-c", str(wqd.config_path), env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"pool default: declared {queue_name}, {queue_name}.dead",
                                          f"pool q: declared {quorum}, {quorum}.dead"]
    types = {row["name"]: row["type"] for row in broker.list_queues("name", "type")}
    assert (types[queue_name], types[quorum], types[quorum + ".dead"]) == ("classic", "quorum", "quorum")
    assert run_cli("declare", "-c", str(wqd.config_path), env=env).returncode == 0  # idempotent
    wqd.start()  # the pools accept the queues as declared
    for name in (quorum, quorum + ".dead"):
        broker.delete_queue(name)


def test_declare_names_a_queue_that_exists_with_other_arguments(broker, queue_name, tmp_path, make_wqd):
    broker.declare_queue(queue_name)
    wqd = make_wqd([pool(queue_name, queue_type="quorum")])
    result = run_cli("declare", "-c", str(wqd.config_path), env=wqd_env(tmp_path / "r"))
    assert result.returncode == 78, result
    assert f"queue {queue_name!r} already exists with other arguments than wqd declares (argument " \
           f"x-queue-type)" in result.stderr and "Traceback" not in result.stderr


def test_publish_with_a_delay_delivers_no_earlier(broker, queue_name, tmp_path):
    broker.declare_queue(queue_name)
    began = time.monotonic()
    url, env = broker.url.replace("guest:guest@", "guest@"), wqd_env(tmp_path / "r", {"WQD_BROKER_PASSWORD": "guest"})
    result = run_cli("publish", "--url", url, "--queue", queue_name, "--delay", "2", "later", env=env)
    assert result.returncode == 0, result.stderr
    assert broker.get_all(queue_name) == []
    wait_for(lambda: broker.get_all(queue_name) == [b"later"], 30, interval=0.1, message="the delayed message")
    assert time.monotonic() - began >= 2
    refused = run_cli("publish", "--url", url, "--queue", queue_name, "--delay", "soon", "x", env=env)
    assert refused.returncode == 2 and "--delay: expected a number of seconds from 0 to 2097151, got 'soon'" \
        in refused.stderr
