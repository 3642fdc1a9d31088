"""The Prometheus alert rules of the settlement processor, the gateway and the webhook deliverer
(deploy/observability/alerts.yml): promtool checks them and runs their unit tests (alerts.test.yml), each
alert is one an on-call person can act on, and each reads metrics its process really exports.

promtool is not optional here: `make test` installs it (deploy/test.sh, Debian's prometheus package), so
a machine without it fails these tests instead of skipping them."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
RULES = OBSERVABILITY / "alerts.yml"
RULE_TESTS = OBSERVABILITY / "alerts.test.yml"
CONFIG = OBSERVABILITY / "prometheus.yml"
DASHBOARD = OBSERVABILITY / "grafana" / "dashboards" / "settlement-gateway.json"
RUNBOOK = ROOT / "docs" / "operations-alerts.md"
JOB = "settlement-processor"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is missing, so the alert rules cannot be checked. `make test` installs it "
            "(deploy/test.sh: install_promtool in deploy/common.sh, Debian's prometheus package); by hand: "
            "apt-get install --no-install-recommends prometheus, then stop and disable the prometheus "
            "service it starts",
            pytrace=False,
        )
    return path


def run(*command: str, cwd: Path = OBSERVABILITY) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def alerting_rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules(promtool):
    done = run(promtool, "check", "rules", RULES.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alerting_rules())} rules found" in done.stdout + done.stderr


def test_promtool_checks_the_configuration_and_the_rule_files_it_loads(promtool):
    done = run(promtool, "check", "config", CONFIG.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr


def test_promtool_unit_tests_of_the_rules_pass(promtool):
    done = run(promtool, "test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_every_alert_fires_in_one_case_and_stays_silent_in_another():
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alerting_rules()}
    assert names <= firing, f"never seen firing: {names - firing}"
    assert names <= silent, f"never seen silent: {names - silent}"
    assert firing | silent <= names, f"tests of alerts that do not exist: {(firing | silent) - names}"


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes of a page's headings."""
    headings = re.findall(r"^#+ (.+)$", markdown, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_every_alert_has_a_severity_and_annotations_to_act_on():
    documented = anchors(RUNBOOK.read_text())
    for rule in alerting_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        annotations = rule["annotations"]
        assert annotations["summary"] and "\n" not in annotations["summary"], name
        assert len(annotations["description"]) > 100, f"{name}: a description says what to do"
        page, _, anchor = annotations["runbook"].partition("#")
        assert (ROOT / page) == RUNBOOK and anchor in documented, f"{name}: no section {anchor} in {page}"


def test_each_group_of_alerts_reads_the_job_it_is_named_after_which_prometheus_scrapes():
    jobs = {job["job_name"] for job in yaml.safe_load(CONFIG.read_text())["scrape_configs"]}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        assert group["name"] in jobs, group["name"]
        for rule in group["rules"]:
            assert f'job="{group["name"]}"' in rule["expr"], rule.get("alert")


def test_the_processor_is_scraped_as_the_job_the_alerts_select():
    config = yaml.safe_load(CONFIG.read_text())
    assert RULES.name in config["rule_files"]
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    assert job["static_configs"][0]["targets"] == ["processor:9102"]


def test_the_webhook_deliverer_is_scraped_as_the_job_its_alerts_select():
    config = yaml.safe_load(CONFIG.read_text())
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "settlement-webhooks"]
    assert job["static_configs"][0]["targets"] == ["webhooks:9103"]
    groups = {group["name"] for group in yaml.safe_load(RULES.read_text())["groups"]}
    assert "settlement-webhooks" in groups


def exported(registry) -> set[str]:
    """The sample names a registry's metrics are scraped as (prometheus_client adds `_total` to a counter)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {metric.name + suffix for metric in registry.collect() for suffix in suffixes[metric.type]}


def test_every_metric_an_alert_reads_is_one_its_process_exports():
    """A renamed metric would leave its alert silent for ever: each group's metrics are its process's."""
    from gateway.telemetry.metrics import Metrics
    from processor.metrics import ProcessorMetrics
    from processor.webhooks.metrics import DeliveryMetrics

    registries = {
        "settlement-processor": ProcessorMetrics().registry,
        "settlement-gateway": Metrics().registry,
        "settlement-webhooks": DeliveryMetrics().registry,
    }
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        names = exported(registries[group["name"]]) | {"up"}
        for rule in group["rules"]:
            read = set(re.findall(r"\b(settlement_\w+|up)\{", rule["expr"]))
            assert read and read <= names, (rule.get("alert"), read - names)


def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    """promtool has no expression check of its own: the dashboard's queries, as recording rules."""
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    rules = [{"record": f"dashboard:query_{i}:value", "expr": expr} for i, expr in enumerate(expressions)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run(promtool, "check", "rules", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
