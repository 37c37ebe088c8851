#!/bin/sh
# A wqd exec handler in POSIX shell: the message body is on stdin, the
# message in WQD_* variables. Exit 0: done (acked). Exit 65: this message can
# never succeed (dead-lettered at once, the last stderr lines as the reason).
# Any other exit, or a signal: failed (retried, then dead-lettered).
# What it prints on stdout and stderr goes to wqd's log.
set -eu
body=$(cat)
if [ -z "$body" ]; then
    echo "empty message: nothing to count" >&2
    exit 65
fi
words=$(printf '%s' "$body" | wc -w)
echo "message $WQD_MESSAGE_ID (attempt $WQD_ATTEMPT): $words words"
