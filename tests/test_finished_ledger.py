"""Duplicate suppression without processes: the compact ledger, the worker's
ring, the master's answer, and the state file."""

import ctypes
import logging
import os
import random
import socket
import threading

import pika
import pytest

from wqd import config
from wqd.redelivery import deduplication, ledger_file
from wqd.redelivery.deduplication import CompactLedger, FinishedLedger, FinishedRing, Recorder


def test_the_ledger_keeps_the_newest_entries_up_to_its_capacity():
    ledger = CompactLedger(capacity=4)
    for number in range(1, 7):
        ledger.add(number, number, 1)
    assert [entry[0] for entry in ledger.entries()] == [3, 4, 5, 6]
    assert ledger.get(2, 2) == 0 and ledger.get(3, 3) == 1 and ledger.size == 4


def test_a_finished_message_again_becomes_the_newest_at_its_later_lineage():
    ledger = CompactLedger(capacity=3)
    ledger.add(1, 1, 2)
    ledger.add(2, 2, 1)
    ledger.add(1, 1, 1)  # an older lineage reported late: the later one stays
    ledger.add(3, 3, 1)
    ledger.add(4, 4, 1)  # evicts 2, the oldest: 1 was made the newest
    assert ledger.get(1, 1) == 2 and ledger.get(2, 2) == 0


def test_colliding_entries_are_still_found_after_removals():
    """Every digest lands in the same few index slots (a low ``hi``): lookups
    probe past each other, and removals must shift the rest back."""
    rng = random.Random(7)
    ledger, present, adds = CompactLedger(capacity=64), {}, 0  # present: (hi, lo) -> (lineage, add number)
    for step in range(1500):
        hi, lo = rng.randrange(4), rng.randrange(40)
        if rng.random() < 0.3:
            ledger.forget(hi, lo)
            present.pop((hi, lo), None)
        else:
            ledger.add(hi, lo, step + 1)
            adds += 1
            present[hi, lo] = (step + 1, adds)
            # The ring holds the last 64 adds: an entry goes when its slot comes round again.
            present = {key: value for key, value in present.items() if value[1] > adds - 64}
        for (known_hi, known_lo), (lineage, _) in present.items():
            assert ledger.get(known_hi, known_lo) == lineage, step
    assert {(hi, lo): lineage for hi, lo, lineage in ledger.entries()} == {
        key: lineage for key, (lineage, _) in present.items()}


def test_a_million_entries_fit_in_about_32_mib_that_workers_do_not_inherit():
    ledger = CompactLedger()
    assert ledger.capacity == 1_000_000 and len(ledger._memory) < 32 * 1024 * 1024
    ledger.add(1, 2, 3)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the ledger's memory is not mapped here (MADV_DONTFORK)
        with open("/proc/self/maps") as maps:
            address = ctypes.addressof(ctypes.c_char.from_buffer(ledger._memory))
            mapped = any(int(start, 16) <= address < int(end, 16)
                         for start, end in (line.split()[0].split("-") for line in maps))
        os.write(write, b"mapped" if mapped else b"absent")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 10) == b"absent"
    os.close(read)
    os.close(write)
    assert ledger.get(1, 2) == 3


def test_the_master_drains_what_the_worker_wrote_in_order():
    ring = FinishedRing()
    ring.append(b"\x01" * 16, 1, 10)
    ring.append(b"\x02" * 16, 5, 20)
    entries, missed = ring.drain()
    assert [entry[2:] for entry in entries] == [(1, 10), (5, 20)] and missed == 0
    assert ring.drain() == ([], 0)
    for number in range(deduplication.RING_SLOTS + 3):  # the master fell behind by 3
        ring.append(number.to_bytes(16, "little"), 1, 0)
    entries, missed = ring.drain()
    assert missed == 3 and len(entries) == deduplication.RING_SLOTS
    ring.close()


def _recorded(recorder, ring, message_id, headers=None, started_ns=0):
    properties = pika.BasicProperties(message_id=message_id, headers=headers)
    recorder._record = type("Record", (), {"task_started_ns": started_ns})()
    recorder.finished(properties)
    return Recorder.probe(recorder, properties)


