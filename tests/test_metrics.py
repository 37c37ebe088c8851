"""Metrics: exact counters per outcome and restart reason, a master that stays
bounded while workers churn, broker gauges and readiness, the exposition
format (promtool), a real Prometheus server scraping wqd, and queue depth as
the master sees it."""

import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support import procfs
from tests.support.daemon import free_port, pool, task_body, wait_gone
from tests.support.queues import wait_queue
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
PROMTOOL = "/usr/bin/promtool"
PROMETHEUS = "/usr/bin/prometheus"
MISSING_PROMETHEUS = ("{} not found: the metrics tests need Debian's `prometheus` package "
                      "(promtool and the server). Install it with `make promtool` (as root), or: "
                      "apt-get install -y --no-install-recommends prometheus")
# A worker that dies sooner than this after its start makes the master back
# its slot off (wqd.master.EARLY_DEATH_SECONDS), from the second time in a row.
EARLY_DEATH_SECONDS = 5.0


def require(tool: str) -> str:
    """Fail (never skip) when a tool the tests need is missing."""
    if not os.access(tool, os.X_OK):
        pytest.fail(MISSING_PROMETHEUS.format(tool), pytrace=False)
    return tool


def tasks(wqd, outcome: str) -> float:
    return wqd.metric("wqd_tasks_total", pool="default", outcome=outcome)


def outcome_counts(wqd) -> dict:
    samples = wqd.metrics()
    return {outcome: samples.get(("wqd_tasks_total", frozenset({"pool": "default", "outcome": outcome}.items())))
            for outcome in ("succeeded", "retried", "dead_lettered", "failed")}


def restart_counts(wqd) -> dict:
    samples = wqd.metrics()
    return {reason: samples.get(("wqd_worker_restarts_total", frozenset({"pool": "default", "reason": reason}.items())))
            for reason in ("crashed", "killed", "time_limit", "stalled", "recycled")}


# --------------------------------------------------------------------------
# counters


def test_counters_are_exact_after_20_successful_tasks(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    assert outcome_counts(wqd) == {"succeeded": 0, "retried": 0, "dead_lettered": 0, "failed": 0}, \
        "every outcome is exposed at zero from the start"
    broker.publish_many(queue_name, [task_body(i) for i in range(20)])
    wait_for(lambda: tasks(wqd, "succeeded") == 20, 30, message=lambda: f"20 succeeded: {outcome_counts(wqd)}")
    wait_queue(broker, queue_name, 10, "all acked", messages_unacknowledged=0)
    assert outcome_counts(wqd) == {"succeeded": 20, "retried": 0, "dead_lettered": 0, "failed": 0}
    assert sorted(wqd.ended_ids()) == list(range(20)), "each task ran exactly once"
    assert wqd.metric("wqd_task_duration_seconds_count", pool="default") == 20
    assert wqd.metric("wqd_task_duration_seconds_bucket", pool="default", le="+Inf") == 20
    assert wqd.metric("wqd_messages_redelivered_total", pool="default") == 0
    assert wqd.metric("wqd_tasks_in_progress", pool="default") == 0
    assert set(restart_counts(wqd).values()) == {0}
    assert wqd.status()["pools"][0]["tasks"] == {"succeeded": 20, "failed": 0, "retried": 0, "dead_lettered": 0,
                                                 "duplicate": 0}


def test_a_failing_task_is_retried_then_dead_lettered_and_a_reject_at_once(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2, max_retries=1, retry_delay={"initial": 0.2, "max": 0.2})]).start()
    broker.publish(queue_name, task_body("boom", action="fail").encode())
    wait_for(lambda: tasks(wqd, "dead_lettered") == 1, 30, message=lambda: f"dead-lettered: {outcome_counts(wqd)}")
    assert outcome_counts(wqd) == {"succeeded": 0, "retried": 1, "dead_lettered": 1, "failed": 0}
    assert [e["attempt"] for e in wqd.records("start")] == [1, 2]

    broker.publish(queue_name, task_body("nope", action="reject").encode())
    wait_for(lambda: tasks(wqd, "dead_lettered") == 2, 30, message=lambda: f"rejected: {outcome_counts(wqd)}")
    assert outcome_counts(wqd) == {"succeeded": 0, "retried": 1, "dead_lettered": 2, "failed": 0}
    assert len(wqd.records("start")) == 3, "a Reject is not retried"
    # Every attempt that ran the handler is timed: two of "boom", one of "nope".
    assert wqd.metric("wqd_task_duration_seconds_count", pool="default") == 3
    assert wqd.metric("wqd_messages_redelivered_total", pool="default") == 0, "a retry is not a redelivery"
    wait_queue(broker, f"{queue_name}.dead", 10, "both in the dead-letter queue", messages_ready=2)


