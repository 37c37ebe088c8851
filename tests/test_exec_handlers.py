"""Exec handlers (handler: {exec: [...]}), one-shot and persistent, run by
`wqd run` against the real broker: exit codes and answers, time_limit on a
whole process group, grandchildren, floods of output, a graceful stop, the
examples in shell and Node, and `wqd check` on a command that cannot run."""

import json
import logging
import os
import re
import shutil
import signal
from pathlib import Path

import pika
import pytest

from tests.support.daemon import pool, run_cli, wait_gone, wqd_env
from tests.support.queues import queue_counts, wait_queue
from tests.support.waiting import wait_for
from wqd import config as config_module
from wqd.handlers import exec_handler, process
from wqd.message import Message

TESTS = Path(__file__).resolve().parent
TASK_SH = str(TESTS / "exec" / "task.sh")
PERSISTENT_PY = str(TESTS / "exec" / "persistent.py")
EXAMPLES = TESTS.parent / "examples" / "exec"
FAST_RETRY = {"initial": 0.2, "max": 0.2}


def dead_letters(broker, queue) -> dict:
    """{message_id: (headers, body)} of everything in ``<queue>.dead``, acked."""
    found = {}
    with broker.connection() as connection:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue + ".dead", auto_ack=True)
            if method is None:
                return found
            found[properties.message_id] = (properties.headers, body)


def runs(wqd, message_id: str, event: str = "start") -> list:
    return [entry for entry in wqd.records(event) if entry["id"] == message_id]


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


# -- the config's handler key (pure) --


@pytest.mark.parametrize("handler, expected", [
    ({"exec": ["/bin/true", "-x"]}, config_module.ExecHandler(("/bin/true", "-x"), False)),
    ({"exec": ["true"], "persistent": True}, config_module.ExecHandler(("true",), True)),
    ("wqd.examples:sleep_dots", "wqd.examples:sleep_dots"),
])
def test_the_handler_key_takes_a_command(handler, expected):
    assert config_module.handler_ref(handler) == expected


@pytest.mark.parametrize("handler, error", [
    ({"exec": []}, "expected exec: a non-empty list of strings"),
    ({"exec": "/bin/true"}, "expected exec: a non-empty list of strings"),
    ({"exec": ["/bin/true", 3]}, "expected exec: a non-empty list of strings"),
    ({"exec": ["bin/run"]}, "an absolute path or a name found on PATH, not the relative path 'bin/run'"),
    ({"exec": ["/bin/true"], "persistent": "yes"}, "expected persistent: true or false"),
    ({"exec": ["/bin/true"], "shell": True}, "unknown key 'shell' in an exec handler"),
    ({"command": ["/bin/true"]}, 'expected "module:callable" or {exec: [command, args...]'),
])
def test_the_handler_key_refuses_a_bad_command(handler, error):
    with pytest.raises(ValueError) as raised:
        config_module.handler_ref(handler)
    assert error in str(raised.value)


# -- what a command is told, and how its output is logged (pure) --


def _message(body: bytes, **properties) -> Message:
    return Message(body, pika.BasicProperties(**properties), True, 2, "q", "p", "p[1]")


def test_a_request_carries_text_as_text_and_other_bytes_as_base64():
    text = json.loads(exec_handler.request(_message("été".encode(), message_id="m", headers={"raw": b"\xff"}),
                                           "r-1"))
    assert text == {"id": "r-1", "message_id": "m", "attempt": 2, "redelivered": True, "queue": "q", "pool": "p",
                    "worker": "p[1]", "content_type": None, "headers": {"raw": {"base64": "/w=="}},
                    "encoding": "utf-8", "body": "été"}
    binary = json.loads(exec_handler.request(_message(b"\xff\x00"), "r-2"))
    assert (binary["encoding"], binary["body"]) == ("base64", "/wA=")
    environment = exec_handler.environment(_message(b"", headers={"n": 1, "s": b"text"}))
    assert environment["WQD_REDELIVERED"] == "1" and environment["WQD_ATTEMPT"] == "2"
    assert json.loads(environment["WQD_HEADERS"]) == {"n": 1, "s": "text"}


