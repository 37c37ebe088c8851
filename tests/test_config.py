"""Configuration validation: exact error text, exit 78, no secrets, no tracebacks."""

import dataclasses
from pathlib import Path

import pytest
import yaml

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
    ("    time_limit: -1\n", "pools[0].time_limit: expected a positive number of seconds, at most 31536000 (a year), got -1"),
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


@pytest.mark.parametrize("key, shown", [("7", "7"), ("null", "None"), ("2026-01-01", "datetime.date(2026, 1, 1)")])
def test_a_key_yaml_reads_as_another_type_is_an_unknown_key(key, shown):
    """At the top level and in a pool: the key's path is built from it."""
    assert f"{shown}: unknown key" in errors_of(f"{key}: x\n" + GOOD)
    assert f"pools[0].{shown}: unknown key" in errors_of(GOOD + f"    {key}: x\n")


def test_a_url_yaml_cut_at_its_password_hides_the_password():
    """A space after the user's colon, in a list of URLs, makes YAML read a
    mapping: user -> password@host."""
    message = errors_of(GOOD.replace("url: amqp://guest:s3cret@", "url:\n  - amqp://guest: p@ss,w:rd@"))
    assert "broker.url: expected an amqp:// or amqps:// URL" in message
    assert "p@ss" not in message and "w:rd" not in message, message
    assert "{'amqp://guest': '***'}" in message


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


def test_every_key_is_declared_with_a_check_and_a_doc():
    sections = [config.Config, config.BrokerConfig, config.TLSConfig, config.MetricsConfig, config.LoggingConfig,
                config.ShutdownConfig, config.TracingConfig, config.PoolConfig, config.RetryDelay, config.DeduplicationConfig]
    for section in sections:
        keys = config.declared_keys(section)
        assert keys, section
        for name, field in keys:
            assert field.metadata["doc"].strip(), f"{section.__name__}.{name} has no doc"
            assert callable(field.metadata["check"]) or isinstance(
                field.metadata["check"], (config.Section, config.SectionList)), name
        undeclared = {f.name for f in dataclasses.fields(section)} - {f.name for _, f in keys}
        assert undeclared == ({"path"} if section is config.Config else set()), section


def test_defaults_in_the_dataclasses_are_the_ones_a_file_gets():
    loaded = parse("pools: [{name: a, queue: q, handler: 'm:f'}]\n")
    assert loaded.broker == config.BrokerConfig() and loaded.metrics == config.MetricsConfig()
    assert loaded.logging == config.LoggingConfig() and loaded.shutdown == config.ShutdownConfig()
    assert loaded.pools[0] == config.PoolConfig("a", "q", "m:f", dead_letter_queue="q.dead")


def test_nested_sections_may_be_null_or_left_out():
    text = "broker: {tls: null}\nmetrics: {listen: null}\n" \
           "pools: [{name: a, queue: q, handler: 'm:f', retry_delay: null}]\n"
    loaded = parse(text)
    assert loaded.broker.tls is None and loaded.metrics.listen is None
    assert loaded.pools[0].retry_delay == config.RetryDelay()


def test_errors_from_every_section_and_pool_are_collected_together(tmp_path):
    text = GOOD + "    retry_delay: {factor: 0.5}\n" \
                  "  - 5\n" \
                  "  - {name: other, queue: q2, handler: 'm:f', workers: 0}\n" \
                  "logging: {level: loud}\n" \
                  "shutdown: []\n"
    assert errors_of(text).splitlines() == [
        "wqd.yaml:11: logging.level: expected one of debug, info, warning, error, got 'loud'",
        "wqd.yaml:12: shutdown: expected a mapping, got []",
        "wqd.yaml:8: pools[0].retry_delay.factor: expected a number from 1 to 100, got 0.5",
        "wqd.yaml:9: pools[1]: expected a mapping, got 5",
        "wqd.yaml:10: pools[2].workers: expected a positive integer, got 0",
    ]


def test_tls_keys_that_do_not_fit_together(tmp_path):
    key_file = tmp_path / "client.key"
    key_file.write_text("not checked here")
    text = GOOD.replace("  url: amqp://guest:s3cret@127.0.0.1:5672/%2F",
                        f"  url: amqp://guest:s3cret@127.0.0.1:5672/%2F\n  tls:\n    key_file: {key_file}")
    assert errors_of(text).splitlines() == [
        "wqd.yaml:3: broker.tls: is only used with amqps:// URLs, but no broker URL is amqps://",
        "wqd.yaml:4: broker.tls.key_file: is set without broker.tls.cert_file",
    ]