def test_a_worker_killed_during_a_task_counts_failed_killed_and_a_redelivery(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == 2, 30, message="2 consuming")
    broker.publish(queue_name, task_body("victim", sleep=1).encode())
    wait_for(lambda: len(wqd.records("start")) == 1, 30, message="task started")
    wait_for(lambda: wqd.metric("wqd_tasks_in_progress", pool="default") == 1, 10, message="in progress")
    victim = wqd.records("start")[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: wqd.ended_ids() == ["victim"], 30, message="redelivered and done on another worker")
    wait_for(lambda: tasks(wqd, "succeeded") == 1, 10, message="success counted")
    assert outcome_counts(wqd) == {"succeeded": 1, "retried": 0, "dead_lettered": 0, "failed": 1}
    assert restart_counts(wqd) == {"crashed": 0, "killed": 1, "time_limit": 0, "stalled": 0, "recycled": 0}
    assert wqd.metric("wqd_messages_redelivered_total", pool="default") == 1
    # Only the attempt that finished has a duration; the killed one has none.
    assert wqd.metric("wqd_task_duration_seconds_count", pool="default") == 1
    wait_for(lambda: wqd.metric("wqd_workers", pool="default") == 2
             and wqd.metric("wqd_workers_consuming", pool="default") == 2, 30, message="back to 2 workers")
    assert wqd.metric("wqd_workers_desired", pool="default") == 2
    assert wqd.metric("wqd_tasks_in_progress", pool="default") == 0
    assert victim not in wqd.worker_pids()


# --------------------------------------------------------------------------
# a master that stays bounded while its workers churn


def _fd_kinds(pid: int) -> dict:
    """Open fds of ``pid`` by kind (pipe, socket, anon_inode, or the file path)."""
    kinds = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue  # closed while we looked
        kind = target.split(":", 1)[0] if target.startswith(("pipe:", "socket:", "anon_inode:")) else target
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def _settled_fd_kinds(pid: int) -> dict:
    """Open fds once two looks 0.1 s apart agree (an HTTP request the master just
    answered may still be closing: the client returns once it has the body)."""
    last = [None]

    def settled():
        kinds, previous = _fd_kinds(pid), last[0]
        last[0] = kinds
        return kinds if kinds == previous else None

    return wait_for(settled, 5, interval=0.1, message="the master's fds settle")