def test_output_is_split_into_lines_cut_and_counted(caplog):
    caplog.set_level(logging.INFO, logger="wqd.exec")
    output = process.TaskOutput("m-1")
    output.feed("stdout", b"first li")
    output.feed("stdout", b"ne\nsecond\n" + b"x" * 5000)
    output.feed("stdout", b"yyy\nafter\n")
    output.feed("stderr", b"oops\n")
    logged = [record.getMessage() for record in caplog.records]
    assert logged == ["Task m-1 stdout: first line", "Task m-1 stdout: second",
                      "Task m-1 stdout: " + "x" * 4096 + " [line cut at 4096 bytes]",
                      "Task m-1 stdout: after", "Task m-1 stderr: oops"]
    caplog.clear()
    output.feed("stdout", b"more\n" * 200)
    output.feed("stderr", b"".join(b"late %d\n" % number for number in range(10)))
    output.feed("stderr", b"unterminated")
    output.finish()
    logged = [record.getMessage() for record in caplog.records]
    assert len(logged) == process.LINES_PER_TASK - 5 + 1
    assert logged[-1] == "Task m-1: 116 more output lines not logged (at most 100 per task)."
    assert output.tail() == "; stderr: late 6 | late 7 | late 8 | late 9 | unterminated"


def test_check_names_the_pool_of_a_command_that_cannot_run(tmp_path):
    not_executable = tmp_path / "script.sh"
    not_executable.write_text("#!/bin/sh\n")
    not_executable.chmod(0o644)
    config = tmp_path / "wqd.yaml"
    config.write_text(json.dumps({"pools": [
        {"name": "missing", "queue": "q1", "handler": {"exec": ["/nonexistent/resize", "--fast"]}},
        {"name": "not-executable", "queue": "q2", "handler": {"exec": [str(not_executable)]}},
        {"name": "not-on-path", "queue": "q3", "handler": {"exec": ["wqd-no-such-command"], "persistent": True}},
    ]}))
    result = run_cli("check", "-c", str(config), env=wqd_env(tmp_path / "record"))
    assert result.returncode == 78, result
    assert (f"{config}: pools[0].handler: pool 'missing': command '/nonexistent/resize': "
            f"No such file or directory") in result.stderr
    assert (f"pools[1].handler: pool 'not-executable': command '{not_executable}' is not executable "
            f"(mode -rw-r--r--)") in result.stderr
    assert "pools[2].handler: pool 'not-on-path': command 'wqd-no-such-command' is not found on PATH" \
        in result.stderr
    config.write_text(json.dumps({"pools": [
        {"name": "fine", "queue": "q1", "handler": {"exec": ["sh", "-c", "cat > /dev/null"]}}]}))
    result = run_cli("check", "-c", str(config), env=wqd_env(tmp_path / "record"))
    assert result.returncode == 0, result
    assert "fine (1 x exec sh -c 'cat > /dev/null' on q1)" in result.stdout


# -- one process per message --


def test_exit_codes_decide_ack_reject_or_retry(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, handler={"exec": [TASK_SH]}, workers=2, max_retries=1,
                         retry_delay=FAST_RETRY)]).start()
    messages = {"m-ok": "ok", "m-reject": "reject", "m-exit": "exit 3", "m-signal": "signal",
                "m-body": "body first line\nsecond line, été"}
    for message_id, body in messages.items():
        broker.publish(queue_name, body.encode(), declare=False, message_id=message_id,
                       headers={"tenant": "acme", "raw": b"\xff\x00"})
    wait_queue(broker, queue_name + ".dead", 60, "three dead-lettered", messages_ready=3)
    dead = dead_letters(broker, queue_name)
    assert sorted(dead) == ["m-exit", "m-reject", "m-signal"]

    (ok,) = runs(wqd, "m-ok", "end")
    assert ok["attempt"] == 1 and ok["redelivered"] == "0"
    assert ok["queue"] == queue_name and ok["pool"] == "default"
    assert ok["headers"] == {"tenant": "acme", "raw": {"base64": "/wA="}}
    assert (wqd.workdir / "body-m-body").read_text() == messages["m-body"]

    headers, _ = dead["m-reject"]
    assert len(runs(wqd, "m-reject")) == 1
    assert headers["x-wqd-exception"] == "Reject"
    assert headers["x-wqd-error"] == ("the command exited with code 65 (EX_DATAERR); stderr: first line of why | "
                                      "this body cannot be processed")
    headers, _ = dead["m-exit"]
    assert [run["attempt"] for run in runs(wqd, "m-exit")] == [1, 2]
    assert headers["x-wqd-exception"] == "CommandFailed"
    assert headers["x-wqd-error"] == "the command exited with code 3; stderr: failing with 3"
    headers, _ = dead["m-signal"]
    assert [run["attempt"] for run in runs(wqd, "m-signal")] == [1, 2]
    assert headers["x-wqd-error"] == "the command was killed by SIGKILL"
    assert "Task m-reject stderr: this body cannot be processed" in wqd.logs()
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="succeeded") == 2
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="crashed") == 0


