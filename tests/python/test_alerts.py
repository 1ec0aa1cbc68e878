"""The chart's alert rules (helm/fleetgate/templates/prometheusrule.yaml):
rendered with helm, every group passes `promtool check rules`, the unit tests
in tests/alerts/ (`promtool test rules`) show each alert firing on the series
that should trip it and staying quiet on those that should not, every alert
has a summary, a description and a runbook entry in the README, and every
metric a rule uses is in the first scrape of a fresh fleetgate process.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from conftest import REPO

CHART = REPO / "helm" / "fleetgate"
ALERT_TESTS = REPO / "tests" / "alerts" / "fleetgate.test.yaml"
RELEASE, NAMESPACE = "fg", "fleet"
BASE = {"jwt": {"secret": "hs256-secret-0123456789abcdef"}}
ENABLED = {**BASE, "prometheusRule": {"enabled": True, "job": "fleetgate", "labels": {"release": "kube-prometheus-stack"}}}
METRIC_RE = re.compile(r"\bfleetgate_[a-z0-9_]+")
SERIES_SUFFIXES = ("_bucket", "_sum", "_count")
# Metrics that exist only with a setting the fresh process does not have.
CONDITIONAL = {
    # Registered by the JWKS key source, so only when FLEETGATE_JWT_JWKS_URL is set.
    "fleetgate_jwks_refreshes_total": "FLEETGATE_JWT_JWKS_URL",
}
ALERTS = {
    "FleetgateReplicaDown",
    "FleetgateAbsent",
    "FleetgateRedisErrors",
    "FleetgateUpdatesUnavailable",
    "FleetgateReadinessFlapping",
    "FleetgateDeliveryLagHigh",
    "FleetgateSlowViewersExpelled",
    "FleetgateConnectionCapReached",
    "FleetgateJwksRefreshFailing",
    "FleetgateOutputEventsFailed",
    "FleetgateOutputEventsSkipped",
    "FleetgateOutputLagHigh",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's `prometheus` package (./scripts/test.sh does)")
    return path


@pytest.fixture(scope="module")
def chart(tmp_path_factory):
    # A copy without the dashboards link: the rules do not depend on it.
    dst = tmp_path_factory.mktemp("chart") / "fleetgate"
    shutil.copytree(CHART, dst, ignore=lambda d, names: ["dashboards"] if Path(d) == CHART else [])
    (dst / "dashboards").mkdir()
    (dst / "dashboards" / "placeholder.json").write_text(json.dumps({"uid": "p", "title": "p", "panels": []}))
    with helm.Chart.load(dst) as loaded:
        yield loaded


def prometheus_rules(chart, values: dict) -> list[dict]:
    out = chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    docs = []
    for path, text in out.items():
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        docs += [d for d in yaml.safe_load_all(text) if d and d.get("kind") == "PrometheusRule"]
    return docs


@pytest.fixture(scope="module")
def rule_doc(chart) -> dict:
    [doc] = prometheus_rules(chart, ENABLED)
    return doc


def rules_of(doc: dict) -> list[dict]:
    return [r for g in doc["spec"]["groups"] for r in g["rules"]]


def test_off_by_default(chart):
    assert prometheus_rules(chart, BASE) == []


def test_object_and_labels(rule_doc):
    assert rule_doc["apiVersion"] == "monitoring.coreos.com/v1"
    meta = rule_doc["metadata"]
    assert meta["namespace"] == NAMESPACE and meta["name"] == "fg-fleetgate"
    assert meta["labels"]["release"] == "kube-prometheus-stack"
    assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE


def test_every_alert_is_there_with_annotations(rule_doc):
    rules = rules_of(rule_doc)
    names = {r["alert"] for r in rules}
    assert names == ALERTS, f"missing {ALERTS - names}, unexpected {names - ALERTS}"
    for r in rules:
        assert r["labels"]["severity"] in {"warning", "critical"}, r
        for key in ("summary", "description"):
            assert (r.get("annotations") or {}).get(key, "").strip(), f"{r['alert']}: no {key}"
        assert 'job="fleetgate"' in r["expr"], f"{r['alert']} does not select the job: {r['expr']}"


def test_default_job_is_the_service_name(chart):
    [doc] = prometheus_rules(chart, {**BASE, "prometheusRule": {"enabled": True}})
    for r in rules_of(doc):
        assert 'job="fg-fleetgate"' in r["expr"], r["expr"]


def test_thresholds_come_from_values(chart):
    values = copy.deepcopy(ENABLED)
    values["prometheusRule"]["alerts"] = {"deliveryLag": {"p99Seconds": 2, "for": "3m"}, "readinessFlapping": {"changes": 9, "window": "30m"}}
    [doc] = prometheus_rules(chart, values)
    rules = {r["alert"]: r for r in rules_of(doc)}
    assert rules["FleetgateDeliveryLagHigh"]["expr"].rstrip().endswith("> 2")
    assert rules["FleetgateDeliveryLagHigh"]["for"] == "3m"
    assert "[30m]) > 9" in rules["FleetgateReadinessFlapping"]["expr"]


def test_schema_refuses_a_bad_duration(chart):
    values = copy.deepcopy(ENABLED)
    values["prometheusRule"]["alerts"] = {"replicaDown": {"for": "five minutes"}}
    with pytest.raises(Exception):
        chart.validate_schema(values)


def write_rules(doc: dict, path: Path, annotations: bool = True) -> Path:
    groups = copy.deepcopy(doc["spec"]["groups"])
    if not annotations:
        for g in groups:
            for r in g["rules"]:
                r.pop("annotations", None)
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def test_promtool_check_rules(rule_doc, tmp_path):
    path = write_rules(rule_doc, tmp_path / "rules.yaml")
    r = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"promtool check rules:\n{r.stdout}{r.stderr}"
    assert f"SUCCESS: {len(ALERTS)} rules found" in r.stdout, r.stdout


def test_promtool_unit_tests(rule_doc, tmp_path):
    write_rules(rule_doc, tmp_path / "rules.yaml", annotations=False)
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    tested = set(re.findall(r"alertname: (\w+)", ALERT_TESTS.read_text()))
    assert tested == ALERTS, f"alerts without a unit test: {ALERTS - tested}"
    r = subprocess.run(
        [promtool(), "test", "rules", ALERT_TESTS.name], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, f"promtool test rules:\n{r.stdout}{r.stderr}"


def test_every_alert_has_a_runbook_entry():
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Alerts", 1)
    assert len(section) == 2, "README has no Operating → Alerts section"
    body = section[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    for name in ALERTS:
        assert f"`{name}`" in body, f"README Alerts: no runbook entry for {name}"


def test_rule_metrics_exist_in_a_fresh_scrape(rule_doc, fresh_scrape):
    families = set(re.findall(r"^# TYPE (\S+) ", fresh_scrape, re.M))
    missing = {}
    for r in rules_of(rule_doc):
        for name in METRIC_RE.findall(r["expr"]):
            family = next((name[: -len(s)] for s in SERIES_SUFFIXES if name.endswith(s) and name[: -len(s)] in families), name)
            if family in families or name in CONDITIONAL:
                continue
            missing.setdefault(name, []).append(r["alert"])
    assert not missing, "metrics used by alert rules but absent from a fresh scrape:\n" + "\n".join(
        f"  {n}: {', '.join(a)}" for n, a in sorted(missing.items())
    )
