"""Configuration validation: exact error text, exit 78, no secrets, no tracebacks."""

import pytest

from tests.support.daemon import run_cli, wqd_env
from wqd import config

GOOD = """\
broker:
  url: amqp://guest:s3cret@127.0.0.1:5672/%2F
pools:
  - name: default
    queue: task_queue
    handler: wqd.examples:sleep_dots
    workers: 2
"""


def parse(text):
    return config.parse(text, "wqd.yaml")


def errors_of(text):
    with pytest.raises(config.ConfigError) as caught:
        parse(text)
    return str(caught.value)


def test_defaults_are_filled_in():
    loaded = parse(GOOD)
    (pool,) = loaded.pools
    assert (pool.prefetch, pool.queue_type, pool.max_retries) == (1, "classic", 3)
    assert pool.dead_letter_queue == "task_queue.dead"
    assert pool.retry_delay == config.RetryDelay(1.0, 300.0, 2.0)
    assert loaded.metrics.listen == "127.0.0.1:9808"
    assert loaded.shutdown.graceful_timeout == 30.0
    assert loaded.broker.heartbeat == 60


def test_null_dead_letter_queue_is_kept():
    assert parse(GOOD + "    dead_letter_queue: null\n").pools[0].dead_letter_queue is None


@pytest.mark.parametrize("addition, expected", [
    ("    colour: red\n", "wqd.yaml:8: pools[0].colour: unknown key"),
    ("    prefetch: true\n", "wqd.yaml:8: pools[0].prefetch: expected a positive integer, got True"),
    ("    queue_type: stream\n", "pools[0].queue_type: expected one of classic, quorum, got 'stream'"),
    ("    time_limit: -1\n", "pools[0].time_limit: expected a positive number of seconds, got -1"),
    ("    retry_delay: {initial: 1, speed: 2}\n", "pools[0].retry_delay.speed: unknown key"),
])
def test_pool_errors(addition, expected):
    assert expected in errors_of(GOOD + addition)


def test_wrong_type_names_key_line_and_value():
    text = GOOD.replace("workers: 2", "workers: two")
    assert errors_of(text) == "wqd.yaml:7: pools[0].workers: expected a positive integer, got 'two'"


def test_missing_required_keys_and_duplicate_names_are_all_reported():
    text = GOOD + "  - name: default\n    handler: a:b\n"
    message = errors_of(text)
    assert "wqd.yaml:8: pools[1].queue: required key is missing" in message
    assert "wqd.yaml:8: pools[1].name: duplicate pool name 'default' (also pools[0])" in message
    text = GOOD + "  - name: default\n    queue: other\n    handler: a:b\n"
    assert "wqd.yaml:8: pools[1].name: duplicate pool name 'default' (also pools[0])" in errors_of(text)


def test_unknown_top_level_key_and_bad_url():
    message = errors_of(GOOD.replace("broker:", "brokers:"))
    assert "wqd.yaml:1: brokers: unknown key" in message
    message = errors_of(GOOD.replace("amqp://", "http://"))
    assert "broker.url: expected an amqp:// or amqps:// URL" in message
    assert "s3cret" not in message


def test_invalid_yaml_names_the_line():
    message = errors_of(GOOD + "  - name: [unclosed\n")
    assert message.startswith("wqd.yaml:9: invalid YAML:")


def test_empty_file_needs_pools():
    assert "pools: expected a non-empty list of pools, got None" in errors_of("")


def test_env_broker_url_overrides(monkeypatch):
    monkeypatch.setenv("WQD_BROKER_URL", "amqp://u:p@example:5673/v")
    assert parse(GOOD).broker.url == "amqp://u:p@example:5673/v"


def test_redact_url():
    assert config.redact_url("amqp://guest:guest@host:5672/%2F") == "amqp://guest:***@host:5672/%2F"
    assert config.redact_url("amqp://host/") == "amqp://host/"


# -- through the command line, as an operator meets it --

def _check(tmp_path, text, command="check"):
    path = tmp_path / "wqd.yaml"
    path.write_text(text)
    return run_cli(command, "-c", str(path), env=wqd_env(tmp_path / "record"))


@pytest.mark.parametrize("command", ["check", "run"])
def test_cli_refuses_a_bad_config_with_exit_78_and_no_traceback(tmp_path, command):
    result = _check(tmp_path, GOOD.replace("workers: 2", "workers: two") + "    colour: red\n", command)
    assert result.returncode == 78
    assert "pools[0].workers: expected a positive integer, got 'two'" in result.stderr
    assert "pools[0].colour: unknown key" in result.stderr
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr + result.stdout


def test_cli_names_a_missing_handler_module(tmp_path):
    result = _check(tmp_path, GOOD.replace("wqd.examples:sleep_dots", "no_such_module:handle"))
    assert result.returncode == 78
    assert "pools[0].handler: cannot import 'no_such_module:handle' from module 'no_such_module': " \
           "ModuleNotFoundError: No module named 'no_such_module'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_names_a_handler_module_that_raises_at_import(tmp_path):
    result = _check(tmp_path, GOOD.replace("wqd.examples:sleep_dots", "broken_handler:handle"))
    assert result.returncode == 78
    assert "RuntimeError: this module cannot be imported on purpose" in result.stderr
    assert "broken_handler.py:3" in result.stderr


def test_cli_names_a_missing_handler_attribute(tmp_path):
    result = _check(tmp_path, GOOD.replace("wqd.examples:sleep_dots", "wqd.examples:nothing_here"))
    assert result.returncode == 78
    assert "AttributeError" in result.stderr and "nothing_here" in result.stderr


def test_cli_check_accepts_a_good_config_and_hides_the_password(tmp_path):
    result = _check(tmp_path, GOOD)
    assert result.returncode == 0, result.stderr
    assert "amqp://guest:***@127.0.0.1:5672/%2F" in result.stdout
    assert "s3cret" not in result.stdout + result.stderr


def test_cli_missing_file(tmp_path):
    result = run_cli("check", "-c", str(tmp_path / "absent.yaml"))
    assert result.returncode == 78
    assert "cannot read the configuration file: No such file or directory" in result.stderr


def test_broker_url_may_list_cluster_nodes(monkeypatch):
    text = GOOD.replace("  url: amqp://guest:s3cret@127.0.0.1:5672/%2F",
                        "  url: [amqp://a:s3cret@n1:5672/%2F, amqp://a:s3cret@n2:5672/%2F]")
    assert parse(text).broker.urls == ("amqp://a:s3cret@n1:5672/%2F", "amqp://a:s3cret@n2:5672/%2F")
    monkeypatch.setenv("WQD_BROKER_URL", "amqp://u:p@n1/v, amqp://u:p@n2/v")
    assert parse(GOOD).broker.urls == ("amqp://u:p@n1/v", "amqp://u:p@n2/v")
    monkeypatch.setenv("WQD_BROKER_URL", "amqp://u:p@n1/v,http://u:s3cret@n2/v")
    message = errors_of(GOOD)
    assert "$WQD_BROKER_URL: expected an amqp:// or amqps:// URL or a list of them" in message
    assert "s3cret" not in message


def test_a_bad_url_in_a_list_is_named_without_its_password():
    text = GOOD.replace("  url: amqp://guest:s3cret@127.0.0.1:5672/%2F",
                        "  url: [amqp://a:s3cret@n1/, 'ftp://a:s3cret@n2/']")
    message = errors_of(text)
    assert "broker.url: expected an amqp:// or amqps:// URL or a list of them, got " \
           "['amqp://a:***@n1/', 'ftp://a:***@n2/']" in message
