"""`wqd status` (text and JSON, broker up and down) and the logs: JSON lines,
no timestamps and syslog priorities under journald, lifecycle lines, failed
tasks, no passwords."""

import json
import logging
import os
import re
import signal
import sys
import uuid

from tests.support.daemon import pool, run_cli, task_body, wqd_env
from tests.support.queues import wait_queue
from tests.support.waiting import wait_for
from wqd import logs

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PRIORITIES = {"DEBUG": "7", "INFO": "6", "WARNING": "4", "ERROR": "3", "CRITICAL": "2"}


def tasks(wqd, outcome: str) -> float:
    return wqd.metric("wqd_tasks_total", pool="default", outcome=outcome)


def status(wqd, tmp_path, *args):
    result = run_cli("status", "-c", str(wqd.config_path), *args, env=wqd_env(tmp_path / "record"))
    assert result.returncode == 0, result.stderr
    assert not result.stderr, result.stderr
    return result.stdout


def worker_rows(text: str) -> dict:
    """{worker name: (pid, state, task age or None)} from the text status."""
    rows = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(\S+\[\d+\])\s+(\d+)\s+(\S+(?:, stopping)?)\s+(-|[\d.]+s)", line.strip())
        if match:
            age = None if match[4] == "-" else float(match[4][:-1])
            rows[match[1]] = (int(match[2]), match[3], age)
    return rows


# --------------------------------------------------------------------------
# wqd status


def test_status_text_and_json_show_queues_workers_and_a_growing_task_age(broker, queue_name, make_wqd, tmp_path):
    wqd = make_wqd([pool(queue_name, workers=2, max_retries=0)]).start()
    broker.publish_many(queue_name, [task_body("ok1"), task_body("ok2"), task_body("bad", action="fail")])
    wait_for(lambda: tasks(wqd, "succeeded") == 2 and tasks(wqd, "dead_lettered") == 1, 30, message="3 tasks done")
    wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == 2, 30, message="2 consuming")

    idle = json.loads(status(wqd, tmp_path, "--json"))
    assert idle["master"]["running"] and idle["master"]["ready"] and idle["master"]["pid"] == wqd.proc.pid
    (idle_pool,) = idle["pools"]
    assert {w["busy"] for w in idle_pool["workers"]} == {False}
    assert {w["task_age"] for w in idle_pool["workers"]} == {None}
    assert {state for _, state, _ in worker_rows(status(wqd, tmp_path)).values()} == {"idle"}

    # Both workers busy with long tasks (prefetch 1), three more waiting.
    broker.publish_many(queue_name, [task_body("long1", sleep=60), task_body("long2", sleep=60)]
                        + [task_body(i) for i in range(3)])
    wait_for(lambda: {e["id"] for e in wqd.records("start")} >= {"long1", "long2"}, 30, message="both busy")
    wait_queue(broker, queue_name, 10, "3 waiting", messages_ready=3)

    first = json.loads(status(wqd, tmp_path, "--json"))
    (p,) = first["pools"]
    assert p["pool"] == "default" and p["queue"] == queue_name and p["queue_exists"]
    assert p["messages_ready"] == 3
    assert p["in_progress"] == 2
    assert p["consumers"] == 2
    assert (p["workers_live"], p["workers_desired"], p["workers_consuming"]) == (2, 2, 2)
    assert p["tasks"] == {"succeeded": 2, "failed": 0, "retried": 0, "dead_lettered": 1, "duplicate": 0}
    assert p["dead_letter_queue"] == f"{queue_name}.dead" and p["dead_lettered_messages"] == 1
    assert sorted(w["pid"] for w in p["workers"]) == sorted(wqd.worker_pids())
    assert all(w["busy"] and w["state"] == "consuming" and w["task_age"] >= 0 for w in p["workers"]), p["workers"]
    ages = {w["pid"]: w["task_age"] for w in p["workers"]}

    text = status(wqd, tmp_path)
    assert f"wqd master pid {wqd.proc.pid}, ready" in text
    assert "guest:***@" in text and ":guest@" not in text, "the broker URL is shown without its password"
    (row,) = [line.split() for line in text.splitlines() if line.startswith("default ")]
    # POOL QUEUE READY BUSY CONSUMERS WORKERS DONE RETRIED FAILED DEAD: FAILED as outcome="failed" in the metrics
    assert row == ["default", queue_name, "3", "2", "2", "2/2", "2", "0", "0", "1"], text
    rows = worker_rows(text)
    assert sorted(rows) == ["default[1]", "default[2]"], text
    assert {state for _, state, _ in rows.values()} == {"busy"}, text

    def older():
        later = json.loads(status(wqd, tmp_path, "--json"))["pools"][0]["workers"]
        return all(w["task_age"] >= ages[w["pid"]] + 1 for w in later)

    def older_in_text():  # the text was read after the JSON: its ages are awaited on their own
        later = worker_rows(status(wqd, tmp_path))
        return all(later[name][2] >= rows[name][2] + 1 for name in rows)

    wait_for(older, 10, interval=0.5, message="task ages grow")
    wait_for(older_in_text, 10, interval=0.5, message=lambda: f"task ages grow in the text: {rows}")