def test_50_worker_kills_leave_the_master_bounded_and_counters_monotonic(broker, queue_name, make_wqd):
    kills = 50
    # Each slot dies at most three times (early, late, early; see below), so
    # the kills need no more than one wait of EARLY_DEATH_SECONDS.
    workers = -(-kills // 3)
    wqd = make_wqd([pool(queue_name, workers=workers)]).start()
    wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == workers, 30, message="all consuming")
    master = wqd.proc.pid
    environ = Path(f"/proc/{master}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if v.lower().startswith(b"prometheus_multiproc_dir=")], \
        "no prometheus_client multiprocess directory"
    wqd.metrics()  # let the first scrape's one-time allocations happen before measuring
    fds_before, rss_before = _settled_fd_kinds(master), procfs.rss_kib(master)
    files_before = sorted(path.name for path in wqd.workdir.iterdir())

    # Kill idle, consuming workers without ever making the master back a slot
    # off: a slot's first early death is restarted at once, the second in a
    # row is delayed, and a death after EARLY_DEATH_SECONDS resets the count.
    # So each slot alternates: one kill right after it consumes, then one when
    # its worker is older than that (the test's clock starts when it first
    # sees the worker consuming, so the master's view is older still).
    first_seen, may_die_early, killed, restarts = {}, {}, set(), []

    def victim():
        now = time.monotonic()
        for worker in wqd.workers():
            if worker["state"] != "consuming" or worker["stopping"] or worker["pid"] in killed:
                continue
            age = now - first_seen.setdefault(worker["pid"], now)
            old = age > EARLY_DEATH_SECONDS
            if old or may_die_early.get(worker["name"], True):
                return worker, old
        return None

    started = time.monotonic()
    while len(killed) < kills:
        worker, old = wait_for(victim, 20, interval=0.05, message="a worker to kill")
        os.kill(worker["pid"], signal.SIGKILL)
        killed.add(worker["pid"])
        may_die_early[worker["name"]] = old
        restarts.append(wqd.metric("wqd_worker_restarts_total", pool="default", reason="killed"))
    assert time.monotonic() - started < 60, "50 kills took too long: the master backed slots off?"

    wait_for(lambda: wqd.metric("wqd_worker_restarts_total", pool="default", reason="killed") == kills, 20,
             message="every kill counted")
    wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == workers
             and wqd.metric("wqd_workers", pool="default") == workers, 30, message="all slots refilled")
    restarts.append(wqd.metric("wqd_worker_restarts_total", pool="default", reason="killed"))
    assert restarts == sorted(restarts), f"the restart counter went down: {restarts}"
    assert restart_counts(wqd) == {"crashed": 0, "killed": kills, "time_limit": 0, "stalled": 0, "recycled": 0}
    assert outcome_counts(wqd) == {"succeeded": 0, "retried": 0, "dead_lettered": 0, "failed": 0}, \
        "idle workers had no task to fail"
    assert not set(wqd.worker_pids()) & killed
    assert "next start in" not in wqd.stderr_path.read_text(), "no slot was backed off"

    fds_after = wait_for(lambda: _fd_kinds(master) == fds_before and _fd_kinds(master), 5,
                         message=lambda: f"the master's open fds, {fds_before} before 50 worker deaths, "
                                         f"are the same after: {_fd_kinds(master)}")
    rss_after = procfs.rss_kib(master)
    assert not [kind for kind in fds_after if kind.startswith("/") and not kind.startswith("/dev/")
                and not kind.endswith(".log")], f"the master holds no files but its logs: {fds_after}"
    assert rss_after - rss_before < 1024, f"the master's RSS grew from {rss_before} to {rss_after} KiB"
    assert sorted(path.name for path in wqd.workdir.iterdir()) == files_before, "no files accumulate"


# --------------------------------------------------------------------------
# the broker's gauges and readiness