@pytest.mark.parametrize("line, replacement, expected", [
    ("workers: 2", "workers: 2.0", "pools[0].workers: expected a positive integer, got 2.0"),
    ("workers: 2", "max_retries: false", "pools[0].max_retries: expected an integer >= 0, got False"),
    ("workers: 2", "time_limit: true", "pools[0].time_limit: expected a positive number of seconds, at most 31536000 (a year), got True"),
    ("handler: wqd.examples:sleep_dots", "handler: nocolon", "pools[0].handler: expected \"module:callable\""),
])
def test_a_boolean_is_not_a_number_and_types_are_strict(line, replacement, expected):
    assert expected in errors_of(GOOD.replace(line, replacement))


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
           "ModuleNotFoundError: No module named 'no_such_module'; modules are looked up in the working " \
           f"directory ({Path.cwd()}) and PYTHONPATH (" in result.stderr
    assert "WorkingDirectory= under systemd" in result.stderr and "Traceback" not in result.stderr


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
    monkeypatch.setenv("WQD_BROKER_URL", "amqp://u:p@n1/v,amqps://u:s3cret@n2:99999/v")
    message = errors_of(GOOD)
    assert "$WQD_BROKER_URL: the port must be a number from 1 to 65535 (URL 2 of 2), got " \
           "['amqp://u:***@n1/v', 'amqps://u:***@n2:99999/v']" in message
    assert "s3cret" not in message


def test_a_bad_url_in_a_list_is_named_without_its_password():
    text = GOOD.replace("  url: amqp://guest:s3cret@127.0.0.1:5672/%2F",
                        "  url: [amqp://a:s3cret@n1/, 'ftp://a:s3cret@n2/']")
    message = errors_of(text)
    assert "broker.url: expected an amqp:// or amqps:// URL or a list of them, got " \
           "['amqp://a:***@n1/', 'ftp://a:***@n2/']" in message


# -- hostile values, as classes --

def _leaf_keys(cls, prefix=()):
    """(YAML path, check) of every key that holds a single value."""
    for name, field in config.declared_keys(cls):
        check = field.metadata["check"]
        if isinstance(check, config.SectionList):
            yield from _leaf_keys(check.cls, prefix + (name, 0))
        elif isinstance(check, config.Section):
            yield from _leaf_keys(check.cls, prefix + (name,))
        else:
            yield prefix + (name,), check


def _accepts(check, value) -> bool:
    try:
        check(value)
        return True
    except ValueError:
        return False


NUMBER_KEYS = [path for path, check in _leaf_keys(config.Config) if _accepts(check, 1)]


def test_the_number_keys_are_the_expected_ones():
    names = {".".join(str(part) for part in path) for path in NUMBER_KEYS}
    assert names == {"broker.heartbeat", "shutdown.graceful_timeout", "pools.0.workers", "pools.0.prefetch",
                     "pools.0.max_retries", "pools.0.retry_delay.initial", "pools.0.retry_delay.max",
                     "pools.0.retry_delay.factor", "pools.0.time_limit", "pools.0.max_tasks_per_child",
                     "pools.0.max_memory_per_child", "deduplication.capacity", "outbox.batch"}


# Counts that are only ever compared: any size is usable.
UNBOUNDED_COUNTS = ("max_retries", "max_tasks_per_child", "max_memory_per_child")


@pytest.mark.parametrize("path, value", [
    (path, value) for path in NUMBER_KEYS for value in (".nan", ".inf", "-.inf", "1" + "0" * 400, "1e400")
    if not (path[-1] in UNBOUNDED_COUNTS and value.isdigit())
], ids=lambda item: ".".join(map(str, item)) if isinstance(item, tuple) else item[:8])
def test_every_number_key_refuses_what_is_not_a_finite_usable_number(path, value):
    document = {"pools": [{"name": "a", "queue": "q", "handler": "m:f"}]}
    target = document
    for part in path[:-1]:
        target = target[part] if isinstance(part, int) else target.setdefault(part, {})
    target[path[-1]] = value
    text = yaml.safe_dump(document).replace(f"'{value}'", value)
    message = errors_of(text)
    assert ".".join(str(part) for part in path).replace(".0.", "[0].") + ": expected" in message, message


@pytest.mark.parametrize("text, expected", [
    ("pools: [{name: a, queue: q, handler: 'm:f', workers: 1001}]", "pools[0].workers: expected at most 1000, got 1001"),
    ("pools: [{name: a, queue: q, handler: 'm:f', prefetch: 65536}]",
     "pools[0].prefetch: expected at most 65535 (a 16-bit AMQP field), got 65536"),
    ("pools: [{name: a, queue: q, handler: 'm:f', retry_delay: {max: 2073601}}]",
     "pools[0].retry_delay.max: expected a positive number of seconds, at most 2073600 (24 days), got 2073601"),
    ("pools: [{name: a, queue: q, handler: 'm:f', retry_delay: {factor: 101}}]",
     "pools[0].retry_delay.factor: expected a number from 1 to 100, got 101"),
])
def test_numbers_within_what_amqp_rabbitmq_and_the_clock_take(text, expected):
    assert expected in errors_of(text)


