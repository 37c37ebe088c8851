"""The suites that need root (tests/deploy, tests/partitions): collected only
when their directory is named on the command line, so `make test` never
needs root, and failing at once, with their own message, when not root."""

import os
from pathlib import Path

import pytest


def collected_only_when_named(directory: Path):
    """A ``pytest_ignore_collect`` hook for the conftest.py of ``directory``."""

    def pytest_ignore_collect(collection_path, config):
        named = [Path(config.invocation_params.dir, str(arg).split("::")[0]).resolve() for arg in config.args]
        if any(path == directory or directory in path.parents for path in named):
            return None
        return True

    return pytest_ignore_collect


def root_only(message: str):
    """A session fixture, autouse, that fails the run with ``message`` unless root."""

    @pytest.fixture(scope="session", autouse=True)
    def as_root():
        if os.geteuid() != 0:
            pytest.fail(message, pytrace=False)

    return as_root
