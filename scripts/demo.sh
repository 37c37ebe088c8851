#!/usr/bin/env bash
# `make demo`: the RabbitMQ "work queues" tutorial, run by wqd.
#
# Two wqd workers consume the durable queue `task_queue_demo` (never the
# `task_queue` an application of yours may use); `wqd publish` sends the
# tutorial's five messages, where each dot is one second of work; the demo
# waits until all are done, shows what each worker did, stops the daemon with
# SIGTERM (graceful: exit code 0) and deletes the demo queue.
#
# Broker: $WQD_BROKER_URL if set; else a broker answering AMQP on
# localhost:5672 (guest/guest); else a throwaway node started for the demo
# from tests/support/broker.py (needs Debian's rabbitmq-server: `make rabbitmq`),
# stopped again at the end.
#
# What the output shows (the tutorial's two lessons):
#  - Round-robin dispatch: the first message goes to one worker, the second to
#    the other, and the five messages end up spread across both workers
#    ("First", "Third", "Fifth" on one, "Second", "Fourth" on the other).
#  - Fair dispatch (prefetch 1, manual ack): a worker never holds more than one
#    unacknowledged message, so each worker's lines alternate strictly
#    Received / Done, and the next waiting message goes to whichever worker
#    finished first. Here: the worker with "First." (1 s) is free first and
#    takes "Third..." at t=1 s; the other finishes "Second.." at t=2 s and takes
#    "Fourth...."; the first is free again at t=4 s and takes "Fifth.....".
#    Plain round-robin without prefetch would hand out messages blindly in
#    turn, queueing work behind a busy worker while the other one idles; with
#    these evenly growing tasks both give the same split, but the timestamps
#    show each message was dispatched only when a worker became free. All
#    done after about 9 s instead of the 15 s one worker would need.
#  - Acks after the work: SIGTERM at the end finds both workers idle, they
#    close their connections and the daemon exits 0 with nothing left unacked.
#
# Environment: WQD_BROKER_URL; VENV (default .venv); WQD (the wqd command,
# default $VENV/bin/wqd); DEMO_PYTHON (a python with pika, default
# $VENV/bin/python); DEMO_LOCAL_PORT (port probed for a local broker, 5672).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${VENV:-.venv}
WQD=${WQD:-$VENV/bin/wqd}
PY=${DEMO_PYTHON:-$VENV/bin/python}
LOCAL_PORT=${DEMO_LOCAL_PORT:-5672}
QUEUE=task_queue_demo
WORKERS=2
MESSAGES=("First message." "Second message.." "Third message..." "Fourth message...." "Fifth message.....")

for exe in "$WQD" "$PY"; do
    if [ ! -x "$exe" ]; then
        echo "demo: $exe not found; run 'make venv' first (or just 'make demo')" >&2
        exit 1
    fi
done

workdir=$(mktemp -d "${TMPDIR:-/tmp}/wqd-demo.XXXXXX")
config=$workdir/wqd.yaml
log=$workdir/wqd.log
broker_pid=
daemon_pid=
url=

say() { printf '\n== %s\n' "$*"; }

# amqp ACTION QUEUE...: small broker operations through pika, on $url.
#   probe                exit 0 if the broker accepts an AMQP connection
#   stats QUEUE          print "<ready> <consumers>" (or "absent")
#   delete QUEUE...      delete the queues (no error if absent)
amqp() {
    "$PY" - "$url" "$@" <<'EOF'
import sys
import pika
import pika.exceptions

url, action, queues = sys.argv[1], sys.argv[2], sys.argv[3:]
params = pika.URLParameters(url)
params.connection_attempts = 1
params.socket_timeout = 3
params.stack_timeout = 5
try:
    conn = pika.BlockingConnection(params)
except Exception as exc:
    if action == "probe":
        sys.exit(1)
    sys.exit(f"demo: cannot connect to the broker: {exc!r}")
with conn:
    if action == "stats":
        try:
            ok = conn.channel().queue_declare(queues[0], passive=True)
            print(ok.method.message_count, ok.method.consumer_count)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
            print("absent")
    elif action == "delete":
        ch = conn.channel()
        for q in queues:
            ch.queue_delete(q)
EOF
}