def test_status_with_the_broker_down_exits_69_with_one_clear_line(make_wqd, free_tcp_port, tmp_path):
    password = f"pw-{uuid.uuid4().hex[:10]}"
    wqd = make_wqd([pool("anything")], broker_url=f"amqp://wqd:{password}@127.0.0.1:{free_tcp_port}/%2F")
    for args in ([], ["--json"]):
        result = run_cli("status", "-c", str(wqd.config_path), *args, env=wqd_env(tmp_path / "record"))
        assert result.returncode == 69, result
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("wqd status: cannot reach the broker at "), lines[0]
        assert f"wqd:***@127.0.0.1:{free_tcp_port}" in lines[0]
        assert password not in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------
# logs


def test_json_logs_are_one_object_per_line_with_lifecycle_and_failed_task_lines(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2, max_retries=0)])
    wqd.config["logging"]["format"] = "json"
    wqd.write_config()
    wqd.start()
    broker.publish(queue_name, task_body("ok").encode())
    broker.publish(queue_name, task_body("bad", action="fail").encode(), message_id="msg-bad-1")
    wait_for(lambda: tasks(wqd, "succeeded") == 1 and tasks(wqd, "dead_lettered") == 1, 30, message="2 tasks done")
    victim = wqd.worker_pids(consuming_only=True)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: wqd.metric("wqd_worker_restarts_total", pool="default", reason="killed") == 1
             and len(wqd.worker_pids(consuming_only=True)) == 2, 30, message="worker replaced")
    wqd.signal(signal.SIGHUP)
    wait_for(lambda: "Reloaded" in wqd.stderr_path.read_text(), 10, message="reloaded")
    assert wqd.stop(30) == 0

    lines = wqd.stderr_path.read_text().splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        try:
            entries.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"stderr line {number} is not JSON: {line!r}") from None
    assert all(isinstance(e, dict) for e in entries)
    assert all({"time", "level", "process", "pid", "logger", "message"} <= set(e) for e in entries), entries
    assert all(e["level"] in ("debug", "info", "warning", "error", "critical") for e in entries)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"]) for e in entries)
    assert not [e for e in entries if e["level"] in ("error", "critical")], "nothing went wrong"

    def find(pattern: str, level="info") -> list:
        found = [e for e in entries if re.search(pattern, e["message"])]
        assert found, f"no log line matches {pattern!r}"
        assert {e["level"] for e in found} == {level}, (pattern, found)
        return found

    master = wqd.proc.pid
    assert find(r"^wqd master started \(pid \d+\)")[0]["pid"] == master
    find(r"^Ready: every pool has a consuming worker")
    spawned = find(r"^Worker default\[\d\] spawned \(pid \d+\)")
    assert len(spawned) == 3, "two at start, one replacement"
    assert {e["process"] for e in spawned} == {"master"}
    # An unexpected death is worth a warning; it names the signal and the reason.
    died = find(rf"^Worker default\[\d\] \(pid {victim}\) was killed by SIGKILL \(killed\); replacing it", "warning")
    assert died[0]["pid"] == master
    find(r"^Reloaded .*wqd\.yaml")
    find(r"^Graceful stop")
    find(r"master exits")
    failed = find(r"^Task msg-bad-1 failed on attempt 1: RuntimeError: task bad failed on purpose", "warning")
    assert failed[0]["process"].startswith("worker default[") and failed[0]["pid"] != master


def journal_stream(path) -> dict:
    """The environment systemd gives a process whose stderr is the journal: here
    the file ``path`` (created) plays the journal's socket."""
    path.touch()
    stat = path.stat()
    return {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}


