"""The metrics catalogue against a real scrape: the exposition passes
`promtool check metrics`, every metric the README's catalogue lists is
exported with the labels it documents (and nothing undocumented is), label
values are bounded sets, and the numbers move with the traffic that the
`metrics_scrape` fixture generated.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import tomllib

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, scrape

SUFFIXES = ("_bucket", "_sum", "_count")


def catalogue() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, label names) from the README's metrics table."""
    rows = {}
    for line in (REPO / "README.md").read_text().splitlines():
        m = re.match(r"^\| `(fleetgate_[a-z0-9_]+)` \| (counter|gauge|histogram) \| ([^|]*)\|", line)
        if m:
            rows[m.group(1)] = (m.group(2), set(re.findall(r"`([a-z_]+)`", m.group(3))))
    assert len(rows) >= 30, f"README catalogue not found or too short: {sorted(rows)}"
    return rows


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append((s.name, dict(s.labels), s.value))
    return out


def family_of(sample_name: str, known: set[str]) -> str:
    if sample_name in known:
        return sample_name
    for suffix in SUFFIXES:
        if sample_name.endswith(suffix) and sample_name[: -len(suffix)] in known:
            return sample_name[: -len(suffix)]
    return sample_name


def value(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(v for n, ls, v in samples(text) if n == name and all(ls.get(k) == x for k, x in labels.items()))


def test_exposition_passes_promtool(metrics_scrape):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install Debian's `prometheus` package (./scripts/test.sh does)")
    r = subprocess.run([promtool, "check", "metrics"], input=metrics_scrape, capture_output=True, text=True)
    assert r.returncode == 0, f"promtool check metrics:\n{r.stdout}{r.stderr}"


def test_every_catalogued_metric_is_exported_with_its_labels(metrics_scrape):
    cat = catalogue()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", metrics_scrape, re.M))
    exported: dict[str, set[str]] = {}
    for name, labels, _ in samples(metrics_scrape):
        fam = family_of(name, set(cat))
        exported.setdefault(fam, set()).update(k for k in labels if k != "le")
    for name, (kind, labels) in cat.items():
        assert name in types, f"{name} is in the README catalogue but not exported"
        assert types[name] == kind, f"{name}: README says {kind}, exported as {types[name]}"
        assert exported.get(name, set()) == labels, f"{name}: README labels {labels}, exported {exported.get(name)}"


def test_every_catalogued_counter_and_histogram_is_in_a_fresh_scrape(fresh_scrape):
    # Gauges are set when sampled or changed; counters and histograms are
    # pre-registered at zero, so a replica that has seen no traffic has them.
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", fresh_scrape, re.M))
    missing = sorted(n for n, (kind, _) in catalogue().items() if kind != "gauge" and n not in types)
    assert not missing, f"counters and histograms absent from a fresh process's first scrape: {missing}"
    assert value(fresh_scrape, "fleetgate_position_updates_total") == 0
    for source in ("socket", "http", "demo", "osmand", "mqtt"):
        assert any(
            n == "fleetgate_position_updates_total" and ls.get("source") == source for n, ls, _ in samples(fresh_scrape)
        ), f"no fleetgate_position_updates_total series for source={source}"


def test_nothing_exported_is_undocumented(metrics_scrape):
    cat = catalogue()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", metrics_scrape, re.M))
    undocumented = sorted(n for n in types if n.startswith("fleetgate_") and n not in cat)
    assert not undocumented, f"exported but not in the README catalogue: {undocumented}"


def test_labels_never_carry_ids(metrics_scrape):
    # The fixture's fleets start with "m-", its vehicles with "bus-"/"van-",
    # its users are "viewer-N"/"ops-N": none may surface as a label value.
    for name, labels, _ in samples(metrics_scrape):
        for key, v in labels.items():
            assert not re.match(r"^(m-[0-9a-f]{8}|bus-|van-|viewer-\d|ops-\d|demo)", v) or key == "source", (
                f"{name} has an id-like label {key}={v!r}"
            )
    # Bounded sets, as documented.
    allowed = {
        "role": {"vehicle", "viewer", "dispatcher", "pending"},
        "transport": {"websocket", "polling"},
        "outcome": {
            "ok",
            "refused",
            "accepted",
            "stale",
            "invalid",
            "forbidden",
            "rate_limited",
            "unavailable",
            "error",
            "delivered",
            "retried",
            "failed",
        },
        "output": {"webhook", "nats"},
        "type": {"position", "vehicle_online", "vehicle_offline", "geofence", "chat"},
        "source": {"socket", "http", "demo", "osmand", "mqtt"},
        "path": {"local", "relay"},
        "kind": {"fleet", "vehicle", "bbox", "geofence", "enter", "exit"},
        "state": {"online", "offline"},
    }
    for name, labels, _ in samples(metrics_scrape):
        for key, v in labels.items():
            if key in allowed:
                assert v in allowed[key], f"{name}: {key}={v!r} not in {allowed[key]}"
            if key == "route":
                assert v == "unmatched" or v.startswith("/"), f"{name}: route={v!r}"
                assert "m-" not in v, f"{name}: a raw path leaked into route={v!r}"


def test_build_info_names_the_crate_version(metrics_scrape):
    version = tomllib.loads((REPO / "Cargo.toml").read_text())["package"]["version"]
    assert value(metrics_scrape, "fleetgate_build_info", version=version) == 1


def test_numbers_follow_the_traffic(metrics_scrape):
    t = metrics_scrape
    assert value(t, "fleetgate_ready") == 1
    # Position outcomes, by source.
    assert value(t, "fleetgate_position_updates_total", source="socket", outcome="accepted") >= 3
    assert value(t, "fleetgate_position_updates_total", source="socket", outcome="stale") >= 1
    assert value(t, "fleetgate_position_updates_total", source="socket", outcome="invalid") >= 1
    assert value(t, "fleetgate_position_updates_total", source="socket", outcome="forbidden") >= 1
    assert value(t, "fleetgate_position_updates_total", source="http", outcome="accepted") >= 1
    # Fan-out, locally and from the other replica.
    assert value(t, "fleetgate_broadcasts_total") >= 1
    assert value(t, "fleetgate_deliveries_total") >= 1
    assert value(t, "fleetgate_delivery_lag_seconds_count", path="local") >= 1
    assert value(t, "fleetgate_delivery_lag_seconds_count", path="relay") >= 1
    assert value(t, "fleetgate_relay_received_total") >= 1
    assert value(t, "fleetgate_ingest_seconds_count") >= 1
    # Connections: a websocket and a long-polling viewer are still open.
    assert value(t, "fleetgate_connections", role="viewer", transport="websocket") >= 1
    assert value(t, "fleetgate_connections", role="viewer", transport="polling") >= 1
    assert value(t, "fleetgate_connections", role="vehicle") >= 1
    assert value(t, "fleetgate_connections_opened_total", transport="websocket") >= 3
    assert value(t, "fleetgate_connections_closed_total") >= 1  # the revoked one
    assert value(t, "fleetgate_vehicles_online") >= 1
    assert value(t, "fleetgate_subscriptions", kind="fleet") >= 1
    assert value(t, "fleetgate_subscriptions", kind="vehicle") >= 1
    # Authentication.
    assert value(t, "fleetgate_handshakes_total", outcome="ok") >= 4
    assert value(t, "fleetgate_handshakes_total", outcome="refused") >= 1
    assert value(t, "fleetgate_auth_failures_total", stage="handshake") >= 1
    assert value(t, "fleetgate_auth_failures_total", stage="http") >= 1
    assert value(t, "fleetgate_sessions_created_total", role="viewer") >= 2
    assert value(t, "fleetgate_sessions_revoked_total") >= 1
    # Redis, by operation.
    assert value(t, "fleetgate_redis_command_seconds_count", op="put_position") >= 3
    assert value(t, "fleetgate_redis_command_seconds_count", op="create_session") >= 4
    assert value(t, "fleetgate_redis_errors_total") == 0
    assert value(t, "fleetgate_adapter_errors_total") == 0
    # HTTP, by route pattern and status.
    route = "/api/v1/fleets/{fleet}/vehicles"
    assert value(t, "fleetgate_http_requests_total", method="GET", route=route, status="200") >= 1
    assert value(t, "fleetgate_http_requests_total", method="GET", route=route, status="401") >= 1
    assert value(t, "fleetgate_http_requests_total", route="unmatched", status="404") >= 1
    assert value(t, "fleetgate_http_request_duration_seconds_count", route=route) >= 2
    # The process.
    assert value(t, "fleetgate_process_resident_memory_bytes") > 1_000_000
    assert value(t, "fleetgate_process_open_fds") > 5
    assert value(t, "fleetgate_process_cpu_seconds_total") > 0
    assert value(t, "fleetgate_process_start_time_seconds") > 1.7e9


def test_demo_positions_count_as_their_own_source(fleetgate_factory):
    """The demo fleet (a --demo server: it refuses real keys, so it runs
    apart from the scraped replicas) counts its positions as `demo`."""
    demo = fleetgate_factory("metrics-demo", FLEETGATE_DEMO="true", FLEETGATE_DEMO_VEHICLES="3")
    deadline = time.monotonic() + 15
    while True:
        t = scrape(demo)
        if value(t, "fleetgate_position_updates_total", source="demo", outcome="accepted") >= 1:
            break
        assert time.monotonic() < deadline, "the demo fleet published nothing"
        time.sleep(0.5)
