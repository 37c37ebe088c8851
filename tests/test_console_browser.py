"""The console in a real browser: Debian's Chromium, headless, driven by
Playwright, against a real `wqd run` and a real broker. Run by `make
test-console` (marked ``browser``: not part of `make test`, which needs no
Chromium). It saves the screenshots docs/console.md shows."""

from pathlib import Path

import pika
import pytest

from tests.support.dead_letters import publish_letters
from tests.support.waiting import wait_for
from tests.test_console import TOKEN, console_wqd, flaky_queue, publish  # noqa: F401 (a fixture)

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
PWNED = "typeof window.__pwned"


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright  # only here: `make test` collects this file without it

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs this as root, where Chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.mark.usefixtures("flaky_queue")  # first: its queues are deleted after the daemon is killed
def test_the_console_in_a_browser(make_wqd, broker, queue_name, tmp_path, browser):
    wqd = console_wqd(make_wqd, tmp_path, queue_name).start()
    release = tmp_path / "release"
    dlq = f"{queue_name}.flaky.dead"
    try:
        publish(broker, queue_name, str(release).encode(), "order-1042")
        publish(broker, f"{queue_name}.flaky", b'{"invoice": 7, "retry": false}', "invoice-7")
        publish_letters(broker, dlq, [(b"<script>window.__pwned='body'</script>", pika.BasicProperties(
            message_id="<script>window.__pwned='id'</script>",
            headers={"x-wqd-exception": "<img src=x onerror=\"window.__pwned='exception'\">",
                     "x-wqd-error": "<script>window.__pwned='error'</script>",
                     "x-evil": "<svg onload=\"window.__pwned='header'\">"}))])
        wait_for(lambda: wqd.metric("wqd_tasks_total", pool="flaky", outcome="dead_lettered") == 1, 60,
                 message="invoice-7 dead-lettered")
        context = browser.new_context(viewport=DESKTOP)
        page = context.new_page()
        violations = []
        page.on("console", lambda message: violations.append(message.text)
                if "Content Security Policy" in message.text else None)

        # The pools, and a worker busy with its task.
        page.goto(f"http://127.0.0.1:{wqd.port}/")
        page.wait_for_selector("#pool-held tr.busy td.id:text('order-1042')", timeout=60_000)
        assert page.locator("#pool-flaky h2").inner_text() == "flaky"
        assert page.evaluate("getComputedStyle(document.querySelector('header')).display") == "flex"  # CSS loaded

        # The dead letters; the hostile one shown as text, its script never run.
        page.goto(f"http://127.0.0.1:{wqd.port}/dead")
        page.wait_for_selector("td.id a:text('invoice-7')", timeout=60_000)
        assert "<script>window.__pwned='id'</script>" in page.locator("table.letters").inner_text()
        assert page.evaluate(PWNED) == "undefined"
        page.screenshot(path=str(IMAGES / "console-dead-letters.png"), full_page=True)
        page.click("td.id a:text(\"<script>window.__pwned='id'</script>\")")
        page.wait_for_selector("pre.body")
        assert page.locator("pre.body").inner_text() == "<script>window.__pwned='body'</script>"
        assert "<svg onload=\"window.__pwned='header'\">" in page.locator("table.fields").last.inner_text()
        assert page.evaluate(PWNED) == "undefined"

        # Not logged in: the replay is refused.
        page.goto(f"http://127.0.0.1:{wqd.port}/dead/letter?pool=flaky&id=invoice-7&as=json")
        page.screenshot(path=str(IMAGES / "console-dead-letter.png"), full_page=True)
        page.click("button:text('Replay this letter')")
        page.wait_for_selector("h1:text('Action refused')")
        assert "log in first" in page.inner_text("main")
        assert wqd.metric("wqd_console_actions_total", action="replay", result="refused") == 1

        # Logged in: replayed from the page, and run.
        page.goto(f"http://127.0.0.1:{wqd.port}/login")
        page.fill("input[name=token]", TOKEN)
        page.click("button:text('Log in')")
        page.wait_for_selector("text=signed in as alice")
        page.goto(f"http://127.0.0.1:{wqd.port}/dead/letter?pool=flaky&id=invoice-7")
        page.click("button:text('Replay this letter')")
        page.wait_for_selector("ul.jobs li.ok:has-text('Replayed 1 message.')", timeout=60_000)  # the page refreshes
        wait_for(lambda: any(r["id"] == "invoice-7" for r in wqd.records("end")), 60, message="invoice-7 run")
        assert wqd.metric("wqd_console_actions_total", action="replay", result="done") == 1
        assert page.evaluate(PWNED) == "undefined"
        assert not violations, violations

        # The pools again, with the queues' depth and rates by now (the page reloads itself).
        page.goto(f"http://127.0.0.1:{wqd.port}/")
        page.wait_for_selector("#pool-flaky svg.chart.succeeded polyline", timeout=60_000)
        page.wait_for_selector("#pool-held p:has-text('ready ·')", timeout=60_000)
        page.screenshot(path=str(IMAGES / "console-pools.png"), full_page=True)

        # A phone-sized screen: nothing wider than it.
        phone = browser.new_context(viewport=PHONE, is_mobile=True, device_scale_factor=2).new_page()
        phone.goto(f"http://127.0.0.1:{wqd.port}/")
        phone.wait_for_selector("#pool-held")
        assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        phone.screenshot(path=str(IMAGES / "console-phone.png"), full_page=True)
    finally:
        release.touch()
