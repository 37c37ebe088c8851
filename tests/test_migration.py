"""docs/migrating.md, step by step: the tutorial's worker.py
(examples/migration/worker.py) consumes; wqd checks its pool against the
queue, starts beside it (a mixed fleet), and the old worker stops. Every
message published during the switch runs, none is lost."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import pool, run_cli, task_body, wqd_env
from tests.support.waiting import wait_for

WORKER = Path(__file__).resolve().parent.parent / "examples" / "migration" / "worker.py"
LEGACY = {"x-max-priority": 10, "x-dead-letter-exchange": "legacy.dlx"}  # a hand-written worker's queue


@pytest.mark.parametrize("arguments", [None, LEGACY], ids=["tutorial", "legacy"])
def test_a_worker_moves_to_wqd_with_nothing_lost(broker, queue_name, make_wqd, tmp_path, arguments):
    output = tmp_path / "worker.out"
    with open(output, "w") as out:
        old = subprocess.Popen([sys.executable, str(WORKER)], stdout=out, stderr=subprocess.STDOUT, env={
            "RABBITMQ_URL": broker.url, "QUEUE": queue_name, "QUEUE_ARGUMENTS": json.dumps(arguments),
            "PATH": "/usr/bin:/bin"})
    try:
        wait_for(lambda: "Waiting for messages" in output.read_text(), 30, message=lambda: output.read_text())

        def old_done() -> set:
            return {json.loads(line.split(" [x] Done ", 1)[1])["id"] for line in output.read_text().splitlines()
                    if line.startswith(" [x] Done ")}

        def publish(batch: str) -> set:
            ids = {f"{batch}-{number}" for number in range(40)}
            broker.publish_many(queue_name, [task_body(task_id) for task_id in sorted(ids)], declare=False)
            return ids

        first = publish("before")  # step 0: the old worker alone
        wait_for(lambda: old_done() >= first, 30, message="the old worker ran the first batch")

        settings = {"queue_arguments": arguments} if arguments else {}
        wqd = make_wqd([pool(queue_name, workers=2, **settings)])
        check = run_cli("check", "--broker", "-c", str(wqd.config_path), env=wqd_env(tmp_path / "record"))
        assert check.returncode == 0 and f"queue {queue_name!r} matches what wqd declares" in check.stdout, check
        wqd.start()  # step 3: beside the old worker
        wait_for(lambda: broker.queue_stats(queue_name)["consumers"] == 3, 30, message="a mixed fleet")
        mixed = publish("mixed")
        wait_for(lambda: (old_done() | set(wqd.ended_ids())) >= mixed, 60, message="the mixed batch ran")
        assert old_done() & mixed and set(wqd.ended_ids()) & mixed, "both ran some of the mixed batch"

        old.send_signal(signal.SIGINT)  # step 4: the old worker stops
        assert old.wait(30) == 0
        after = publish("after")
        wait_for(lambda: set(wqd.ended_ids()) >= after, 60, message="wqd alone ran the last batch")
    finally:
        if old.poll() is None:
            old.kill()
            old.wait()
    ran = old_done() | set(wqd.ended_ids())
    assert ran == first | mixed | after, "every message ran"
    wait_for(lambda: broker.queue_stats(queue_name) == {"messages_ready": 0, "messages_unacknowledged": 0,
                                                        "consumers": 2}, 30, message="nothing left")
