"""A persistent exec handler that does nothing: one {"status": "ok"} per request line."""

import sys

for _request in sys.stdin:
    sys.stdout.write('{"status": "ok"}\n')
    sys.stdout.flush()
