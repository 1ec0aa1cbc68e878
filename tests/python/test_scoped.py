"""Scoped viewer tokens (contract section 2, the `vehicles` claim) with the
python-socketio client and the HTTP API: a rider app's token watches only its
buses, over websocket and long-polling, through the handshake and through the
bus-app flow (`authenticate` then `providerjoin`), on one node and across two
replicas sharing Redis; the HTTP reads show only those buses.
"""

from __future__ import annotations

import time
import uuid

import jwt
import pytest
import requests

from conftest import SECRET, TIMEOUT, mint

API = "/api/v1"


def scoped(fleet: str, vehicles, sub: str = "rider", role: str = "viewer") -> str:
    claims = {"sub": sub, "fleet": fleet, "role": role, "vehicles": vehicles, "exp": int(time.time()) + 600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def now_ms() -> int:
    return int(time.time() * 1000)


def ok(ack) -> dict:
    assert isinstance(ack, dict) and ack.get("ok") is True, ack
    return ack["data"]


def error_code(ack) -> str:
    assert isinstance(ack, dict) and ack.get("ok") is False, ack
    return ack["error"]["code"]


def publish_all(dispatcher, buses, lat: float) -> None:
    for i, bus in enumerate(buses):
        ack = dispatcher.call("locationupdate", {"vehicleId": bus, "lat": lat + i / 100, "lon": 127.0, "ts": now_ms()})
        assert ok(ack) == {"accepted": True}, ack


def only_mine_arrive(viewer_url: str, publisher_url: str, fleet: str, clients, transports) -> None:
    buses = ["bus-1", "bus-2", "bus-3"]
    dispatcher = clients(publisher_url, mint("dispatcher", "ops", fleet))
    publish_all(dispatcher, buses, 37.5)
    # An unscoped watcher next to the rider: once it has the marker, everything before it has passed.
    watcher = clients(viewer_url, mint("viewer", "watcher", fleet), transports)
    ok(watcher.call("subscribe", {}))

    rider = clients(viewer_url, scoped(fleet, ["bus-2"]), transports)
    session = rider.wait_for("session")
    assert session["vehicles"] == ["bus-2"], session
    for wider in ({}, {"bbox": [126, 37, 128, 38]}, {"vehicles": ["bus-2", "bus-3"]}):
        assert error_code(rider.call("subscribe", wider)) == "forbidden", wider
    assert error_code(rider.call("join_room", {"room": "ops"})) == "forbidden"
    snapshot = ok(rider.call("subscribe", {"vehicles": ["bus-2"]}))
    assert [v["vehicleId"] for v in snapshot["vehicles"]] == ["bus-2"], snapshot

    publish_all(dispatcher, buses, 37.6)
    got = rider.wait_for("locationupdate", lambda d: d.get("vehicleId") == "bus-2" and d["lat"] > 37.55)
    assert got["fleet"] == fleet, got
    marker = "marker-" + uuid.uuid4().hex[:6]
    ok(dispatcher.call("locationupdate", {"vehicleId": marker, "lat": 37.7, "lon": 127.0, "ts": now_ms()}))
    watcher.wait_for("locationupdate", lambda d: d.get("vehicleId") == marker)
    with pytest.raises(AssertionError):
        rider.wait_for("locationupdate", lambda d: d.get("vehicleId") != "bus-2", timeout=0.5)


@pytest.mark.parametrize("transports", [("websocket",), ("polling",)], ids=["websocket", "polling"])
def test_scoped_viewer_sees_only_its_vehicles(server, clients, fleet, transports):
    only_mine_arrive(server.url, server.url, fleet, clients, transports)


def test_scoped_viewer_across_replicas(redis_replicas, clients, fleet):
    a, b = redis_replicas
    only_mine_arrive(b.url, a.url, fleet, clients, ("websocket",))


def test_bus_app_flow_with_a_scoped_token(server, clients, fleet):
    """A rider app of the bus-app backend: connect, `authenticate { provider, token }`, then `providerjoin`."""
    rider = clients(server.url, None)
    session = ok(rider.call("authenticate", {"provider": fleet, "token": scoped(fleet, ["bus-7"])}))
    assert session["vehicles"] == ["bus-7"], session
    # `providerjoin` is a whole-fleet subscribe, which this token may not make.
    assert error_code(rider.call("providerjoin", {"providerId": fleet})) == "forbidden"
    assert ok(rider.call("subscribe", {"vehicles": ["bus-7"]}))["fleet"] == fleet


def test_http_reads_of_a_scoped_token(server, clients, fleet):
    dispatcher = clients(server.url, mint("dispatcher", "ops", fleet))
    publish_all(dispatcher, ["bus-1", "bus-2", "bus-3"], 37.5)
    h = {"Authorization": f"Bearer {scoped(fleet, ['bus-1', 'bus-3'])}"}
    listing = requests.get(f"{server.url}{API}/fleets/{fleet}/vehicles", headers=h, timeout=TIMEOUT)
    assert listing.status_code == 200, listing.text
    assert sorted(f["id"] for f in listing.json()["data"]["features"]) == ["bus-1", "bus-3"]
    bare = requests.get(
        f"{server.url}{API}/fleets/{fleet}/vehicles",
        headers={**h, "Accept": "application/geo+json"},
        timeout=TIMEOUT,
    )
    assert sorted(f["id"] for f in bare.json()["features"]) == ["bus-1", "bus-3"]
    assert requests.get(f"{server.url}{API}/fleets/{fleet}/vehicles/bus-3", headers=h, timeout=TIMEOUT).status_code == 200
    other = requests.get(f"{server.url}{API}/fleets/{fleet}/vehicles/bus-2", headers=h, timeout=TIMEOUT)
    assert other.status_code == 403, other.text
    assert other.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize(
    "role,vehicles",
    [("dispatcher", ["bus-1"]), ("vehicle", ["bus-1"]), ("viewer", []), ("viewer", None), ("viewer", "bus-1")],
    ids=["dispatcher", "vehicle", "empty", "null", "string"],
)
def test_bad_vehicles_claims_are_refused(server, fleet, role, vehicles):
    token = scoped(fleet, vehicles, role=role)
    r = requests.get(
        f"{server.url}{API}/fleets/{fleet}/vehicles", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
    )
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_token"
    assert "claim vehicles" in r.json()["error"]["message"]
