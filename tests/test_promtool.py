"""The Prometheus and Grafana files in etc/: promtool accepts them, the alert
rules behave as their unit tests say, and every metric they (and the docs)
name is one a live wqd exposes, so names cannot drift apart."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.daemon import Wqd, pool

REPO = Path(__file__).resolve().parent.parent
ALERTS = REPO / "etc/prometheus/alerts.yml"
ALERT_TESTS = REPO / "etc/prometheus/alerts_test.yml"
PROMETHEUS_CONFIG = REPO / "etc/prometheus/prometheus.yml"
DASHBOARD = REPO / "etc/grafana/wqd-dashboard.json"
DOCS = REPO / "docs" / "observability.md"
PROMTOOL = "/usr/bin/promtool"
# Series that Prometheus itself makes for each target, not wqd.
PROMETHEUS_SERIES = {"up"}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
                   "and", "or", "unless", "inf", "nan"}


def promtool(*args, cwd=None) -> str:
    try:
        result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd)
    except FileNotFoundError:
        pytest.fail(f"{PROMTOOL} not found: install Debian's `prometheus` package (`make promtool` as root, "
                    "or apt-get install -y --no-install-recommends prometheus)", pytrace=False)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def metric_names(expr: str) -> set:
    """The metric names a PromQL expression selects (good enough for our files:
    label matchers, ranges, strings and by/without/on lists are dropped first)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][\w:]*)(\s*\()?", expr):
        if not match[2] and match[1].lower() not in PROMQL_KEYWORDS:
            names.add(match[1])
    return names


def alert_rules() -> list:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def dashboard_targets(dashboard: dict) -> list:
    panels = list(dashboard["panels"])
    for panel in dashboard["panels"]:
        panels += panel.get("panels", [])  # collapsed rows nest theirs
    return [(panel["title"], target) for panel in panels for target in panel.get("targets", [])]


def test_metric_names_helper():
    assert metric_names('sum by (pool, le) (rate(wqd_x_bucket{pool=~"$pool"}[$__rate_interval])) / '
                        'wqd_y and on (job) up{job="wqd"} > bool 0.5') == {"wqd_x_bucket", "wqd_y", "up"}


# --------------------------------------------------------------------------
# promtool


def test_alert_rules_pass_promtool_check_rules():
    output = promtool("check", "rules", str(ALERTS))
    assert f"SUCCESS: {len(alert_rules())} rules found" in output


def test_alert_rules_unit_tests_pass():
    assert "SUCCESS" in promtool("test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    tested = {case["alertname"] for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
              for case in test.get("alert_rule_test", [])}
    assert tested == {rule["alert"] for rule in alert_rules()}, "every alert has a unit test"


def test_example_prometheus_config_passes_promtool_check_config(tmp_path):
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    # The example names the rules file where an operator installs it, beside
    # the config: give it the same place here.
    for rule_file in config["rule_files"]:
        assert not Path(rule_file).is_absolute(), rule_file
        (tmp_path / rule_file).write_text(ALERTS.read_text())
    (tmp_path / "prometheus.yml").write_text(PROMETHEUS_CONFIG.read_text())
    output = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert f"SUCCESS: {len(alert_rules())} rules found" in output
    assert [job["job_name"] for job in config["scrape_configs"]] == ["wqd"]


# --------------------------------------------------------------------------
# names cannot drift


@pytest.fixture(scope="module")
def exposed(tmp_path_factory, broker):
    """Every metric family and sample name a live wqd exposes."""
    broker.ensure_running()
    wqd = Wqd(tmp_path_factory.mktemp("wqd"), broker.url, [pool("wqdtest.promtool.names", workers=1)])
    try:
        wqd.start()
        code, body = wqd.http("/metrics")
        assert code == 200
    finally:
        wqd.cleanup()
        broker.delete_queue("wqdtest.promtool.names")
    text = body.decode()
    names = set(re.findall(r"^# TYPE (\S+) ", text, re.M)) | set(re.findall(r"^([a-zA-Z_:][\w:]*)[{ ]", text, re.M))
    assert "wqd_tasks_total" in names and "wqd_task_duration_seconds_bucket" in names
    return names


def test_every_metric_in_the_alert_rules_is_exposed_by_wqd(exposed):
    for rule in alert_rules():
        missing = metric_names(rule["expr"]) - exposed - PROMETHEUS_SERIES
        assert not missing, f"alert {rule['alert']} uses metrics wqd does not expose: {sorted(missing)}"


def test_the_dashboard_parses_and_every_metric_in_it_is_exposed_by_wqd(exposed):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and dashboard["schemaVersion"] >= 30
    variables = {variable["name"] for variable in dashboard["templating"]["list"]}
    targets = dashboard_targets(dashboard)
    assert len(targets) >= 10
    used = set()
    for title, target in targets:
        expr = target["expr"]
        names = metric_names(expr)
        assert names, f"panel {title!r}: no metric in {expr!r}"
        missing = names - exposed
        assert not missing, f"panel {title!r} uses metrics wqd does not expose: {sorted(missing)}"
        for variable in re.findall(r"\$(\w+)", expr):
            assert variable.startswith("__") or variable in variables, f"panel {title!r}: ${variable} undefined"
        assert target["datasource"]["uid"] == "${datasource}"
        used |= names
    families = {name for name in exposed if name.startswith("wqd_")}
    histogram_series = {n for n in families if n.endswith(("_bucket", "_sum", "_count"))}
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    unshown = {name for name in families - histogram_series if name not in shown and name not in used}
    assert not unshown, f"metrics without a dashboard panel: {sorted(unshown)}"
    assert any("histogram_quantile" in target["expr"] for _, target in targets)


def test_the_docs_list_exactly_the_metrics_wqd_exposes(exposed):
    documented = set(re.findall(r"^\| `(wqd_\w+)`", DOCS.read_text(), re.M))
    families = {name for name in exposed if name.startswith("wqd_")
                and not re.search(r"_(bucket|sum|count)$", name)}
    assert documented == families, (f"undocumented: {sorted(families - documented)}; "
                                    f"documented but not exposed: {sorted(documented - families)}")
