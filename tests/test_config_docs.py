"""The configuration reference (docs/configuration.md) and etc/wqd.yaml are
rendered from the key declarations (wqd/config_docs.py): a key added,
renamed or re-documented in config.py without `python -m wqd.config.docs`
fails here."""

from wqd import config
from wqd.config import docs as config_docs


def test_the_committed_reference_and_sample_file_are_what_the_declarations_render():
    assert config_docs.stale_files() == [], "stale: run python -m wqd.config.docs"


def test_the_reference_names_exactly_the_declared_keys():
    page = config_docs.REFERENCE_PAGE.read_text()
    table = page.split(config_docs.BEGIN, 1)[1].split(config_docs.END, 1)[0]
    documented = [line.split("`")[1] for line in table.splitlines()[2:]]
    assert documented == [path for path, _ in config_docs.leaves(config.Config)]
    assert "pools[].max_retries" in documented and "broker.url" in documented


def test_the_sample_file_is_a_valid_configuration_with_every_default():
    loaded = config.parse(config_docs.SAMPLE_FILE.read_text(), "wqd.yaml")
    assert loaded.broker == config.BrokerConfig() and loaded.metrics == config.MetricsConfig()
    assert loaded.logging == config.LoggingConfig() and loaded.shutdown == config.ShutdownConfig()
    assert loaded.tracing == config.TracingConfig()
    (pool,) = loaded.pools
    assert pool == config.PoolConfig("default", "task_queue", "wqd.examples:sleep_dots",
                                     dead_letter_queue="task_queue.dead")

