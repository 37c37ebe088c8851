"""The master against hostile or careless input: a reload that is slow or
costly to load never stalls supervision, a state file that is not a regular
file never blocks its start, and a worker's exit is reported for what it was
(never "Perhaps out of memory?" when wqd or the handler ended it)."""

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.support.daemon import http_get, pool, run_cli, task_body, wait_gone
from tests.support.waiting import wait_for
from wqd.errors import MAX_ERROR_CHARS
from wqd.master.http_endpoint import CLIENT_TIMEOUT, MAX_CLIENTS
from wqd.master.reloading import RELOAD_TIMEOUT

RELOADING = re.compile(r"Reloading \S+: loading it in a child process \(pid (\d+)\)")


def _consuming(wqd, count, pool_name="default"):
    return lambda: len(wqd.worker_pids(pool_name, consuming_only=True)) == count == len(wqd.worker_pids(pool_name))


def _stderr(wqd) -> str:
    return wqd.stderr_path.read_text()


def _log_lines(wqd, text: str) -> list:
    return [line for line in _stderr(wqd).splitlines() if text in line]


def _hup_and_wait_for_the_loading_child(wqd) -> int:
    """Send SIGHUP; return the pid of the child loading the file."""
    before = len(RELOADING.findall(_stderr(wqd)))
    wqd.signal(signal.SIGHUP)
    found = wait_for(lambda: RELOADING.findall(_stderr(wqd))[before:], 15, message="reload started")
    return int(found[0])


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _master_rss_mib(wqd) -> float:
    for line in Path(f"/proc/{wqd.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _assert_supervising(wqd, broker, queue_name):
    """What the master's loop does, checked while a reload is pending: it answers
    HTTP, replaces a killed worker, and kills a task past its time_limit."""
    assert http_get(wqd.port, "/healthz") == (200, b"ok\n")
    victim = wqd.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: _consuming(wqd, 2)() and victim not in wqd.worker_pids(), 20,
             message=lambda: f"killed worker replaced:\n{wqd.logs()}")
    limited_before = wqd.metric("wqd_worker_restarts_total", pool="default", reason="time_limit")
    broker.publish(queue_name, task_body("endless", sleep=120).encode())
    wait_for(lambda: wqd.metric("wqd_worker_restarts_total", pool="default", reason="time_limit") > limited_before,
             20, message=lambda: f"time_limit enforced:\n{wqd.logs()}")


# --------------------------------------------------------------------------
# reloads


def _reload_a_slow_handler(queue_name, make_wqd):
    """A running wqd (2 workers, time_limit 1 s) HUPed with a new pool whose
    handler module waits at import (until the test touches import-gate);
    returns it and the pid of the child loading that reload."""
    wqd = make_wqd([pool(queue_name, workers=2, time_limit=1, max_retries=0)]).start()
    wait_for(_consuming(wqd, 2), 30, message="2 workers")
    wqd.config["pools"].append(pool(queue_name + "-slow", name="slow", handler="slow_import:task", workers=1))
    wqd.write_config()
    return wqd, _hup_and_wait_for_the_loading_child(wqd)


def test_a_reload_slow_to_load_does_not_stall_supervision_and_hups_during_it_are_merged(
        broker, queue_name, make_wqd):
    wqd, loader = _reload_a_slow_handler(queue_name, make_wqd)
    _assert_supervising(wqd, broker, queue_name)
    # Two more HUPs while the first reload is still loading: one more reload after it, not two.
    for count in (1, 2):
        wqd.signal(signal.SIGHUP)
        wait_for(lambda: len(_log_lines(wqd, "SIGHUP during the reload in progress")) == count, 15,
                 message="HUP during the reload logged")
    assert _alive(loader) and "Reloaded" not in _stderr(wqd), "all of the above happened while the reload loaded"

    (wqd.workdir / "import-gate").touch()
    wait_for(lambda: len(_log_lines(wqd, "Reloaded ")) == 2, 60, message=lambda: f"two reloads:\n{wqd.logs()}")
    wait_for(_consuming(wqd, 1, "slow"), 60, message="the new pool's worker imported its handler and consumes")
    # A TTIN is handled after any reload that would follow: none does.
    wqd.signal(signal.SIGTTIN)
    wait_for(lambda: "SIGTTIN: workers per pool now" in _stderr(wqd), 15, message="TTIN handled")
    assert len(RELOADING.findall(_stderr(wqd))) == 2
    broker.delete_queue(queue_name + "-slow")