def test_text_logs_under_journald_have_priorities_no_timestamp_and_never_a_password(broker, queue_name, make_wqd,
                                                                                    tmp_path):
    user, password = f"wqd-{uuid.uuid4().hex[:6]}", f"Pw-{uuid.uuid4().hex}"
    broker.ctl("add_user", user, password)
    try:
        broker.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        url = f"amqp://{user}:{password}@127.0.0.1:{broker.port}/%2F"
        # debug: pika's own lines too, which are the likeliest to spell out a URL
        wqd = make_wqd([pool(queue_name, workers=2, max_retries=0)], broker_url=url, logging_level="debug")
        wqd.env.update(journal_stream(wqd.stderr_path))
        wqd.start()
        broker.publish_many(queue_name, [task_body("ok"), task_body("bad", action="fail")])
        wait_for(lambda: tasks(wqd, "succeeded") == 1 and tasks(wqd, "dead_lettered") == 1, 30, message="done")
        wqd.signal(signal.SIGHUP)
        wait_for(lambda: "Reloaded" in wqd.stderr_path.read_text(), 10, message="reloaded")
        assert wqd.stop(30) == 0
        cli_output = ""
        for args in (["check"], ["status"], ["publish", "--queue", queue_name, "hello"]):
            result = run_cli(*args[:1], "-c", str(wqd.config_path), *args[1:], env=wqd_env(tmp_path / "record"))
            assert result.returncode == 0, result.stderr
            cli_output += result.stdout + result.stderr

        # A wrong password: refused, and still never printed.
        wrong = f"Wrong-{uuid.uuid4().hex}"
        refused = make_wqd([pool(queue_name, workers=1)], broker_url=url.replace(password, wrong))
        refused.env.update(journal_stream(refused.stderr_path))
        refused.start(wait_ready=False)
        # the worker's warning (the queue monitor's info line may come first)
        wait_for(lambda: re.search(r"Broker connection lost or refused: .*refused the credentials",
                                   refused.stderr_path.read_text()), 30, message="auth refused")
        refused.stop(30)
        result = run_cli("status", "-c", str(refused.config_path), env=wqd_env(tmp_path / "record"))
        assert result.returncode == 69 and "refused the credentials" in result.stderr, result
        cli_output += result.stdout + result.stderr
    finally:
        broker.ctl("delete_user", user)

    text = wqd.stderr_path.read_text()
    assert "DEBUG [" in text, "debug lines are there"
    for line in text.splitlines():
        match = re.match(rf"<(\d)>({'|'.join(LEVELS)}) \[(master|worker default\[\d\]|queue monitor) pid \d+\] ", line)
        assert match, f"not a journald text line (priority, level, process, no timestamp): {line!r}"
        assert match[1] == PRIORITIES[match[2]], line
    assert "<6>INFO [master pid" in text and "<6>INFO [worker default[1] pid" in text
    assert re.search(r"^<4>WARNING \[worker default\[\d\] pid \d+\] Task .+ failed on attempt 1", text, re.M), \
        "a failed task is a warning for `journalctl -p warning`"
    assert re.search(r"^<4>WARNING \[.*\] Broker connection lost or refused: .*refused the credentials", refused.stderr_path.read_text(),
                     re.M), refused.stderr_path.read_text()
    for output in (text, wqd.stdout_path.read_text(), refused.stderr_path.read_text(),
                   refused.stdout_path.read_text(), cli_output):
        assert password not in output and wrong not in output
    assert f"{user}:***@" in text + cli_output, "the URL is shown redacted"


def log_through_setup(monkeypatch, tmp_path, journal_stream_of, fmt="text") -> str:
    """What one warning and one traceback look like on stderr (a file) after
    logs.setup, with JOURNAL_STREAM naming the file ``journal_stream_of``."""
    stderr_path = tmp_path / "stderr.log"
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    with open(stderr_path, "w") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        monkeypatch.setenv("JOURNAL_STREAM", journal_stream(journal_stream_of)["JOURNAL_STREAM"])
        try:
            logs.setup("info", fmt)
            logging.getLogger("wqd.test").warning("careful: %s", "this")
            try:
                raise ValueError("broken")
            except ValueError:
                logging.getLogger("wqd.test").exception("it broke")
        finally:
            root.handlers[:], root.level = saved
    return stderr_path.read_text()


def test_stderr_that_is_the_journal_gets_priorities_and_no_timestamp(monkeypatch, tmp_path):
    lines = log_through_setup(monkeypatch, tmp_path, tmp_path / "stderr.log").splitlines()
    assert re.fullmatch(r"<4>WARNING \[master pid \d+\] careful: this", lines[0]), lines
    assert re.fullmatch(r"<3>ERROR \[master pid \d+\] it broke", lines[1]), lines
    assert lines[2:] and all(line.startswith("<3>") for line in lines[2:]), "each traceback line is an error too"
    assert lines[-1] == "<3>ValueError: broken"

    entries = log_through_setup(monkeypatch, tmp_path, tmp_path / "stderr.log", fmt="json").splitlines()
    assert entries[0].startswith("<4>{") and json.loads(entries[0][3:])["message"] == "careful: this"


def test_journal_stream_naming_another_file_keeps_timestamps_and_no_priorities(monkeypatch, tmp_path):
    """A JOURNAL_STREAM inherited by a process whose stderr goes to a file."""
    lines = log_through_setup(monkeypatch, tmp_path, tmp_path / "the-journal").splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    assert re.fullmatch(stamp + r"WARNING \[master pid \d+\] careful: this", lines[0]), lines
    assert re.fullmatch(stamp + r"ERROR \[master pid \d+\] it broke", lines[1]), lines
    assert not [line for line in lines if line.startswith("<")], lines