def test_time_limit_kills_the_command_with_its_grandchildren(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, handler={"exec": [TASK_SH]}, workers=1, time_limit=3, max_retries=1,
                         retry_delay=FAST_RETRY)]).start()
    (worker,) = wqd.worker_pids()
    broker.publish(queue_name, b"hang", declare=False, message_id="m-hang")
    wait_queue(broker, queue_name + ".dead", 60, "hung task dead-lettered", messages_ready=1)
    assert [run["attempt"] for run in runs(wqd, "m-hang")] == [1, 2]
    for child in runs(wqd, "m-hang", "child"):
        wait_gone(int(child["extra"]), 10)
    (headers, _), = dead_letters(broker, queue_name).values()
    assert headers["x-wqd-exception"] == "CommandTimedOut"
    assert headers["x-wqd-error"] == ("the command ran longer than the pool's time_limit (3 s) and was killed "
                                      "with its process group")
    # wqd killed the command before the master had to kill the worker: one worker ran both attempts.
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="time_limit") == 0
    assert wqd.worker_pids() == [worker]


def test_a_grandchild_left_running_is_killed_when_the_command_exits(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, handler={"exec": [TASK_SH]}, workers=1)]).start()
    broker.publish(queue_name, b"grandchild", declare=False, message_id="m-gc")
    wait_for(lambda: runs(wqd, "m-gc", "end"), 30, message="the command finished")
    (child,) = runs(wqd, "m-gc", "child")
    wait_gone(int(child["extra"]), 10)
    wait_queue(broker, queue_name, 30, "acked", messages_ready=0, messages_unacknowledged=0)
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="succeeded") == 1


def test_a_flood_of_output_is_logged_within_bounds(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, handler={"exec": [TASK_SH]}, workers=1)]).start()
    (worker,) = wqd.worker_pids()
    peak_before = peak_rss_kib(worker)
    flood_bytes = 40 * 1024 * 1024
    broker.publish(queue_name, f"flood {flood_bytes}".encode(), declare=False, message_id="m-flood")
    wait_for(lambda: runs(wqd, "m-flood", "end"), 60, message="the flooding command finished")
    wait_for(lambda: wqd.metric("wqd_tasks_total", pool="default", outcome="succeeded") == 1, 30,
             message="the task acked")
    lines = flood_bytes // 80
    logs = wqd.stderr_path.read_text()
    assert logs.count("Task m-flood stdout: yyyy") == 100
    assert f"Task m-flood: {lines - 100 + 1} more output lines not logged (at most 100 per task)." in logs
    assert len(logs) < 100_000
    assert peak_rss_kib(worker) - peak_before < 8 * 1024, "the worker's memory grew with the output"


def test_a_long_line_is_cut(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, handler={"exec": [TASK_SH]}, workers=1)]).start()
    broker.publish(queue_name, b"long 1000000", declare=False, message_id="m-long")
    wait_for(lambda: runs(wqd, "m-long", "end"), 30, message="the command finished")
    wait_for(lambda: "Task m-long stdout: after the long line" in wqd.logs(), 10, message="the next line logged")
    (line,) = [line for line in wqd.stderr_path.read_text().splitlines() if "Task m-long stdout: zz" in line]
    assert line.endswith("Task m-long stdout: " + "z" * 4096 + " [line cut at 4096 bytes]")


def test_heartbeats_flow_while_a_command_runs(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, handler={"exec": [TASK_SH]}, workers=1)], heartbeat=1).start()
    broker.publish(queue_name, b"sleep 5", declare=False, message_id="m-long-task")
    wait_for(lambda: wqd.metric("wqd_tasks_total", pool="default", outcome="succeeded") == 1, 30,
             message="the task acked on its connection")
    assert "Broker connection lost" not in wqd.logs()


def test_a_graceful_stop_lets_the_running_command_finish(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, handler={"exec": [TASK_SH]}, workers=1)]).start()
    broker.publish(queue_name, b"sleep 3", declare=False, message_id="m-slow")
    wait_for(lambda: runs(wqd, "m-slow"), 30, message="the command started")
    wqd.signal(signal.SIGTERM)
    assert wqd.wait_exit(30) == 0
    assert len(runs(wqd, "m-slow", "end")) == 1
    assert queue_counts(broker, queue_name)["messages_ready"] == 0