def test_the_answer_follows_the_lineage_and_only_messages_with_an_id_take_part():
    ring, master = FinishedRing(), FinishedLedger(capacity=10)
    master.watch(1, ring, "q")
    recorder = Recorder("q", ring, None)
    probe = _recorded(recorder, ring, "m-1")
    assert master.finished(probe, []) is True
    later = recorder.probe(pika.BasicProperties(message_id="m-1", headers={"x-wqd-attempt": 2}))
    replayed = recorder.probe(pika.BasicProperties(message_id="m-1", headers={"x-wqd-replays": 1}))
    assert master.finished(later, []) is False and master.finished(replayed, []) is False
    other_queue = Recorder("other", ring, None).probe(pika.BasicProperties(message_id="m-1"))
    assert master.finished(other_queue, []) is False
    assert recorder.probe(pika.BasicProperties()) is None
    _recorded(recorder, ring, None)
    assert master.ledger.size == 1
    assert master.finished(["not hex", 1], []) is False


class _Handle:
    def __init__(self, pid, busy_since):
        self.pid, self.busy_since = pid, busy_since


class _Snapshot:
    def __init__(self, message_key, busy_since):
        self.message_key, self.busy_since = message_key, busy_since


def test_another_worker_running_the_message_decides_unless_it_finished_that_run():
    ring, master = FinishedRing(), FinishedLedger(capacity=10)
    master.watch(1, ring, "q")
    recorder = Recorder("q", ring, None)
    probe = _recorded(recorder, ring, "m-1", started_ns=5_000_000_000)
    assert master.finished(probe, [_Handle(1, 5.0)]) is True, "it finished the run it still shows"
    assert master.finished(probe, [_Handle(1, 9.0)]) is False, "a later run of m-1, not finished"


def test_a_worker_that_died_running_a_message_it_had_not_finished_makes_the_master_forget_it():
    ring, master = FinishedRing(), FinishedLedger(capacity=10)
    master.watch(1, ring, "q")
    probe = _recorded(Recorder("q", ring, None), ring, "m-1", started_ns=5_000_000_000)
    master.collect()
    master.worker_gone(1, _Snapshot("m-1", 5.0))  # killed after recording, before its ack
    assert master.finished(probe, []) is True
    ring = FinishedRing()
    master.watch(2, ring, "q")
    _recorded(Recorder("q", ring, None), ring, "m-1", started_ns=5_000_000_000)
    master.worker_gone(2, _Snapshot("m-1", 8.0))  # the same id again, killed mid-run
    assert master.finished(probe, []) is False