def test_broker_connected_and_readyz_follow_a_broker_kill_and_restart(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    wait_for(lambda: wqd.metric("wqd_broker_connected", pool="default") == 2, 30, message="2 connected")
    assert wqd.metric("wqd_ready") == 1
    broker.publish(queue_name, task_body("before").encode())
    wait_for(lambda: tasks(wqd, "succeeded") == 1, 30, message="one task done")
    try:
        broker.kill()
        wait_for(lambda: wqd.metric("wqd_broker_connected", pool="default") == 0, 30,
                 message="no worker connected while the broker is down")
        assert wqd.http("/readyz")[0] == 503
        assert wqd.http("/healthz")[0] == 200, "the master itself is healthy"
        assert wqd.metric("wqd_ready") == 0
        assert wqd.metric("wqd_workers_consuming", pool="default") == 0
        assert wqd.metric("wqd_workers", pool="default") == 2, "workers stay up and retry"
        assert tasks(wqd, "succeeded") == 1, "counters survive the outage"
    finally:
        broker.start()
    wait_for(lambda: wqd.metric("wqd_broker_connected", pool="default") == 2, 60, message="reconnected")
    wait_for(lambda: wqd.http("/readyz")[0] == 200, 30, message="ready again")
    assert wqd.metric("wqd_ready") == 1
    assert restart_counts(wqd) == {"crashed": 0, "killed": 0, "time_limit": 0, "stalled": 0, "recycled": 0}


def test_a_slow_http_client_cannot_stall_the_master(broker, queue_name, make_wqd):
    """The endpoint is served from the master's loop: a client that trickles its
    request in must not keep the master from replacing a dead worker."""
    wqd = make_wqd([pool(queue_name, workers=2)]).start()
    wait_for(lambda: len(wqd.worker_pids(consuming_only=True)) == 2, 30, message="2 consuming")
    victim = wqd.worker_pids()[0]
    stop, trickling = threading.Event(), threading.Event()
    slow = socket.create_connection(("127.0.0.1", wqd.port))

    def trickle():  # one byte every 0.2 s, for up to 10 s
        for byte in b"GET /metrics HTTP/1.0\r\nUser-Agent: slow-client-that-takes-its-time\r\n":
            if stop.wait(0.2):
                return
            try:
                slow.send(bytes([byte]))
                trickling.set()
            except OSError:
                return  # dropped by the master: what we want

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        assert trickling.wait(5), "the slow client sends"
        started = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(set(wqd.all_worker_pids()) - {victim}) == 2, 10, interval=0.05,
                 message="the killed worker is replaced")
        replaced = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        slow.close()
    # http_endpoint.CLIENT_TIMEOUT (2 s) bounds a request, however slowly it comes.
    assert replaced < 3.5, f"a slow HTTP client held the master's loop: replacement took {replaced:.1f} s"
    assert wqd.http("/healthz")[0] == 200


# --------------------------------------------------------------------------
# the exposition format, and a real Prometheus server


def test_exposition_passes_promtool_check_metrics(broker, queue_name, make_wqd):
    promtool = require(PROMTOOL)
    wqd = make_wqd([pool(queue_name, workers=1, max_retries=0)]).start()
    broker.publish_many(queue_name, [task_body(1), task_body(2, action="fail")])
    wait_for(lambda: tasks(wqd, "succeeded") == 1 and tasks(wqd, "dead_lettered") == 1, 30,
             message="one task of each outcome")
    code, body = wqd.http("/metrics")
    assert code == 200
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert not result.stdout.strip() and not result.stderr.strip(), "no lint warnings either"
    text = body.decode()
    assert "# TYPE wqd_tasks_total counter" in text and "# TYPE wqd_task_duration_seconds histogram" in text
    assert "_created" not in text


