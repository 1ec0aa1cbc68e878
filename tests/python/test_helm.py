"""The Helm chart in helm/fleetgate, checked offline: strict lint, renders with
the value sets operators use, every manifest against the Kubernetes 1.30 API
schemas, and the properties a deployment relies on (non-root, probes, drain
timing, secrets never in plain env, ingress behaviour for Socket.IO, refusals).

Renders use a copy of the chart whose dashboards/ holds a placeholder, so they
do not depend on the dashboards' content; test_dashboards_* check the real
chart and its link to grafana/dashboards.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import tomllib
from functools import lru_cache
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "fleetgate"
DASHBOARDS = REPO / "grafana" / "dashboards"
KUBE = "1.30.0"
RELEASE, NAMESPACE = "fg", "fleet"
FULLNAME = "fg-fleetgate"

SECRET = "hs256-secret-0123456789abcdef"
REDIS_URL = "redis://:redis-password-42@redis-master.redis:6379/0"
CLUSTER_NODES = ["redis://:redis-password-42@redis-cluster-0.redis:6379", "redis-cluster-1.redis:6379"]
PUBLIC_PEM = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEpublic\n-----END PUBLIC KEY-----\n"
PRIVATE_PEM = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49private\n-----END PRIVATE KEY-----\n"
SECRET_VALUES = [SECRET, REDIS_URL, "redis-password-42", "BEGIN PUBLIC KEY", "BEGIN PRIVATE KEY"]
PLACEHOLDER_DASHBOARD = {"uid": "placeholder", "title": "placeholder", "panels": []}

SCENARIOS: dict[str, dict] = {
    # Single replica, embedded mode, HS256 secret from values.
    "defaults": {"jwt": {"secret": SECRET}},
    "scaled": {
        "replicaCount": 3,
        "redis": {"url": REDIS_URL},
        "jwt": {"secret": SECRET, "issuer": "https://id.example.com", "audience": "fleetgate"},
        "ingress": {"enabled": True, "tls": [{"secretName": "fg-tls", "hosts": ["fleetgate.example.com"]}]},
        "autoscaling": {"enabled": True},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "dashboards": {"enabled": True},
        "config": {"maxAgeMs": 604800000, "batchMs": 250, "corsOrigins": ["https://a.example", "https://b.example"]},
        "probes": {"startup": {"enabled": True}},
    },
    "rs256-values": {
        "jwt": {"algorithm": "RS256", "publicKey": PUBLIC_PEM, "privateKey": PRIVATE_PEM},
        "redis": {"url": REDIS_URL},
        "replicaCount": 2,
    },
    "hs256-existing": {
        "jwt": {"existingSecret": "my-jwt", "existingSecretKeys": {"secret": "hmac"}},
        "redis": {"existingSecret": "my-redis", "existingSecretKey": "url"},
        "replicaCount": 2,
    },
    "es256-existing": {
        "jwt": {"algorithm": "ES256", "existingSecret": "my-keys", "existingSecretKeys": {"publicKey": "pub", "privateKey": "priv"}},
        "redis": {"url": REDIS_URL},
    },
    "httproute": {
        "jwt": {"secret": SECRET},
        "redis": {"url": REDIS_URL},
        "replicaCount": 2,
        "socketio": {"pollingEnabled": False},
        "httpRoute": {
            "enabled": True,
            "parentRefs": [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}],
            "hostnames": ["fleetgate.example.com"],
        },
    },
    "cluster": {
        "jwt": {"secret": SECRET},
        "redis": {"clusterNodes": CLUSTER_NODES},
        "replicaCount": 3,
    },
    "cluster-existing": {
        "jwt": {"secret": SECRET},
        "redis": {"existingSecret": "my-redis-cluster", "existingSecretKey": "nodes", "cluster": True},
        "replicaCount": 3,
    },
    # Key rotation: HS256 secrets with kids and a directory of PEM public keys, both from existing Secrets.
    "key-rotation": {
        "jwt": {
            "rotatingSecrets": {"existingSecret": "fg-jwt-secrets", "key": "secrets"},
            "keysDir": {"existingSecret": "fg-jwt-keys"},
        },
        "redis": {"url": REDIS_URL},
        "replicaCount": 2,
    },
    "keys-dir-only": {
        "jwt": {"algorithm": "ES256", "keysDir": {"existingSecret": "fg-jwt-keys", "mountPath": "/keys"}},
    },
    # The Bitnami Redis chart (release `redis`) in Sentinel mode.
    "sentinel-bitnami": {
        "jwt": {"secret": SECRET},
        "redis": {
            "sentinel": {"nodes": ["redis.redis:26379"], "masterSet": "mymaster", "existingSecret": "redis"},
        },
        "replicaCount": 3,
    },
    # A managed Redis over TLS with a private CA and a client certificate.
    "redis-tls": {
        "jwt": {"secret": SECRET},
        "redis": {
            "url": "rediss://fleetgate:redis-password-42@redis.example.com:6380",
            "tls": {"existingSecret": "redis-ca", "caKey": "ca.crt", "certKey": "tls.crt", "keyKey": "tls.key"},
        },
        "replicaCount": 2,
    },
    "websocket-only-ingress": {
        "jwt": {"secret": SECRET},
        "redis": {"url": REDIS_URL},
        "replicaCount": 2,
        "ingress": {"enabled": True},
        "socketio": {"pollingEnabled": False},
    },
}


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def chart_dir(tmp_path_factory) -> Path:
    """The chart with a placeholder dashboard instead of the grafana/ link."""
    dst = tmp_path_factory.mktemp("chart") / "fleetgate"
    shutil.copytree(CHART, dst, ignore=lambda d, names: ["dashboards"] if Path(d) == CHART else [])
    (dst / "dashboards").mkdir()
    (dst / "dashboards" / "placeholder.json").write_text(json.dumps(PLACEHOLDER_DASHBOARD, indent=2) + "\n")
    return dst


@pytest.fixture(scope="module")
def chart(chart_dir):
    with helm.Chart.load(chart_dir) as loaded:
        yield loaded


def render(chart, values: dict) -> dict[str, str]:
    return chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)


def documents(rendered: dict[str, str]) -> list[dict]:
    """Every manifest, without NOTES.txt and templates that rendered nothing."""
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def rendered(chart) -> dict[str, list[dict]]:
    return {name: documents(render(chart, values)) for name, values in SCENARIOS.items()}


def kinds(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = kinds(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(docs: list[dict]) -> dict:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "fleetgate")


def env_of(c: dict) -> dict[str, dict]:
    names = [e["name"] for e in c.get("env", [])]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e for e in c.get("env", [])}


def render_error(chart, values: dict) -> str:
    with pytest.raises(helm.HelmError) as err:
        render(chart, values)
    return str(err.value)


@lru_cache(maxsize=1)
def config_defaults() -> dict[str, str]:
    """`default_value` of each FLEETGATE_* flag in src/config.rs."""
    src = (REPO / "src" / "config.rs").read_text()
    found = {}
    for m in re.finditer(r'#\[arg\(([^\]]*?)\)\]', src, re.S):
        args = m.group(1)
        env = re.search(r'env = "(FLEETGATE_[A-Z_]+)"', args)
        default = re.search(r'default_value(?:_t)? = ("?)([^",)]+)\1', args)
        if env and default:
            found[env.group(1)] = default.group(2).replace("_", "") if not default.group(1) else default.group(2)
    return found


# --------------------------------------------------------------------------- chart metadata and lint


def test_app_version_matches_crate():
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert str(meta["appVersion"]) == cargo["package"]["version"]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_strict(chart_dir, scenario):
    report = helm.lint(chart_dir, copy.deepcopy(SCENARIOS[scenario]), strict=True, kube_version="v" + KUBE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_lint_reports_schema_violations(chart_dir):
    # Lint runs `fail` as a log line only, so the refusals are checked by
    # rendering (test_*_refused); typos in values it does report.
    report = helm.lint(chart_dir, {"replicaCont": 3, "jwt": {"secret": SECRET}}, strict=True, kube_version="v" + KUBE)
    assert any("replicaCont" in e for e in report["errors"]), report


# --------------------------------------------------------------------------- API validation


def check_service_monitor(doc: dict) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    spec = doc["spec"]
    assert spec["selector"]["matchLabels"], "ServiceMonitor selects nothing"
    assert spec["endpoints"], "ServiceMonitor has no endpoints"
    for ep in spec["endpoints"]:
        assert set(ep) <= {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "relabelings", "metricRelabelings"}
        assert isinstance(ep["port"], str) and ep["path"].startswith("/")
        for key in ("interval", "scrapeTimeout"):
            assert re.fullmatch(r"[0-9]+(ms|s|m|h)", ep[key]), ep[key]


def check_http_route(doc: dict) -> None:
    assert doc["apiVersion"] == "gateway.networking.k8s.io/v1"
    spec = doc["spec"]
    assert spec["parentRefs"] and all(isinstance(p.get("name"), str) and p["name"] for p in spec["parentRefs"])
    for host in spec.get("hostnames", []):
        assert re.fullmatch(r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", host), host
    assert 1 <= len(spec["rules"]) <= 16
    for rule in spec["rules"]:
        assert set(rule) <= {"matches", "backendRefs", "timeouts", "sessionPersistence", "filters", "name"}
        for match in rule["matches"]:
            assert match["path"]["type"] in {"PathPrefix", "Exact", "RegularExpression"}
            assert match["path"]["value"].startswith("/")
        for ref in rule["backendRefs"]:
            assert ref["name"] and isinstance(ref["port"], int) and 1 <= ref["port"] <= 65535


def check_prometheus_rule(doc: dict) -> None:
    # test_alerts.py checks the rules themselves.
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc["spec"]) == {"groups"} and doc["spec"]["groups"]
    for group in doc["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule


CUSTOM_RESOURCES = {
    "ServiceMonitor": check_service_monitor,
    "HTTPRoute": check_http_route,
    "PrometheusRule": check_prometheus_rule,
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_manifests_validate_against_kubernetes_schemas(rendered, scenario):
    docs = rendered[scenario]
    assert docs
    for doc in docs:
        if doc["kind"] in CUSTOM_RESOURCES:
            CUSTOM_RESOURCES[doc["kind"]](doc)
            continue
        kubernetes_validate.validate(doc, KUBE, strict=True)
        assert doc["metadata"]["namespace"] == NAMESPACE


def test_kube_version_floor_is_what_the_drain_needs(rendered):
    # lifecycle.preStop.sleep: absent from the 1.28 API, behind an alpha gate in
    # 1.29, on by default from 1.30. The chart declares the floor.
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["kubeVersion"] == ">=1.30.0-0"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(one(rendered["defaults"], "Deployment"), "1.28.0", strict=True)


def test_validation_catches_unknown_fields(rendered):
    deployment = copy.deepcopy(one(rendered["defaults"], "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/healthz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE, strict=True)


def test_expected_objects_per_scenario(rendered):
    def kinds_of(name):
        return {d["kind"] for d in rendered[name]}

    assert kinds_of("defaults") == {"Deployment", "PodDisruptionBudget", "Pod", "Secret", "Service", "ServiceAccount"}
    assert {"Ingress", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds_of("scaled")
    assert "HTTPRoute" in kinds_of("httproute") and "Ingress" not in kinds_of("httproute")
    # Everything comes from existing Secrets: the chart has nothing to store.
    assert "Secret" not in kinds_of("hs256-existing")


# --------------------------------------------------------------------------- pod


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_security_context(rendered, scenario):
    pod = one(rendered[scenario], "Deployment")["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 65532 and psc["fsGroup"] == 65532
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    sc = container(rendered[scenario])["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert sc.get("privileged") is not True


def test_probes(rendered):
    c = container(rendered["defaults"])
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert "startupProbe" not in c
    startup = container(rendered["scaled"])["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz" and "enabled" not in startup


def grace_numbers(docs: list[dict]) -> tuple[int, int, int]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = int(env_of(c)["FLEETGATE_SHUTDOWN_GRACE_SECS"]["value"])
    return pod["terminationGracePeriodSeconds"], pre_stop, drain


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_termination_grace_covers_prestop_and_drain(rendered, scenario):
    grace, pre_stop, drain = grace_numbers(rendered[scenario])
    assert pre_stop >= 1
    assert grace > pre_stop + drain


def test_termination_grace_follows_the_drain_setting(chart):
    values = {"jwt": {"secret": SECRET}, "config": {"shutdownGraceSecs": 60}, "lifecycle": {"preStopSleepSeconds": 10}}
    docs = documents(render(chart, values))
    grace, pre_stop, drain = grace_numbers(docs)
    assert (pre_stop, drain) == (10, 60) and grace > 70

    explicit = documents(render(chart, {"jwt": {"secret": SECRET}, "lifecycle": {"terminationGracePeriodSeconds": 120}}))
    assert grace_numbers(explicit)[0] == 120

    message = render_error(chart, {"jwt": {"secret": SECRET}, "lifecycle": {"terminationGracePeriodSeconds": 25}})
    assert "terminationGracePeriodSeconds" in message


def test_ports_match_the_binary_defaults(rendered):
    defaults = config_defaults()
    http_port = int(defaults["FLEETGATE_ADDR"].rsplit(":", 1)[1])
    metrics_port = int(defaults["FLEETGATE_METRICS_ADDR"].rsplit(":", 1)[1])
    assert (http_port, metrics_port) == (3000, 9464)

    docs = rendered["defaults"]
    c = container(docs)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": http_port, "metrics": metrics_port}
    env = env_of(c)
    assert env["FLEETGATE_ADDR"]["value"].endswith(f":{http_port}")
    assert env["FLEETGATE_METRICS_ADDR"]["value"].endswith(f":{metrics_port}")

    service = one(docs, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["http"]["targetPort"] == "http" and ports["metrics"]["targetPort"] == "metrics"


def test_config_env(rendered):
    env = env_of(container(rendered["scaled"]))
    assert env["FLEETGATE_LOG_FORMAT"]["value"] == "json"
    # Large numbers must not come out in exponent form.
    assert env["FLEETGATE_MAX_AGE_MS"]["value"] == "604800000"
    assert env["FLEETGATE_BATCH_MS"]["value"] == "250"
    assert env["FLEETGATE_CORS_ORIGINS"]["value"] == "https://a.example,https://b.example"
    assert env["FLEETGATE_JWT_ISSUER"]["value"] == "https://id.example.com"
    assert env["FLEETGATE_JWT_AUDIENCE"]["value"] == "fleetgate"
    # Unset settings are left to the binary's defaults.
    assert "FLEETGATE_HISTORY_MAX" not in env_of(container(rendered["defaults"]))


def test_every_config_value_reaches_a_real_setting(chart):
    """Each `config.*` value becomes exactly one variable the binary reads."""
    declared = set(re.findall(r'env = "(FLEETGATE_[A-Z_]+)"', (REPO / "src" / "config.rs").read_text()))
    keys = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    # Defaults render logFormat, log and shutdownGraceSecs; the rest are unset.
    always = {"logFormat", "log", "shutdownGraceSecs"}
    special = {"logFormat": "json", "log": "info", "socketioPath": "/socket.io/", "corsOrigins": ["https://x.example"], "clientIpHeader": "x-forwarded-for", "webhookAllowPrivate": True}
    values = {k: special.get(k, 7) for k in keys}
    before = env_of(container(documents(render(chart, {"jwt": {"secret": SECRET}}))))
    after = env_of(container(documents(render(chart, {"jwt": {"secret": SECRET}, "config": values}))))
    assert set(after) <= declared, f"not fleetgate settings: {set(after) - declared}"
    added = set(after) - set(before)
    assert len(added) == len(set(keys) - always), f"config keys without a variable: {sorted(keys)} -> {sorted(added)}"


def test_extra_env(chart):
    extra = [{"name": "RUST_BACKTRACE", "value": "1"}, {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    env = env_of(container(documents(render(chart, {"jwt": {"secret": SECRET}, "extraEnv": extra}))))
    assert env["RUST_BACKTRACE"]["value"] == "1" and "fieldRef" in env["POD_IP"]["valueFrom"]

    message = render_error(chart, {"jwt": {"secret": SECRET}, "extraEnv": [{"name": "FLEETGATE_SHUTDOWN_GRACE_SECS", "value": "90"}]})
    assert "FLEETGATE_SHUTDOWN_GRACE_SECS" in message


def test_spread_across_nodes(rendered):
    docs = rendered["scaled"]
    pod = one(docs, "Deployment")["spec"]["template"]
    constraints = pod["spec"]["topologySpreadConstraints"]
    by_key = {c["topologyKey"]: c for c in constraints}
    assert by_key["kubernetes.io/hostname"]["whenUnsatisfiable"] == "ScheduleAnyway"
    for c in constraints:
        assert c["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_selectors_match_the_pods_only(rendered):
    docs = rendered["scaled"]
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    for obj in (one(docs, "Service")["spec"]["selector"], one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]):
        assert obj == selector
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    # The HPA owns the replica count.
    assert "replicas" not in deployment["spec"]
    # The helm test pod must not be taken for a gateway replica.
    test_pod = one(docs, "Pod")
    assert not selector.items() <= test_pod["metadata"]["labels"].items()
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"


def test_helm_test_pod_checks_the_service(rendered):
    docs = rendered["defaults"]
    pod = one(docs, "Pod")
    service = one(docs, "Service")
    assert "http" in {p["name"] for p in service["spec"]["ports"]}
    # Service-link variables: the Service name upper-cased, dashes to underscores.
    prefix = service["metadata"]["name"].upper().replace("-", "_")
    c = pod["spec"]["containers"][0]
    assert c["image"] == container(docs)["image"]
    assert c["args"] == ["healthcheck", f"--addr=$({prefix}_SERVICE_HOST):$({prefix}_SERVICE_PORT_HTTP)"]
    assert pod["spec"]["enableServiceLinks"] is True and pod["spec"]["restartPolicy"] == "Never"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


# --------------------------------------------------------------------------- secrets


def secret_data(docs: list[dict]) -> dict[str, str]:
    secret = one(docs, "Secret")
    assert "stringData" not in secret
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_no_secret_value_in_plain_env(rendered, scenario):
    docs = rendered[scenario]
    text = yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])
    for value in SECRET_VALUES:
        assert value not in text, f"{value!r} appears outside the Secret"
    env = env_of(container(docs))
    for name in ("FLEETGATE_JWT_SECRET", "FLEETGATE_JWT_SECRETS", "FLEETGATE_REDIS_URL", "FLEETGATE_REDIS_CLUSTER_NODES"):
        if name in env:
            assert set(env[name]) == {"name", "valueFrom"} and "secretKeyRef" in env[name]["valueFrom"], env[name]


def test_secrets_from_values(rendered):
    docs = rendered["scaled"]
    data = secret_data(docs)
    assert data == {"jwt-secret": SECRET, "redis-url": REDIS_URL}
    env = env_of(container(docs))
    assert env["FLEETGATE_JWT_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": FULLNAME, "key": "jwt-secret"}
    assert env["FLEETGATE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": FULLNAME, "key": "redis-url"}
    assert "FLEETGATE_JWT_PUBLIC_KEY_FILE" not in env
    assert "volumes" not in one(docs, "Deployment")["spec"]["template"]["spec"]
    assert "FLEETGATE_REDIS_URL" not in env_of(container(rendered["defaults"]))


def test_secret_checksum_rolls_pods(chart, rendered):
    def checksum(docs):
        return one(docs, "Deployment")["spec"]["template"]["metadata"].get("annotations", {}).get("checksum/secret")

    first = checksum(rendered["defaults"])
    assert first and re.fullmatch(r"[0-9a-f]{64}", first)
    rotated = checksum(documents(render(chart, {"jwt": {"secret": SECRET + "-rotated"}})))
    assert rotated and rotated != first
    # Nothing of the chart's own to watch.
    assert checksum(rendered["hs256-existing"]) is None


def jwt_volume(docs: list[dict]) -> tuple[dict, dict]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "jwt-keys")
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "jwt-keys")
    return volume, mount


def test_public_key_from_values(rendered):
    docs = rendered["rs256-values"]
    assert secret_data(docs) == {"jwt-public.pem": PUBLIC_PEM, "jwt-private.pem": PRIVATE_PEM, "redis-url": REDIS_URL}
    env = env_of(container(docs))
    assert "FLEETGATE_JWT_SECRET" not in env
    assert env["FLEETGATE_JWT_PUBLIC_KEY_FILE"]["value"] == "/etc/fleetgate/jwt/public.pem"
    assert env["FLEETGATE_JWT_PRIVATE_KEY_FILE"]["value"] == "/etc/fleetgate/jwt/private.pem"
    volume, mount = jwt_volume(docs)
    assert mount == {"name": "jwt-keys", "mountPath": "/etc/fleetgate/jwt", "readOnly": True}
    assert volume["secret"]["secretName"] == FULLNAME
    assert volume["secret"]["defaultMode"] == 0o440
    assert volume["secret"]["items"] == [
        {"key": "jwt-public.pem", "path": "public.pem"},
        {"key": "jwt-private.pem", "path": "private.pem"},
    ]


def test_existing_secrets(rendered):
    env = env_of(container(rendered["hs256-existing"]))
    assert env["FLEETGATE_JWT_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "my-jwt", "key": "hmac"}
    assert env["FLEETGATE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "my-redis", "key": "url"}

    docs = rendered["es256-existing"]
    volume, _ = jwt_volume(docs)
    assert volume["secret"]["secretName"] == "my-keys"
    assert volume["secret"]["items"] == [{"key": "pub", "path": "public.pem"}, {"key": "priv", "path": "private.pem"}]
    # The chart's Secret then holds only the Redis URL.
    assert secret_data(docs) == {"redis-url": REDIS_URL}


def test_redis_cluster(rendered):
    docs = rendered["cluster"]
    assert secret_data(docs) == {"jwt-secret": SECRET, "redis-cluster-nodes": ",".join(CLUSTER_NODES)}
    env = env_of(container(docs))
    assert env["FLEETGATE_REDIS_CLUSTER_NODES"]["valueFrom"]["secretKeyRef"] == {
        "name": FULLNAME,
        "key": "redis-cluster-nodes",
    }
    assert "FLEETGATE_REDIS_URL" not in env

    env = env_of(container(rendered["cluster-existing"]))
    assert env["FLEETGATE_REDIS_CLUSTER_NODES"]["valueFrom"]["secretKeyRef"] == {
        "name": "my-redis-cluster",
        "key": "nodes",
    }
    assert "FLEETGATE_REDIS_URL" not in env


def test_redis_sentinel_paired_with_bitnami(rendered):
    env = env_of(container(rendered["sentinel-bitnami"]))
    assert env["FLEETGATE_REDIS_SENTINELS"]["value"] == "redis.redis:26379"
    assert env["FLEETGATE_REDIS_SENTINEL_MASTER"]["value"] == "mymaster"
    password = {"name": "redis", "key": "redis-password"}
    assert env["FLEETGATE_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == password
    assert env["FLEETGATE_REDIS_SENTINEL_PASSWORD"]["valueFrom"]["secretKeyRef"] == password
    assert "FLEETGATE_REDIS_URL" not in env and "FLEETGATE_REDIS_CLUSTER_NODES" not in env


def test_redis_tls_secret_is_mounted_and_pointed_at(rendered):
    docs = rendered["redis-tls"]
    c = container(docs)
    env = env_of(c)
    assert env["FLEETGATE_REDIS_TLS_CA_FILE"]["value"] == "/etc/fleetgate/redis-tls/ca.crt"
    assert env["FLEETGATE_REDIS_TLS_CERT_FILE"]["value"] == "/etc/fleetgate/redis-tls/tls.crt"
    assert env["FLEETGATE_REDIS_TLS_KEY_FILE"]["value"] == "/etc/fleetgate/redis-tls/tls.key"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "redis-tls")
    assert mount == {"name": "redis-tls", "mountPath": "/etc/fleetgate/redis-tls", "readOnly": True}
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == "redis-tls")
    assert volume["secret"]["secretName"] == "redis-ca"
    assert [i["path"] for i in volume["secret"]["items"]] == ["ca.crt", "tls.crt", "tls.key"]
    # Without the Secret (system roots), nothing is mounted or set.
    env = env_of(container(rendered["scaled"]))
    assert not any(name.startswith("FLEETGATE_REDIS_TLS_") for name in env)


def test_public_key_without_private_key_mounts_only_the_public_key(chart):
    docs = documents(render(chart, {"jwt": {"algorithm": "ES256", "publicKey": PUBLIC_PEM}}))
    volume, _ = jwt_volume(docs)
    assert volume["secret"]["items"] == [{"key": "jwt-public.pem", "path": "public.pem"}]
    assert "FLEETGATE_JWT_PRIVATE_KEY_FILE" not in env_of(container(docs))


def keys_dir_volume(docs: list[dict]) -> tuple[dict, dict]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "jwt-keys-dir")
    mount = next(m for m in container(docs)["volumeMounts"] if m["name"] == "jwt-keys-dir")
    return volume, mount


def test_key_rotation_from_existing_secrets(rendered):
    docs = rendered["key-rotation"]
    env = env_of(container(docs))
    assert env["FLEETGATE_JWT_SECRETS"]["valueFrom"]["secretKeyRef"] == {"name": "fg-jwt-secrets", "key": "secrets"}
    assert env["FLEETGATE_JWT_KEYS_DIR"]["value"] == "/etc/fleetgate/jwt-keys"
    # Neither the plain secret nor the single public key is asked for.
    assert "FLEETGATE_JWT_SECRET" not in env and "FLEETGATE_JWT_PUBLIC_KEY_FILE" not in env
    volume, mount = keys_dir_volume(docs)
    assert mount == {"name": "jwt-keys-dir", "mountPath": "/etc/fleetgate/jwt-keys", "readOnly": True}
    # The whole Secret: every key is a <kid>.pem file.
    assert volume["secret"] == {"secretName": "fg-jwt-keys", "defaultMode": 0o440}
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["jwt-keys-dir"]
    assert secret_data(docs) == {"redis-url": REDIS_URL}


def test_keys_dir_alone_verifies_asymmetric_tokens(rendered):
    docs = rendered["keys-dir-only"]
    env = env_of(container(docs))
    assert env["FLEETGATE_JWT_KEYS_DIR"]["value"] == "/keys"
    assert not {"FLEETGATE_JWT_SECRET", "FLEETGATE_JWT_SECRETS", "FLEETGATE_JWT_PUBLIC_KEY_FILE"} & set(env)
    _, mount = keys_dir_volume(docs)
    assert mount["mountPath"] == "/keys"
    assert "Secret" not in {d["kind"] for d in docs}


def test_rotation_during_a_move_from_the_plain_secret(chart):
    # Mid-rotation: the old kid-less secret still verifies next to the new kid secrets.
    docs = documents(render(chart, {"jwt": {"secret": SECRET, "rotatingSecrets": {"existingSecret": "fg-jwt-secrets"}}}))
    env = env_of(container(docs))
    assert env["FLEETGATE_JWT_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": FULLNAME, "key": "jwt-secret"}
    assert env["FLEETGATE_JWT_SECRETS"]["valueFrom"]["secretKeyRef"] == {"name": "fg-jwt-secrets", "key": "jwt-secrets"}


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCount": 3, "jwt": {"secret": SECRET}},
        {"autoscaling": {"enabled": True}, "jwt": {"secret": SECRET}},
    ],
    ids=["replicas", "autoscaling"],
)
def test_replicas_without_redis_are_refused(chart, values):
    assert "Redis" in render_error(chart, values)


@pytest.mark.parametrize(
    "values, expected",
    [
        ({}, "jwt.secret"),
        ({"jwt": {"algorithm": "RS256"}}, "jwt.publicKey"),
        ({"jwt": {"algorithm": "RS256"}}, "jwt.keysDir.existingSecret"),
        ({"demo": {"enabled": True}, "jwt": {"rotatingSecrets": {"existingSecret": "s"}}}, "must never sign with real keys"),
        ({"demo": {"enabled": True}, "jwt": {"keysDir": {"existingSecret": "k"}}}, "demo.enabled cannot be combined"),
        ({"jwt": {"algorithm": "RS256", "publicKey": PUBLIC_PEM, "secret": SECRET}}, "jwt.algorithm"),
        ({"jwt": {"publicKey": PUBLIC_PEM}}, "jwt.algorithm"),
        ({"demo": {"enabled": True}, "replicaCount": 2, "redis": {"url": REDIS_URL}}, "demo"),
        ({"jwt": {"secret": SECRET}, "httpRoute": {"enabled": True}}, "parentRefs"),
        ({"jwt": {"secret": SECRET}, "redis": {"url": REDIS_URL, "clusterNodes": CLUSTER_NODES}}, "not both"),
        ({"jwt": {"secret": SECRET}, "redis": {"url": REDIS_URL, "sentinel": {"nodes": ["s:26379"]}}}, "not both"),
        ({"jwt": {"secret": SECRET}, "redis": {"url": "rediss://r:6380", "tls": {"existingSecret": "ca", "certKey": "c"}}}, "mutual TLS"),
    ],
    ids=[
        "no-key",
        "rs256-no-key",
        "rs256-no-key-names-keys-dir",
        "demo-with-rotating-secrets",
        "demo-with-keys-dir",
        "rs256-and-secret",
        "pem-with-hs256",
        "demo-replicas",
        "route-no-parent",
        "url-and-cluster",
        "url-and-sentinel",
        "cert-without-key",
    ],
)
def test_unusable_configurations_are_refused(chart, values, expected):
    assert expected in render_error(chart, values)


def test_demo_mode_needs_no_key(chart):
    env = env_of(container(documents(render(chart, {"demo": {"enabled": True}}))))
    assert env["FLEETGATE_DEMO"]["value"] == "true"
    assert not {"FLEETGATE_JWT_SECRET", "FLEETGATE_JWT_PUBLIC_KEY_FILE"} & set(env)


@pytest.mark.parametrize(
    "values",
    [
        {"replicaCont": 2},
        {"redis": {"ulr": REDIS_URL}},
        {"jwt": {"secrets": SECRET}},
        {"ingress": {"enable": True}},
        {"config": {"logFormat": "yaml"}},
        {"config": {"batchMs": "fast"}},
        {"redis": {"url": "http://redis:6379"}},
        {"jwt": {"rotatingSecrets": {"existingSecret": "s", "key": ""}}},
        {"jwt": {"keysDir": {"existingSecret": "k", "mountPath": "keys"}}},
        {"jwt": {"keysDir": {"secret": "k"}}},
        {"devices": {"osmand": {"idleTimeoutSecs": 0}}},
    ],
    ids=["top-level", "redis", "jwt", "ingress", "log-format", "number", "url-scheme", "rotation-key", "keys-dir-path", "keys-dir-field", "osmand-idle"],
)
def test_schema_rejects_mistakes(chart, values):
    values = {"jwt": {"secret": SECRET}} | values if "jwt" not in values else values
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmError):
        render(chart, values)


def test_schema_accepts_every_scenario_and_the_defaults(chart):
    chart.validate_schema({})
    for values in SCENARIOS.values():
        chart.validate_schema(copy.deepcopy(values))


# --------------------------------------------------------------------------- ingress, route, monitoring


AFFINITY = "nginx.ingress.kubernetes.io/affinity"


def test_ingress_annotations_for_socketio(rendered):
    ingress = one(rendered["scaled"], "Ingress")
    ann = ingress["metadata"]["annotations"]
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(ann["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    # The default clients start on long-polling: sticky sessions.
    assert ann[AFFINITY] == "cookie"
    assert ann["nginx.ingress.kubernetes.io/affinity-mode"] == "persistent"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    path = ingress["spec"]["rules"][0]["http"]["paths"][0]
    assert path["backend"]["service"] == {"name": FULLNAME, "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["secretName"] == "fg-tls"


def test_no_affinity_for_websocket_only_clients(rendered):
    ann = one(rendered["websocket-only-ingress"], "Ingress")["metadata"]["annotations"]
    assert not [k for k in ann if "affinity" in k or "session-cookie" in k]
    assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"


def test_user_annotations_win_and_nginx_ones_can_be_dropped(chart):
    def annotations(ingress: dict) -> dict:
        docs = documents(render(chart, {"jwt": {"secret": SECRET}, "ingress": {"enabled": True} | ingress}))
        return one(docs, "Ingress")["metadata"]["annotations"]

    timeout = "nginx.ingress.kubernetes.io/proxy-read-timeout"
    assert annotations({"annotations": {timeout: "7200"}})[timeout] == "7200"
    ann = annotations({"nginxAnnotations": False, "className": "traefik"})
    assert not [k for k in ann if k.startswith("nginx.ingress.kubernetes.io/")]


def test_http_route(rendered):
    route = one(rendered["httproute"], "HTTPRoute")
    assert route["spec"]["parentRefs"][0]["name"] == "public"
    assert route["spec"]["hostnames"] == ["fleetgate.example.com"]
    backend = route["spec"]["rules"][0]["backendRefs"][0]
    service = one(rendered["httproute"], "Service")
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"] == next(p["port"] for p in service["spec"]["ports"] if p["name"] == "http")


def test_service_monitor_scrapes_the_metrics_port(rendered):
    docs = rendered["scaled"]
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert not kinds(rendered["defaults"], "ServiceMonitor")


# --------------------------------------------------------------------------- dashboards


def dashboard_configmaps(docs: list[dict]) -> list[dict]:
    return [d for d in kinds(docs, "ConfigMap") if d["metadata"]["labels"].get("grafana_dashboard") == "1"]


def test_dashboard_configmaps(rendered):
    maps = dashboard_configmaps(rendered["scaled"])
    assert len(maps) == 1
    assert maps[0]["data"] == {"placeholder.json": json.dumps(PLACEHOLDER_DASHBOARD, indent=2)}
    assert not dashboard_configmaps(rendered["defaults"])


def test_dashboards_link_to_grafana_dashboards():
    link = CHART / "dashboards"
    assert link.is_symlink() and Path(link.readlink()) == Path("../../grafana/dashboards"), (
        "helm/fleetgate/dashboards must link to ../../grafana/dashboards"
    )
    assert DASHBOARDS.is_dir(), "grafana/dashboards is missing: helm/fleetgate/dashboards links to it"
    assert sorted(DASHBOARDS.glob("*.json")), "grafana/dashboards has no dashboards"


def test_dashboards_ship_in_the_real_chart():
    """The chart as users install it: Helm follows the link, the ConfigMaps carry
    the files byte for byte."""
    if not DASHBOARDS.is_dir():
        pytest.fail("grafana/dashboards is missing: helm/fleetgate/dashboards links to it")
    expected = {p.name: p.read_text() for p in sorted(DASHBOARDS.glob("*.json"))}
    with helm.Chart.load(CHART) as real:
        files = {f["name"]: f["data"] for f in real.files if f["name"].startswith("dashboards/")}
        shipped = {Path(name).name: data for name, data in files.items() if name.endswith(".json")}
        assert shipped == expected
        docs = documents(render(real, {"jwt": {"secret": SECRET}, "dashboards": {"enabled": True}}))
    report = helm.lint(CHART, {"jwt": {"secret": SECRET}, "dashboards": {"enabled": True}}, strict=True, kube_version="v" + KUBE)
    assert not report["errors"], report
    maps = dashboard_configmaps(docs)
    assert {key for m in maps for key in m["data"]} == set(expected)
    for m in maps:
        for key, text in m["data"].items():
            assert json.loads(text) == json.loads(expected[key])
        kubernetes_validate.validate(m, KUBE, strict=True)


# --------------------------------------------------------------------------- docs


def test_readme_documents_every_top_level_value():
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [key for key in values if f"`{key}" not in readme]
    assert not missing, f"helm/fleetgate/README.md values table lacks {missing}"
    assert "helm install fg ./helm/fleetgate" in readme


# --------------------------------------------------------------------------- devices


def test_device_ingest_is_off_by_default_and_wired_when_on(chart, rendered):
    env = env_of(container(rendered["defaults"]))
    assert "FLEETGATE_OSMAND_ADDR" not in env and "FLEETGATE_MQTT_URL" not in env
    assert all(d["metadata"]["name"] != f"{FULLNAME}-osmand" for d in rendered["defaults"])

    mqtt_url = "mqtts://fleetgate:broker-pass@mqtt.example:8883"
    values = {
        "jwt": {"secret": SECRET},
        "devices": {"osmand": {"enabled": True, "service": {"type": "LoadBalancer"}}, "mqtt": {"url": mqtt_url, "fleets": ["north", "south"]}},
    }
    docs = documents(render(chart, values))
    c = container(docs)
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["osmand"] == 5055
    env = env_of(c)
    assert env["FLEETGATE_OSMAND_ADDR"]["value"] == "0.0.0.0:5055"
    assert "FLEETGATE_OSMAND_MAX_CONNECTIONS" not in env and "FLEETGATE_OSMAND_IDLE_TIMEOUT_SECS" not in env
    assert env["FLEETGATE_MQTT_URL"]["valueFrom"]["secretKeyRef"] == {"name": FULLNAME, "key": "mqtt-url"}
    assert env["FLEETGATE_MQTT_FLEETS"]["value"] == "north,south"
    assert secret_data(docs)["mqtt-url"] == mqtt_url
    assert mqtt_url not in yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])
    service = next(d for d in kinds(docs, "Service") if d["metadata"]["name"] == f"{FULLNAME}-osmand")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"] == [{"name": "osmand", "port": 5055, "targetPort": "osmand", "protocol": "TCP", "appProtocol": "http"}]

    # The listener's bounds, 0 (no cap) included.
    bounded = {"jwt": {"secret": SECRET}, "devices": {"osmand": {"enabled": True, "maxConnections": 0, "idleTimeoutSecs": 15}}}
    env = env_of(container(documents(render(chart, bounded))))
    assert env["FLEETGATE_OSMAND_MAX_CONNECTIONS"]["value"] == "0"
    assert env["FLEETGATE_OSMAND_IDLE_TIMEOUT_SECS"]["value"] == "15"

    existing = {"jwt": {"secret": SECRET}, "devices": {"mqtt": {"existingSecret": "broker", "existingSecretKey": "url"}}}
    env = env_of(container(documents(render(chart, existing))))
    assert env["FLEETGATE_MQTT_URL"]["valueFrom"]["secretKeyRef"] == {"name": "broker", "key": "url"}

    assert "FLEETGATE_MQTT_URL" in render_error(chart, {"jwt": {"secret": SECRET}, "extraEnv": [{"name": "FLEETGATE_MQTT_URL", "value": "x"}]})
    assert render_error(chart, {"jwt": {"secret": SECRET}, "devices": {"mqtt": {"url": "http://x"}}})


# --------------------------------------------------------------------------- event outputs


def test_event_outputs_are_wired(chart, rendered):
    env = env_of(container(rendered["defaults"]))
    assert not any(k.startswith(("FLEETGATE_NATS_", "FLEETGATE_WEBHOOK_")) for k in env), sorted(env)

    nats_url = "nats://fleetgate:nats-pass@nats.messaging:4222"
    values = {
        "jwt": {"secret": SECRET},
        "nats": {"url": nats_url, "stream": "FLEET_EVENTS"},
        "config": {"webhookRetrySecs": 600, "webhookAllowPrivate": True, "webhookConcurrency": 8, "outputLeaseSecs": 15},
    }
    docs = documents(render(chart, values))
    env = env_of(container(docs))
    assert env["FLEETGATE_NATS_URL"]["valueFrom"]["secretKeyRef"] == {"name": FULLNAME, "key": "nats-url"}
    assert env["FLEETGATE_NATS_STREAM"]["value"] == "FLEET_EVENTS"
    assert env["FLEETGATE_WEBHOOK_RETRY_SECS"]["value"] == "600"
    assert env["FLEETGATE_WEBHOOK_ALLOW_PRIVATE"]["value"] == "true"
    assert env["FLEETGATE_WEBHOOK_CONCURRENCY"]["value"] == "8"
    assert env["FLEETGATE_OUTPUT_LEASE_SECS"]["value"] == "15"
    assert secret_data(docs)["nats-url"] == nats_url
    assert nats_url not in yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])

    existing = {"jwt": {"secret": SECRET}, "nats": {"existingSecret": "nats", "existingSecretKey": "url"}}
    env = env_of(container(documents(render(chart, existing))))
    assert env["FLEETGATE_NATS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "nats", "key": "url"}

    assert "FLEETGATE_NATS_URL" in render_error(chart, {"jwt": {"secret": SECRET}, "extraEnv": [{"name": "FLEETGATE_NATS_URL", "value": "x"}]})
    assert render_error(chart, {"jwt": {"secret": SECRET}, "nats": {"url": "http://x"}})
    assert render_error(chart, {"jwt": {"secret": SECRET}, "nats": {"url": "nats://x", "stream": "a.b"}})
    assert render_error(chart, {"jwt": {"secret": SECRET}, "config": {"outputLeaseSecs": 1}})


# --------------------------------------------------------------------------- JWKS


JWKS_URL = "https://id.example.com/realms/fleet/protocol/openid-connect/certs"


def test_jwks_alone_or_besides_a_secret(chart):
    values = {"jwt": {"jwksUrl": JWKS_URL, "jwksRefreshSecs": 120}, "redis": {"url": REDIS_URL}, "replicaCount": 2}
    chart.validate_schema(copy.deepcopy(values))
    docs = documents(render(chart, values))
    for doc in docs:
        kubernetes_validate.validate(doc, KUBE, strict=True)
    env = env_of(container(docs))
    assert env["FLEETGATE_JWT_JWKS_URL"]["value"] == JWKS_URL
    assert env["FLEETGATE_JWT_JWKS_REFRESH_SECS"]["value"] == "120"
    # No key of its own: no secretKeyRef to a key the Secret does not hold.
    assert not {"FLEETGATE_JWT_SECRET", "FLEETGATE_JWT_PUBLIC_KEY_FILE"} & set(env)
    assert "jwt-secret" not in json.dumps(docs)

    both = env_of(container(documents(render(chart, {"jwt": {"secret": SECRET, "jwksUrl": JWKS_URL}}))))
    assert both["FLEETGATE_JWT_JWKS_URL"]["value"] == JWKS_URL
    assert "FLEETGATE_JWT_SECRET" in both
    # The binary's default applies when the refresh is not set.
    assert "FLEETGATE_JWT_JWKS_REFRESH_SECS" not in both


@pytest.mark.parametrize(
    "jwt",
    [
        {"jwksUrl": "http://keycloak.auth.svc:8080/realms/fleet/protocol/openid-connect/certs"},
        {"jwksUrl": "id.example.com/certs"},
        {"jwksUrl": JWKS_URL, "jwksRefreshSecs": 0},
        {"jwksUrl": JWKS_URL, "jwksRefreshSecs": "often"},
    ],
    ids=["plain-http", "no-scheme", "refresh-zero", "refresh-text"],
)
def test_jwks_schema_rejects_mistakes(chart, jwt):
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema({"jwt": jwt})


def test_jwks_refusals(chart):
    assert "jwt.jwksUrl" in render_error(chart, {"demo": {"enabled": True}, "jwt": {"jwksUrl": JWKS_URL}})
    assert "jwt.jwksUrl" in render_error(chart, {})
    with pytest.raises(helm.HelmError):
        render(chart, {"jwt": {"jwksUrl": JWKS_URL}, "extraEnv": [{"name": "FLEETGATE_JWT_JWKS_URL", "value": "x"}]})
