"""The pickup-latency record every benchmarked system's handler writes.

A paced publisher puts its CLOCK_MONOTONIC time (system-wide on Linux, so
comparable across processes) in each body; the handler, first thing, appends
"PUBLISHED STARTED" to the file named by $WQD_BENCH_LATENCY, one write(2) on
a descriptor opened once per process. wqd's handler, the bare consumer and
the peers' tasks all call record(), so the write costs every system the same.
No variable, no file: record() does nothing (the throughput drains).
"""

import os
import time

_fd = None  # opened at the first record(), in the process that records


def record(published) -> None:
    started = time.monotonic()
    global _fd
    if _fd is None:
        path = os.environ.get("WQD_BENCH_LATENCY")
        if not path:
            return
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, f"{float(published):.6f} {started:.6f}\n".encode())