def test_a_reload_that_does_not_finish_in_time_is_abandoned_and_the_running_config_kept(
        broker, queue_name, make_wqd):
    wqd, loader = _reload_a_slow_handler(queue_name, make_wqd)
    _assert_supervising(wqd, broker, queue_name)

    expected = (f"Reload failed; keeping the running configuration. loading {wqd.config_path} did not finish "
                f"within {RELOAD_TIMEOUT:.0f} s")
    wait_for(lambda: expected in _stderr(wqd), RELOAD_TIMEOUT + 15, message=lambda: f"reload abandoned:\n{wqd.logs()}")
    wait_gone(loader, 10)
    assert [p["name"] for p in wqd.status()["pools"]] == ["default"]
    assert wqd.http("/readyz")[0] == 200

    # The next reload, once the module imports at once, goes through.
    (wqd.workdir / "import-gate").touch()
    wqd.signal(signal.SIGHUP)
    wait_for(_consuming(wqd, 1, "slow"), 60, message=lambda: f"slow pool added:\n{wqd.logs()}")
    broker.delete_queue(queue_name + "-slow")


def test_a_yaml_alias_bomb_neither_stalls_nor_bloats_the_master(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2, time_limit=1, max_retries=0)]).start()
    wait_for(_consuming(wqd, 2), 30, message="2 workers")
    rss_before = _master_rss_mib(wqd)
    bomb = ['bomb0: &bomb0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    bomb += [f"bomb{level}: &bomb{level} [" + ", ".join([f"*bomb{level - 1}"] * 9) + "]" for level in range(1, 10)]
    with wqd.config_path.open("a") as config:
        config.write("\n".join(bomb) + "\n")
    loader = _hup_and_wait_for_the_loading_child(wqd)
    _assert_supervising(wqd, broker, queue_name)
    wait_for(lambda: "Reload failed; keeping the running configuration." in _stderr(wqd), RELOAD_TIMEOUT + 15,
             message=lambda: f"reload refused:\n{wqd.logs()}")
    wait_gone(loader, 10)
    assert _master_rss_mib(wqd) < rss_before + 50, "the master itself never expanded the aliases"
    assert max(len(line) for line in _stderr(wqd).splitlines()) < MAX_ERROR_CHARS + 500


def test_a_reload_error_is_logged_in_one_bounded_line(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1)]).start()
    wqd.config["pools"] += [pool(f"{queue_name}-{n}", name=f"p{n}", workers="many") for n in range(300)]
    wqd.write_config()
    wqd.signal(signal.SIGHUP)
    wait_for(lambda: _log_lines(wqd, "Reload failed; keeping the running configuration."), 30,
             message=lambda: f"reload refused:\n{wqd.logs()}")
    failed = re.search(r"Reload failed; keeping the running configuration\. (.*?) \.\.\. "
                       r"\(cut: the error was (\d+) characters long\)$", _stderr(wqd), re.DOTALL | re.MULTILINE)
    assert failed, wqd.logs()
    assert failed.group(1).startswith(f"{wqd.config_path}:")
    assert "pools[1].workers: expected a positive integer, got 'many'" in failed.group(1)
    assert len(failed.group(1)) == MAX_ERROR_CHARS < int(failed.group(2))
    assert wqd.http("/readyz")[0] == 200


# --------------------------------------------------------------------------
# the state file


@pytest.mark.parametrize("kind, words", [("fifo", "a FIFO (named pipe)"), ("directory", "a directory")])
@pytest.mark.parametrize("named_by", ["config", "STATE_DIRECTORY"])
def test_a_state_file_that_is_not_a_regular_file_stops_the_start_at_once_with_exit_78(
        queue_name, make_wqd, tmp_path, kind, words, named_by):
    """Opening a FIFO for reading waits for a writer: a master waiting there
    answered no /healthz and, its handlers installed, ignored SIGTERM."""
    state_directory = tmp_path / "state"
    state_directory.mkdir()
    path = state_directory / "finished-ids"  # the name under $STATE_DIRECTORY, which the config does not check
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    by_environment = named_by == "STATE_DIRECTORY"
    wqd = make_wqd([pool(queue_name, workers=1)],
                   extra_env={"STATE_DIRECTORY": str(state_directory)} if by_environment else None)
    if not by_environment:
        wqd.config["deduplication"] = {"state_file": str(path)}
        wqd.write_config()
    started = time.monotonic()
    wqd.start(wait_ready=False)
    assert wqd.wait_exit(15) == 78
    print(f"{kind} named by {named_by}: exit 78 after {time.monotonic() - started:.2f} s")
    expected = (f"deduplication.state_file: {path} is {words}, not a regular file" if by_environment else
                f"deduplication.state_file: expected a regular file or a path where none exists yet, not {words}, "
                f"got '{path}'")
    assert expected in _stderr(wqd), wqd.logs()
    assert "Traceback" not in _stderr(wqd) and not wqd.all_worker_pids()
    if not by_environment:
        checked = run_cli("check", "-c", str(wqd.config_path), env=wqd.env, timeout=15)
        assert checked.returncode == 78 and expected in checked.stderr, checked


