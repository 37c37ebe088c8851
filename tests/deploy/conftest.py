"""Fixtures of `make test-deploy`: wqd installed for real, under systemd as
PID 1 of a booted container (systemd-nspawn) and as an image run by a Docker
engine.

It needs root. Everything it starts (the container, the Docker engine and
its containers) is stopped by pid in fixture finalizers, also when a test
fails. Root filesystem, wheelhouse and Docker's images are cached under
.cache/deploy/ (git-ignored) and made again when missing. The broker is the
suite's throwaway node (the `broker` fixture of tests/conftest.py) on
loopback, which both containers reach through the host's network.

These tests are collected only when tests/deploy is named on the command
line (`make test-deploy`), so `make test` never needs root or Docker.
"""

import os
import shutil
from pathlib import Path

import builds
import pytest
import summary
from dockerd import Dockerd
from nspawn import Machine
from summary import timed

from tests.support.root_suites import collected_only_when_named, root_only

DEPLOY_DIR = Path(__file__).resolve().parent
REPO = builds.REPO
NOT_ROOT = ("make test-deploy needs root: it boots a container with systemd-nspawn, runs its own "
            "Docker engine and installs Debian packages. Run it as root (sudo make test-deploy).")
pytest_ignore_collect = collected_only_when_named(DEPLOY_DIR)
as_root = root_only(NOT_ROOT)


def pytest_terminal_summary(terminalreporter):
    if summary.lines:
        terminalreporter.section("deployment")
        for line in summary.lines:
            terminalreporter.write_line(line)




@pytest.fixture(scope="session")
def wqd_wheel(tmp_path_factory) -> Path:
    with timed("wqd wheel"):
        return builds.build_wheel(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="session")
def wheelhouse(wqd_wheel) -> Path:
    with timed("wheelhouse (cached in .cache/deploy/wheelhouse)"):
        return builds.wheelhouse(wqd_wheel)


@pytest.fixture(scope="session")
def rootfs() -> Path:
    with timed(f"{builds.SUITE} root filesystem (cached in .cache/deploy)"):
        return builds.rootfs()


@pytest.fixture(scope="module")
def machine(rootfs, wheelhouse, wqd_wheel, tmp_path_factory):
    """The booted container, with the repository, the wheel and the wheelhouse mounted read-only."""
    booted = Machine(rootfs, tmp_path_factory.mktemp("nspawn") / "console.log",
                     {REPO: "/srv/wqd", wheelhouse: "/srv/wheelhouse", wqd_wheel.parent: "/srv/dist"})
    try:
        with timed("boot of the container (systemd as PID 1)"):
            booted.boot()
        yield booted
    finally:
        booted.shutdown()


@pytest.fixture(scope="session")
def dockerd():
    # A short path: the engine's sockets live below it (108 bytes at most).
    run_dir = Path(f"/run/wqd-deploy-{os.getpid()}")
    engine = Dockerd(builds.CACHE / "docker", run_dir)
    try:
        engine.start()
        yield engine
    finally:
        engine.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
