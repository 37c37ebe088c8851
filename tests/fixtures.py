"""Fixtures that run the wqd daemon (imported by conftest.py)."""

import pytest

from daemon import Wqd, free_port


@pytest.fixture
def make_wqd(tmp_path, broker):
    """``make_wqd(pools, **options) -> Wqd``; every daemon is killed after the test."""
    daemons = []

    def make(pools, broker_url=None, **options):
        wqd = Wqd(tmp_path / f"wqd{len(daemons)}", broker_url or broker.url, pools, **options)
        daemons.append(wqd)
        return wqd

    yield make
    for wqd in daemons:
        wqd.cleanup()


@pytest.fixture
def free_tcp_port():
    return free_port()