# a URL for display: no password
redact() { sed -E 's#(amqps?://[^:/@]*:)[^@]*@#\1***@#' <<<"$1"; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
        echo "demo: stopping wqd (pid $daemon_pid)" >&2
        kill -TERM "$daemon_pid" 2>/dev/null || true
        for _ in $(seq 150); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
        if [ "$rc" != 0 ] && [ -s "$log" ]; then
            echo "demo: wqd log ($log):" >&2
            tail -n 40 "$log" >&2
        fi
    fi
    if [ -n "$url" ]; then
        amqp delete "$QUEUE" "$QUEUE.dead" 2>/dev/null || true
    fi
    if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
        echo "== stopping the throwaway RabbitMQ node"
        kill -TERM "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$workdir"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. a broker ----------------------------------------------------------
if [ -n "${WQD_BROKER_URL:-}" ]; then
    url=$WQD_BROKER_URL
    say "broker: \$WQD_BROKER_URL = $(redact "$url")"
else
    url="amqp://guest:guest@localhost:$LOCAL_PORT/%2F"
    if amqp probe; then
        say "broker: the one running on localhost:$LOCAL_PORT"
    else
        url=
        say "broker: none on localhost:$LOCAL_PORT, starting a throwaway RabbitMQ node (~5 s)"
        "$PY" -m tests.support.broker serve "$workdir/rabbitmq" >"$workdir/broker.url" 2>"$workdir/broker.err" &
        broker_pid=$!
        deadline=$((SECONDS + 120))
        while [ ! -s "$workdir/broker.url" ]; do
            if ! kill -0 "$broker_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
                echo "demo: the throwaway RabbitMQ node did not start:" >&2
                cat "$workdir/broker.err" >&2
                exit 1
            fi
            sleep 0.2
        done
        url=$(head -n 1 "$workdir/broker.url")
        echo "node: $(redact "$url")"
    fi
fi

# --- 2. config, fresh demo queue, daemon -------------------------------------
cat >"$config" <<EOF
broker:
  url: "$url"
metrics:
  listen: null
logging:
  level: info
  format: text
shutdown:
  graceful_timeout: 10
pools:
  - name: demo
    queue: $QUEUE
    handler: wqd.examples:sleep_dots
    workers: $WORKERS
    prefetch: 1
EOF
say "config: $config"
sed 's/^/    /; s#\(amqps\?://[^:/@]*:\)[^@]*@#\1***@#' "$config"

# Delete rather than purge: empty, and declared afresh with the arguments of
# this wqd version (a leftover queue with other arguments would be refused).
amqp delete "$QUEUE" "$QUEUE.dead"

say "starting: wqd run -c $config  (log: $log)"
PYTHONUNBUFFERED=1 "$WQD" run -c "$config" >"$log" 2>&1 &
daemon_pid=$!

deadline=$((SECONDS + 60))
while :; do
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        wait "$daemon_pid" && code=0 || code=$?
        daemon_pid=
        echo "demo: wqd exited with code $code before its workers consumed:" >&2
        cat "$log" >&2
        exit 1
    fi
    stats=$(amqp stats "$QUEUE")
    if [ "$stats" != absent ] && [ "${stats#* }" -ge "$WORKERS" ]; then
        break
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "demo: after 60 s the queue $QUEUE has ${stats#* } consumers, not $WORKERS" >&2
        exit 1
    fi
    sleep 0.2
done
echo "$WORKERS workers consuming $QUEUE"

# --- 3. the tutorial's five messages ----------------------------------------
say "publishing: wqd publish -c $config ..."
"$WQD" publish -c "$config" "${MESSAGES[@]}"
started=$SECONDS

# Wait until $1 "[x] Done" lines are in the log and the queue is empty.
wait_done() {
    local want=$1 deadline=$((SECONDS + 60)) done_count stats
    while :; do
        done_count=$(grep -c '\[x\] Done' "$log" || true)
        stats=$(amqp stats "$QUEUE")
        if [ "$done_count" -ge "$want" ] && [ "${stats%% *}" = 0 ]; then
            return
        fi
        if ! kill -0 "$daemon_pid" 2>/dev/null; then
            echo "demo: wqd exited while working" >&2
            exit 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "demo: after 60 s only $done_count of $want messages are done" \
                "(queue: $stats ready/consumers)" >&2
            exit 1
        fi
        sleep 0.2
    done
}

say "working (one second per dot, about 9 s with two workers)"
wait_done "${#MESSAGES[@]}"
echo "all ${#MESSAGES[@]} messages done in about $((SECONDS - started)) s"

say "wqd log"
sed 's/^/    /' "$log"

say "what each worker did"
"$PY" - "$log" <<'EOF'
import re
import sys

# A line's worker: "worker demo[1]" (or "demo[1]"), else "pid=123"/"[123]".
WORKER = [
    re.compile(r"\bworker[ :=]+([\w.-]+\[\d+\])"),
    re.compile(r"\b([A-Za-z][\w.-]*\[\d+\])"),
    re.compile(r"\bpid[ :=]+(\d+)"),
    re.compile(r"\[(\d+)\]"),
]
PID = re.compile(r"\bpid[ :=]+(\d+)|\[(\d+)\]")
groups, pids = {}, {}
for line in open(sys.argv[1], errors="replace"):
    if "[x]" not in line:
        continue
    key = "(unknown worker)"
    for rx in WORKER:
        m = rx.search(line.split("[x]")[0])
        if m:
            key = m.group(1)
            break
    m = PID.search(line.split("[x]")[0])
    if m and key not in pids:
        pids[key] = m.group(1) or m.group(2)
    groups.setdefault(key, []).append(line[line.index("[x]") - 1 :].rstrip())
for key, lines in groups.items():
    pid = f" (pid {pids[key]})" if key in pids and pids[key] not in key else ""
    received = [ln.split("'")[1].split(" ")[0] for ln in lines if "Received" in ln and "'" in ln]
    print(f"  {key}{pid}: {len(received)} message(s): {', '.join(received)}")
    for ln in lines:
        print(f"      {ln}")
EOF

# --- 4. fair dispatch, made visible -----------------------------------------
# One long task, then four short ones. With prefetch 1 the worker busy with
# the long task gets nothing more: the other worker takes all four short ones
# while it works. Blind round-robin would have queued two of them behind the
# long task.
FAIR=("Long task....." "Quick." "Quick." "Quick." "Quick.")
say "fair dispatch: one 5 s task, then four 1 s tasks"
round_start=$(wc -l < "$log")
"$WQD" publish -c "$config" "${FAIR[@]}"
wait_done $(( ${#MESSAGES[@]} + ${#FAIR[@]} ))
tail -n +"$((round_start + 1))" "$log" | grep '\[x\] Received' | sed 's/^/    /'
echo "  (one worker ran the long task; the other, free, took every quick one)"

# --- 5. graceful stop -------------------------------------------------------
say "stopping: SIGTERM to wqd (pid $daemon_pid)"
kill -TERM "$daemon_pid"
deadline=$((SECONDS + 30))
while kill -0 "$daemon_pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "demo: wqd did not exit within 30 s of SIGTERM" >&2
        exit 1
    fi
    sleep 0.1
done
wait "$daemon_pid" && code=0 || code=$?
daemon_pid=
if [ "$code" != 0 ]; then
    echo "demo: wqd exited with code $code after SIGTERM (expected 0)" >&2
    tail -n 20 "$log" >&2
    exit 1
fi
echo "wqd exited with code 0"
stats=$(amqp stats "$QUEUE")
if [ "$stats" != "0 0" ]; then
    echo "demo: queue $QUEUE is not empty after the stop: $stats (ready, consumers)" >&2
    exit 1
fi
echo "queue $QUEUE empty, no consumers: nothing lost, nothing left unacknowledged"
say "demo done (deleting $QUEUE)"