# --------------------------------------------------------------------------
# a worker's exit, told truthfully


def test_a_handler_that_ends_its_worker_is_a_crash_not_an_out_of_memory_kill(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, handler="handlers:exit_on_first_delivery", workers=1)]).start()
    broker.publish(queue_name, b"exits")
    wait_for(lambda: [e["body"] for e in wqd.records("end")] == ["exits"], 30,
             message=lambda: f"task ran again and ended:\n{wqd.logs()}")
    wait_for(lambda: wqd.metric("wqd_worker_restarts_total", pool="default", reason="crashed") == 1, 10,
             message="counted as a crash")
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="killed") == 0
    logs = _stderr(wqd)
    assert re.search(r"Worker default\[1\] \(pid \d+\) exited with code 0 \(crashed\): it exited on its own "
                     r"while running a task; replacing it\.$", logs, re.MULTILINE), logs
    assert "Perhaps out of memory?" not in logs


def test_a_handler_that_sends_its_worker_sigterm_is_not_an_out_of_memory_kill(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, handler="handlers:stop_own_worker", workers=1)]).start()
    broker.publish(queue_name, b"stops")
    wait_for(lambda: wqd.metric("wqd_worker_restarts_total", pool="default", reason="killed") == 1, 30,
             message=lambda: f"counted as ended from outside wqd:\n{wqd.logs()}")
    wait_for(_consuming(wqd, 1), 30, message="replaced")
    assert [e["body"] for e in wqd.records("end")] == ["stops"]
    assert wqd.metric("wqd_worker_restarts_total", pool="default", reason="crashed") == 0
    assert wqd.metric("wqd_tasks_total", pool="default", outcome="succeeded") == 1
    logs = _stderr(wqd)
    assert re.search(r"Worker default\[1\] \(pid \d+\) exited with code 0 \(killed\): wqd did not ask it to stop "
                     r"\(a SIGTERM from elsewhere, an operator's or its handler's, or an exit in its code\); "
                     r"replacing it\.$", logs, re.MULTILINE), logs
    assert "Perhaps out of memory?" not in logs


def test_workers_killed_at_their_stop_deadline_are_neither_restarts_nor_out_of_memory(
        broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)], graceful_timeout=1).start()
    wait_for(_consuming(wqd, 2), 30, message="2 workers")
    for n in range(2):
        broker.publish(queue_name, task_body(f"long-{n}", sleep=120).encode())
    wait_for(lambda: len(wqd.records("start")) == 2, 30, message="both workers busy")

    # A scale-down retires slot 2, which does not finish its task within graceful_timeout.
    wqd.signal(signal.SIGTTOU)
    wait_for(lambda: len(_log_lines(wqd, "it was stopping, so it is not replaced")) == 1, 20,
             message=lambda: f"retired worker killed:\n{wqd.logs()}")
    assert "Worker default[2]" in _log_lines(wqd, "did not stop in time; killing it")[0]
    assert sum(value for (name, _), value in wqd.metrics().items() if name == "wqd_worker_restarts_total") == 0

    # A stop: slot 1 is killed at the deadline too.
    assert wqd.stop() == 0
    logs = _stderr(wqd)
    assert len(_log_lines(wqd, "was killed by SIGKILL; it was stopping, so it is not replaced.")) == 2, logs
    assert "Perhaps out of memory?" not in logs and "replacing it" not in logs


# --------------------------------------------------------------------------
# a reloaded pool's workers import their handler


