"""The suite's fixtures and plugins live in tests/support/ (fixtures.py: the
broker node, queue names, the daemon; no_skips.py: a skip fails CI)."""

pytest_plugins = ["tests.support.fixtures", "tests.support.no_skips"]
