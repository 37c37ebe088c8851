"""The console in-process, no broker: its token file, who may act and from
where, the security headers, and hostile text kept as text on every page."""

import base64

import pytest

from wqd import config, errors
from wqd.config import console_tokens as tokens
from wqd.console import auth, charts, dead_pages, history, page
from wqd.console.app import Console
from wqd.console.dead_work import DeadWork
from wqd.handlers.code_version import CodeVersion
from wqd.master import arbiter as master
from wqd.master.http_endpoint import Request

TOKEN = "a-token-of-enough-length"
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


def make_request(method="GET", target="/", headers=None, body=b""):
    import email.message
    message = email.message.Message()
    for name, value in {"Host": "console.test:9808", **(headers or {})}.items():
        message[name] = value
    return Request(method, target, message, body)


@pytest.fixture
def console(tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text(f"alice:{TOKEN}\n")
    path = tmp_path / "wqd.yaml"
    path.write_text(f"console: {{token_file: {token_file}}}\npools:\n- {{name: a, queue: q, handler: 'x:y'}}\n")
    made = master.Master(config.load(str(path)), {"a": lambda message: None}, CodeVersion((), ""))
    return Console(made, made._set_quiet, lambda: None)


def test_the_token_file_holds_one_token_or_named_ones(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"  {TOKEN}  \n")
    assert tokens.load(str(path)) == {TOKEN: "operator"}
    path.write_text(f"# ops\n\nalice:{TOKEN}\nbob : {TOKEN}-2\n")
    assert tokens.load(str(path)) == {TOKEN: "alice", TOKEN + "-2": "bob"}
    assert tokens.who(tokens.load(str(path)), TOKEN + "-2") == "bob"
    assert tokens.who(tokens.load(str(path)), TOKEN + "-3") is None
    for text, expected in (("alice:short\n", "at least 16 printable characters on line 1"),
                           (f"alice:{TOKEN}\n{TOKEN}-2\n", "expected name:token on line 2"),
                           ("# nothing\n", "holding a token"),
                           (f"alice:{TOKEN}\nbob:{TOKEN}\n", "line 2 repeats one")):
        path.write_text(text)
        with pytest.raises(ValueError, match=expected):
            tokens.load(str(path))


def test_a_bad_token_file_fails_the_configuration_check(tmp_path):
    token_file = tmp_path / "tokens"
    token_file.write_text("short\n")
    path = tmp_path / "wqd.yaml"
    path.write_text(f"console: {{token_file: {token_file}}}\npools:\n- {{name: a, queue: q, handler: 'x:y'}}\n")
    with pytest.raises(errors.ConfigError, match="console.token_file"):
        config.load(str(path))


def test_actions_need_a_token_and_a_same_origin_form(console):
    keeper = console.auth
    with pytest.raises(auth.Refused, match="log in first"):
        keeper.authorize(make_request("POST", "/actions/quiet"))
    with pytest.raises(auth.Refused, match="not in the console's token file"):
        keeper.authorize(make_request("POST", "/actions/quiet", {"Authorization": "Bearer nope-nope-nope-nope"}))
    assert keeper.authorize(make_request("POST", "/actions/quiet", {"Authorization": f"Bearer {TOKEN}"})) == "alice"
    with pytest.raises(auth.Refused, match="Origin"):
        keeper.authorize(make_request("POST", "/", {"Authorization": f"Bearer {TOKEN}", "Origin": "http://evil.test"}))
    # A browser's session: cookie, then the form's CSRF token and the Origin must match.
    with pytest.raises(auth.Refused, match="Origin"):
        keeper.log_in(make_request("POST", "/login", {"Origin": "http://evil.test"}), TOKEN)
    session = keeper.log_in(make_request("POST", "/login", {"Origin": "http://console.test:9808"}), TOKEN)
    cookie = {"Cookie": f"{auth.COOKIE}={session.id}"}
    good = f"csrf={session.csrf}".encode()
    assert keeper.authorize(make_request("POST", "/", {**cookie, "Origin": "http://console.test:9808"}, good)) == "alice"
    assert keeper.authorize(make_request("POST", "/", {**cookie, "Referer": "http://console.test:9808/dead"},
                                         good)) == "alice"
    for headers, body, why in (({**cookie, "Origin": "http://console.test:9808"}, b"csrf=wrong", "CSRF"),
                               ({**cookie, "Origin": "http://evil.test"}, good, "Origin"),
                               ({**cookie, "Referer": "http://console.test:9808.evil.test/"}, good, "Referer"),
                               (cookie, good, "no Origin or Referer")):
        with pytest.raises(auth.Refused, match=why):
            keeper.authorize(make_request("POST", "/", headers, body))


def test_read_only_without_a_token_file(tmp_path):
    keeper = auth.Auth(None)
    with pytest.raises(auth.Refused, match="read-only"):
        keeper.authorize(make_request("POST", "/actions/quiet", {"Authorization": f"Bearer {TOKEN}"}))


def test_every_answer_has_a_strict_policy_and_actions_are_refused_without_a_token(console):
    for target in ("/", "/dead", "/dead/letter?pool=a&id=x", "/login", "/workers?pool=a", "/nothing"):
        status, content_type, body, headers = console.handle(make_request("GET", target))
        assert content_type.startswith("text/html") and status in (200, 404)
        policy = headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src" not in policy and "'unsafe-inline'" not in policy
        assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
        assert b"<script" not in body and b"style=" not in body
    status, _, body, _ = console.handle(make_request("POST", "/actions/quiet"))
    assert status == 403 and b"log in first" in body and not console.master.quiet.on
    status, _, _, headers = console.handle(make_request("POST", "/actions/quiet", {"Authorization": f"Bearer {TOKEN}"}))
    assert status == 303 and console.master.quiet.on
    status, _, _, _ = console.handle(make_request("GET", "/static/console.css"))
    assert status == 200
    assert b'name="workers" min="1" max="1000" value="1"' in console.handle(make_request("GET", "/workers?pool=a"))[2]


def test_login_sets_an_http_only_strict_cookie(console):
    status, _, _, headers = console.handle(make_request("POST", "/login", {"Origin": "http://console.test:9808"},
                                                        f"token={TOKEN}".encode()))
    assert status == 303
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    status, _, body, _ = console.handle(make_request("POST", "/login", {"Origin": "http://console.test:9808"},
                                                     b"token=wrong"))
    assert status == 403 and b"not in the console&#x27;s token file" in body


def hostile_letter() -> dict:
    return {"pool": "a", "dead_letter_queue": "q.dead", "id": HOSTILE, "message_id": HOSTILE, "age_seconds": 5,
            "failed_at": None, "failed_epoch": None, "attempts": 1, "exception": HOSTILE, "error": HOSTILE,
            "body_bytes": len(HOSTILE), "replays": 0, "properties": {"message_id": HOSTILE, "type": HOSTILE},
            "headers": [[HOSTILE, HOSTILE], ["x-wqd-traceback", HOSTILE]],
            "body": base64.b64encode(HOSTILE.encode()).decode()}


def test_hostile_dead_letters_stay_text():
    work = DeadWork(None, lambda job: None)
    work.letters, work.read_at = [hostile_letter()], 0.0
    pages = [dead_pages.listing(work, {}, "csrf"), dead_pages.listing(work, {"exception": [HOSTILE]}, "csrf")]
    for shown_as in ("text", "json", "hex"):
        pages.append(dead_pages.letter_page(work, {"pool": ["a"], "id": [HOSTILE], "as": [shown_as]}, "csrf"))
    for html in pages:
        assert "<script" not in html and "<img" not in html and "onerror=\"" not in html
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in pages[2]
    assert "3c 73 63 72 69 70 74" in pages[4]  # the hex dump of "<script"
    assert "(not JSON" in pages[3]


def test_hostile_names_on_the_pools_page_stay_text():
    worker = {"pid": 1, "name": HOSTILE, "state": "consuming", "busy": True, "task_age": 1.5, "stopping": False,
              "task_id": HOSTILE}
    pool = {"name": HOSTILE, "queue": HOSTILE, "desired": 1, "min": 1, "max": 1, "workers": 1, "busy": 1,
            "failed": HOSTILE, "autoscaled": False, "dead_letter_queue": HOSTILE, "restarts": 0,
            "queue_counts": None, "dead_letter_counts": {"messages": 2, "consumers": 0}, "tasks": {},
            "worker_processes": [worker]}
    view = {"pid": 1, "ready": True, "quiet": False, "stopping": False, "version": HOSTILE,
            "broker": {"server": HOSTILE, "url": HOSTILE}, "pools": [pool]}
    html = page.layout(HOSTILE, page.overview(view, history.RateHistory(), "csrf"), who=HOSTILE)
    assert "<script" not in html and "<img" not in html
    assert html.count("&lt;script&gt;") >= 8


def test_the_rate_history_is_bounded_and_per_minute():
    rates = history.RateHistory(interval=10, window=60)
    for step in range(100):
        rates.sample(step * 10.0, {"a": {"succeeded": step * 5, "failed": step}})
    assert len(rates) == 7
    series = rates.rates("a")
    assert series["succeeded"] == [30.0] * 6 and series["failed"] == [6.0] * 6 and series["retried"] == [0.0] * 6
    assert rates.rates("gone") == {name: [] for name in history.OUTCOMES}
    assert "polyline" in charts.sparkline(series["succeeded"], "done", "succeeded")
    assert "no data yet" in charts.sparkline([], "<b>", "succeeded") and "<b>" not in charts.sparkline([], "<b>", "x")


def test_ages_filter_the_list():
    assert dead_pages.parse_age("90") == 90 and dead_pages.parse_age("2h") == 7200 and dead_pages.parse_age("") is None
    with pytest.raises(ValueError):
        dead_pages.parse_age("-3m")


def test_a_page_asked_for_again_within_a_second_is_not_rendered_again(console):
    first = console.handle(make_request("GET", "/"))
    assert console.handle(make_request("GET", "/")) is first  # many browsers: one rendering a second
    assert console.handle(make_request("GET", "/?x=1")) is not first
    console.handle(make_request("POST", "/actions/quiet", {"Authorization": f"Bearer {TOKEN}"}))
    again = console.handle(make_request("GET", "/"))
    assert again is not first and b"Resume" in again[2]  # an action shows at once


def test_dead_letter_work_answers_from_its_child_when_the_broker_is_unreachable(tmp_path):
    """A real child (forked as the master forks it) that cannot reach the
    broker: its answer is the error, shown on the page; the master never waited."""
    import os
    import selectors

    from tests.support.broker import free_port
    from tests.support.waiting import wait_for

    path = tmp_path / "wqd.yaml"
    path.write_text(f"broker: {{url: 'amqp://guest:guest@127.0.0.1:{free_port()}/%2F'}}\n"
                    "pools:\n- {name: a, queue: q, handler: 'x:y'}\n")
    work = DeadWork(config.load(str(path)), lambda job: None)
    work.browse_soon(0)
    work.tick(0.0, lambda: None)
    pid = work.running[1]

    def answered():
        if work.fileno() is not None:
            with selectors.DefaultSelector() as selector:
                selector.register(work.fileno(), selectors.EVENT_READ)
                if selector.select(0.1):
                    work.read()  # at the pipe's end, the job is done
        return work.running is None

    try:
        wait_for(answered, 60, message="the dead-letter child's answer")
    finally:
        work.close()
        os.waitpid(pid, 0)  # the master's loop reaps its children; here, the test
    assert work.letters is None and "127.0.0.1" in work.read_error
    html = dead_pages.listing(work, {}, "")
    assert "Could not read them" in html


def test_the_pools_page_shows_the_outbox_when_one_is_configured():
    view = {"pid": 1, "ready": True, "quiet": False, "stopping": False, "version": "1", "broker": None, "pools": []}
    assert "outbox" not in page.overview(view, history.RateHistory())
    view["outbox"] = {"table": HOSTILE, "relay_up": False, "problem": HOSTILE, "pending": 12,
                      "oldest_age_seconds": 185.0, "set_aside": 1, "relayed": 40, "refused": 2}
    html = page.overview(view, history.RateHistory())
    assert "relay down" in html and "12 rows waiting · oldest 3m05s · 1 set aside · 40 relayed · 2 refused" in html
    assert "<script" not in html and html.count("&lt;script&gt;") == 2
    view["outbox"].update(relay_up=True, problem=None, pending=None)
    assert "relay up" in page.overview(view, history.RateHistory())
    assert "unknown rows waiting" in page.overview(view, history.RateHistory())
