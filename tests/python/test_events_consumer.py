"""The README's event stream consumer (section "Event outputs"), run as
written against a fleetgate on Redis: the positions a dispatcher stores
over HTTP land in its SQLite table, once each, with their event ids; a
stale update and a chat message do not; every entry is acknowledged.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import redis
import requests

from conftest import REPO, TIMEOUT, Fleetgate, mint, stop_cleanly


def readme_consumer() -> str:
    text = (REPO / "README.md").read_text()
    marker = "<!-- events-consumer -->\n```python\n"
    start = text.index(marker) + len(marker)
    return text[start : text.index("```", start)]


def acked(client: redis.Redis, stream: str) -> bool:
    """Whether the consumer's group exists and has nothing pending."""
    try:
        return client.xpending(stream, "history")["pending"] == 0
    except redis.ResponseError:  # no group yet
        return False


def test_the_readme_consumer_writes_positions_to_a_table(fleetgate_bin, redis_server, fleet, tmp_path):
    server = Fleetgate(fleetgate_bin, "events", {"FLEETGATE_REDIS_URL": redis_server.url})
    consumer = None
    try:
        stream = f"fg:{{{fleet}}}:events"
        code = readme_consumer()
        for default, ours in [
            ("redis://localhost:6379", redis_server.url),
            ('"fg:{demo}:events"', repr(stream)),
            ('"history.db"', repr(str(tmp_path / "history.db"))),
        ]:
            assert default in code, f"the README consumer no longer has {default}"
            code = code.replace(default, ours)

        headers = {"Authorization": f"Bearer {mint('dispatcher', 'ops', fleet)}"}
        base = int(time.time() * 1000) - 60_000
        fixes = [("bus-1", base, 37.5665, 126.978), ("bus-2", base, 37.57, 126.98), ("bus-1", base + 1000, 37.5667, 126.9782)]
        for vehicle, ts, lat, lon in fixes + [("bus-1", base, 37.0, 126.0)]:  # the last one is stale
            r = requests.put(
                f"{server.url}/api/v1/fleets/{fleet}/vehicles/{vehicle}/location",
                json={"lat": lat, "lon": lon, "ts": ts},
                headers=headers,
                timeout=TIMEOUT,
            )
            assert r.status_code == 200, r.text
        r = requests.post(
            f"{server.url}/api/v1/fleets/{fleet}/rooms/ops/messages", json={"text": "hi"}, headers=headers, timeout=TIMEOUT
        )
        assert r.status_code == 200, r.text

        script = tmp_path / "consumer.py"
        script.write_text(code)
        consumer = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(redis_server.url)
        deadline = time.monotonic() + TIMEOUT
        rows: list = []
        while time.monotonic() < deadline:
            assert consumer.poll() is None, consumer.communicate()[0].decode()
            if (tmp_path / "history.db").exists():
                with sqlite3.connect(tmp_path / "history.db") as db:
                    try:
                        rows = db.execute("SELECT id, vehicle, ts, lat, lon FROM positions ORDER BY id").fetchall()
                    except sqlite3.OperationalError:
                        rows = []
            if len(rows) >= len(fixes) and acked(client, stream):
                break
            time.sleep(0.1)
        assert [r[1:] for r in rows] == [(v, ts, lat, lon) for v, ts, lat, lon in fixes], rows
        assert all(r[0].startswith(f"{fleet}/") for r in rows), rows
        assert acked(client, stream), "every entry acknowledged"
        # The stream holds the chat message too; the table only positions.
        assert client.xlen(stream) == len(fixes) + 1
    finally:
        if consumer is not None:
            consumer.kill()
            consumer.wait()
        stop_cleanly(server)
