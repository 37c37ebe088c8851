#!/bin/sh
# A persistent exec handler that does nothing: one {"status": "ok"} per request line.
while IFS= read -r request; do
    echo '{"status": "ok"}'
done
