"""Smoke tests of the load tool (`fleetgate-bench`, bench/): every scenario
with tiny numbers against the real servers of conftest.py, checking the JSON
line it prints. Loads this small on loopback must lose nothing, so delivery
is checked strictly; timings are not checked at all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import REPO, SECRET, free_port, _stop, _tail

BENCH_BIN = Path(os.environ.get("FLEETGATE_BENCH_BIN", str(REPO / "target" / "debug" / "fleetgate-bench")))
PEER_DIR = REPO / "bench" / "peer-node"
RUN_TIMEOUT = 30


@pytest.fixture(scope="module")
def bench_bin() -> Path:
    if not (BENCH_BIN.is_file() and os.access(BENCH_BIN, os.X_OK)):
        pytest.fail(
            f"fleetgate-bench not found at {BENCH_BIN}: build the workspace "
            "(`cargo build --workspace`, or `cargo build -p fleetgate-bench`) or set FLEETGATE_BENCH_BIN"
        )
    return BENCH_BIN


def run_bench(bench_bin: Path, *args: str, secret: str = SECRET) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETGATE_")}
    env["FLEETGATE_JWT_SECRET"] = secret
    proc = subprocess.run(
        [str(bench_bin), *args], env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    assert proc.returncode == 0, f"fleetgate-bench {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    out = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(out) == 1, f"expected one JSON line on stdout, got {proc.stdout!r}"
    return json.loads(out[0])


def fleet_name() -> str:
    return "b-" + uuid.uuid4().hex[:10]


def assert_latency(lat: dict) -> None:
    for key in ("count", "p50_ms", "p99_ms", "max_ms"):
        assert lat.get(key) is not None, f"latency field {key} missing in {lat}"
    assert lat["count"] > 0


def assert_clean_fanout(report: dict, vehicles: int, viewers: int) -> None:
    r = report["results"]
    assert report["scenario"] == "fanout"
    assert report["failures"]["total"] == 0, report["failures"]
    assert r["vehicles_connected"] == vehicles and r["viewers_connected"] == viewers
    assert r["updates_accepted_in_window"] > 0
    assert r["deliveries_in_window"] > 0
    assert r["deliveries_expected"] == r["updates_accepted_in_window"] * viewers
    assert r["delivery_ratio"] is not None and r["delivery_ratio"] >= 0.99, r
    assert_latency(r["latency"])
    assert_latency(r["ack"])
    assert r["server"]["cpu_us_per_delivery"] is not None
    assert r["server"]["rss_bytes"] > 0


FANOUT = ("-V", "2", "-H", "5", "-W", "2", "--warmup", "0.5s", "--duration", "2s", "--drain", "3s")


def test_fanout_one_server(bench_bin, server):
    report = run_bench(
        bench_bin, "--server-pid", str(server.proc.pid), "--fleet", fleet_name(), "--label", "smoke",
        "fanout", "--url", server.url, *FANOUT,
    )  # fmt: skip
    assert report["label"] == "smoke"
    assert report["params"]["viewers"] == 2
    assert_clean_fanout(report, 2, 2)


@pytest.mark.redis
def test_fanout_across_replicas(bench_bin, redis_replicas, redis_server):
    a, b = redis_replicas
    report = run_bench(
        bench_bin, "--server-pid", str(a.proc.pid), "--server-pid", str(b.proc.pid),
        "--redis-addr", f"127.0.0.1:{redis_server.port}", "--fleet", fleet_name(),
        "fanout", "--vehicle-url", a.url, "--viewer-url", b.url, *FANOUT,
    )  # fmt: skip
    assert report["params"]["vehicle_urls"] == [a.url] and report["params"]["viewer_urls"] == [b.url]
    assert_clean_fanout(report, 2, 2)
    assert len(report["results"]["server"]["rss_bytes_each"]) == 2
    assert report["results"]["redis"]["info"]["commands_per_s"] > 0


def test_idle(bench_bin, server):
    report = run_bench(
        bench_bin, "--server-pid", str(server.proc.pid), "--fleet", fleet_name(),
        "idle", "--url", server.url, "-n", "20", "--subscribe", "--settle", "0.5s",
    )  # fmt: skip
    r = report["results"]
    assert report["failures"]["total"] == 0, report["failures"]
    assert r["open"] == 20
    assert r["server"]["fds_after"] >= r["server"]["fds_before"] + 20
    assert r["server"]["rss_per_conn_bytes"] is not None
    assert_latency(r["handshake"])


def test_storm(bench_bin, server):
    report = run_bench(
        bench_bin, "--server-pid", str(server.proc.pid), "--fleet", fleet_name(),
        "storm", "--url", server.url, "-n", "20", "--concurrency", "4",
    )  # fmt: skip
    r = report["results"]
    assert report["failures"]["total"] == 0, report["failures"]
    assert r["handshakes"] == 20
    assert r["handshakes_per_s"] > 0
    assert_latency(r["handshake"])


def test_storm_counts_refusals(bench_bin, server):
    """A token the server cannot verify is a counted failure, not a crash."""
    report = run_bench(
        bench_bin, "--fleet", fleet_name(), "storm", "--url", server.url, "-n", "3", secret="not-the-server-secret"
    )
    assert report["results"]["handshakes"] == 0
    assert report["failures"]["by_kind"] == {"connect_refused": 3}
    assert "invalid_token" in report["failures"]["samples"][0]


def test_ingest(bench_bin, server):
    fleet = fleet_name()
    report = run_bench(
        bench_bin, "--server-pid", str(server.proc.pid), "--fleet", fleet,
        "ingest", "--url", server.url, "-n", "20", "--rate", "40", "-c", "2", "--vehicles", "4",
        "--warmup", "0s", "--duration", "2s",
    )  # fmt: skip
    r = report["results"]
    assert report["failures"]["total"] == 0, report["failures"]
    assert r["requests"] == 20 and r["accepted"] == 20
    assert r["non_200"] == 0 and r["status"] == {"200": 20}
    assert_latency(r["latency"])


# --------------------------------------------------------------------------- device ingest


@pytest.fixture
def osmand_server(fleetgate_bin):
    from conftest import Fleetgate

    port = free_port()
    fg = Fleetgate(fleetgate_bin, "osmand", {"FLEETGATE_OSMAND_ADDR": f"127.0.0.1:{port}"})
    yield fg, f"http://127.0.0.1:{port}"
    fg.stop()


def test_ingest_osmand(bench_bin, osmand_server):
    fg, url = osmand_server
    report = run_bench(
        bench_bin, "--server-pid", str(fg.proc.pid), "--fleet", fleet_name(),
        "ingest", "--form", "osmand", "--url", url, "-n", "20", "--rate", "40", "-c", "2", "--vehicles", "4",
        "--warmup", "0s", "--duration", "2s",
    )  # fmt: skip
    r = report["results"]
    assert report["params"]["form"] == "osmand"
    assert report["failures"]["total"] == 0, report["failures"]
    assert r["requests"] == 20 and r["accepted"] == 20 and r["status"] == {"200": 20}


@pytest.fixture
def mqtt_server(fleetgate_bin, tmp_path):
    from conftest import Fleetgate

    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(mosquitto, os.X_OK):
        pytest.fail("mosquitto not found: install Debian's `mosquitto` package (./scripts/test.sh does)")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n")
    broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fg = None
    try:
        fg = Fleetgate(fleetgate_bin, "mqtt", {"FLEETGATE_MQTT_URL": f"mqtt://127.0.0.1:{port}", "FLEETGATE_MQTT_CLIENT_ID": "bench-test"})
        deadline = time.monotonic() + 15
        while "fleetgate_mqtt_subscribed 1" not in requests.get(f"http://127.0.0.1:{fg.metrics_port}/metrics", timeout=2).text:
            assert time.monotonic() < deadline, "fleetgate did not subscribe"
            time.sleep(0.1)
        yield fg, f"127.0.0.1:{port}"
    finally:
        if fg:
            fg.stop()
        _stop(broker)


def test_mqtt(bench_bin, mqtt_server):
    fg, broker = mqtt_server
    report = run_bench(
        bench_bin, "--server-pid", str(fg.proc.pid), "--fleet", fleet_name(),
        "mqtt", "--broker", broker, "--rate", "50", "--vehicles", "5", "--warmup", "0.5s", "--duration", "2s", "--drain", "3s",
    )  # fmt: skip
    r = report["results"]
    assert report["failures"]["total"] == 0, report["failures"]
    # Every outcome that came back is an acceptance (no failure above); the
    # outcomes themselves travel at QoS 0 (section 13), so on a loaded
    # machine a few can arrive after the drain and count as without one.
    assert r["requests_in_window"] > 0 and r["accepted"] >= 0.9 * r["requests_in_window"], r
    assert r["without_outcome"] == 0 and r["non_200"] == 0
    assert r["server"]["cpu_us_per_request"] is not None
    assert_latency(r["latency"])


# --------------------------------------------------------------------------- the Node.js peer


@pytest.fixture(scope="module")
def node_peer(redis_server):
    if not (PEER_DIR / "node_modules").is_dir():
        pytest.skip("bench/peer-node/node_modules missing (run `npm ci` in bench/peer-node)")
    node = shutil.which("node")
    if not node:
        pytest.skip("no node on PATH")
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="peer-node-", suffix=".log")[1])
    env = {**os.environ, "PORT": str(port), "REDIS_URL": redis_server.url, "JWT_SECRET": SECRET}
    with log.open("wb") as out:
        proc = subprocess.Popen([node, str(PEER_DIR / "server.js")], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            pytest.fail(f"peer-node exited with {proc.returncode}; log:\n{_tail(log)}")
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"peer-node not ready; log:\n{_tail(log)}")
        time.sleep(0.1)
    yield proc, url
    _stop(proc, grace=5)


@pytest.mark.redis
def test_node_peer_is_driven_the_same_way(bench_bin, node_peer):
    proc, url = node_peer
    fan = run_bench(bench_bin, "--server-pid", str(proc.pid), "--fleet", fleet_name(), "fanout", "--url", url, *FANOUT)
    assert_clean_fanout(fan, 2, 2)
    fleet = fleet_name()
    ingest = run_bench(
        bench_bin, "--fleet", fleet, "ingest", "--url", url, "-n", "10", "--rate", "40", "-c", "2",
        "--warmup", "0s", "--duration", "1s",
    )  # fmt: skip
    assert ingest["failures"]["total"] == 0, ingest["failures"]
    assert ingest["results"]["status"] == {"200": 10}