@pytest.mark.parametrize("url, shown", [
    ("amqp://guest:guest@host:5672/%2F", "amqp://guest:***@host:5672/%2F"),
    ("amqp://host/", "amqp://host/"),
    ("amqp://user@host/", "amqp://user@host/"),
    ("amqp://u:pa/ss@host/v", "amqp://u:***@host/v"),
    ("amqp://u:p@ss@host/v", "amqp://u:***@host/v"),
    ("amqp://u:p#ss?x@host:5672/v?heartbeat=5", "amqp://u:***@host:5672/v?heartbeat=5"),
    ("amqp://u:p:ss,amqp://x@host/", "amqp://u:***@host/"),
    ("amqp://u:secret", "amqp://u:***"),  # no "@": not a port, so maybe a password
    ("amqp://u:secret/vhost", "amqp://u:***"),
    ("amqp://[::1]:5672/%2F", "amqp://[::1]:5672/%2F"),
    ("guest:secret@host", "guest:***@host"),
])
def test_redact_url_whatever_the_password_holds(url, shown):
    assert config.redact_url(url) == shown


@pytest.mark.parametrize("text, urls", [
    ("amqp://u:p@a/v, amqp://u:p@b/v", ["amqp://u:p@a/v", "amqp://u:p@b/v"]),
    ("amqp://u:p,q@a/v,AMQPS://u:r,s@b/v", ["amqp://u:p,q@a/v", "AMQPS://u:r,s@b/v"]),
    ("amqp://u:p,http://x@a/v", ["amqp://u:p,http://x@a/v"]),
])
def test_url_lists_split_only_where_a_new_url_starts(text, urls):
    assert config.split_urls(text) == urls


def test_a_password_with_reserved_characters_is_encoded_for_pika(monkeypatch):
    import pika

    loaded = parse(GOOD.replace("amqp://guest:s3cret@127.0.0.1:5672/%2F",
                                "'amqp://guest:a/b@c#d?e:f,g h@127.0.0.1:5672/%2F'"))
    assert loaded.broker.url == "amqp://guest:a%2Fb%40c%23d%3Fe%3Af,g%20h@127.0.0.1:5672/%2F"
    parameters = pika.URLParameters(loaded.broker.url)
    assert (parameters.credentials.password, parameters.host, parameters.port) == ("a/b@c#d?e:f,g h", "127.0.0.1", 5672)
    monkeypatch.setenv("WQD_BROKER_URL", "amqp://u:x,y@n1/v,amqp://u:z,w@n2/v")
    assert parse(GOOD).broker.urls == ("amqp://u:x,y@n1/v", "amqp://u:z,w@n2/v")


def test_a_key_or_a_value_holding_a_url_is_shown_without_its_password():
    message = errors_of(GOOD + "    'amqp://u:k3y-secret@h': 1\n    colour: [{a: 'amqp://u:v4l-secret@h'}]\n")
    assert "pools[0].amqp://u:***@h: unknown key" in message
    assert "k3y-secret" not in message and "v4l-secret" not in message


def test_a_long_value_is_cut_in_an_error():
    message = errors_of(GOOD.replace("workers: 2", "workers: '" + "x" * 100_000 + "'"))
    assert len(message) < 400 and message.endswith("...")


@pytest.mark.parametrize("text, problem", [
    ("a: &a [*a]\n", "wqd.yaml:1: alias *a refers to a collection that contains it"),
    ("a: " + "[" * 40 + "]" * 40 + "\n", "wqd.yaml:1: the document nests deeper than 32 levels"),
    ("a: &a [" + ", ".join(["x" * 100] * 100) + "]\nb: &b [" + ", ".join(["*a"] * 100) + "]\n",
     "wqd.yaml:2: the document, its aliases expanded, is larger than wqd accepts"),
    ("pools: [{name: a, queue: q, handler: 'm:f'}]\nwhen: 2026-13-45\n", "wqd.yaml: invalid YAML: month must be in 1..12"),
])
def test_yaml_beyond_the_limits_is_refused(text, problem):
    assert errors_of(text).startswith(problem)


def test_anchors_and_merge_keys_within_the_limits_still_work():
    text = "x-defaults: &defaults {queue: q, handler: 'm:f', workers: 3}\n"
    assert "x-defaults: unknown key" in errors_of(text + "pools: [{<<: *defaults, name: a}]\n")
    loaded = parse("pools:\n  - &p {name: a, queue: q, handler: 'm:f', workers: 3}\n  - {<<: *p, name: b}\n")
    assert [pool.workers for pool in loaded.pools] == [config.WorkerBounds(3, 3)] * 2
