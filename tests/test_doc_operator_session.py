"""docs/dead-letters.md's operator session, run as written: its commands,
read from the page, against a real daemon whose handler has the bug, then
after the fix and a restart. What varies between runs (ages, sizes, error
texts) is not compared; the rows, ids, exceptions, attempts and summary
lines are."""

import json
import re
from pathlib import Path

from tests.support.daemon import pool, run_cli, wqd_env
from tests.support.waiting import wait_for

PAGE = Path(__file__).resolve().parent.parent / "docs" / "dead-letters.md"
SESSION_QUEUE = "orders"  # the session's work queue, as the page names it


def session() -> list:
    """[(argv after `wqd dead`, [output lines])] of the page's session."""
    text = PAGE.read_text().split("An operator's session:", 1)[1]
    block = re.search(r"\n\n((?:    .*\n)+)", text).group(1)
    steps = []
    for line in block.splitlines():
        line = line[4:]
        if line.startswith("$ wqd dead "):
            steps.append((line[len("$ wqd dead "):].split("#")[0].split(), []))
        elif not line.startswith("..."):
            steps[-1][1].append(line)
    return steps


def shape(line: str, queue: str) -> list:
    """The words compared: a row's pool, id, attempts and exception; a
    summary line whole, its queue name the page's."""
    words = line.replace(queue, SESSION_QUEUE).split()
    if len(words) >= 6 and words[0] in ("POOL", "default"):
        return [words[0], words[1], words[3], words[5]]
    return words


def test_the_operator_session_runs_as_written(broker, queue_name, make_wqd, tmp_path):
    steps = session()
    assert [argv[0] for argv, _ in steps] == ["list", "show", "replay", "list", "purge"], steps
    flag = tmp_path / "the-bug"  # the parser's bug, until the fixed code is deployed
    flag.touch()
    settings = dict(handler="dead_handlers:task", workers=2, max_retries=3, retry_delay={"initial": 0.05, "max": 0.05})
    wqd = make_wqd([pool(queue_name, **settings)], extra_env={"WQD_TEST_BROKEN": str(flag)}).start()
    letters = {"o-0977": "ZeroDivisionError", "o-1041": "KeyError", "o-1042": "KeyError"}  # the page's, oldest first
    for task_id, exception in letters.items():
        broker.publish(queue_name, json.dumps({"id": task_id, "raise": exception}).encode(), message_id=task_id)
    wait_for(lambda: wqd.metric("wqd_tasks_total", pool="default", outcome="dead_lettered") == 3, 60,
             message="3 dead letters")
    env = wqd_env(tmp_path / "record")

    for argv, expected in steps:
        if argv[0] == "replay":  # after "fix the handler, deploy, systemctl restart wqd"
            flag.unlink()
            wqd.stop()
            wqd.start()
        result = run_cli("dead", argv[0], "-c", str(wqd.config_path), *argv[1:], env=env)
        assert result.returncode == 0, result
        if argv[0] == "show":
            assert result.stdout.startswith(f"Message {argv[1]} (pool default"), result.stdout
            continue
        printed = [shape(line, queue_name) for line in (result.stdout + result.stderr).splitlines()]
        wanted = [shape(line, queue_name) for line in expected]
        if argv[0] in ("list", "replay"):
            # rows and per-letter lines come in the dead-letter queue's order, which is the order the two
            # workers gave the letters up in: compared as sets, the header and the summary line in place
            head, tail = (1, 0) if argv[0] == "list" else (0, 1)
            assert printed[:head] == wanted[:head] and printed[len(printed) - tail:] == wanted[len(wanted) - tail:]
            assert sorted(printed[head:len(printed) - tail]) == sorted(wanted[head:len(wanted) - tail]), \
                (printed, wanted)
        else:
            assert printed == wanted, (printed, wanted)
    wait_for(lambda: sorted(wqd.ended_ids()) == ["o-1041", "o-1042"], 30, message="the replayed letters ran")
