"""Tests of the fleetgate HTTP API (/api/v1): bearer auth and the error
envelope, per-route role and fleet checks, payload validation, size limits,
GeoJSON read-back, room messages, session revocation, and HTTP updates reaching
Socket.IO viewers (also across two replicas sharing Redis).
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid

import pytest
import requests
import socketio

from conftest import TIMEOUT, mint

API = "/api/v1"
SMALL_LIMIT = 2048  # FLEETGATE_MAX_MESSAGE_BYTES of the small-limit server
BIG_LIMIT = 1_000_000  # FLEETGATE_MAX_MESSAGE_BYTES of the server used for batch-count limits


# --------------------------------------------------------------------------- helpers


def now_ms() -> int:
    return int(time.time() * 1000)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def bearer(token: str | None) -> dict:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def call(base: str, method: str, path: str, token: str | None = None, body=None, raw: bytes | str | None = None,
         headers: dict | None = None, **kw) -> requests.Response:
    """One API request. `body` is sent as JSON; `raw` as-is with a JSON content type."""
    h = bearer(token)
    h.update(headers or {})
    if raw is not None:
        h.setdefault("Content-Type", "application/json")
        return requests.request(method, base + path, data=raw, headers=h, timeout=TIMEOUT, **kw)
    if body is not None:
        return requests.request(method, base + path, json=body, headers=h, timeout=TIMEOUT, **kw)
    return requests.request(method, base + path, headers=h, timeout=TIMEOUT, **kw)


def describe(r: requests.Response) -> str:
    return f"{r.request.method} {r.request.url} -> {r.status_code} {r.headers.get('content-type')!r} {r.text[:500]!r}"


def ok(r: requests.Response):
    """The `data` of a 200 `{ok:true,data}` JSON response."""
    assert r.status_code == 200, describe(r)
    assert r.headers.get("content-type", "").startswith("application/json"), describe(r)
    body = r.json()
    assert body.get("ok") is True and "data" in body, describe(r)
    return body["data"]


def names_field(message: str, fields) -> bool:
    fields = (fields,) if isinstance(fields, str) else fields
    return any(re.search(rf"(?<![A-Za-z]){re.escape(f)}", message, re.IGNORECASE) for f in fields)


def check_error(error: dict, code: str, fields=None, context: str = "") -> None:
    assert isinstance(error, dict), context
    assert error.get("code") == code, context
    assert isinstance(error.get("message"), str) and error["message"], context
    if fields is not None:
        assert names_field(error["message"], fields), f"message does not name {fields!r}: {context}"


def err(r: requests.Response, status: int, code: str, fields=None) -> dict:
    """Asserts an error response `{ok:false,error:{code,message}}` with that status."""
    assert r.status_code == status, describe(r)
    assert r.headers.get("content-type", "").startswith("application/json"), describe(r)
    body = r.json()
    assert body.get("ok") is False, describe(r)
    check_error(body.get("error"), code, fields, describe(r))
    return body["error"]


def b64url(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def unsigned_token(fleet: str) -> str:
    """An `alg: none` token, which must never be accepted."""
    claims = {"sub": "mallory", "fleet": fleet, "role": "dispatcher", "exp": int(time.time()) + 600}
    return f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(claims)}."


def put_location(base, fleet, vehicle, token, body) -> requests.Response:
    return call(base, "PUT", f"{API}/fleets/{fleet}/vehicles/{vehicle}/location", token, body)


def check_feature(f: dict, fleet: str, vehicle: str, lat: float, lon: float, ts: int | None = None, **optional):
    assert f.get("type") == "Feature", f
    assert f.get("id") == vehicle, f
    assert f["geometry"]["type"] == "Point", f
    assert f["geometry"]["coordinates"] == [pytest.approx(lon), pytest.approx(lat)], f
    p = f["properties"]
    assert p["fleet"] == fleet and p["vehicleId"] == vehicle, f
    if ts is not None:
        assert p["ts"] == ts, f
    assert isinstance(p["ts"], int) and isinstance(p.get("receivedAt"), int), f
    for name in ("heading", "speed", "accuracy"):
        if name in optional:
            assert p.get(name) == pytest.approx(optional[name]), f
        else:
            assert name not in p, f"absent optional {name!r} sent: {f!r}"


def features_by_id(data: dict) -> dict:
    assert data.get("type") == "FeatureCollection", data
    assert isinstance(data.get("features"), list), data
    out = {f["id"]: f for f in data["features"]}
    assert len(out) == len(data["features"]), f"duplicate features: {data!r}"
    return out


def session_of(client) -> dict:
    s = client.wait_for("session")
    assert isinstance(s, dict) and s.get("sessionId"), s
    return s


@pytest.fixture(scope="module")
def small(fleetgate_factory):
    """A server with FLEETGATE_MAX_MESSAGE_BYTES=2048."""
    return fleetgate_factory("small-limit", FLEETGATE_MAX_MESSAGE_BYTES=str(SMALL_LIMIT))


@pytest.fixture(scope="module")
def big(fleetgate_factory):
    """A server whose byte limit is high enough that only the 1000-item cap applies."""
    return fleetgate_factory("big-limit", FLEETGATE_MAX_MESSAGE_BYTES=str(BIG_LIMIT))


# --------------------------------------------------------------------------- auth on every route

# name -> (method, path template, body); {fleet}, {vehicle}, {room}, {session} are filled per test.
ROUTES = {
    "put_location": ("PUT", "/fleets/{fleet}/vehicles/{vehicle}/location", {"lat": 37.5, "lon": 127.0}),
    "post_locations": ("POST", "/fleets/{fleet}/locations", {"items": [{"vehicleId": "bus-1", "lat": 37.5, "lon": 127.0}]}),
    "list_vehicles": ("GET", "/fleets/{fleet}/vehicles", None),
    "get_vehicle": ("GET", "/fleets/{fleet}/vehicles/{vehicle}", None),
    "post_message": ("POST", "/fleets/{fleet}/rooms/{room}/messages", {"text": "hello"}),
    "delete_session": ("DELETE", "/sessions/{session}", None),
}


def route_request(base, route, fleet, headers, vehicle="bus-1"):
    method, template, body = ROUTES[route]
    path = API + template.format(fleet=fleet, vehicle=vehicle, room="ops", session=uuid.uuid4().hex)
    return call(base, method, path, body=body, headers=headers)


CREDENTIALS = {
    # name -> (header factory given the fleet, expected code)
    "no_header": (lambda fleet: {}, "unauthenticated"),
    "basic_scheme": (lambda fleet: {"Authorization": "Basic dXNlcjpwYXNz"}, "unauthenticated"),
    "garbage_token": (lambda fleet: {"Authorization": "Bearer not-a-jwt"}, "invalid_token"),
    "forged_signature": (
        lambda fleet: bearer(mint("dispatcher", "d", fleet, secret="another-secret-of-adequate-length-0123456789")),
        "invalid_token",
    ),
    "alg_none": (lambda fleet: bearer(unsigned_token(fleet)), "invalid_token"),
    "expired": (lambda fleet: bearer(mint("dispatcher", "d", fleet, ttl=-300)), "token_expired"),
}


@pytest.mark.parametrize("credential", list(CREDENTIALS))
@pytest.mark.parametrize("route", list(ROUTES))
def test_401_without_valid_token(server, fleet, route, credential):
    headers, code = CREDENTIALS[credential]
    err(route_request(server.url, route, fleet, headers(fleet)), 401, code)


@pytest.mark.parametrize("route", [r for r in ROUTES if r != "delete_session"])
def test_403_token_of_another_fleet(server, fleet, route):
    other = mint("dispatcher", "dispatcher-1", "other-" + fleet)
    err(route_request(server.url, route, fleet, bearer(other)), 403, "forbidden")


# (route, role) pairs that must be refused with 403 even in the token's own fleet.
WRONG_ROLES = [
    ("put_location", "viewer"),
    ("post_locations", "viewer"),
    ("post_locations", "vehicle"),
    ("post_message", "viewer"),
    ("post_message", "vehicle"),
]


@pytest.mark.parametrize("route,role", WRONG_ROLES)
def test_403_wrong_role(server, fleet, route, role):
    # The vehicle token is for the vehicle in the path, so only the role is wrong.
    token = mint(role, "bus-1", fleet)
    err(route_request(server.url, route, fleet, bearer(token)), 403, "forbidden")


# --------------------------------------------------------------------------- PUT location


def test_put_location_vehicle_and_dispatcher(server, fleet):
    bus = uid("bus")
    vtoken = mint("vehicle", bus, fleet)
    ts = now_ms() - 5000
    body = {"lat": 37.5665, "lon": 126.978, "ts": ts, "heading": 90.0, "speed": 12.5, "accuracy": 5.0}
    assert ok(put_location(server.url, fleet, bus, vtoken, body)) == {"accepted": True}

    feature = ok(call(server.url, "GET", f"{API}/fleets/{fleet}/vehicles/{bus}", vtoken))
    check_feature(feature, fleet, bus, 37.5665, 126.978, ts, heading=90.0, speed=12.5, accuracy=5.0)

    # Older and equal timestamps are stale and do not replace the stored fix.
    for older in (ts - 1000, ts):
        r = put_location(server.url, fleet, bus, vtoken, {"lat": 37.6, "lon": 127.1, "ts": older})
        assert ok(r) == {"accepted": False, "reason": "stale"}, describe(r)
    feature = ok(call(server.url, "GET", f"{API}/fleets/{fleet}/vehicles/{bus}", vtoken))
    check_feature(feature, fleet, bus, 37.5665, 126.978, ts, heading=90.0, speed=12.5, accuracy=5.0)

    # A dispatcher may publish for any vehicle of its fleet; GeoJSON position form.
    dtoken = mint("dispatcher", "dispatcher-1", fleet)
    body = {"location": {"type": "Point", "coordinates": [127.0276, 37.4979]}, "ts": ts + 1000}
    assert ok(put_location(server.url, fleet, bus, dtoken, body)) == {"accepted": True}
    feature = ok(call(server.url, "GET", f"{API}/fleets/{fleet}/vehicles/{bus}", dtoken))
    check_feature(feature, fleet, bus, 37.4979, 127.0276, ts + 1000)

    # Without ts the server time is used, which is newer than everything above.
    before = now_ms()
    assert ok(put_location(server.url, fleet, bus, vtoken, {"lat": 37.55, "lon": 126.99})) == {"accepted": True}
    feature = ok(call(server.url, "GET", f"{API}/fleets/{fleet}/vehicles/{bus}", vtoken))
    check_feature(feature, fleet, bus, 37.55, 126.99)
    assert before - 1000 <= feature["properties"]["ts"] <= now_ms() + 1000, feature

    # A vehicleId in the body equal to the path is allowed.
    body = {"vehicleId": bus, "lat": 37.56, "lon": 126.98, "ts": now_ms() + 1000}
    assert ok(put_location(server.url, fleet, bus, vtoken, body)) == {"accepted": True}


def test_put_location_vehicle_claim(server, fleet):
    """A `vehicle` claim names the only vehicle the token may publish for."""
    token = mint("vehicle", "driver-7", fleet, vehicle="bus-7")
    body = {"lat": 37.5, "lon": 127.0, "ts": now_ms()}
    assert ok(put_location(server.url, fleet, "bus-7", token, body)) == {"accepted": True}
    err(put_location(server.url, fleet, "driver-7", token, body), 403, "forbidden")
    err(put_location(server.url, fleet, "bus-8", token, body), 403, "forbidden")


def test_put_location_other_vehicle_is_403(server, fleet):
    token = mint("vehicle", "bus-1", fleet)
    err(put_location(server.url, fleet, "bus-2", token, {"lat": 37.5, "lon": 127.0}), 403, "forbidden")
    # Nothing was stored for bus-2.
    err(call(server.url, "GET", f"{API}/fleets/{fleet}/vehicles/bus-2", token), 404, "not_found")


def _bad_location_bodies():
    t = now_ms()
    return [
        ("lat_above_90", {"lat": 90.5, "lon": 127.0}, "lat"),
        ("lat_below_-90", {"lat": -91, "lon": 127.0}, "lat"),
        ("lat_string", {"lat": "37.5", "lon": 127.0}, "lat"),
        ("lat_bool", {"lat": True, "lon": 127.0}, "lat"),
        ("lon_above_180", {"lat": 37.5, "lon": 180.5}, "lon"),
        ("lon_below_-180", {"lat": 37.5, "lon": -181}, "lon"),
        ("lon_string", {"lat": 37.5, "lon": "127"}, "lon"),
        ("no_position", {"ts": t}, ("lat", "lon", "location", "position")),
        ("null_island", {"lat": 0, "lon": 0}, ("lat", "lon", "location", "position", "null island")),
        ("heading_360", {"lat": 37.5, "lon": 127.0, "heading": 360}, "heading"),
        ("heading_negative", {"lat": 37.5, "lon": 127.0, "heading": -1}, "heading"),
        ("speed_negative", {"lat": 37.5, "lon": 127.0, "speed": -0.5}, "speed"),
        ("speed_string", {"lat": 37.5, "lon": 127.0, "speed": "fast"}, "speed"),
        ("accuracy_negative", {"lat": 37.5, "lon": 127.0, "accuracy": -1}, "accuracy"),
        ("ts_future", {"lat": 37.5, "lon": 127.0, "ts": t + 10 * 60_000}, "ts"),
        ("ts_1970", {"lat": 37.5, "lon": 127.0, "ts": 0}, "ts"),
        ("ts_too_old", {"lat": 37.5, "lon": 127.0, "ts": t - 8 * 86_400_000}, "ts"),
        ("ts_string", {"lat": 37.5, "lon": 127.0, "ts": "yesterday"}, "ts"),
        ("ts_fraction", {"lat": 37.5, "lon": 127.0, "ts": t + 0.5}, "ts"),
        ("location_lon_out_of_range", {"location": {"type": "Point", "coordinates": [200.0, 37.5]}},
         ("location", "lon", "coordinates")),
        ("location_not_point", {"location": {"type": "LineString", "coordinates": [[127.0, 37.5], [127.1, 37.6]]}},
         ("location", "type", "point")),
        ("vehicleId_differs", {"vehicleId": "bus-2", "lat": 37.5, "lon": 127.0}, ("vehicleId", "vehicle")),
    ]


@pytest.mark.parametrize("name,body,field", _bad_location_bodies(), ids=[b[0] for b in _bad_location_bodies()])
def test_put_location_invalid_payload_names_field(server, fleet, name, body, field):
    token = mint("vehicle", "bus-1", fleet)
    err(put_location(server.url, fleet, "bus-1", token, body), 400, "invalid_payload", field)


@pytest.mark.parametrize(
    "raw",
    ['{"lat": 37.5, "lon": ', "not json", "[]", '"text"', "null", '{"lat": 1e999, "lon": 127.0}', ""],
    ids=["truncated", "not_json", "array", "string", "null", "overflowing_number", "empty"],
)
def test_put_location_malformed_json(server, fleet, raw):
    token = mint("vehicle", "bus-1", fleet)
    r = call(server.url, "PUT", f"{API}/fleets/{fleet}/vehicles/bus-1/location", token, raw=raw)
    err(r, 400, "invalid_payload")


@pytest.mark.parametrize("vehicle", ["bad%20id", "bad$id", "x" * 65, "%C3%A9t%C3%A9"], ids=["space", "dollar", "too_long", "non_ascii"])
def test_put_location_bad_vehicle_in_path(server, fleet, vehicle):
    token = mint("dispatcher", "dispatcher-1", fleet)
    err(put_location(server.url, fleet, vehicle, token, {"lat": 37.5, "lon": 127.0}), 400, "invalid_payload",
        ("vehicle", "vehicleId"))


def test_put_location_over_size_limit(small, fleet):
    token = mint("vehicle", "bus-1", fleet)
    body = {"lat": 37.5, "lon": 127.0, "pad": "x" * (SMALL_LIMIT * 2)}
    err(put_location(small.url, fleet, "bus-1", token, body), 413, "payload_too_large")
    # A normal body still works on that server.
    assert ok(put_location(small.url, fleet, "bus-1", token, {"lat": 37.5, "lon": 127.0})) == {"accepted": True}


def test_put_location_reaches_socket_viewer(server, clients, fleet):
    viewer = clients(server.url, mint("viewer", "viewer-1", fleet))
    assert viewer.call("subscribe", {}).get("ok") is True
    bus = uid("bus")
    ts = now_ms()
    body = {"lat": 37.5665, "lon": 126.978, "ts": ts, "speed": 3.0}
    assert ok(put_location(server.url, fleet, bus, mint("vehicle", bus, fleet), body)) == {"accepted": True}
    got = viewer.wait_for("locationupdate", lambda d: isinstance(d, dict) and d.get("vehicleId") == bus)
    assert got["fleet"] == fleet and got["ts"] == ts, got
    assert got["lat"] == pytest.approx(37.5665) and got["lon"] == pytest.approx(126.978), got
    assert got["speed"] == pytest.approx(3.0) and "heading" not in got and "accuracy" not in got, got
    assert isinstance(got.get("receivedAt"), int), got


@pytest.mark.redis
def test_put_on_replica_a_reaches_viewer_on_replica_b(replicas, clients, fleet):
    a, b = replicas
    viewer = clients(b.url, mint("viewer", "viewer-1", fleet))
    session_of(viewer)
    ack = viewer.call("subscribe", {})
    assert ack.get("ok") is True and ack["data"]["vehicles"] == [], ack

    bus = uid("bus")
    token = mint("vehicle", bus, fleet)
    ts = now_ms()
    body = {"lat": 35.1796, "lon": 129.0756, "ts": ts, "heading": 180.0}
    assert ok(put_location(a.url, fleet, bus, token, body)) == {"accepted": True}

    got = viewer.wait_for("locationupdate", lambda d: isinstance(d, dict) and d.get("vehicleId") == bus)
    assert got["fleet"] == fleet and got["ts"] == ts, got
    assert got["lat"] == pytest.approx(35.1796) and got["lon"] == pytest.approx(129.0756), got
    assert got["heading"] == pytest.approx(180.0), got
    assert isinstance(got.get("receivedAt"), int), got

    # The position is shared: replica B serves it over HTTP and judges staleness the same way.
    check_feature(ok(call(b.url, "GET", f"{API}/fleets/{fleet}/vehicles/{bus}", token)),
                  fleet, bus, 35.1796, 129.0756, ts, heading=180.0)
    r = put_location(b.url, fleet, bus, token, {"lat": 35.0, "lon": 129.0, "ts": ts})
    assert ok(r) == {"accepted": False, "reason": "stale"}, describe(r)


# --------------------------------------------------------------------------- POST locations (batch)


def test_post_locations_per_item_results(server, clients, fleet):
    viewer = clients(server.url, mint("viewer", "viewer-1", fleet))
    assert viewer.call("subscribe", {}).get("ok") is True
    token = mint("dispatcher", "dispatcher-1", fleet)
    ts = now_ms() - 10_000
    items = [
        {"vehicleId": "bus-1", "lat": 37.5, "lon": 127.0, "ts": ts, "speed": 4.0},
        {"vehicleId": "bus-2", "location": {"type": "Point", "coordinates": [126.9, 37.4]}, "ts": ts},
        {"vehicleId": "bus-3", "lat": 91, "lon": 127.0},
        {"vehicleId": "bad id", "lat": 37.5, "lon": 127.0},
        {"vehicleId": "bus-1", "lat": 37.6, "lon": 127.1, "ts": ts - 1},
        {"lat": 37.5, "lon": 127.0},
        {"vehicleId": "bus-1", "lat": 37.7, "lon": 127.2, "ts": ts + 1},
        "not an object",
    ]
    r = call(server.url, "POST", f"{API}/fleets/{fleet}/locations", token, {"items": items})
    results = ok(r)["results"]
    assert len(results) == len(items), describe(r)
    assert results[0] == {"ok": True, "data": {"accepted": True}}, results
    assert results[1] == {"ok": True, "data": {"accepted": True}}, results
    assert results[2].get("ok") is False, results
    check_error(results[2]["error"], "invalid_payload", "lat", repr(results[2]))
    assert results[3].get("ok") is False, results
    check_error(results[3]["error"], "invalid_payload", ("vehicleId", "vehicle"), repr(results[3]))
    assert results[4] == {"ok": True, "data": {"accepted": False, "reason": "stale"}}, results
    assert results[5].get("ok") is False, results
    check_error(results[5]["error"], "invalid_payload", ("vehicleId", "vehicle"), repr(results[5]))
    assert results[6] == {"ok": True, "data": {"accepted": True}}, results
    assert results[7].get("ok") is False, results
    check_error(results[7]["error"], "invalid_payload", context=repr(results[7]))

    # Only the accepted items were stored ...
    stored = features_by_id(ok(call(server.url, "GET", f"{API}/fleets/{fleet}/vehicles", token)))
    assert set(stored) == {"bus-1", "bus-2"}, stored
    check_feature(stored["bus-1"], fleet, "bus-1", 37.7, 127.2, ts + 1)
    check_feature(stored["bus-2"], fleet, "bus-2", 37.4, 126.9, ts)
    # ... and broadcast.
    got = viewer.wait_for("locationupdate", lambda d: d.get("vehicleId") == "bus-2")
    assert got["lat"] == pytest.approx(37.4) and got["ts"] == ts, got
    got = viewer.wait_for("locationupdate", lambda d: d.get("vehicleId") == "bus-1" and d.get("ts") == ts + 1)
    assert got["lat"] == pytest.approx(37.7), got


@pytest.mark.parametrize(
    "body,field",
    [({}, "items"), ({"items": "bus-1"}, "items"), ({"items": None}, "items"), ({"items": {"vehicleId": "bus-1"}}, "items")],
    ids=["missing", "string", "null", "object"],
)
def test_post_locations_bad_items(server, fleet, body, field):
    token = mint("dispatcher", "dispatcher-1", fleet)
    err(call(server.url, "POST", f"{API}/fleets/{fleet}/locations", token, body), 400, "invalid_payload", field)


def test_post_locations_malformed_json(server, fleet):
    token = mint("dispatcher", "dispatcher-1", fleet)
    r = call(server.url, "POST", f"{API}/fleets/{fleet}/locations", token, raw='{"items": [')
    err(r, 400, "invalid_payload")


def _items(n: int, ts: int) -> list:
    return [{"vehicleId": f"v{i}", "lat": 10 + i / 1000, "lon": 20 + i / 1000, "ts": ts} for i in range(n)]


def test_post_locations_1000_items_accepted_1001_refused(big, fleet):
    token = mint("dispatcher", "dispatcher-1", fleet)
    ts = now_ms() - 1000
    r = call(big.url, "POST", f"{API}/fleets/{fleet}/locations", token, {"items": _items(1000, ts)})
    results = ok(r)["results"]
    assert len(results) == 1000
    assert all(x == {"ok": True, "data": {"accepted": True}} for x in results), [x for x in results if x.get("ok") is not True][:3]
    assert len(ok(call(big.url, "GET", f"{API}/fleets/{fleet}/vehicles", token))["features"]) == 1000

    body = {"items": _items(1001, ts + 1)}
    assert len(json.dumps(body)) < BIG_LIMIT
    err(call(big.url, "POST", f"{API}/fleets/{fleet}/locations", token, body), 413, "payload_too_large")
    # Nothing of the refused batch was stored.
    stored = features_by_id(ok(call(big.url, "GET", f"{API}/fleets/{fleet}/vehicles", token)))
    assert "v1000" not in stored and stored["v0"]["properties"]["ts"] == ts


def test_post_locations_over_size_limit(small, fleet):
    token = mint("dispatcher", "dispatcher-1", fleet)
    body = {"items": _items(60, now_ms())}
    assert len(json.dumps(body)) > SMALL_LIMIT
    err(call(small.url, "POST", f"{API}/fleets/{fleet}/locations", token, body), 413, "payload_too_large")


# --------------------------------------------------------------------------- GET vehicles


def _seed(base, fleet) -> int:
    """bus-seoul (with heading/speed/accuracy), bus-busan, bus-fiji (east of 179.5E), bus-samoa (west of 179.5W)."""
    ts = now_ms() - 1000
    token = mint("dispatcher", "dispatcher-1", fleet)
    for vehicle, body in [
        ("bus-seoul", {"lat": 37.5665, "lon": 126.978, "heading": 45.5, "speed": 0, "accuracy": 3.5}),
        ("bus-busan", {"lat": 35.1796, "lon": 129.0756}),
        ("bus-fiji", {"lat": -17.0, "lon": 179.9}),
        ("bus-samoa", {"lat": -13.8, "lon": -179.9}),
    ]:
        assert ok(put_location(base, fleet, vehicle, token, dict(body, ts=ts))) == {"accepted": True}
    return ts


def test_list_vehicles_feature_collection(server, fleet):
    for role in ("viewer", "vehicle", "dispatcher"):
        data = ok(call(server.url, "GET", f"{API}/fleets/{fleet}/vehicles", mint(role, "bus-x", fleet)))
        assert data == {"type": "FeatureCollection", "features": []}, data

    ts = _seed(server.url, fleet)
    for role in ("viewer", "vehicle", "dispatcher"):
        data = ok(call(server.url, "GET", f"{API}/fleets/{fleet}/vehicles", mint(role, "bus-x", fleet)))
        got = features_by_id(data)
        assert set(got) == {"bus-seoul", "bus-busan", "bus-fiji", "bus-samoa"}, data
    check_feature(got["bus-seoul"], fleet, "bus-seoul", 37.5665, 126.978, ts, heading=45.5, speed=0, accuracy=3.5)
    check_feature(got["bus-busan"], fleet, "bus-busan", 35.1796, 129.0756, ts)


@pytest.mark.parametrize(
    "bbox,expected",
    [
        ("126,37,127,38", {"bus-seoul"}),
        ("126.978,37.5665,126.978,37.5665", {"bus-seoul"}),  # edges are inclusive
        ("125,34,130,38", {"bus-seoul", "bus-busan"}),
        ("0,0,1,1", set()),
        ("179,-20,-179,-10", {"bus-fiji", "bus-samoa"}),  # crosses the antimeridian
        ("-180,-90,180,90", {"bus-seoul", "bus-busan", "bus-fiji", "bus-samoa"}),
    ],
)
def test_list_vehicles_bbox(server, fleet, bbox, expected):
    _seed(server.url, fleet)
    token = mint("viewer", "viewer-1", fleet)
    data = ok(call(server.url, "GET", f"{API}/fleets/{fleet}/vehicles", token, params={"bbox": bbox}))
    assert set(features_by_id(data)) == expected, data


@pytest.mark.parametrize(
    "bbox",
    ["1,2,3", "1,2,3,4,5", "a,b,c,d", "", "1,2,,4", "0,-91,10,10", "0,0,10,91", "-181,0,10,10", "0,10,10,5", "nan,0,1,1"],
)
def test_list_vehicles_bad_bbox(server, fleet, bbox):
    token = mint("viewer", "viewer-1", fleet)
    r = call(server.url, "GET", f"{API}/fleets/{fleet}/vehicles", token, params={"bbox": bbox})
    err(r, 400, "invalid_payload", "bbox")


def test_list_vehicles_geojson_media_type(server, fleet):
    _seed(server.url, fleet)
    token = mint("viewer", "viewer-1", fleet)
    r = call(server.url, "GET", f"{API}/fleets/{fleet}/vehicles", token, headers={"Accept": "application/geo+json"})
    assert r.status_code == 200, describe(r)
    assert r.headers.get("content-type", "").startswith("application/geo+json"), describe(r)
    body = r.json()
    assert "ok" not in body and "data" not in body, body
    assert set(features_by_id(body)) == {"bus-seoul", "bus-busan", "bus-fiji", "bus-samoa"}, body

    r = call(server.url, "GET", f"{API}/fleets/{fleet}/vehicles", token,
             headers={"Accept": "application/geo+json"}, params={"bbox": "126,37,127,38"})
    assert r.status_code == 200 and set(features_by_id(r.json())) == {"bus-seoul"}, describe(r)


# --------------------------------------------------------------------------- GET one vehicle


def test_get_vehicle(server, fleet):
    ts = _seed(server.url, fleet)
    for role in ("viewer", "vehicle", "dispatcher"):
        # A vehicle token may read other vehicles of its fleet.
        feature = ok(call(server.url, "GET", f"{API}/fleets/{fleet}/vehicles/bus-busan", mint(role, "bus-x", fleet)))
        check_feature(feature, fleet, "bus-busan", 35.1796, 129.0756, ts)


def test_get_vehicle_unknown_is_404(server, fleet):
    _seed(server.url, fleet)
    token = mint("viewer", "viewer-1", fleet)
    err(call(server.url, "GET", f"{API}/fleets/{fleet}/vehicles/bus-nowhere", token), 404, "not_found")
    # Positions never leak between fleets.
    err(call(server.url, "GET", f"{API}/fleets/x{fleet}/vehicles/bus-seoul", mint("viewer", "v", "x" + fleet)),
        404, "not_found")


@pytest.mark.parametrize("vehicle", ["bad%20id", "x" * 65], ids=["space", "too_long"])
def test_get_vehicle_bad_id_is_400(server, fleet, vehicle):
    token = mint("viewer", "viewer-1", fleet)
    err(call(server.url, "GET", f"{API}/fleets/{fleet}/vehicles/{vehicle}", token), 400, "invalid_payload",
        ("vehicle", "vehicleId"))


# --------------------------------------------------------------------------- room messages


def post_message(base, fleet, room, token, body) -> requests.Response:
    return call(base, "POST", f"{API}/fleets/{fleet}/rooms/{room}/messages", token, body)


def test_post_message_reaches_room_member(server, clients, fleet):
    room = uid("ops")
    member = clients(server.url, mint("viewer", "viewer-1", fleet))
    ack = member.call("join_room", {"room": room})
    assert ack.get("ok") is True, ack
    outsider = clients(server.url, mint("viewer", "viewer-2", fleet))
    session_of(outsider)

    token = mint("dispatcher", "dispatcher-1", fleet)
    before = now_ms()
    data = ok(post_message(server.url, fleet, room, token, {"text": "Bus 12 detour via Main St"}))
    assert isinstance(data.get("id"), str) and data["id"], data
    assert data["room"] == room and data["from"] == "server" and data["text"] == "Bus 12 detour via Main St", data
    assert isinstance(data["ts"], int) and before - 1000 <= data["ts"] <= now_ms() + 1000, data

    got = member.wait_for("chat", lambda d: isinstance(d, dict) and d.get("id") == data["id"])
    assert got == data, got
    with pytest.raises(AssertionError):
        outsider.wait_for("chat", timeout=0.5)

    history = member.call("history", {"room": room})
    assert history.get("ok") is True, history
    assert [m["id"] for m in history["data"]["messages"]] == [data["id"]], history

    # Exactly 2000 characters is allowed.
    data = ok(post_message(server.url, fleet, room, token, {"text": "a" * 2000}))
    assert data["text"] == "a" * 2000


@pytest.mark.parametrize(
    "body",
    [{"text": ""}, {"text": "a" * 2001}, {}, {"text": 42}, {"text": None}],
    ids=["empty", "2001_chars", "missing", "number", "null"],
)
def test_post_message_bad_text(server, fleet, body):
    token = mint("dispatcher", "dispatcher-1", fleet)
    err(post_message(server.url, fleet, "ops", token, body), 400, "invalid_payload", "text")


def test_post_message_malformed_json(server, fleet):
    token = mint("dispatcher", "dispatcher-1", fleet)
    r = call(server.url, "POST", f"{API}/fleets/{fleet}/rooms/ops/messages", token, raw="{text: hi}")
    err(r, 400, "invalid_payload")


@pytest.mark.parametrize("room", ["bad%20room", "r" * 65, "a%2Fb"], ids=["space", "too_long", "slash"])
def test_post_message_bad_room(server, fleet, room):
    token = mint("dispatcher", "dispatcher-1", fleet)
    err(post_message(server.url, fleet, room, token, {"text": "hi"}), 400, "invalid_payload", "room")


@pytest.mark.redis
def test_post_message_on_replica_a_reaches_member_on_replica_b(replicas, clients, fleet):
    a, b = replicas
    room = uid("ops")
    member = clients(b.url, mint("viewer", "viewer-1", fleet))
    ack = member.call("join_room", {"room": room})
    assert ack.get("ok") is True, ack
    data = ok(post_message(a.url, fleet, room, mint("dispatcher", "dispatcher-1", fleet), {"text": "All buses: return to depot"}))
    got = member.wait_for("chat", lambda d: isinstance(d, dict) and d.get("id") == data["id"])
    assert got == data, got
    history = member.call("history", {"room": room})
    assert history.get("ok") is True and [m["id"] for m in history["data"]["messages"]] == [data["id"]], history


def test_post_message_over_size_limit(small, fleet):
    token = mint("dispatcher", "dispatcher-1", fleet)
    err(post_message(small.url, fleet, "ops", token, {"text": "hi", "pad": "x" * (SMALL_LIMIT * 2)}),
        413, "payload_too_large")


# --------------------------------------------------------------------------- session revocation


def _resume_refused(clients, url, session_id) -> str:
    c = clients(url, None, connect=False, auth={"session": session_id})
    with pytest.raises(socketio.exceptions.ConnectionError):
        c.connect()
    e = c.connect_errors.get(timeout=TIMEOUT)
    return e.get("message") if isinstance(e, dict) else str(e)


def delete_session(base, session_id, token) -> requests.Response:
    return call(base, "DELETE", f"{API}/sessions/{session_id}", token)


def test_delete_own_session(server, clients, fleet):
    sock = clients(server.url, mint("viewer", "alice", fleet))
    sid = session_of(sock)["sessionId"]
    # The owner is the same sub in the same fleet, with any of its tokens.
    assert ok(delete_session(server.url, sid, mint("viewer", "alice", fleet))) == {"revoked": True}
    assert sock.disconnected.wait(TIMEOUT), "revoked session's socket still connected"
    assert _resume_refused(clients, server.url, sid) == "session_expired"
    err(delete_session(server.url, sid, mint("viewer", "alice", fleet)), 404, "not_found")


def test_dispatcher_revokes_session_of_its_fleet(server, clients, fleet):
    bus = uid("bus")
    sock = clients(server.url, mint("vehicle", bus, fleet))
    sid = session_of(sock)["sessionId"]
    assert ok(delete_session(server.url, sid, mint("dispatcher", "dispatcher-1", fleet))) == {"revoked": True}
    assert sock.disconnected.wait(TIMEOUT), "revoked session's socket still connected"


def test_delete_session_refused_for_others(server, clients, fleet):
    sock = clients(server.url, mint("viewer", "alice", fleet))
    sid = session_of(sock)["sessionId"]
    for token in (
        mint("viewer", "bob", fleet),  # another user of the same fleet
        mint("vehicle", "bus-1", fleet),
        mint("viewer", "alice", "other-" + fleet),  # same sub, other fleet
        mint("dispatcher", "dispatcher-1", "other-" + fleet),  # dispatcher of another fleet
    ):
        err(delete_session(server.url, sid, token), 403, "forbidden")
    # The session survived all of that.
    assert not sock.disconnected.is_set()
    ack = sock.call("subscribe", {})
    assert ack.get("ok") is True, ack


def test_delete_unknown_session_is_404(server, fleet):
    token = mint("dispatcher", "dispatcher-1", fleet)
    err(delete_session(server.url, uuid.uuid4().hex + uuid.uuid4().hex, token), 404, "not_found")


@pytest.mark.redis
def test_revocation_on_replica_a_disconnects_socket_on_replica_b(replicas, clients, fleet):
    a, b = replicas
    sock = clients(b.url, mint("viewer", "alice", fleet))
    sid = session_of(sock)["sessionId"]
    assert ok(delete_session(a.url, sid, mint("dispatcher", "dispatcher-1", fleet))) == {"revoked": True}
    assert sock.disconnected.wait(TIMEOUT), "socket on the other replica still connected"
    assert _resume_refused(clients, a.url, sid) == "session_expired"
