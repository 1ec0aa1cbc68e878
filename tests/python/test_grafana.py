"""Checks on the Grafana dashboards and provisioning files under grafana/.

Static checks (no server needed): every dashboard is a provisioning-ready
JSON model (stable uid, null id, no import-time `__inputs`, the `datasource`
template variable on every panel and target, units everywhere,
`$__rate_interval` in every range, job/instance filters on every selector),
and every PromQL expression parses with `promtool check rules`.

Two checks need a live scrape: every metric a dashboard queries must appear in
the `/metrics` text of a Redis-backed fleetgate after real traffic (the
`metrics_scrape` fixture from conftest.py), so a renamed or removed metric
fails here instead of leaving an empty panel; and in the first scrape of a
fresh one that has seen no traffic (`fresh_scrape`), so no panel starts
with "No data" and `rate()` sees the first increment.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
DATASOURCES_YAML = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDERS_YAML = GRAFANA / "provisioning" / "dashboards" / "fleetgate.yaml"
GRAFANA_README = GRAFANA / "README.md"

DASHBOARD_FILES = sorted(DASHBOARDS.glob("*.json"))
DS = {"type": "prometheus", "uid": "${datasource}"}
CONFIGMAP_LIMIT = 1024 * 1024  # bytes; the Helm chart ships each dashboard as one ConfigMap

# Values for the template variables when an expression is checked offline.
# `.+` is what the instance variable's "All" expands to.
VARIABLE_VALUES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "job": "fleetgate",
    "instance": ".+",
    "pod": ".+",
}
METRIC_RE = re.compile(r"\bfleetgate_[a-z0-9_]+")
SERIES_SUFFIXES = ("_bucket", "_sum", "_count")


# --------------------------------------------------------------------------- helpers


def walk_panels(panels: list[dict]):
    """Every panel, rows included, and the panels nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels") or [])


def panel_targets(dashboard: dict):
    for panel in walk_panels(dashboard.get("panels", [])):
        for target in panel.get("targets") or []:
            yield panel, target


def variable_query(variable: dict) -> str:
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query", "")
    return query or ""


def label_values_selector(query: str) -> str | None:
    """The series selector of `label_values(<selector>, <label>)`, if any."""
    m = re.fullmatch(r"\s*label_values\((.+),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", query)
    return m.group(1) if m else None


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    out = []
    for panel, target in panel_targets(dashboard):
        out.append((f"panel {panel.get('id')} {panel.get('title')!r} target {target.get('refId')}", target.get("expr", "")))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable_query(variable)
            out.append((f"variable {variable['name']!r}", label_values_selector(query) or query))
    return out


def substitute(expr: str) -> str:
    """Replace Grafana variables ($name, ${name}, ${name:format}) with concrete values."""

    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        assert name in VARIABLE_VALUES, f"no test value for variable ${name} in {expr!r}"
        return VARIABLE_VALUES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def scrape_names(text: str) -> tuple[set[str], set[str]]:
    """(families declared by `# TYPE` lines, series names) of an exposition."""
    families, series = set(), set()
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 3:
                families.add(parts[2])
        elif line and not line.startswith("#"):
            series.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return families, series


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def dashboard_ids():
    return [p.name for p in DASHBOARD_FILES]


@pytest.fixture(scope="module", params=DASHBOARD_FILES, ids=dashboard_ids())
def dashboard(request) -> dict:
    return load(request.param)


# --------------------------------------------------------------------------- files


def test_dashboards_exist():
    names = [p.name for p in DASHBOARD_FILES]
    assert "fleetgate-overview.json" in names, names


def test_overview_identity():
    d = load(DASHBOARDS / "fleetgate-overview.json")
    assert d["uid"] == "fleetgate-overview"
    assert d["title"] == "fleetgate / overview"
    assert "fleetgate" in d.get("tags", [])
    assert d.get("refresh"), "no auto-refresh interval"
    assert d.get("time", {}).get("from", "").startswith("now-")
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    for wanted in ("Overview", "Traffic", "Latency", "Rejections and errors", "Per pod", "Saturation"):
        assert wanted in rows, f"row {wanted!r} missing; rows: {rows}"


