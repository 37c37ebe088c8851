"""docs/publishing.md, "Producers in any language": each producer in
examples/producers/ publishes a task to a wqd pool's queue, and the pool runs
it once. Node's amqplib (pinned) is installed into .cache/node-producers,
Debian's amqp-tools, golang-go and golang-github-rabbitmq-amqp091-go-dev by
scripts/ensure-debian-package.sh (as root); a tool missing fails, never skips."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import pool, task_body
from tests.support.waiting import wait_for

# Node, Go and Debian packages installed as root: `make test-producers`, not `make test`.
pytestmark = pytest.mark.producers

ROOT = Path(__file__).resolve().parent.parent
PRODUCERS = ROOT / "examples" / "producers"
CACHE = ROOT / ".cache"
AMQPLIB = "2.3.1"  # pinned: a new amqplib release must not change the test with no change of ours
AMQP091_GO = Path("/usr/share/gocode/src/github.com/rabbitmq/amqp091-go")
RUN_TIMEOUT = 20  # seconds each example may take, connecting to exit
SENT = re.compile(r" \[x\] Sent .* as ([0-9a-f-]{32,36})$")


def _ensure_debian_package(binary: str, package: str) -> None:
    result = subprocess.run(["bash", str(ROOT / "scripts" / "ensure-debian-package.sh"), binary, package],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"{binary} (Debian's {package}) is missing and was not installed:\n{result.stderr}",
                    pytrace=False)


def _run(command: list, what: str, timeout: float, **options) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **options)
    if result.returncode != 0:
        pytest.fail(f"{what} failed ({result.returncode}):\n{result.stdout}{result.stderr}", pytrace=False)
    return result


@pytest.fixture(scope="session")
def node_producer() -> list:
    """node new_task.js, with amqplib AMQPLIB installed next to nothing else."""
    prefix = CACHE / "node-producers"
    installed = prefix / "node_modules" / "amqplib" / "package.json"
    if f'"version": "{AMQPLIB}"' not in (installed.read_text() if installed.exists() else ""):
        prefix.mkdir(parents=True, exist_ok=True)
        _run(["npm", "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(prefix), f"amqplib@{AMQPLIB}"],
             f"npm install amqplib@{AMQPLIB}", timeout=300)
    return ["env", f"NODE_PATH={prefix / 'node_modules'}", "node", str(PRODUCERS / "new_task.js")]


@pytest.fixture(scope="session")
def shell_producer() -> list:
    _ensure_debian_package("/usr/bin/amqp-publish", "amqp-tools")
    return ["sh", str(PRODUCERS / "new_task.sh")]


@pytest.fixture(scope="session")
def go_producer(tmp_path_factory) -> list:
    """new_task.go built once (GOPATH mode, from Debian's amqp091-go sources)."""
    _ensure_debian_package("/usr/bin/go", "golang-go")
    _ensure_debian_package(str(AMQP091_GO), "golang-github-rabbitmq-amqp091-go-dev")
    binary = tmp_path_factory.mktemp("go") / "new_task"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "GOFLAGS": "",
           "GOCACHE": str(CACHE / "go-build")}
    _run(["go", "build", "-o", str(binary), str(PRODUCERS / "new_task.go")], "go build new_task.go",
         timeout=300, env=env, cwd=binary.parent)
    return [str(binary)]


PRODUCER_FIXTURES = {"node": "node_producer", "shell": "shell_producer", "go": "go_producer"}


def _publish(command: list, url: str, queue: str, body: str) -> subprocess.CompletedProcess:
    return subprocess.run([*command, queue, body], capture_output=True, text=True, timeout=RUN_TIMEOUT,
                          env={**os.environ, "AMQP_URL": url})


@pytest.mark.parametrize("language", ["node", "go"])
def test_a_producer_sets_a_message_id_and_the_pool_runs_its_task_once(
        language, request, broker, queue_name, make_wqd):
    command = request.getfixturevalue(PRODUCER_FIXTURES[language])
    wqd = make_wqd([pool(queue_name, workers=1)]).start()  # the pool declares the queue
    task_id = f"{language}-task"
    result = _publish(command, broker.url, queue_name, task_body(task_id))
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    message_id = SENT.match(line).group(1)
    wait_for(lambda: task_id in wqd.ended_ids(), RUN_TIMEOUT, message=wqd.logs)
    (start,) = [e for e in wqd.records("start") if e["id"] == task_id]
    assert (start["message_id"], start["delivery_mode"], start["redelivered"]) == (message_id, 2, False)
    assert wqd.ended_ids() == [task_id]


@pytest.mark.parametrize("language", ["node", "go"])
def test_a_producer_fails_on_a_missing_queue_and_declares_nothing(language, request, broker, queue_name):
    command = request.getfixturevalue(PRODUCER_FIXTURES[language])
    result = _publish(command, broker.url, queue_name, "lost")
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    assert "404" in result.stderr and "NOT_FOUND" in result.stderr, result.stderr
    assert queue_name not in broker.ctl("list_queues", "name")


def test_the_shell_producer_sends_a_persistent_task_without_an_id(shell_producer, broker, queue_name, make_wqd):
    """amqp-publish sets no message id (new_task.sh says so): the task still runs once."""
    wqd = make_wqd([pool(queue_name, workers=1)]).start()
    result = _publish(shell_producer, broker.url, queue_name, task_body("shell-task"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f" [x] Sent '{task_body('shell-task')}'\n"
    wait_for(lambda: "shell-task" in wqd.ended_ids(), RUN_TIMEOUT, message=wqd.logs)
    (start,) = wqd.records("start")
    assert (start["message_id"], start["delivery_mode"], start["redelivered"]) == ("", 2, False)
    assert wqd.ended_ids() == ["shell-task"]