def test_a_command_whose_worker_died_ends_at_its_next_output(broker, queue_name, make_wqd):
    """The command outlives a SIGKILLed worker only until it writes (SIGPIPE,
    its default action restored); the message is redelivered."""
    wqd = make_wqd([pool(queue_name, handler={"exec": [TASK_SH]}, workers=1)]).start()
    (worker,) = wqd.worker_pids()
    broker.publish(queue_name, b"tick", declare=False, message_id="m-orphan")
    wait_for(lambda: runs(wqd, "m-orphan"), 30, message="the command started")
    os.kill(worker, signal.SIGKILL)
    wait_gone(runs(wqd, "m-orphan")[0]["pid"], 10)
    wait_for(lambda: len(runs(wqd, "m-orphan")) == 2, 30, message="the task redelivered to the new worker")


def test_a_reload_turns_a_pool_into_an_exec_pool(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1)]).start()
    (python_worker,) = wqd.worker_pids()
    wqd.config["pools"][0]["handler"] = {"exec": [TASK_SH]}
    wqd.write_config()
    wqd.signal(signal.SIGHUP)
    wait_for(lambda: "Reloaded" in wqd.logs() and wqd.worker_pids(consuming_only=True) not in ([], [python_worker]),
             30, message=lambda: f"the pool's worker replaced\n{wqd.logs()}")
    broker.publish(queue_name, b"ok", declare=False, message_id="m-reloaded")
    wait_for(lambda: runs(wqd, "m-reloaded", "end"), 30, message=lambda: f"the command ran\n{wqd.logs()}")


def test_no_command_sees_the_broker_password(broker, queue_name, make_wqd):
    """$WQD_BROKER_URL, the documented way to give wqd its password, reaches
    neither a one-shot nor a persistent command (each dumps its environment),
    nor does $WQD_BROKER_PASSWORD: a command works on what publishers sent,
    and must not hold the broker's credentials."""
    user, password = f"exec-{queue_name[-8:]}", "S3CRET-in-wqd-environment-only"
    broker.ctl("add_user", user, password)
    queues = [queue_name, queue_name + ".persistent"]
    try:
        broker.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        url = broker.url.replace("guest:guest", f"{user}:{password}")
        # The file's URL cannot log in: wqd works only because it has the environment's.
        wqd = make_wqd([pool(queues[0], name="one-shot", handler={"exec": [TASK_SH]}, workers=1),
                        pool(queues[1], name="persistent", handler={"exec": [PERSISTENT_PY], "persistent": True},
                             workers=1)],
                       broker_url=broker.url.replace("guest:guest", f"{user}:wrong"),
                       extra_env={"WQD_BROKER_URL": url, "WQD_BROKER_PASSWORD": password}).start()
        for queue in queues:
            broker.publish(queue, b"env", declare=False, message_id=f"m-env-{queue}")
        for queue in queues:
            wait_for(lambda: runs(wqd, f"m-env-{queue}", "end"), 30, message=lambda: f"{queue}'s command ran")
            dumped = (wqd.workdir / f"env-m-env-{queue}").read_text()
            assert f"WQD_TEST_RECORD={wqd.record}\n" in dumped, "the dump is the command's environment"
            assert "WQD_BROKER" not in dumped and password not in dumped, dumped
    finally:
        for queue in (queues[1], queues[1] + ".dead"):
            broker.delete_queue(queue)
        broker.ctl("delete_user", user)


# -- one process per worker --


