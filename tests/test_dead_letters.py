"""`wqd dead list|show|replay|purge` against the real broker: an operator's
session with failures of three exception types, a fix and a replay; a replay
SIGKILLed midway loses and duplicates nothing; exit 69 with the broker down."""

import datetime
import decimal
import hashlib
import json
import signal
import struct
import subprocess
import time

import pika
import pytest

from tests.support.daemon import WQD, pool, run_cli, wqd_env
from tests.support.dead_letters import RawValue, publish_letters
from tests.support.waiting import wait_for
from wqd import errors
from wqd.broker import dead_letters

KINDS = {"ValueError": ["v1", "v2", "v3"], "KeyError": ["k1", "k2"], "ZeroDivisionError": ["z1", "z2"]}


def dead(wqd, tmp_path, *args, expect=0):
    result = run_cli("dead", args[0], "-c", str(wqd.config_path), *args[1:], env=wqd_env(tmp_path / "record"))
    assert result.returncode == expect, result
    return result


def listed(wqd, tmp_path, *args) -> list:
    return json.loads(dead(wqd, tmp_path, "list", "--json", *args).stdout)


def without_age(entries: list) -> list:
    return [{key: value for key, value in entry.items() if key != "age_seconds"} for entry in entries]


def body(task_id: str, exception: str) -> str:
    return json.dumps({"id": task_id, "raise": exception})


def ready(broker, queue: str) -> int:
    with broker.connection() as connection:
        return connection.channel().queue_declare(queue, passive=True).method.message_count


