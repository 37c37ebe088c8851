"""A pytest plugin that turns skips into a failed session when WQD_NO_SKIPS=1
(CI sets it: a suite that skips what it cannot run would go green without
testing). A skip is allowed only if its test id is listed in
tests/allowed_skips.txt (one id a line, ``#`` starts a comment)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ALLOW_LIST = Path(__file__).resolve().parent.parent / "allowed_skips.txt"
ENV_VAR = "WQD_NO_SKIPS"


def allowed_skips(path: Path = ALLOW_LIST) -> set[str]:
    lines = path.read_text().splitlines() if path.exists() else []
    return {entry for line in lines if (entry := line.split("#", 1)[0].strip())}


def _enabled() -> bool:
    return os.environ.get(ENV_VAR, "") not in ("", "0")


class _Skips:
    def __init__(self) -> None:
        self.unallowed: list[str] = []
        self.allowed = allowed_skips()

    def note(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail") and report.nodeid not in self.allowed:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.unallowed.append(f"{report.nodeid or '(collection)'}: {reason}")


_skips = _Skips()


def pytest_runtest_logreport(report) -> None:
    _skips.note(report)


def pytest_collectreport(report) -> None:
    _skips.note(report)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session) -> None:
    if _enabled() and _skips.unallowed and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if _enabled() and _skips.unallowed:
        terminalreporter.section(f"skips not in {ALLOW_LIST.name} ({ENV_VAR}=1 fails the session)", red=True)
        for line in _skips.unallowed:
            terminalreporter.line(line, red=True)
