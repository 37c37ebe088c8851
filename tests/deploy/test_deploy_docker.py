"""The image under a Docker engine: the Dockerfile built as it is, against a
local base image given as PYTHON_IMAGE (no registry is reachable here), with
no network during the build, then run with --network host against the test
broker on loopback.

The base image is the cached bookworm root filesystem, imported, with a
virtualenv at /usr/local (so `python` and `pip` are where the official
Python images have them) and a wheelhouse of wqd's dependencies that pip
uses instead of an index (PIP_NO_INDEX, PIP_FIND_LINKS).
"""

import json
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from builds import REPO
from deploy_tasks import records
from dockerd import DOCKER
from summary import report, timed

from tests.support.waiting import wait_for

ROOTFS_IMAGE = "wqd-deploy-python:bookworm"
OFFLINE_IMAGE = "wqd-deploy-python-offline:bookworm"
IMAGE = "wqd-deploy:test"
TASKS = Path(__file__).resolve().parent / "deploy_tasks.py"
IMAGE_USER = "10001"


def _build(dockerd, context: Path, tag: str, dockerfile: str) -> None:
    (context / "Dockerfile").write_text(dockerfile)
    dockerd.docker("build", "--network", "none", "--tag", tag, str(context))


@pytest.fixture(scope="module")
def base_image(dockerd, rootfs, wheelhouse, tmp_path_factory) -> str:
    if not dockerd.has_image(ROOTFS_IMAGE):
        with timed(f"base image {ROOTFS_IMAGE} (docker import of the root filesystem; cached)"):
            tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run(
                [DOCKER, "import", "--change", "ENV LANG=C.UTF-8",
                 "--change", "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "--change", 'CMD ["python3"]', "-", ROOTFS_IMAGE + "-raw"],
                stdin=tar.stdout, env=dockerd.env, capture_output=True, text=True, timeout=600)
            tar.stdout.close()
            assert tar.wait(600) == 0 and imported.returncode == 0, imported.stderr
            _build(dockerd, tmp_path_factory.mktemp("base"), ROOTFS_IMAGE,
                   f"FROM {ROOTFS_IMAGE}-raw\nRUN python3 -m venv /usr/local\n")
    context = tmp_path_factory.mktemp("offline")
    (context / "wheelhouse").mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        (context / "wheelhouse" / wheel.name).write_bytes(wheel.read_bytes())
    _build(dockerd, context, OFFLINE_IMAGE,
           f"FROM {ROOTFS_IMAGE}\nCOPY wheelhouse /wheelhouse\nENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse\n")
    return OFFLINE_IMAGE


@pytest.fixture(scope="module")
def image(dockerd, base_image) -> str:
    with timed(f"docker build of {IMAGE} (--network none)"):
        dockerd.docker("build", "--network", "none", "--build-arg", f"PYTHON_IMAGE={base_image}",
                       "--tag", IMAGE, str(REPO))
    size = dockerd.inspect(IMAGE)["Size"]
    base = dockerd.inspect(base_image)["Size"]
    report(f"image {IMAGE}: {size / 1e6:.1f} MB ({(size - base) / 1e6:.1f} MB over its base, "
           f"a debootstrapped bookworm with systemd; python:3.11-slim is smaller)")
    return IMAGE


@pytest.fixture
def container(dockerd, image, broker, queue_name, tmp_path, free_tcp_port):
    run = Container(dockerd, image, broker, queue_name, tmp_path, free_tcp_port)
    yield run
    dockerd.docker("rm", "--force", run.name, check=False)


class Container:
    def __init__(self, dockerd, image, broker, queue, workdir: Path, port: int):
        self.dockerd = dockerd
        self.image = image
        self.broker = broker
        self.queue = queue
        self.name = f"wqd-deploy-{uuid.uuid4().hex[:8]}"
        self.config_path = workdir / "wqd.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "broker": {"url": "amqp://guest:guest@rabbitmq:5672/%2F"},  # $WQD_BROKER_URL overrides it
            # On the host's network: loopback only, a free port (the HEALTHCHECK follows it).
            "metrics": {"listen": f"127.0.0.1:{port}"},
            "logging": {"format": "json"},
            "shutdown": {"graceful_timeout": 30},
            "pools": [{"name": "default", "queue": queue, "handler": "deploy_tasks:task", "workers": 2}],
        }))
        self.config_path.chmod(0o644)

    def run(self) -> "Container":
        self.dockerd.docker(
            "run", "--detach", "--name", self.name, "--network", "host",
            "--env", f"WQD_BROKER_URL={self.broker.url}",
            "--volume", f"{self.config_path}:/etc/wqd/wqd.yaml:ro",
            "--volume", f"{TASKS}:/handlers/deploy_tasks.py:ro", "--env", "PYTHONPATH=/handlers",
            self.image)
        wait_for(lambda: self.consumers() == 2, 60, message=lambda: f"2 consumers:\n{self.logs()}")
        return self

    def state(self) -> dict:
        return self.dockerd.inspect(self.name)["State"]

    def logs(self) -> str:
        result = self.dockerd.docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def tasks(self, event: str, task_id: str) -> list:
        return [r for r in records(self.logs().splitlines()) if r["event"] == event and r["id"] == task_id]

    def consumers(self) -> int:
        return self.broker.queue_stats(self.queue)["consumers"]

    def publish(self, sleep: float = 0) -> str:
        task_id = uuid.uuid4().hex[:12]
        self.broker.publish(self.queue, json.dumps({"id": task_id, "sleep": sleep}))
        return task_id

    def wait_started(self, task_id: str) -> None:
        wait_for(lambda: self.tasks("start", task_id), 60, message=lambda: f"{task_id} not started:\n{self.logs()}")


def test_runs_as_non_root_reaches_the_broker_and_turns_healthy(container):
    container.run()
    pid = container.state()["Pid"]
    uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split("\n")[0].split()
    assert uids == [IMAGE_USER] * 4, uids
    task = container.publish()
    wait_for(lambda: container.tasks("end", task), 60, message=container.logs)
    wait_for(lambda: container.state()["Health"]["Status"] == "healthy", 120,
             message=lambda: f"not healthy: {container.state()['Health']}")
    lines = [json.loads(line) for line in container.logs().splitlines() if line.startswith("{")]
    assert any(entry["process"] == "master" and entry["level"] == "info" for entry in lines), lines


def test_docker_stop_above_graceful_timeout_lets_the_task_finish_and_ack(container):
    container.run()
    task = container.publish(sleep=5)
    container.wait_started(task)
    container.dockerd.docker("stop", "--time", "45", container.name, timeout=120)
    state = container.state()
    assert state["ExitCode"] == 0 and not state["OOMKilled"], (state, container.logs())
    assert container.tasks("end", task), f"the task was cut short:\n{container.logs()}"
    assert container.broker.queue_stats(container.queue) == {
        "messages_ready": 0, "messages_unacknowledged": 0, "consumers": 0}
    assert "Graceful stop" in container.logs()


def test_docker_kill_returns_the_task_to_the_queue(container):
    container.run()
    task = container.publish(sleep=60)
    container.wait_started(task)
    container.dockerd.docker("kill", container.name)
    wait_for(lambda: container.broker.queue_stats(container.queue) == {
        "messages_ready": 1, "messages_unacknowledged": 0, "consumers": 0}, 30,
        message=lambda: f"{container.broker.queue_stats(container.queue)}\n{container.logs()}")
    assert not container.tasks("end", task)
    assert container.state()["ExitCode"] == 137