def test_list_show_replay_by_exception_and_purge_with_a_fixed_handler(broker, queue_name, make_wqd, tmp_path):
    flag = tmp_path / "the-bug"
    flag.touch()
    wqd = make_wqd([pool(queue_name, handler="dead_handlers:task", workers=2, max_retries=1,
                         retry_delay={"initial": 0.05, "max": 0.05})],
                   extra_env={"WQD_TEST_BROKEN": str(flag)}).start()
    dlq = f"{queue_name}.dead"
    for exception, ids in KINDS.items():
        for task_id in ids:
            broker.publish(queue_name, body(task_id, exception), message_id=task_id)
    wait_for(lambda: wqd.metric("wqd_tasks_total", pool="default", outcome="dead_lettered") == 7, 60,
             message="7 dead letters")
    # A binary message someone dead-lettered by hand: shown as hex; an escape
    # sequence in a header is spelled out, not sent to the operator's terminal.
    broker.publish(dlq, bytes(range(256)) * 2, message_id="binary-1",
                   headers={"x-wqd-error": "\x1b[2Jscreen cleared", "note": "\x1b]0;title\x07"})

    # list: every message, twice the same, and the queue as it was.
    first = listed(wqd, tmp_path)
    assert len(first) == 8 and without_age(listed(wqd, tmp_path)) == without_age(first)
    assert broker.queue_stats(dlq) == {"messages_ready": 8, "messages_unacknowledged": 0, "consumers": 0}
    by_id = {entry["id"]: entry for entry in first}
    for exception, ids in KINDS.items():
        for task_id in ids:
            entry = by_id[task_id]
            assert entry["exception"] == exception and entry["attempts"] == 2, entry
            assert "hit the bug" in entry["error"] and entry["pool"] == "default" and entry["replays"] == 0
            assert 0 <= entry["age_seconds"] < 120 and entry["body_bytes"] == len(body(task_id, exception))
    assert by_id["binary-1"]["exception"] == "(unknown)" and by_id["binary-1"]["body_bytes"] == 512
    text = dead(wqd, tmp_path, "list").stdout
    assert "\x1b" not in text and "\\x1b[2Jscreen cleared" in text, text
    text = text.splitlines()
    assert text[0].split() == ["POOL", "ID", "AGE", "ATTEMPTS", "BYTES", "EXCEPTION", "ERROR"], text
    rows = {line.split()[1]: line.split() for line in text[1:]}
    assert rows["k1"][:6] == ["default", "k1", rows["k1"][2], "2", str(len(body("k1", "KeyError"))), "KeyError"]
    assert rows["k1"][2].endswith("s") and " ".join(rows["k1"][6:]) == "'task k1 hit the bug'", rows["k1"]

    # show: headers, traceback, body; a binary body as hex, cut at --max-bytes.
    shown = dead(wqd, tmp_path, "show", "v2").stdout
    assert shown.startswith(f"Message v2 (pool default, dead-letter queue {dlq})"), shown
    assert "  x-wqd-exception: ValueError" in shown and "  x-wqd-attempts: 2" in shown
    assert f"  x-wqd-queue: {queue_name}" in shown and "  x-wqd-failed-at: 20" in shown
    traceback = shown[shown.index("Traceback:"):shown.index("Body (")]
    assert "Traceback (most recent call last)" in traceback and "ValueError: task v2 hit the bug" in traceback
    v2 = body("v2", "ValueError")
    assert shown.rstrip().endswith(f"Body ({len(v2)} bytes, text):\n{v2}"), shown
    binary = dead(wqd, tmp_path, "show", "binary-1", "--max-bytes", "32").stdout
    assert "Body (512 bytes, first 32 shown, hex):\n  00000000  00 01 02 03" in binary, binary
    assert "\x1b" not in binary and "\x07" not in binary and "  note: \\x1b]0;title\\x07" in binary, binary
    assert binary.rstrip().endswith("00000010  10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f"), binary
    missing = dead(wqd, tmp_path, "show", "nope", expect=1)
    assert missing.stderr.startswith("wqd dead: no dead message 'nope'"), missing.stderr

    # A replay while the bug is still there: the message fails again, and says it was replayed.
    replayed = dead(wqd, tmp_path, "replay", "z1").stdout
    assert replayed.splitlines() == [f"Replayed z1 (ZeroDivisionError) to {queue_name}", "Replayed 1 message."]
    wait_for(lambda: [e for e in listed(wqd, tmp_path) if e["id"] == "z1" and e["replays"] == 1], 60,
             message="z1 dead again")
    again = listed(wqd, tmp_path)
    assert [e["id"] for e in again] == [e["id"] for e in first if e["id"] != "z1"] + ["z1"], "z1 went to the end"
    z1_attempts = [e["attempt"] for e in wqd.records("start") if e["id"] == "z1"]
    assert z1_attempts == [1, 2, 1, 2], "its attempts were counted from 1 again"

    # The fix, then a replay of one exception type: those succeed, on their first attempt.
    flag.unlink()
    replayed = dead(wqd, tmp_path, "replay", "--exception", "KeyError").stdout
    assert sorted(replayed.splitlines()[:-1]) == [f"Replayed {i} (KeyError) to {queue_name}" for i in ("k1", "k2")]
    wait_for(lambda: {e["id"] for e in wqd.records("end")} >= {"k1", "k2"}, 30, message="k1 and k2 succeed")
    assert [e["attempt"] for e in wqd.records("end")] == [1, 1]
    assert [e["id"] for e in listed(wqd, tmp_path)] == [e["id"] for e in again if e["exception"] != "KeyError"]
    # --limit takes them in the queue's order (the two workers dead-lettered them in either order).
    first_two = [e["id"] for e in again if e["exception"] == "ValueError"][:2]
    limited = dead(wqd, tmp_path, "replay", "--all", "--exception", "ValueError", "--limit", "2").stdout
    assert limited.splitlines() == [f"Replayed {i} (ValueError) to {queue_name}" for i in first_two] + [
        "Replayed 2 messages."], limited
    wait_for(lambda: {e["id"] for e in wqd.records("end")} >= set(first_two), 30,
             message=f"{first_two} succeed")

    # purge: refused without --yes; --older-than spares the young ones.
    refused = dead(wqd, tmp_path, "purge", expect=1)
    assert "--yes" in refused.stderr and len(listed(wqd, tmp_path)) == 4
    assert dead(wqd, tmp_path, "purge", "--yes", "--older-than", "3600").stdout == "Deleted 0 dead messages.\n"
    assert len(listed(wqd, tmp_path)) == 4
    assert dead(wqd, tmp_path, "purge", "--yes").stdout == "Deleted 4 dead messages.\n"
    assert listed(wqd, tmp_path) == [] and ready(broker, dlq) == 0
    assert dead(wqd, tmp_path, "list").stdout == f"No dead letters in {dlq}.\n"
    assert wqd.stop(30) == 0


