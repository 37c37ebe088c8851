"""The examples in the README and docs/ that can run, run: every YAML block
that is a wqd configuration (or part of one) loads, and the quick start's
commands, as written, process its two messages against a real broker."""

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.broker import free_port
from tests.support.daemon import WQD, run_cli, wqd_env
from tests.support.waiting import wait_for
from wqd import config

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
WQD_KEYS = {name for name, _ in config.declared_keys(config.Config)}
# YAML in the docs that is not wqd's: Prometheus's scrape configuration and alert rules.
FOREIGN_KEYS = {"scrape_configs", "groups", "rule_files"}
A_POOL = "pools: [{name: example, queue: example, handler: 'myapp.tasks:handle'}]\n"


def yaml_blocks():
    for page in PAGES:
        for number, block in enumerate(re.findall(r"^```yaml\n(.*?)^```$", page.read_text(), re.M | re.S), 1):
            yield pytest.param(block, id=f"{page.name}-{number}")


@pytest.mark.parametrize("block", list(yaml_blocks()))
def test_every_yaml_block_is_a_wqd_configuration_that_loads_or_a_known_other_file(block):
    keys = set(yaml.safe_load(block))
    if keys <= FOREIGN_KEYS:
        return
    assert keys <= WQD_KEYS, f"not wqd's keys, nor a known other file's: {sorted(keys - WQD_KEYS)}"
    config.parse(block if "pools" in keys else block + A_POOL, "example.yaml")


def test_the_quick_start_runs_as_written(broker, queue_name, tmp_path):
    """etc/wqd.yaml as shipped, but for its queue (one of this test's) and its
    metrics address (a free port, as 9808 may be taken here)."""
    shipped = (REPO / "etc" / "wqd.yaml").read_text()
    text, listens = re.subn(r"^  listen: 127\.0\.0\.1:9808$", f"  listen: 127.0.0.1:{free_port()}", shipped, flags=re.M)
    text, queues = re.subn(r"^    queue: task_queue$", f"    queue: {queue_name}", text, flags=re.M)
    assert (listens, queues) == (1, 1), "etc/wqd.yaml changed its metrics.listen or its pool's queue"
    path = tmp_path / "wqd.yaml"
    path.write_text(text)
    env = wqd_env(tmp_path / "record.jsonl", {"WQD_BROKER_URL": broker.url})

    assert run_cli("check", "-c", str(path), env=env).returncode == 0
    with open(tmp_path / "wqd.log", "w") as log:
        daemon = subprocess.Popen([WQD, "run", "-c", str(path)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "Ready: every pool has a consuming worker." in (tmp_path / "wqd.log").read_text(), 60,
                 message=lambda: (tmp_path / "wqd.log").read_text())
        assert run_cli("publish", "-c", str(path), "Hello.", "Slow one.....", env=env).returncode == 0
        wait_for(lambda: broker.queue_stats(queue_name) == {"messages_ready": 0, "messages_unacknowledged": 0,
                                                            "consumers": 1}, 60, message="both messages done")
        def counted_twice():
            """The pool's status once both tasks count as succeeded (a worker
            counts a task just after its ack, which emptied the queue)."""
            status = run_cli("status", "--json", "-c", str(path), env=env)
            assert status.returncode == 0, status.stderr
            (pool,) = json.loads(status.stdout)["pools"]
            return pool if pool["tasks"]["succeeded"] == 2 else None

        pool = wait_for(counted_twice, 10, message="both counted as succeeded")
        assert pool["queue"] == queue_name, pool
        daemon.send_signal(signal.SIGINT)  # Ctrl-C stops gracefully
        assert daemon.wait(60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert "Traceback" not in (tmp_path / "wqd.log").read_text()


def test_the_sites_home_page_is_the_readme():
    """docs/index.md is README.md with its links made relative to docs/ (MkDocs
    builds docs/ only): edit the README, then copy it over."""
    readme = (REPO / "README.md").read_text()
    assert (REPO / "docs" / "index.md").read_text() == readme.replace("](docs/", "](")