def _add_pool_importing(wqd, queue_name) -> None:
    wqd.config["pools"].append(pool(queue_name + "-late", name="late", handler="import_fails:task", workers=1))
    wqd.write_config()
    wqd.signal(signal.SIGHUP)
    wait_for(_consuming(wqd, 1, "late"), 30, message=lambda: f"pool added:\n{wqd.logs()}")


def test_a_worker_that_exits_at_once_with_code_0_is_restarted_with_backoff(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1)]).start()
    _add_pool_importing(wqd, queue_name)
    (wqd.workdir / "import-fails").write_text("os._exit")
    os.kill(wqd.worker_pids("late")[0], signal.SIGKILL)
    wait_for(lambda: _log_lines(wqd, "Worker late[1] died 4 times in a row within 5 s of starting; next start in 4 s"),
             60, message=lambda: f"backoff:\n{wqd.logs()}")
    # The worker SIGKILLed (an early death or not), then exits at once, 1 s and 2 s later.
    exits = _log_lines(wqd, "exited with code 0 (killed): wqd did not ask it to stop")
    assert 3 <= len(exits) <= 4 and all("Worker late[1]" in line for line in exits), exits
    assert wqd.metric("wqd_worker_restarts_total", pool="late", reason="killed") == len(exits) + 1
    assert "Perhaps out of memory?" not in "".join(exits)
    assert _consuming(wqd, 1)() and wqd.http("/readyz")[0] == 503  # the late pool has no consuming worker
    broker.delete_queue(queue_name + "-late")


@pytest.mark.parametrize("failure, error", [
    ("raise", "RuntimeError: this module cannot be imported any more, on purpose"),
    ("sys.exit", "SystemExit: 0"),
])
def test_a_reloaded_pool_whose_handler_no_longer_imports_is_parked(broker, queue_name, make_wqd, failure, error):
    wqd = make_wqd([pool(queue_name, workers=1)]).start()
    _add_pool_importing(wqd, queue_name)
    (wqd.workdir / "import-fails").write_text(failure)
    os.kill(wqd.worker_pids("late")[0], signal.SIGKILL)
    wait_for(lambda: "pool 'late' is not restarted until a reload fixes it" in _stderr(wqd), 30,
             message=lambda: f"pool parked:\n{wqd.logs()}")
    (late,) = [p for p in wqd.status()["pools"] if p["name"] == "late"]
    assert f"pool 'late': cannot import handler 'import_fails:task': {error}" in late["failed"]
    assert re.search(r"ERROR \[worker late\[1\] pid \d+\] .*cannot import handler", _stderr(wqd))
    assert wqd.workers("late") == [] and _consuming(wqd, 1)()
    broker.delete_queue(queue_name + "-late")


def test_a_stop_during_a_reload_ends_the_loading_child_and_exits(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1)]).start()
    wqd.config["pools"].append(pool(queue_name + "-slow", name="slow", handler="slow_import:task", workers=1))
    wqd.write_config()
    loader = _hup_and_wait_for_the_loading_child(wqd)
    assert wqd.stop(timeout=20) == 0
    wait_gone(loader, 10)
    assert "Reloaded" not in _stderr(wqd) and "Reload failed" not in _stderr(wqd)


# --------------------------------------------------------------------------
# the HTTP endpoint, served from the master's loop


def test_many_slow_http_clients_hold_neither_the_loop_nor_their_sockets(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    wait_for(_consuming(wqd, 2), 30, message="2 consuming")
    slow = [socket.create_connection(("127.0.0.1", wqd.port)) for _ in range(MAX_CLIENTS + 10)]
    try:
        for client in slow:  # a request head that never ends
            client.sendall(b"GET /metrics HTTP/1.0\r\nX-Slow: ")
        started = time.monotonic()
        assert wqd.http("/healthz") == (200, b"ok\n")
        assert time.monotonic() - started < 1.5, "answered while every slow request is pending"
        victim = wqd.worker_pids()[0]
        started = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(set(wqd.all_worker_pids()) - {victim}) == 2, 10, message="the killed worker replaced")
        assert time.monotonic() - started < CLIENT_TIMEOUT, "replaced before any slow client timed out"
        for client in slow:  # each dropped by CLIENT_TIMEOUT (or to make room for a newer client)
            client.settimeout(CLIENT_TIMEOUT + 5)
            try:
                assert client.recv(100) == b""
            except ConnectionResetError:
                pass
    finally:
        for client in slow:
            client.close()
    assert wqd.http("/healthz") == (200, b"ok\n")