def test_a_message_that_killed_its_workers_is_replayed_as_a_first_attempt(broker, queue_name, make_wqd, tmp_path):
    """The master counted the deaths it saw of that message id; the replayed
    copy is a new lineage, which starts at attempt 1."""
    flag = tmp_path / "the-bug"
    flag.touch()
    wqd = make_wqd([pool(queue_name, handler="dead_handlers:task", workers=1, max_retries=1,
                         retry_delay={"initial": 0.05, "max": 0.05})],
                   extra_env={"WQD_TEST_BROKEN": str(flag)}).start()
    broker.publish(queue_name, body("crash", "exit"), message_id="crash")
    wait_for(lambda: listed(wqd, tmp_path), 60, message="the crashing message dead-lettered")
    (entry,) = listed(wqd, tmp_path)
    assert entry["exception"] == "WorkerLost" and entry["attempts"] >= 2, entry
    flag.unlink()
    dead(wqd, tmp_path, "replay", "crash")
    wait_for(lambda: [e for e in wqd.records("end") if e["id"] == "crash"], 60, message="the replay ran")
    assert [e["attempt"] for e in wqd.records("start") if e["id"] == "crash"][-1] == 1
    assert listed(wqd, tmp_path) == []
    assert wqd.stop(30) == 0


HEADERS = {"x-wqd-exception": "ValueError", "x-wqd-error": "bad", "x-wqd-attempts": 4, "x-wqd-attempt": 4,
           "x-wqd-lost": 1, "x-wqd-failed-at": "2026-01-01T00:00:00Z"}


def fill_dead_letter_queue(broker, queue_name: str, count: int) -> str:
    """The work queue, and its dead-letter queue with ``count`` letters named 0, 1, ..."""
    dlq = f"{queue_name}.dead"
    broker.declare_queue(queue_name)
    with broker.connection() as connection:
        channel = connection.channel()
        channel.queue_declare(dlq, durable=True)
        channel.confirm_delivery()
        for number in range(count):
            channel.basic_publish("", dlq, f"task {number}".encode() * 20, pika.BasicProperties(
                message_id=str(number), headers=HEADERS, delivery_mode=2))
    return dlq


def assert_replayed_copies(moved) -> None:
    for body, props in moved:
        assert body == f"task {props.message_id}".encode() * 20 and props.delivery_mode == 2
        assert props.headers["x-wqd-replays"] == 1 and props.headers["x-wqd-replayed-at"].startswith("20")
        assert len(props.headers) == 2, props.headers


