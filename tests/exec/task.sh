#!/bin/sh
# A one-shot exec handler for tests/test_exec_handlers.py. The body is an
# action and its argument ("exit 3", "hang", ...); each run appends a JSON
# line to $WQD_TEST_RECORD, as tests/handlers.py does for Python handlers.
body=$(cat)
set -- $body
record() {
    printf '{"event":"%s","id":"%s","pid":%d,"attempt":%s,"redelivered":"%s","queue":"%s","pool":"%s","headers":%s,"extra":"%s"}\n' \
        "$1" "$WQD_MESSAGE_ID" $$ "$WQD_ATTEMPT" "$WQD_REDELIVERED" "$WQD_QUEUE" "$WQD_POOL" "$WQD_HEADERS" "${2:-}" \
        >> "$WQD_TEST_RECORD"
}
record start
case "$1" in
    ok) ;;
    reject) echo "first line of why" >&2; echo "this body cannot be processed" >&2; exit 65 ;;
    exit) echo "failing with $2" >&2; exit "$2" ;;
    signal) kill -KILL $$ ;;
    hang) sleep 600 & record child "$!"; wait ;;
    grandchild) sleep 600 & record child "$!" ;;
    flood) head -c "$2" /dev/zero | tr '\0' 'y' | fold -w 80; echo; echo "flood done" ;;
    long) head -c "$2" /dev/zero | tr '\0' 'z'; echo; echo "after the long line" ;;
    sleep) sleep "$2" ;;
    tick) i=0; while [ $i -lt 300 ]; do echo tick; sleep 0.2; i=$((i + 1)); done ;;
    env) env > "$(dirname "$WQD_TEST_RECORD")/env-$WQD_MESSAGE_ID" ;;
    body) printf '%s' "$body" > "$(dirname "$WQD_TEST_RECORD")/body-$WQD_MESSAGE_ID" ;;
esac
record end