def test_uids_unique_and_sizes_fit_a_configmap():
    uids = [load(p)["uid"] for p in DASHBOARD_FILES]
    assert len(uids) == len(set(uids)), uids
    for path in DASHBOARD_FILES:
        assert path.stat().st_size < CONFIGMAP_LIMIT, f"{path.name} is too large for one ConfigMap"


# --------------------------------------------------------------------------- model rules


def test_provisioning_ready_model(dashboard):
    assert dashboard["id"] is None, "id must be null: Grafana assigns it"
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard.get("uid") or ""), dashboard.get("uid")
    assert 36 <= dashboard["schemaVersion"] <= 41, dashboard["schemaVersion"]
    assert "__inputs" not in dashboard and "__requires" not in dashboard, "an import-UI export, not a provisioned model"
    raw = json.dumps(dashboard)
    assert "${DS_" not in raw, "import-time datasource placeholder left in the model"


def test_datasource_variable(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds is not None, "no `datasource` template variable"
    assert ds["type"] == "datasource" and ds["query"] == "prometheus", ds


def test_job_and_instance_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    job = variables.get("job")
    assert job is not None and job["type"] == "query", "no `job` query variable"
    assert variable_query(job).replace(" ", "") == "label_values(fleetgate_build_info,job)", variable_query(job)
    instance = variables.get("instance")
    assert instance is not None and instance["type"] == "query", "no `instance` query variable"
    assert instance.get("multi") and instance.get("includeAll"), "instance must be multi-value with All"
    assert "$job" in variable_query(instance), "instance values must follow the selected job"
    for variable in (job, instance):
        assert variable.get("datasource") == DS, f"variable {variable['name']}: {variable.get('datasource')}"


def test_datasource_on_every_panel_and_target(dashboard):
    for panel in walk_panels(dashboard["panels"]):
        assert panel.get("datasource") == DS, f"panel {panel.get('id')} {panel.get('title')!r}: {panel.get('datasource')}"
    for panel, target in panel_targets(dashboard):
        assert target.get("datasource") == DS, f"panel {panel.get('title')!r} target {target.get('refId')}: {target.get('datasource')}"


def test_panel_ids_unique_and_targets_present(dashboard):
    ids = [p.get("id") for p in walk_panels(dashboard["panels"])]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in walk_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        targets = panel.get("targets") or []
        assert targets, f"panel {panel['title']!r} has no queries"
        refs = [t.get("refId") for t in targets]
        assert len(refs) == len(set(refs)) and all(refs), f"panel {panel['title']!r}: refIds {refs}"
        for t in targets:
            assert (t.get("expr") or "").strip(), f"panel {panel['title']!r} target {t.get('refId')}: empty expr"


def test_every_panel_has_a_unit(dashboard):
    for panel in walk_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        assert isinstance(unit, str) and unit, f"panel {panel['title']!r} has no unit"


def test_ranges_use_rate_interval(dashboard):
    for where, expr in expressions(dashboard):
        windows = re.findall(r"\[([^\]]*)\]", expr)
        for window in windows:
            assert window == "$__rate_interval", f"{where}: range [{window}] in {expr!r}"
        for fn in re.findall(r"\b(rate|irate|increase)\s*\(", expr):
            assert windows, f"{where}: {fn}() without a range in {expr!r}"


def test_selectors_filter_on_job_and_instance(dashboard):
    for where, expr in expressions(dashboard):
        if where == "variable 'job'":
            continue  # the job variable lists the jobs
        for m in re.finditer(r"\b(fleetgate_[a-z0-9_]+)\s*(\{[^}]*\})?", expr):
            matchers = (m.group(2) or "").replace(" ", "")
            assert 'job="$job"' in matchers or 'job=~"$job"' in matchers, f"{where}: {m.group(0)} lacks the job filter"
            if where != "variable 'instance'":
                assert 'instance=~"$instance"' in matchers, f"{where}: {m.group(0)} lacks the instance filter"


def test_quantiles_come_from_aggregated_buckets(dashboard):
    for where, expr in expressions(dashboard):
        for m in re.finditer(r"histogram_quantile\(\s*([0-9.]+)\s*,\s*(.*)", expr):
            assert 0 < float(m.group(1)) < 1, f"{where}: quantile {m.group(1)}"
            body = m.group(2)
            assert re.match(r"sum by \(le\b", body), f"{where}: histogram_quantile over something other than sum by (le, …): {expr!r}"
            assert "_bucket{" in body and "rate(" in body, f"{where}: {expr!r}"


def test_expressions_parse_with_promtool(dashboard, tmp_path):
    promtool = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    rules = []
    for i, (where, expr) in enumerate(expressions(dashboard)):
        concrete = substitute(expr)
        assert "$" not in concrete, f"{where}: unsubstituted variable in {concrete!r}"
        rules.append({"record": f"dashboard:expr_{i}", "expr": concrete, "labels": {"where": where}})
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"promtool check rules failed:\n{result.stdout}\n{result.stderr}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, result.stdout


# --------------------------------------------------------------------------- provisioning


def test_datasource_provisioning():
    doc = yaml.safe_load(DATASOURCES_YAML.read_text())
    assert doc["apiVersion"] == 1
    [ds] = doc["datasources"]
    assert ds["type"] == "prometheus"
    assert ds.get("uid"), "the provisioned datasource needs a fixed uid"
    assert ds["url"].startswith("http"), ds["url"]
    assert ds.get("jsonData", {}).get("timeInterval"), "timeInterval (the scrape interval) drives $__rate_interval"


def test_dashboard_provider_points_at_the_dashboards():
    doc = yaml.safe_load(PROVIDERS_YAML.read_text())
    assert doc["apiVersion"] == 1
    [provider] = doc["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    assert path.startswith("/"), path
    # The README's compose example mounts the repository's dashboards there.
    readme = GRAFANA_README.read_text()
    assert f"./grafana/dashboards:{path}" in readme, f"grafana/README.md does not mount grafana/dashboards at {path}"
    assert "./grafana/provisioning/dashboards:/etc/grafana/provisioning/dashboards" in readme
    assert "./grafana/provisioning/datasources:/etc/grafana/provisioning/datasources" in readme


def test_helm_chart_ships_these_dashboards():
    link = REPO / "helm" / "fleetgate" / "dashboards"
    if not link.exists():
        pytest.skip("no helm/fleetgate/dashboards")
    assert link.resolve() == DASHBOARDS.resolve(), f"{link} resolves to {link.resolve()}, not {DASHBOARDS}"


# --------------------------------------------------------------------------- against a real scrape


def missing_from(dashboard: dict, text: str) -> dict[str, list[str]]:
    """Metric names the dashboard queries that `text` does not hold, with where."""
    families, series = scrape_names(text)
    assert families, "the scrape has no # TYPE lines"
    missing = {}
    for where, expr in expressions(dashboard):
        for name in METRIC_RE.findall(expr):
            if name in families or name in series:
                continue
            family = next((name[: -len(s)] for s in SERIES_SUFFIXES if name.endswith(s)), None)
            if family is not None and family in families:
                continue
            missing.setdefault(name, []).append(where)
    return missing


def report(missing: dict[str, list[str]]) -> str:
    return "\n".join(f"  {name}: {', '.join(wheres)}" for name, wheres in sorted(missing.items()))


def test_queried_metrics_exist_in_a_scrape(dashboard, metrics_scrape):
    missing = missing_from(dashboard, metrics_scrape)
    assert not missing, "metrics queried but absent from the scrape:\n" + report(missing)


def test_queried_metrics_exist_in_a_fresh_scrape(dashboard, fresh_scrape):
    missing = missing_from(dashboard, fresh_scrape)
    assert not missing, "metrics queried but absent from a fresh process's first scrape:\n" + report(missing)
