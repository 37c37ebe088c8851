"""A deploy of new handler code under steady load, then `systemctl reload`
(SIGHUP): every worker is replaced, in-flight tasks finish on the old code,
new tasks run the new, consumption does not pause, and no task is lost or
run twice. A broken deploy keeps the old workers."""

import re
import signal
import threading
import time

from tests.support.daemon import TESTS_DIR, pool, task_body
from tests.support.waiting import wait_for

APP = '''\
from handlers import task as _recorded_task

VERSION = {version}


def task(message):
    import handlers
    handlers._record("version", message, id=message.json()["id"], version=VERSION)
    _recorded_task(message)
'''


def deploy(directory, version: int, padding: str = "") -> None:
    (directory / "deployed_app.py").write_text(APP.format(version=version) + padding)


def started_with_v1(make_wqd, queue_name, tmp_path):
    """(wqd running deployed_app's version 1 on 2 workers, the app's directory)."""
    app = tmp_path / "app"
    app.mkdir()
    deploy(app, 1)
    wqd = make_wqd([pool(queue_name, handler="deployed_app:task", workers=2)],
                   extra_env={"PYTHONPATH": f"{app}:{TESTS_DIR}", "PYTHONDONTWRITEBYTECODE": "1"}).start()
    return wqd, app


def test_new_code_reaches_every_worker_without_a_pause_or_a_lost_task(broker, queue_name, make_wqd, tmp_path):
    wqd, app = started_with_v1(make_wqd, queue_name, tmp_path)
    old_workers = set(wqd.worker_pids())
    published, stop = [], threading.Event()

    def steady_load():  # about 40 tasks a second, each 20 ms
        number = 0
        while not stop.is_set() and number < 2000:
            broker.publish(queue_name, task_body(f"t-{number}", sleep=0.02).encode(), declare=False)
            published.append(f"t-{number}")
            number += 1
            time.sleep(0.025)

    load = threading.Thread(target=steady_load)
    load.start()
    try:
        wait_for(lambda: len(wqd.ended_ids()) >= 40, 30, message="v1 under load")
        deploy(app, 2, padding="# the new release\n")
        wqd.signal(signal.SIGHUP)  # systemctl reload wqd
        wait_for(lambda: any(r["version"] == 2 for r in wqd.records("version")), 60,
                 message=lambda: f"v2 ran:\n{wqd.logs()}")
        wait_for(lambda: len([r for r in wqd.records("version") if r["version"] == 2]) >= 40, 60,
                 message="v2 under load")
    finally:
        stop.set()
        load.join()
    wait_for(lambda: sorted(wqd.ended_ids()) == sorted(published), 60, message="every task ran")
    assert len(wqd.ended_ids()) == len(set(wqd.ended_ids())), "a task ran twice"
    versions = wqd.records("version")
    switched = min(r["t"] for r in versions if r["version"] == 2)
    assert all(r["version"] == 2 for r in versions if r["t"] > switched + 1), "v1 still ran after the switch"
    assert old_workers.isdisjoint(wqd.worker_pids()), "every worker was replaced"
    starts = sorted(r["t"] for r in wqd.records("start"))
    pause = max(later - earlier for earlier, later in zip(starts, starts[1:]))
    assert pause < 1.0, f"consumption paused {pause:.2f} s"
    assert "The handler code changed; replacing every worker gracefully" in wqd.logs()
    # one slot at a time: each new worker is spawned once the one before it consumes
    logs = wqd.logs().split("rolling its workers onto the new code", 1)[1].splitlines()
    spawned = [(n, int(re.search(r"\(pid (\d+)\)", line).group(1))) for n, line in enumerate(logs)
               if re.search(r"Worker default\[\d\] spawned", line)]
    consuming = {int(re.search(r" pid (\d+)\]", line).group(1)): n for n, line in enumerate(logs)
                 if "] Consuming from" in line}
    assert len(spawned) == 2, logs
    assert consuming[spawned[0][1]] < spawned[1][0], "the second new worker started before the first consumed"


def test_a_broken_deploy_keeps_the_running_workers_and_code(broker, queue_name, make_wqd, tmp_path):
    wqd, app = started_with_v1(make_wqd, queue_name, tmp_path)
    workers = sorted(wqd.worker_pids())
    (app / "deployed_app.py").write_text("VERSION = (\n")  # a syntax error
    wqd.signal(signal.SIGHUP)
    wait_for(lambda: "Reload failed; keeping the running configuration." in wqd.logs(), 60,
             message=lambda: wqd.logs())
    assert "SyntaxError" in wqd.logs() and sorted(wqd.worker_pids()) == workers
    broker.publish(queue_name, task_body("after").encode(), declare=False)
    wait_for(lambda: wqd.ended_ids() == ["after"], 30, message="the old code still runs")
    assert [r["version"] for r in wqd.records("version")] == [1]


def test_a_reload_that_changes_no_code_replaces_no_worker(broker, queue_name, make_wqd, tmp_path):
    wqd, _ = started_with_v1(make_wqd, queue_name, tmp_path)
    workers = sorted(wqd.worker_pids())
    wqd.signal(signal.SIGHUP)
    wait_for(lambda: "Reloaded " in wqd.logs(), 60, message=lambda: wqd.logs())
    assert sorted(wqd.worker_pids()) == workers and "handler code changed" not in wqd.logs()