def test_a_persistent_command_answers_each_message(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, handler={"exec": [PERSISTENT_PY], "persistent": True}, workers=1,
                         max_retries=1, retry_delay=FAST_RETRY)]).start()
    broker.publish(queue_name, b"ok", declare=False, message_id="m-1", headers={"tenant": "acme"})
    broker.publish(queue_name, b"noise 3", declare=False, message_id="m-2")
    broker.publish(queue_name, b"\xff\xfe binary", declare=False, message_id="m-3")
    broker.publish(queue_name, b"error", declare=False, message_id="m-error")
    broker.publish(queue_name, b"reject", declare=False, message_id="m-reject")
    wait_queue(broker, queue_name + ".dead", 60, "two dead-lettered", messages_ready=2)
    starts = wqd.records("start")
    assert len({start["pid"] for start in starts}) == 1, "one process ran every task"
    first = runs(wqd, "m-1")[0]
    assert first["headers"] == {"tenant": "acme"} and first["encoding"] == "utf-8"
    assert first["pool"] == "default" and first["queue"] == queue_name
    assert runs(wqd, "m-3")[0]["encoding"] == "base64"
    logs = wqd.logs()
    assert "Task m-2 stdout: a line of output on stdout" in logs and "Task m-2 stderr: stderr line 2" in logs
    dead = dead_letters(broker, queue_name)
    assert [run["attempt"] for run in runs(wqd, "m-error")] == [1, 2]
    assert dead["m-error"][0]["x-wqd-exception"] == "CommandFailed"
    assert dead["m-error"][0]["x-wqd-error"] == "task m-error failed on purpose"
    assert len(runs(wqd, "m-reject")) == 1
    assert dead["m-reject"][0]["x-wqd-exception"] == "Reject"
    assert dead["m-reject"][0]["x-wqd-error"] == "cannot ever process this"
    assert wqd.stop() == 0
    wait_gone(starts[0]["pid"], 10)  # the end of its input: it exits


def test_a_persistent_command_that_dies_or_hangs_is_started_again(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, handler={"exec": [PERSISTENT_PY], "persistent": True}, workers=1,
                         time_limit=3, max_retries=0)]).start()
    broker.publish(queue_name, b"die 7", declare=False, message_id="m-die")
    broker.publish(queue_name, b"ok", declare=False, message_id="m-after-die")
    broker.publish(queue_name, b"hang", declare=False, message_id="m-hang")
    broker.publish(queue_name, b"ok", declare=False, message_id="m-after-hang")
    wait_for(lambda: runs(wqd, "m-after-hang", "end"), 60, message="a task after the hang")
    dead = dead_letters(broker, queue_name)
    assert dead["m-die"][0]["x-wqd-error"] == "the persistent command exited with code 7 before it answered"
    assert dead["m-hang"][0]["x-wqd-exception"] == "CommandTimedOut"
    assert dead["m-hang"][0]["x-wqd-error"] == (
        "the persistent command did not answer within the pool's time_limit (3 s) and was killed with its "
        "process group; a new one starts for the next task")
    (child,) = runs(wqd, "m-hang", "child")
    wait_gone(child["child"], 10)
    pids = [runs(wqd, message_id)[0]["pid"] for message_id in ("m-die", "m-after-die", "m-hang", "m-after-hang")]
    assert pids[0] != pids[1] == pids[2] != pids[3], pids
    wait_gone(pids[2], 10)
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="time_limit") == 0


def test_a_persistent_command_that_breaks_the_protocol_fails_the_task_it_answered(broker, queue_name, make_wqd):
    """Two answers to one request, an answer for another request or without
    the request's id, a line that starts like an answer and is not one, an
    answer too long: each fails its task (retried, then dead-lettered,
    never acked) and the command is killed; the task after it gets its own
    answer from a new command."""
    wqd = make_wqd([pool(queue_name, handler={"exec": [PERSISTENT_PY], "persistent": True}, workers=1,
                         max_retries=1, retry_delay=FAST_RETRY)]).start()
    broken = ["twice", "wrong-id", "no-id", "garbage", "deep", "long"]
    for action in broken:
        broker.publish(queue_name, action.encode(), declare=False, message_id=f"m-{action}")
        broker.publish(queue_name, b"ok", declare=False, message_id=f"m-after-{action}")
    wait_queue(broker, queue_name + ".dead", 60, "every broken answer's task dead-lettered",
               messages_ready=len(broken))
    dead = dead_letters(broker, queue_name)
    assert sorted(dead) == sorted(f"m-{action}" for action in broken)
    reasons = {message_id.removeprefix("m-"): headers["x-wqd-error"] for message_id, (headers, _) in dead.items()}
    assert {headers["x-wqd-exception"] for headers, _ in dead.values()} == {"ProtocolViolation"}
    request_id = r"'[0-9a-f]{16}'"
    for action, what in [("twice", rf"it answered request {request_id} a second time: '\{{\"id\""),
                         ("wrong-id", rf"an answer does not echo its request's id \({request_id}\): '\{{\"id\""),
                         ("no-id", rf"an answer does not echo its request's id \({request_id}\): "
                                   rf"'{{\"status\": \"ok\"}}'"),
                         ("garbage", r"a stdout line that starts with '\{' \(an answer\) is not a JSON object: "),
                         ("deep", r"a stdout line that starts with '\{' \(an answer\) is not a JSON object: "),
                         ("long", r"an answer is longer than 65536 bytes: '\{\"id\": .*'\.\.\.")]:
        assert re.fullmatch(rf"the persistent command broke the protocol: {what}.*; it was killed, and a new one "
                            rf"starts for the next task", reasons[action]), (action, reasons[action])
        attempts = runs(wqd, f"m-{action}")
        assert [run["attempt"] for run in attempts] == [1, 2]
        for run in attempts:
            wait_gone(run["pid"], 10)
        (after,) = runs(wqd, f"m-after-{action}", "end")
        assert after["attempt"] == 1 and after["pid"] != attempts[0]["pid"]
    wait_for(lambda: wqd.metric("wqd_tasks_total", pool="default", outcome="succeeded") == len(broken), 30,
             message="each task after a broken one acked")
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="crashed") == 0