def test_the_state_file_round_trip_and_what_it_refuses(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    ledger = CompactLedger(capacity=10)
    for number in range(1, 13):
        ledger.add(number, number * 7, number)
    path = str(tmp_path / "finished-ids")
    assert ledger_file.save(ledger, path) == 10
    assert os.stat(path).st_mode & 0o777 == 0o600
    again = CompactLedger(capacity=5)
    ledger_file.load(again, path)
    assert list(again.entries()) == list(ledger.entries())[-5:], "a smaller capacity keeps the newest"
    again.add(99, 99, 1)  # the oldest read goes first
    assert list(again.entries()) == list(ledger.entries())[-4:] + [(99, 99, 1)]
    assert again.get(12, 84) == 12
    assert os.listdir(tmp_path) == ["finished-ids"], "no temporary file left"

    good = open(path, "rb").read()
    for content, reason in [(good[:-1], "does not match the 10 entries"), (b"x" * 40, "wrong magic"),
                            (good[:8] + b"\x09" + good[9:], "format version 9"),
                            (good[:50] + bytes([good[50] ^ 1]) + good[51:], "checksum"),
                            (good[:16] + (10 ** 12).to_bytes(8, "little") + good[24:], "more than the"),
                            (b"", "shorter")]:
        with open(path, "wb") as stream:
            stream.write(content)
        caplog.clear()
        empty = CompactLedger(capacity=10)
        ledger_file.load(empty, path)
        assert empty.size == 0
        assert reason in caplog.text and "starting with an empty ledger" in caplog.text, caplog.text
    caplog.clear()
    ledger_file.load(CompactLedger(capacity=10), str(tmp_path / "absent"))
    assert "no state file" in caplog.text


def test_a_state_file_that_cannot_be_written_is_a_warning(tmp_path, caplog):
    ledger_file.store(CompactLedger(capacity=2), str(tmp_path / "missing-dir" / "finished-ids"))
    assert "cannot write the state file" in caplog.text


@pytest.mark.parametrize("headers, expected", [
    (None, 1), ({}, 1), ({"x-wqd-attempt": 3}, 3), ({"x-wqd-replays": 2}, (2 << 32) | 1),
    ({"x-wqd-attempt": "junk", "x-wqd-replays": -1}, 1), ({"x-wqd-attempt": 10 ** 9 * 9}, (1 << 32) - 1),
])
def test_the_lineage_of_any_headers(headers, expected):
    assert deduplication.lineage(headers) == expected


def _config(text: str, environment: dict, monkeypatch):
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return config.parse("pools: [{name: a, queue: q, handler: 'm:f'}]\n" + text, "wqd.yaml")


def test_the_state_file_defaults_under_systemds_state_directory_and_else_is_not_kept(tmp_path, monkeypatch):
    assert _config("", {}, monkeypatch).deduplication == config.DeduplicationConfig(1_000_000, None)
    loaded = _config("", {"STATE_DIRECTORY": f"{tmp_path}:/var/lib/other"}, monkeypatch)
    assert loaded.deduplication.state_file == str(tmp_path / "finished-ids")
    assert _config("deduplication: {state_file: null}", {"STATE_DIRECTORY": str(tmp_path)},
                   monkeypatch).deduplication.state_file is None
    assert _config("", {}, monkeypatch).pools[0].deduplicate is True


@pytest.mark.parametrize("text, error", [
    ("deduplication: {state_file: relative/ids}", "deduplication.state_file: expected an absolute path"),
    ("deduplication: {state_file: /no/such/dir/ids}", "expected a path in an existing directory"),
    ("deduplication: {capacity: 0}", "deduplication.capacity: expected a positive integer"),
    ("deduplication: {capacity: 50000001}", "expected at most 50000000"),
    ("deduplication: {size: 3}", "deduplication.size: unknown key"),
])
def test_the_deduplication_keys_refuse_what_cannot_work(text, error, monkeypatch):
    with pytest.raises(config.ConfigError) as raised:
        _config(text, {}, monkeypatch)
    assert error in str(raised.value)


def _special_files(tmp_path) -> dict:
    """A path of each kind the state file must not be -> the words that name it."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "directory").mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "socket"))
    listener.close()  # the socket file stays
    os.symlink(tmp_path / "fifo", tmp_path / "link-to-fifo")
    return {str(tmp_path / "fifo"): "a FIFO (named pipe)", str(tmp_path / "directory"): "a directory",
            str(tmp_path / "socket"): "a socket", "/dev/zero": "a character device",
            str(tmp_path / "link-to-fifo"): "a FIFO (named pipe)"}


def test_a_state_file_that_is_not_a_regular_file_is_refused_by_the_config(tmp_path, monkeypatch):
    for path, kind in _special_files(tmp_path).items():
        with pytest.raises(config.ConfigError) as raised:
            _config(f"deduplication: {{state_file: {path}}}", {}, monkeypatch)
        assert str(raised.value) == (f"wqd.yaml:2: deduplication.state_file: expected a regular file or a path "
                                     f"where none exists yet, not {kind}, got {path!r}")
    (tmp_path / "regular").write_bytes(b"")
    os.symlink(tmp_path / "regular", tmp_path / "link-to-regular")
    for path in ("regular", "link-to-regular", "not-yet", "dangling-link"):
        if path == "dangling-link":
            os.symlink(tmp_path / "gone", tmp_path / path)
        text = f"deduplication: {{state_file: {tmp_path / path}}}"
        assert _config(text, {}, monkeypatch).deduplication.state_file == str(tmp_path / path)


def test_reading_a_state_file_that_is_not_a_regular_file_never_waits_and_is_a_configuration_error(tmp_path):
    """What $STATE_DIRECTORY's default (which the config does not check) or a
    file swapped after the check meets at start: opening a FIFO with no writer
    for reading would wait for one."""
    for path, kind in _special_files(tmp_path).items():
        raised = []

        def load(path=path):
            try:
                ledger_file.load(CompactLedger(capacity=10), path)
            except ledger_file.NotARegularFile as exc:
                raised.append(exc)

        reader = threading.Thread(target=load, daemon=True)
        reader.start()
        reader.join(10)
        if reader.is_alive():  # let the blocked open go, and fail
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        assert not reader.is_alive(), f"reading {path} blocked"
        assert [str(exc) for exc in raised] == [
            f"deduplication.state_file: {path} is {kind}, not a regular file. wqd reads its ledger of finished "
            f"messages from that file at start and replaces it at stop: remove what is there, or name another path."]
        assert isinstance(raised[0], config.ConfigError)


def test_deduplicate_is_a_boolean(monkeypatch):
    with pytest.raises(config.ConfigError) as raised:
        config.parse("pools: [{name: a, queue: q, handler: 'm:f', deduplicate: 1}]\n", "wqd.yaml")
    assert "pools[0].deduplicate: expected true or false, got 1" in str(raised.value)
