"""Smoke tests of the fleetgate wire contract with the python-socketio client:
handshake auth, the session event, subscribe snapshots, live location fan-out
over websocket and long-polling, refusals, and fan-out across two replicas
sharing Redis.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests
import socketio

from conftest import mint


def now_ms() -> int:
    return int(time.time() * 1000)


def assert_ok(ack) -> dict:
    assert isinstance(ack, dict), f"ack is not an object: {ack!r}"
    assert ack.get("ok") is True, f"ack is not ok: {ack!r}"
    return ack.get("data")


def check_session(session: dict, fleet: str, role: str) -> None:
    assert isinstance(session, dict), session
    assert isinstance(session.get("sessionId"), str) and session["sessionId"], session
    assert session.get("fleet") == fleet, session
    assert session.get("role") == role, session


def check_subscribe(ack, fleet: str) -> list:
    data = assert_ok(ack)
    assert data.get("fleet") == fleet, ack
    assert isinstance(data.get("vehicles"), list), ack
    return data["vehicles"]


def live_roundtrip(viewer_url: str, vehicle_url: str, fleet: str, clients, transports) -> None:
    """A viewer subscribes, a vehicle publishes one fix, the viewer receives it."""
    bus = "bus-" + uuid.uuid4().hex[:8]

    viewer = clients(viewer_url, mint("viewer", "viewer-1", fleet), transports)
    check_session(viewer.wait_for("session"), fleet, "viewer")
    assert check_subscribe(viewer.call("subscribe", {}), fleet) == []

    vehicle = clients(vehicle_url, mint("vehicle", bus, fleet), transports)
    check_session(vehicle.wait_for("session"), fleet, "vehicle")
    ts = now_ms()
    ack = vehicle.call("locationupdate", {"lat": 37.5665, "lon": 126.978, "ts": ts})
    assert assert_ok(ack) == {"accepted": True}, ack

    got = viewer.wait_for("locationupdate", lambda d: isinstance(d, dict) and d.get("vehicleId") == bus)
    assert got["fleet"] == fleet, got
    assert got["lat"] == pytest.approx(37.5665), got
    assert got["lon"] == pytest.approx(126.978), got
    assert got["ts"] == ts, got
    assert isinstance(got.get("receivedAt"), int), got
    for optional in ("heading", "speed", "accuracy"):
        assert optional not in got, f"absent optional field sent: {got!r}"

    # A later subscriber gets the position in its snapshot.
    late = clients(viewer_url, mint("viewer", "viewer-2", fleet), transports)
    vehicles = check_subscribe(late.call("subscribe", {}), fleet)
    mine = [v for v in vehicles if v.get("vehicleId") == bus]
    assert len(mine) == 1, vehicles
    assert mine[0]["ts"] == ts and mine[0]["lat"] == pytest.approx(37.5665), mine


# --------------------------------------------------------------------------- single node


def test_http_basics(server):
    assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
    page = requests.get(server.url + "/", timeout=10)
    assert page.status_code == 200
    assert "text/html" in page.headers.get("content-type", "")
    assert "vendor/socket.io.min.js" in page.text
    js = requests.get(server.url + "/vendor/socket.io.min.js", timeout=10)
    assert js.status_code == 200
    assert js.text.startswith("/*!\n * Socket.IO v4")


def test_websocket_viewer_receives_location(server, clients, fleet):
    live_roundtrip(server.url, server.url, fleet, clients, ["websocket"])


def test_polling_viewer_receives_location(server, clients, fleet):
    live_roundtrip(server.url, server.url, fleet, clients, ["polling"])


def test_stale_update_is_not_accepted(server, clients, fleet):
    vehicle = clients(server.url, mint("vehicle", "bus-stale", fleet))
    ts = now_ms()
    assert assert_ok(vehicle.call("locationupdate", {"lat": 37.5, "lon": 127.0, "ts": ts})) == {"accepted": True}
    ack = vehicle.call("locationupdate", {"lat": 37.6, "lon": 127.1, "ts": ts - 1000})
    assert assert_ok(ack) == {"accepted": False, "reason": "stale"}, ack


def test_invalid_payload_keeps_socket(server, clients, fleet):
    vehicle = clients(server.url, mint("vehicle", "bus-bad", fleet))
    ack = vehicle.call("locationupdate", {"lat": "37.5", "lon": 127.0})
    assert isinstance(ack, dict) and ack.get("ok") is False, ack
    assert ack["error"]["code"] == "invalid_payload", ack
    # Still usable afterwards.
    assert assert_ok(vehicle.call("locationupdate", {"lat": 37.5, "lon": 127.0, "ts": now_ms()})) == {"accepted": True}


def _refused(server, clients, token, transports=("websocket",)) -> str:
    c = clients(server.url, token, transports, connect=False)
    with pytest.raises(socketio.exceptions.ConnectionError) as excinfo:
        c.connect()
    # python-socketio reports namespace refusals as "One or more namespaces
    # failed to connect"; the server's code arrives in the connect_error data.
    err = c.connect_errors.get(timeout=10)
    message = err.get("message") if isinstance(err, dict) else str(err)
    return f"{excinfo.value} | {message}"


def test_bad_token_is_refused(server, clients, fleet):
    assert "invalid_token" in _refused(server, clients, "not-a-jwt")


def test_wrong_signature_is_refused(server, clients, fleet):
    forged = mint("viewer", "viewer-1", fleet, secret="a-different-secret-of-adequate-length-0123456789")
    assert "invalid_token" in _refused(server, clients, forged)


def test_expired_token_is_refused(server, clients, fleet):
    expired = mint("viewer", "viewer-1", fleet, ttl=-120)
    assert "token_expired" in _refused(server, clients, expired, ["polling"])


# --------------------------------------------------------------------------- two replicas


@pytest.mark.redis
def test_replicas_share_locations(replicas, clients, fleet):
    a, b = replicas
    live_roundtrip(viewer_url=b.url, vehicle_url=a.url, fleet=fleet, clients=clients, transports=["websocket"])


@pytest.mark.redis
def test_replicas_share_locations_polling(replicas, clients, fleet):
    a, b = replicas
    live_roundtrip(viewer_url=a.url, vehicle_url=b.url, fleet=fleet, clients=clients, transports=["polling"])