def test_an_answer_too_many_is_never_taken_for_the_next_tasks(broker, queue_name, make_wqd):
    """The command answers error, then, in a write of its own, ok: the task
    fails, and the extra ok is credited to no other task (issue 24: it was
    taken as the next one's answer, and every answer after it was off by
    one). Found before the next request is sent, it costs the next task
    nothing: that task runs on a new command."""
    wqd = make_wqd([pool(queue_name, handler={"exec": [PERSISTENT_PY], "persistent": True}, workers=1,
                         max_retries=0)]).start()
    broker.publish(queue_name, b"error-then-ok", declare=False, message_id="m-extra")
    wait_for(lambda: runs(wqd, "m-extra", "extra"), 30, message="the extra answer written")
    assert runs(wqd, "m-extra", "read")[0]["read"], "wqd read the first answer before the extra one was written"
    broker.publish(queue_name, b"error", declare=False, message_id="m-error")
    broker.publish(queue_name, b"ok", declare=False, message_id="m-ok")
    wait_queue(broker, queue_name + ".dead", 60, "both failing tasks dead-lettered", messages_ready=2)
    dead = dead_letters(broker, queue_name)
    assert dead["m-extra"][0]["x-wqd-error"] == "the first answer"
    assert dead["m-error"][0]["x-wqd-error"] == "task m-error failed on purpose"
    wait_for(lambda: wqd.metric("wqd_tasks_total", pool="default", outcome="succeeded") == 1, 30,
             message="the ok task acked")
    assert "The persistent command %s broke the protocol after it answered its last task: it answered request" \
        % PERSISTENT_PY in wqd.logs()
    assert runs(wqd, "m-extra")[0]["pid"] != runs(wqd, "m-error")[0]["pid"] == runs(wqd, "m-ok")[0]["pid"]
    assert [run["attempt"] for run in runs(wqd, "m-ok", "end")] == [1]


# -- the examples, in shell and Node --


@pytest.fixture
def example_queues(broker, queue_name):
    names = [queue_name + suffix for suffix in (".sh", ".node", ".node-persistent")]
    yield names
    for name in names:
        for queue in (name, name + ".dead"):
            broker.delete_queue(queue)


def test_the_shell_and_node_examples(broker, example_queues, make_wqd):
    node = shutil.which("node")
    assert node, "Node.js is needed for the Node examples"
    handlers = [{"exec": [str(EXAMPLES / "wordcount.sh")]},
                {"exec": [str(EXAMPLES / "wordcount.js")]},
                {"exec": ["node", str(EXAMPLES / "wordcount-persistent.js")], "persistent": True}]
    pools = [pool(queue, name=f"pool{index}", handler=handler, workers=1)
             for index, (queue, handler) in enumerate(zip(example_queues, handlers))]
    wqd = make_wqd(pools).start()
    for queue in example_queues:
        broker.publish(queue, b"three small words", declare=False, message_id="m-words")
        broker.publish(queue, b"", declare=False, message_id="m-empty")
    for queue in example_queues:
        wait_queue(broker, queue + ".dead", 60, f"the empty message dead-lettered from {queue}", messages_ready=1)
        (headers, _), = dead_letters(broker, queue).values()
        assert headers["x-wqd-exception"] == "Reject"
        assert "empty message: nothing to count" in headers["x-wqd-error"]
    wait_for(lambda: wqd.logs().count("message m-words (attempt 1): 3 words") == 3, 30,
             message=lambda: f"each example counted the words:\n{wqd.logs()}")
    for index in range(3):
        assert wqd.metric("wqd_tasks_total", pool=f"pool{index}", outcome="succeeded") == 1
