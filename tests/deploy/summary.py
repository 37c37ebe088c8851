"""What took how long, and the image size: printed at the end of the run
(conftest.py's pytest_terminal_summary), for cold and warm timings."""

import time

lines = []


def report(line: str) -> None:
    lines.append(line)


class timed:
    """``with timed("what"):`` reports how long the block took."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        self.started = time.monotonic()

    def __exit__(self, *exc):
        report(f"{self.what}: {time.monotonic() - self.started:.1f} s")