def test_replay_killed_midway_loses_nothing_and_doubles_at_most_the_message_in_flight(broker, queue_name, make_wqd,
                                                                                      tmp_path):
    """No daemon runs: the work queue keeps what the replay put there. A kill
    while a copy is in flight (published, its original not yet acked) leaves
    that one in both."""
    wqd = make_wqd([pool(queue_name)])
    count = 400
    dlq = fill_dead_letter_queue(broker, queue_name, count)
    replay = subprocess.Popen([WQD, "dead", "replay", "--all", "-c", str(wqd.config_path)],
                              env=wqd_env(tmp_path / "record"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with broker.connection() as connection:
            channel = connection.channel()
            wait_for(lambda: channel.queue_declare(queue_name, passive=True).method.message_count > 0, 30,
                     interval=0.002, message="the replay began")
        replay.kill()
    finally:
        replay.wait(30)
    assert replay.returncode == -signal.SIGKILL, replay.stdout.read()
    wait_for(lambda: broker.queue_stats(dlq)["messages_unacknowledged"] == 0, 30, message="the DLQ took its own back")

    moved = broker.get_all_messages(queue_name)
    left = broker.get_all_messages(dlq)
    moved_ids = [props.message_id for _, props in moved]
    left_ids = [props.message_id for _, props in left]
    assert moved_ids and left_ids, f"the kill came midway ({len(moved_ids)} moved, {len(left_ids)} left)"
    # Each message in one queue, both in their old order; the one in flight may be in both.
    if moved_ids[-1] == left_ids[0]:
        left_ids = left_ids[1:]
    assert moved_ids + left_ids == [str(number) for number in range(count)]
    assert_replayed_copies(moved)
    assert all(props.headers == HEADERS for _, props in left)


def test_replay_into_a_full_work_queue_moves_what_fits_and_keeps_the_rest(broker, queue_name, make_wqd, tmp_path):
    """A max-length policy with overflow reject-publish: the broker nacks the
    copies past the limit, and their originals stay (exit 69, as wqd publish)."""
    wqd = make_wqd([pool(queue_name)])
    policy = f"cap-{queue_name}"
    broker.ctl("set_policy", policy, "^" + queue_name.replace(".", "\\.") + "$",
               '{"max-length": 298, "overflow": "reject-publish"}', "--apply-to", "queues")
    try:
        dlq = fill_dead_letter_queue(broker, queue_name, 300)
        result = dead(wqd, tmp_path, "replay", "--all", expect=69)
        moved = broker.get_all_messages(queue_name)
    finally:
        broker.ctl("clear_policy", policy)
    lines = result.stdout.splitlines()
    assert lines[:298] == [f"Replayed {number} (ValueError) to {queue_name}" for number in range(298)], lines[:3]
    assert lines[298:] == [f"Not replayed {number} (ValueError): the broker refused its copy (basic.nack: is the "
                           f"work queue {queue_name!r} full, with overflow reject-publish?); it is still in {dlq}"
                           for number in (298, 299)], lines[298:]
    assert result.stderr == ("wqd dead: replayed 298 of 300 messages; 2 were refused by the broker (2 nacked: see "
                             f"the lines above) and are still in {dlq}\n"), result.stderr
    assert [props.message_id for _, props in moved] == [str(number) for number in range(298)]
    assert_replayed_copies(moved)
    left = broker.get_all_messages(dlq)
    assert [(props.message_id, props.headers) for _, props in left] == [("298", HEADERS), ("299", HEADERS)]


def test_replay_into_a_work_queue_deleted_meanwhile_keeps_every_letter(broker, queue_name, make_wqd, tmp_path):
    """The replay is held at its first publish by a memory alarm while its work
    queue is deleted: the broker returns every copy, and every letter stays."""
    wqd = make_wqd([pool(queue_name)])
    dlq = fill_dead_letter_queue(broker, queue_name, 300)
    broker.ctl("set_vm_memory_high_watermark", "0.000001")
    try:
        wait_for(lambda: "memory" in broker.ctl("eval", "rabbit_alarm:get_alarms()."), 30, message="memory alarm")
        replay = subprocess.Popen([WQD, "dead", "replay", "--all", "-c", str(wqd.config_path)],
                                  env=wqd_env(tmp_path / "record"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        wait_for(lambda: broker.queue_stats(dlq)["messages_unacknowledged"] == 1, 30,
                 message="the replay took its first letter")
        broker.delete_queue(queue_name)
    finally:
        broker.ctl("set_vm_memory_high_watermark", "0.4")
    stdout, stderr = replay.communicate(timeout=60)
    assert replay.returncode == 1, (stdout, stderr)
    assert stderr == ("wqd dead: replayed 0 of 300 messages; 300 were refused by the broker (300 returned: see "
                      f"the lines above) and are still in {dlq}\n"), stderr
    assert stdout.splitlines()[0] == (f"Not replayed 0 (ValueError): the broker returned its copy (312 NO_ROUTE: "
                                      f"does the work queue {queue_name!r} still exist?); it is still in {dlq}")
    assert len(stdout.splitlines()) == 300 and "Traceback" not in stderr
    left = broker.get_all_messages(dlq)
    assert [(props.message_id, props.headers) for _, props in left] == [(str(n), HEADERS) for n in range(300)]


HOSTILE = [  # (message id as shown, properties): what `wqd dead` raised on, showed raw or copied too far
    ("bad\\xffid", pika.BasicProperties(message_id=b"bad\xffid", headers={"x-wqd-exception": b"Key\xfeError"})),
    ("top-name", pika.BasicProperties(message_id="top-name", headers={b"\xfe-name": b"v\xfd", "\\xfe-name": 1,
                                                                      "a": None, "x-wqd-replays": -5})),
    ("nested-name", pika.BasicProperties(message_id="nested-name", headers={
        "x-death": [{b"\xfdreason": "x", "reason": b"expired\xfc", "count": 3}], "table": {b"\xfc": [{b"\xfb": 1}]}})),
    ("max-replays", pika.BasicProperties(message_id="max-replays", headers={"x-wqd-replays": 2**63 - 1})),
    ("absurd", pika.BasicProperties(message_id="absurd", headers={
        "x-wqd-replays": RawValue(b"d" + struct.pack(">d", 1e300)),  # pika decodes a double as an int
        "x-wqd-attempts": -5, "x-wqd-failed-at": RawValue(b"T" + struct.pack(">Q", 2**64 - 1)),  # past year 9999
        "x-wqd-error": ["\x1b[2J", {b"\xff": decimal.Decimal("1.5")}]})),
    ("digits", pika.BasicProperties(message_id="digits", headers={"x-wqd-replays": "9" * 30, "x-wqd-attempts": "9" * 30})),
    ("props", pika.BasicProperties(message_id="props", content_type=b"\xff/x", reply_to=b"\xfe", type=b"\x80",
                                   app_id=b"\x81", correlation_id=b"\x82", timestamp=2**64 - 1, headers={})),
    ("-dash\\x1b", pika.BasicProperties(message_id="-dash\x1b", headers={"CC": ["wqdtest.cc"]})),
]


def test_every_dead_command_takes_any_bytes_a_publisher_sends(broker, queue_name, make_wqd, tmp_path):
    """Ids and header names that are not UTF-8 (at the top and nested), replay
    counters at 2**63 - 1 and of the wrong kind, properties of any bytes: shown
    escaped, named by what `list` shows (or the bytes themselves), replayed."""
    wqd = make_wqd([pool(queue_name)])
    dlq = f"{queue_name}.dead"
    broker.declare_queue(queue_name)
    broker.purge_queue("wqdtest.cc")
    broker.declare_queue("wqdtest.cc")  # a CC header routes a message there too
    publish_letters(broker, dlq, [(f"body {number}".encode(), props) for number, (_, props) in enumerate(HOSTILE)])
    assert ready(broker, "wqdtest.cc") == 1
    ids = [shown for shown, _ in HOSTILE]

    listing = dead(wqd, tmp_path, "list")
    assert [line.split()[1] for line in listing.stdout.splitlines()[1:]] == ids, listing.stdout
    assert "Key\\xfeError" in listing.stdout and "\x1b" not in listing.stdout and listing.stderr == ""
    entries = {entry["id"]: entry for entry in listed(wqd, tmp_path)}
    assert list(entries) == ids
    assert entries["bad\\xffid"]["message_id"] == "bad\\xffid" and entries["bad\\xffid"]["exception"] == "Key\\xfeError"
    assert entries["max-replays"]["replays"] == 2**63 - 1 and entries["absurd"]["replays"] == int(1e300)
    assert (entries["absurd"]["attempts"], entries["absurd"]["failed_at"]) == (None, None)
    assert entries["nested-name"]["exception"] == "(broker: expired\\xfc)" and entries["nested-name"]["attempts"] == 3
    assert entries["digits"]["replays"] == 0 and entries["digits"]["attempts"] is None

    for shown in ids:
        text = dead(wqd, tmp_path, "show", "--", shown).stdout
        assert text.startswith(f"Message {shown} (pool default") and "\x1b" not in text, text
    by_bytes = dead(wqd, tmp_path, "show", "--", b"bad\xffid").stdout  # the id as the publisher sent it
    assert "  message_id: bad\\xffid\n" in by_bytes and "  x-wqd-exception: Key\\xfeError\n" in by_bytes, by_bytes
    shown = dead(wqd, tmp_path, "show", "top-name").stdout
    # (both names shown as \xfe-name; in the order the broker keeps them: RabbitMQ 4.3 sorts a table's keys)
    assert "  \\xfe-name: v\\xfd\n" in shown and "  \\xfe-name: 1\n" in shown and "  a: null\n" in shown, shown
    shown = dead(wqd, tmp_path, "show", "nested-name").stdout
    assert '  table: {"\\\\xfc": [{"\\\\xfb": 1}]}' in shown, shown
    shown = dead(wqd, tmp_path, "show", "props").stdout
    assert "  content_type: \\xff/x\n" in shown and "  type: \\x80\n" in shown and "  reply_to: \\xfe" in shown
    assert dead(wqd, tmp_path, "purge", "--yes", "--older-than", str(10**10)).stdout == "Deleted 0 dead messages.\n"
    wait_for(lambda: ready(broker, dlq) == len(HOSTILE), 30, message="every letter back in the dead-letter queue")

    replayed = dead(wqd, tmp_path, "replay", "--all").stdout
    assert replayed.splitlines()[-1] == f"Replayed {len(HOSTILE)} messages.", replayed
    wait_for(lambda: ready(broker, dlq) == 0, 30, message="no letter left")
    assert ready(broker, "wqdtest.cc") == 1, "CC is not copied"
    copies = {props.message_id: props for _, props in broker.get_all_messages(queue_name)}
    assert len(copies) == len(HOSTILE)
    assert copies["max-replays"].headers["x-wqd-replays"] == 2**63 - 1, "the counter stays at its largest"
    assert copies["absurd"].headers["x-wqd-replays"] == 2**63 - 1
    assert copies["top-name"].headers["x-wqd-replays"] == copies["digits"].headers["x-wqd-replays"] == 1
    assert copies[b"bad\xffid"].headers["x-wqd-replays"] == 1
    assert copies["top-name"].headers[b"\xfe-name"] == b"v\xfd" and copies["top-name"].headers["\\xfe-name"] == 1
    assert copies["nested-name"].headers["table"] == {b"\xfc": [{b"\xfb": 1}]}
    assert copies["props"].content_type == b"\xff/x" and copies["props"].timestamp == 2**64 - 1
    broker.delete_queue("wqdtest.cc")


def test_show_by_prefix_replay_of_a_missing_id_several_exceptions_and_a_reader_gone(broker, queue_name, make_wqd,
                                                                                     tmp_path):
    """Issue 28: an ID's unique start names it; a replay of an unknown ID says
    "not found" (exit 1); --exception repeated takes any of them; a command
    whose stdout reader goes away (`| head`) ends quietly, losing nothing."""
    wqd = make_wqd([pool(queue_name)])
    dlq = fill_dead_letter_queue(broker, queue_name, 400)  # ids 0 to 399, ValueError: 140 KB of JSON
    named = {"o-1041": "KeyError", "o-1042": "KeyError", "o-0977": "ZeroDivisionError"}
    publish_letters(broker, dlq, [(b"{}", pika.BasicProperties(message_id=task_id, headers={
        "x-wqd-exception": exception})) for task_id, exception in named.items()])

    assert dead(wqd, tmp_path, "show", "o-09").stdout.startswith("Message o-0977 ")
    assert dead(wqd, tmp_path, "show", "1").stdout.startswith("Message 1 "), "a whole id before a prefix"
    ambiguous = dead(wqd, tmp_path, "show", "o-10", expect=1)
    assert ambiguous.stderr == (f"wqd dead: 'o-10' is the start of 2 dead messages' ids in {dlq}: o-1041, o-1042; "
                                f"give more of the ID\n"), ambiguous.stderr
    many = dead(wqd, tmp_path, "show", "o-", expect=1).stderr
    assert f"'o-' is the start of 3 dead messages' ids in {dlq}: o-1041, o-1042, o-0977; give" in many, many

    missing = dead(wqd, tmp_path, "replay", "nosuchid", expect=1)
    assert missing.stdout == "" and missing.stderr == f"wqd dead: replayed 0 messages; not found in {dlq}: 'nosuchid'\n"
    missing = dead(wqd, tmp_path, "replay", "o-1041", "nosuchid", expect=1)
    assert missing.stdout == f"Replayed o-1041 (KeyError) to {queue_name}\n", missing.stdout
    assert missing.stderr == f"wqd dead: replayed 1 message; not found in {dlq}: 'nosuchid'\n", missing.stderr
    either = dead(wqd, tmp_path, "replay", "--exception", "KeyError", "--exception", "ZeroDivisionError").stdout
    assert either.splitlines() == [f"Replayed o-1042 (KeyError) to {queue_name}",
                                   f"Replayed o-0977 (ZeroDivisionError) to {queue_name}", "Replayed 2 messages."]
    wait_for(lambda: (ready(broker, dlq), ready(broker, queue_name)) == (400, 3), 30, message="400 left, 3 moved")

    for command in (["list", "--json"], ["replay", "--all"]):
        reader_gone = subprocess.Popen([WQD, "dead", *command, "-c", str(wqd.config_path)], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, env=wqd_env(tmp_path / "record"))
        assert reader_gone.stdout.readline()
        reader_gone.stdout.close()  # as `| head -1` does
        assert reader_gone.wait(60) == 128 + signal.SIGPIPE and reader_gone.stderr.read() == b"", command
    wait_for(lambda: ready(broker, dlq) + ready(broker, queue_name) == 403 and ready(broker, dlq) < 400, 30,
             message="the replay moved some before its reader went, and lost none")


def test_quorum_queues_keep_every_message_on_reading_and_replay_in_transactions(broker, queue_name, make_wqd,
                                                                                   tmp_path):
    """A quorum queue counts a read as a delivery and may reorder (docs/dead-letters.md), but loses nothing."""
    wqd = make_wqd([pool(queue_name, queue_type="quorum")])
    dlq, ids = f"{queue_name}.dead", [f"q{number}" for number in range(6)]
    for queue in (queue_name, dlq):
        broker.declare_queue(queue, arguments={"x-queue-type": "quorum"})
    for task_id in ids:
        broker.publish(dlq, body(task_id, "KeyError"), message_id=task_id,
                       headers={"x-wqd-exception": "KeyError", "x-wqd-attempts": 4})
    for _ in range(3):
        assert sorted(entry["id"] for entry in listed(wqd, tmp_path)) == ids
    assert "Replayed 2 messages." in dead(wqd, tmp_path, "replay", "q1", "q4").stdout
    assert "Replayed 4 messages." in dead(wqd, tmp_path, "replay", "--all", "--exception", "KeyError").stdout
    assert ready(broker, dlq) == 0
    assert sorted(props.message_id for _, props in broker.get_all_messages(queue_name)) == ids


def test_every_dead_command_exits_69_with_the_broker_down(make_wqd, free_tcp_port, tmp_path):
    wqd = make_wqd([pool("anything")], broker_url=f"amqp://guest:guest@127.0.0.1:{free_tcp_port}/%2F")
    for args in (["list"], ["list", "--json"], ["show", "x"], ["replay", "--all"], ["purge", "--yes"]):
        result = dead(wqd, tmp_path, *args, expect=69)
        assert result.stdout == "" and result.stderr.startswith("wqd dead: cannot reach the broker at "), result
        assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_unknown_pool_and_missing_choice_are_refused_before_the_broker(make_wqd, free_tcp_port, tmp_path):
    wqd = make_wqd([pool("anything")], broker_url=f"amqp://guest:guest@127.0.0.1:{free_tcp_port}/%2F")
    assert "no pool 'other'" in dead(wqd, tmp_path, "list", "--pool", "other", expect=1).stderr
    assert "IDs, --exception NAME, or --all" in dead(wqd, tmp_path, "replay", expect=1).stderr
    assert "not both" in dead(wqd, tmp_path, "replay", "a", "--all", expect=1).stderr


# --------------------------------------------------------------------------
# what a dead letter says, from headers of any shape (pure logic)


def letter(headers, **properties) -> dead_letters.DeadLetter:
    return dead_letters.DeadLetter("default", "q.dead", b"body", pika.BasicProperties(headers=headers, **properties))


def test_a_message_the_broker_dead_lettered_is_described_from_x_death():
    died = datetime.datetime(2026, 1, 1, 12, 0, 0)
    entry = letter({"x-death": [{"reason": b"delivery_limit", "count": 3, "time": died, "queue": "q"}]})
    assert entry.exception == "(broker: delivery_limit)" and entry.attempts == 3
    assert entry.age(died.replace(tzinfo=datetime.timezone.utc).timestamp() + 90) == 90
    assert entry.id == "sha1:" + hashlib.sha1(b"body").hexdigest()[:12]
    assert entry.matches([entry.id], None) and entry.matches([entry.id[:9]], None)
    assert not entry.matches([entry.id[:8]], None), "too short a prefix names nothing"


def test_headers_of_the_wrong_types_give_unknowns_not_errors():
    hostile = letter({"x-wqd-attempts": "many", "x-wqd-replays": [1], "x-wqd-failed-at": decimal.Decimal("1.5"),
                      "x-wqd-exception": b"Bad\xffName", "x-death": "nonsense", "x-wqd-attempt": {},
                      "x-wqd-lost": "x"}, timestamp=None)
    summary = hostile.summary(time.time())
    json.dumps(summary)
    assert (summary["attempts"], summary["replays"], summary["age_seconds"]) == (None, 0, None)
    assert summary["exception"] == "Bad\\xffName" and summary["failed_at"] == "1.5"
    copy = dead_letters.replay_properties(hostile, 0)
    assert copy.headers == {"x-wqd-replays": 1, "x-wqd-replayed-at": "1970-01-01T00:00:00Z"}
    assert letter(None).summary(0)["exception"] == "(unknown)"


def test_an_ambiguous_start_of_an_id_lists_ten_of_the_ids_it_names():
    letters = [letter({}, message_id=f"m-{number}") for number in range(12)] + [letter({}, message_id="m-0")]
    with pytest.raises(errors.WqdError) as refused:
        dead_letters.named_by(letters, "m-")
    assert str(refused.value) == ("'m-' is the start of 12 dead messages' ids in q.dead: m-0, m-1, m-2, m-3, m-4, "
                                  "m-5, m-6, m-7, m-8, m-9 and 2 more; give more of the ID")
    assert [entry.id for entry in dead_letters.named_by(letters, "m-1")] == ["m-1"], "a whole id first"
    assert [entry.id for entry in dead_letters.named_by(letters[:3] + letters[-1:], "m-0")] == ["m-0", "m-0"]
    assert [entry.id for entry in dead_letters.named_by(letters[10:11], "m-1")] == ["m-10"], "a unique start"


def test_letters_without_an_id_and_with_the_same_body_get_distinct_ids(broker, queue_name, make_wqd, tmp_path):
    """The later twin is named with ~2: shown and replayed on its own."""
    wqd = make_wqd([pool(queue_name)])
    dlq = f"{queue_name}.dead"
    broker.declare_queue(queue_name)
    publish_letters(broker, dlq, [(b"same body", pika.BasicProperties(headers={"x-wqd-exception": "KeyError"}))] * 2)
    ids = [entry["id"] for entry in listed(wqd, tmp_path)]
    assert len(ids) == 2 and ids[1] == f"{ids[0]}~2", ids
    assert dead(wqd, tmp_path, "show", ids[1]).stdout.startswith(f"Message {ids[1]} (pool default")
    dead(wqd, tmp_path, "replay", ids[1])
    assert ready(broker, queue_name) == 1 and ready(broker, dlq) == 1
    assert [entry["id"] for entry in listed(wqd, tmp_path)] == [ids[0]]
