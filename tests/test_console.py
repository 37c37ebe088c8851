"""The console against a real `wqd run` and a real broker, over HTTP (the
browser's view is tests/test_console_browser.py, `make test-console`): the
pools and a busy worker on the page, actions refused without a token and done
with one, a dead letter replayed and run, and /healthz answering while the
page is fetched over and over."""

import threading
import time
import urllib.error
import urllib.request

import pika
import pytest

from tests.support.daemon import pool
from tests.support.waiting import wait_for

TOKEN = "console-test-token-0123456789"


def request(port: int, path: str, form: str = None, token: str = None, headers=None):
    """(status, headers, body) of a GET, or a POST of ``form``; redirects are not followed."""
    data = form.encode() if form is not None else None
    sent = {"Authorization": f"Bearer {token}"} if token else {}
    sent.update(headers or {})
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=sent)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


@pytest.fixture
def flaky_queue(broker, queue_name):
    """The second pool's queue; it and its dead-letter queue are deleted after
    the test (asked for before make_wqd, so after its daemon is killed)."""
    name = f"{queue_name}.flaky"
    yield name
    for queue in (name, f"{name}.dead"):
        try:
            broker.delete_queue(queue)
        except Exception:
            pass  # the broker may be gone: the session ends


def console_wqd(make_wqd, tmp_path, queue_name, token: bool = True):
    pools = [pool(queue_name, name="held", handler="console_handlers:held", workers=1),
             pool(f"{queue_name}.flaky", name="flaky", handler="console_handlers:fails_until_replayed", workers=1,
                  max_retries=0)]
    wqd = make_wqd(pools)
    if token:
        token_file = tmp_path / "tokens"
        token_file.write_text(f"# who may act\nalice:{TOKEN}\n")
        wqd.config["console"] = {"token_file": str(token_file)}
        wqd.write_config()
    return wqd


def publish(broker, queue: str, body: bytes, message_id: str) -> None:
    with broker.connection() as connection:
        connection.channel().basic_publish("", queue, body, pika.BasicProperties(message_id=message_id,
                                                                                 delivery_mode=2))


def test_console_shows_pools_acts_with_the_token_and_replays(flaky_queue, make_wqd, broker, queue_name, tmp_path):
    wqd = console_wqd(make_wqd, tmp_path, queue_name).start()
    release = tmp_path / "release"
    try:
        publish(broker, queue_name, str(release).encode(), "held-<1>")
        status, headers, body = request(wqd.port, "/")
        assert status == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
        assert "script" not in headers["Content-Security-Policy"]
        assert 'id="pool-held"' in body and 'id="pool-flaky"' in body
        page = wait_for(lambda: (lambda text: "held-&lt;1&gt;" in text and text)(request(wqd.port, "/")[2]), 60,
                        message="the held task on the page")
        assert "busy" in page and "held-<1>" not in page

        # Refused: no token, a wrong one, a cross-site POST with the right one.
        assert request(wqd.port, "/actions/quiet", "")[0] == 403
        assert request(wqd.port, "/actions/quiet", "", token="wrong-token-0123456789")[0] == 403
        assert request(wqd.port, "/actions/quiet", "", token=TOKEN, headers={"Origin": "http://evil.example"})[0] == 403
        assert wqd.metric("wqd_console_actions_total", action="quiet", result="refused") == 3
        assert not wqd.status()["quiet"]

        # Done: quiet and resume, a worker count.
        assert request(wqd.port, "/actions/quiet", "", token=TOKEN)[0] == 303
        assert wqd.status()["quiet"]
        assert request(wqd.port, "/actions/resume", "", token=TOKEN)[0] == 303
        assert not wqd.status()["quiet"]
        assert request(wqd.port, "/actions/scale", "pool=flaky&workers=2", token=TOKEN)[0] == 303
        wait_for(lambda: len(wqd.workers("flaky")) == 2, 60, message="a second flaky worker")
        assert request(wqd.port, "/actions/scale", "pool=flaky&workers=0", token=TOKEN)[0] == 400
        assert wqd.metric("wqd_console_actions_total", action="scale", result="done") == 1
        assert "Console action: who=alice action=scale pool='flaky', workers='2' result=done" in wqd.logs()

        # A dead letter, read by the console's child, replayed by the console, run.
        publish(broker, f"{queue_name}.flaky", b"job 7", "flaky-7")
        wait_for(lambda: "flaky-7" in request(wqd.port, "/dead")[2], 60, message="flaky-7 on /dead")
        shown = request(wqd.port, "/dead/letter?pool=flaky&id=flaky-7")[2]
        assert "ValueError" in shown and "cannot do job 7" in shown
        assert request(wqd.port, "/actions/replay", "pool=flaky&id=flaky-7", token=TOKEN)[0] == 303
        wait_for(lambda: any(r["id"] == "flaky-7" for r in wqd.records("end")), 60, message="flaky-7 run")
        wait_for(lambda: "Replayed 1 message." in request(wqd.port, "/dead")[2], 60, message="the replay's count")
        assert wqd.metric("wqd_console_actions_total", action="replay", result="done") == 1

        # What `wqd dead` refuses or reports, so does the console: an id not found, a purge unconfirmed.
        publish(broker, f"{queue_name}.flaky", b"job 8", "flaky-8")
        wait_for(lambda: "flaky-8" in request(wqd.port, "/dead")[2], 60, message="flaky-8 on /dead")
        assert request(wqd.port, "/actions/replay", "pool=flaky&id=nope", token=TOKEN)[0] == 303
        wait_for(lambda: "replayed 0 messages; not found in" in request(wqd.port, "/dead")[2], 60,
                 message="the replay of an unknown id")
        assert wqd.metric("wqd_console_actions_total", action="replay", result="failed") == 1
        assert request(wqd.port, "/actions/purge", "pool=flaky", token=TOKEN)[0] == 400
        assert request(wqd.port, "/actions/purge", "pool=flaky&yes=1", token=TOKEN)[0] == 303
        wait_for(lambda: "Deleted 1 dead message." in request(wqd.port, "/dead")[2], 60, message="the purge's count")
        assert broker.queue_stats(f"{queue_name}.flaky.dead")["messages_ready"] == 0
    finally:
        release.touch()


def test_healthz_answers_while_the_page_is_fetched(flaky_queue, make_wqd, broker, queue_name, tmp_path):
    wqd = console_wqd(make_wqd, tmp_path, queue_name, token=False).start()
    stop, fetched = threading.Event(), []

    def fetch_pages():
        while not stop.is_set() and len(fetched) < 2000:
            fetched.append(request(wqd.port, "/")[0])

    threads = [threading.Thread(target=fetch_pages) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(fetched) >= 20, 60, message="pages fetched")
        slowest = 0.0
        for _ in range(20):
            started = time.monotonic()
            assert request(wqd.port, "/healthz")[0] == 200
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 2.0, f"/healthz took {slowest:.3f} s while the console was fetched"  # generous: bench/console.py measures
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert set(fetched) == {200}
    # Read-only: an action is refused, and the page says why.
    status, _, body = request(wqd.port, "/actions/quiet", "")
    assert status == 403 and "read-only" in body