class PrometheusServer:
    """/usr/bin/prometheus in its own process group, on a free loopback port."""

    def __init__(self, workdir: Path, config: dict):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.log_path = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [require(PROMETHEUS), f"--config.file={self.config_path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "wb"), start_new_session=True)

    def get(self, path: str, **params):
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)

    def query(self, expr: str) -> dict:
        """{frozenset(labels): value} of an instant query."""
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", answer
        return {frozenset(r["metric"].items()): float(r["value"][1]) for r in answer["data"]["result"]}

    def log(self) -> str:
        return self.log_path.read_text()[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def prometheus(tmp_path):
    """``prometheus(config) -> PrometheusServer``; stopped after the test."""
    servers = []

    def start(config: dict) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prometheus{len(servers)}", config)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _dashboard_exprs() -> list:
    dashboard = json.loads((REPO / "etc/grafana/wqd-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_a_real_prometheus_scrapes_wqd_and_its_rules_and_dashboard_queries_work(
        broker, queue_name, make_wqd, prometheus, tmp_path):
    wqd = make_wqd([pool(queue_name, workers=2, max_retries=0)]).start()
    # The example config from etc/, pointed at this wqd and sped up.
    config = yaml.safe_load((REPO / "etc/prometheus/prometheus.yml").read_text())
    config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    config.pop("alerting", None)
    config["rule_files"] = [str(REPO / "etc/prometheus/alerts.yml")]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "wqd"]
    job.update({"scrape_interval": "1s", "scrape_timeout": "1s"})
    job["static_configs"] = [{"targets": [f"127.0.0.1:{wqd.port}"]}]
    server = prometheus(config)

    def target_up():
        if server.proc.poll() is not None:
            pytest.fail(f"prometheus exited with {server.proc.returncode}:\n{server.log()}")
        targets = server.get("/api/v1/targets")["data"]["activeTargets"]
        return [t for t in targets if t["labels"]["job"] == "wqd" and t["health"] == "up"]

    wait_for(target_up, 30, interval=0.2, message=lambda: f"prometheus scrapes wqd:\n{server.log()}")

    broker.publish_many(queue_name, [task_body(i) for i in range(7)] + [task_body("x", action="reject")])
    wait_for(lambda: tasks(wqd, "succeeded") == 7 and tasks(wqd, "dead_lettered") == 1, 30,
             message="tasks processed")
    instance = f"127.0.0.1:{wqd.port}"
    expected = {"succeeded": 7.0, "dead_lettered": 1.0, "retried": 0.0, "failed": 0.0, "duplicate": 0.0}

    def scraped_totals():
        result = server.query("wqd_tasks_total")
        return {dict(labels)["outcome"]: value for labels, value in result.items()
                if dict(labels).get("instance") == instance and dict(labels).get("job") == "wqd"}

    wait_for(lambda: scraped_totals() == expected, 20, interval=0.25,
             message=lambda: f"prometheus has the numbers wqd processed: {scraped_totals()}")
    assert server.query('sum(wqd_task_duration_seconds_count{job="wqd"})') == {frozenset(): 8.0}
    assert server.query('wqd_workers{job="wqd"}') == {
        frozenset({"__name__": "wqd_workers", "job": "wqd", "instance": instance, "pool": "default"}.items()): 2.0}

    # Every alert rule evaluates without error against real wqd series...
    def rules_evaluated():
        groups = server.get("/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule["health"] == "ok" for rule in rules) else None

    rules = wait_for(rules_evaluated, 20, interval=0.25,
                     message=lambda: f"rules evaluated: {server.get('/api/v1/rules')}")
    firing = [rule["name"] for rule in rules if rule["state"] == "firing"]
    assert firing == [], f"no alert fires for a healthy wqd: {firing}"
    # ...and so does every dashboard query (Grafana variables filled in).
    for expr in _dashboard_exprs():
        concrete = (expr.replace("$__rate_interval", "1m").replace("$__range", "5m")
                    .replace("$pool", ".+").replace("$instance", ".+").replace("$job", "wqd"))
        server.query(concrete)


# --------------------------------------------------------------------------
# queue depth as the master sees it


def test_queue_depth_as_seen_by_the_master(broker, queue_name, make_wqd):
    wqd = make_wqd([pool(queue_name, workers=1, max_retries=0)]).start()
    broker.publish(queue_name, task_body("dead", action="reject").encode())
    wait_for(lambda: tasks(wqd, "dead_lettered") == 1, 30, message="one dead-lettered")
    broker.publish(queue_name, task_body("busy", sleep=30).encode())
    wait_for(lambda: len(wqd.records("start")) == 2, 30, message="the only worker is busy")
    broker.publish_many(queue_name, [task_body(i) for i in range(3)])

    assert "# TYPE wqd_queue_messages_ready gauge" in wqd.http("/metrics")[1].decode(), \
        "wqd_queue_messages_ready is not exposed: is wqd.queue_monitor wired into the master?"
    queue = {"pool": "default", "queue": queue_name}
    dead = {"pool": "default", "queue": f"{queue_name}.dead"}

    def depth():
        samples = wqd.metrics()
        return (samples.get(("wqd_queue_messages_ready", frozenset(queue.items()))),
                samples.get(("wqd_queue_consumers", frozenset(queue.items()))),
                samples.get(("wqd_dead_letter_messages", frozenset(dead.items()))))

    wait_for(lambda: depth() == (3, 1, 1), 20, interval=0.25, message=lambda: f"ready, consumers, dead: {depth()}")
    (monitor,) = _monitor_pids(wqd.proc.pid)

    # A reload that renames the pool gives the counts their new label at once.
    wqd.config["pools"][0]["name"] = "renamed"
    wqd.write_config()
    wqd.signal(signal.SIGHUP)

    def labelled():
        pools = {dict(labels).get("pool") for name, labels in wqd.metrics() if name == "wqd_queue_messages_ready"}
        return pools == {"renamed"}

    wait_for(labelled, 10, interval=0.25, message="queue depth labelled with the new pool name")
    (replacement,) = _monitor_pids(wqd.proc.pid)
    assert replacement != monitor, "a new monitor for the new configuration"
    wait_gone(monitor, 5)

    # The monitor does not outlive the master.
    wqd.signal(signal.SIGQUIT)
    assert wqd.wait_exit(15) == 0
    wait_gone(replacement, 5)


def _monitor_pids(master: int) -> list:
    """Live queue monitor processes whose parent is ``master``."""
    return procfs.children(master, b"wqd: queue monitor")


def test_the_queue_monitor_never_blocks_the_master_even_on_a_frozen_broker(broker, queue_name, tmp_path):
    """QueueMonitor driven the way the master's loop drives it, in this process."""
    from wqd import config as config_module
    from wqd.master.queue_monitor import QueueMonitor

    config = config_module.parse(yaml.safe_dump({
        "broker": {"url": broker.url}, "pools": [pool(queue_name)]}), str(tmp_path / "wqd.yaml"))
    broker.publish_many(queue_name, ["a", "b"])
    monitor = QueueMonitor(config.broker, config.pools, interval=0.2, stale_after=1.0)
    slowest = [0.0]

    def timed(call, *args):
        started = time.monotonic()
        result = call(*args)
        slowest[0] = max(slowest[0], time.monotonic() - started)
        return result

    def loop_once():
        """One pass of a master loop: the monitor's calls must return at once."""
        timed(monitor.tick, time.monotonic(), lambda: None)
        if monitor.fileno() is not None and select.select([monitor.fileno()], [], [], 0.05)[0]:
            timed(monitor.read)
        families = timed(lambda: list(monitor.collect()))
        return {f.name: [(s.labels["queue"], s.value) for s in f.samples] for f in families}

    try:
        wait_for(lambda: loop_once()["wqd_queue_messages_ready"] == [(queue_name, 2)], 20, interval=0,
                 message="the monitor reports 2 ready")
        assert loop_once()["wqd_queue_consumers"] == [(queue_name, 0)]
        assert loop_once()["wqd_dead_letter_messages"] == [], "no dead-letter queue declared yet"
        assert b"wqd: queue monitor" == Path(f"/proc/{monitor.pid}/cmdline").read_bytes().rstrip(b"\0")
        broker.pause()  # SIGSTOP: connections stay open, nothing answers
        wait_for(lambda: loop_once()["wqd_queue_messages_ready"] == [], 10, interval=0,
                 message="stale counts are dropped, not shown as current")
        broker.resume()
        wait_for(lambda: loop_once()["wqd_queue_messages_ready"] == [(queue_name, 2)], 30, interval=0,
                 message="counts are back once the broker answers")
    finally:
        if broker.paused:
            broker.resume()
        child = monitor.pid
        monitor.close()
    # Blocked on the frozen broker, a call would take seconds (its heartbeat);
    # a fork on a loaded machine takes a tenth of one.
    assert slowest[0] < 1.0, f"a monitor call blocked for {slowest[0]:.3f} s"
    assert child is not None and not Path(f"/proc/{child}").exists(), "the child is gone (and reaped)"
