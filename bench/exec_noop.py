"""A persistent exec handler that does nothing: one {"id": ..., "status": "ok"} per request line."""

import json
import sys

for line in sys.stdin:
    sys.stdout.write(json.dumps({"id": json.loads(line)["id"], "status": "ok"}) + "\n")
    sys.stdout.flush()
