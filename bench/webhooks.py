#!/usr/bin/env python3
"""Webhook throughput of one replica (contract section 12): how many events
per second one fleetgate delivers to a receiver that answers at once, and
what each delivered event costs the replica (user and system CPU apart) and
Redis.

    cargo build --release -p fleetgate
    python3 bench/webhooks.py [--fleets 4] [--events 20000] [--server-core 0] [--load-core 1]

A private redis-server and fleetgate (pinned to --server-core) are started;
this process is the receiver (pinned to --load-core with Redis): a minimal
HTTP/1.1 server on loopback answering every POST `200` with an empty body
over keep-alive connections. Each of --fleets fleets gets one webhook; then
--events events per fleet are appended to the fleets' streams by the
store's own append (`src/store/redis/lua/events_append.lua`, position
events with a typical fix), so the replica's work in the window is the
outputs' alone: reading the stream, signing and POSTing each event, saving
cursors. The window runs while every fleet delivers (see Receiver). One JSON line
goes to bench/results/<stamp>-webhooks.jsonl, a summary to stdout.

`bench/run.sh`'s `events` scenario uses the same receiver and registration
for its ingest run with webhooks on (`--receive PORT`: serve until killed;
`--register BASE_URL HOOK_URL FLEET…`: one webhook per fleet, the dispatcher
token signed with `$FLEETGATE_JWT_SECRET`).

A webhook delivers its events one request at a time, in order, so one
fleet's rate is bounded by the round trip; fleets deliver side by side, and
`FLEETGATE_WEBHOOK_CONCURRENCY` (set here to the number of fleets) bounds
the requests in flight to one endpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import secrets
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POSITION = (
    '{{"fleet":"{fleet}","vehicleId":"bus-123","lat":37.5665123,"lon":126.9780456,"ts":1732200000000,'
    '"heading":90.0,"speed":12.5,"accuracy":5.0,"receivedAt":1732200000012}}'
)
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def token(secret: str, fleet: str) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    claims = {"sub": "bench", "fleet": fleet, "role": "dispatcher", "exp": int(time.time()) + 3600}
    signing = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    return signing + "." + b64(hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest())


class Receiver:
    """Counts deliveries per fleet. The window opens when every fleet has had
    one and closes when the first fleet has had all of its events, so every
    fleet delivers throughout; at both edges it notes the time, the total
    delivered and the CPU of the replica, Redis and this process."""

    def __init__(self, fleets: list[str], per_fleet: int, pids: list[int]) -> None:
        self.per_fleet, self.pids = per_fleet, pids
        self.counts = dict.fromkeys(fleets, 0)
        self.total = 0
        self.ids: set[str] = set()
        self.opened: tuple | None = None
        self.closed: tuple | None = None
        self.done = asyncio.Event()

    def note(self) -> tuple:
        return time.monotonic(), self.total, [cpu(p) for p in self.pids], time.process_time()

    def delivered(self, event_id: str) -> None:
        if event_id in self.ids:
            return
        self.ids.add(event_id)
        fleet = event_id.split("/", 1)[0]
        self.counts[fleet] += 1
        self.total += 1
        if self.opened is None and all(self.counts.values()):
            self.opened = self.note()
        if self.closed is None and self.counts[fleet] == self.per_fleet:
            self.closed = self.note()
        if self.total == self.per_fleet * len(self.counts):
            self.done.set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length, event_id = 0, None
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"x-fleetgate-event-id":
                        event_id = value.strip().decode()
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                if event_id:
                    self.delivered(event_id)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def register(base: str, hook_url: str, fleets: list[str], secret: str) -> None:
    for fleet in fleets:
        body = json.dumps({"url": hook_url, "secret": secrets.token_hex(16)}).encode()
        request = urllib.request.Request(
            f"{base}/api/v1/fleets/{fleet}/webhooks/bench", data=body, method="PUT",
            headers={"Authorization": f"Bearer {token(secret, fleet)}", "Content-Type": "application/json"},
        )
        urllib.request.urlopen(request, timeout=5)


async def receive(port: int) -> None:
    """Answers every delivery `200` until killed, counting nothing."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(l.split(b":", 1)[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def append_events(port: int, fleet: str, cap: int, n: int) -> None:
    """n position events appended to the fleet's stream as the store appends them."""
    lua = (REPO / "src/store/redis/lua/events_append.lua").read_text() + (
        "ev_open(KEYS[1], KEYS[2], ARGV[1], ARGV[2])\n"
        "for _ = 1, tonumber(ARGV[3]) do ev_add('position', ARGV[4]) end\n"
        "ev_close()\n"
    )
    stream, counter = f"fg:{{{fleet}}}:events", f"fg:{{{fleet}}}:events:n"
    for done in range(0, n, 1000):
        step = str(min(1000, n - done))
        subprocess.run(
            ["redis-cli", "-p", str(port), "EVAL", lua, "2", stream, counter, str(cap), fleet, step,
             POSITION.format(fleet=fleet)],
            check=True, stdout=subprocess.DEVNULL,
        )


async def run(opts: argparse.Namespace) -> dict:
    os.sched_setaffinity(0, {opts.load_core})
    started: list[subprocess.Popen] = []
    try:
        redis_port = free_port()
        started.append(subprocess.Popen(
            ["taskset", "-c", str(opts.load_core), "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        ))
        redis_pid = started[-1].pid
        for _ in range(100):
            if subprocess.run(["redis-cli", "-p", str(redis_port), "PING"], capture_output=True, text=True).stdout.strip() == "PONG":
                break
            time.sleep(0.05)
        secret, port = secrets.token_hex(32), free_port()
        cap = opts.events + 1000
        env = {
            "PATH": os.environ["PATH"],
            "FLEETGATE_ADDR": f"127.0.0.1:{port}",
            "FLEETGATE_METRICS_ADDR": f"127.0.0.1:{free_port()}",
            "FLEETGATE_REDIS_URL": f"redis://127.0.0.1:{redis_port}",
            "FLEETGATE_JWT_SECRET": secret,
            "FLEETGATE_LOG": "warn",
            "FLEETGATE_EVENTS_MAX": str(cap),
            "FLEETGATE_WEBHOOK_ALLOW_PRIVATE": "true",
            "FLEETGATE_WEBHOOK_CONCURRENCY": str(opts.fleets),
        }
        log = open(opts.log, "ab") if opts.log else subprocess.DEVNULL
        started.append(subprocess.Popen(
            ["taskset", "-c", str(opts.server_core), str(opts.bin)], env=env, stdout=log, stderr=log
        ))
        fg_pid = started[-1].pid
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base}/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("fleetgate did not become ready")

        fleets = [f"wh-{i}" for i in range(opts.fleets)]
        receiver = Receiver(fleets, opts.events, [fg_pid, redis_pid])
        # The receiver starts listening only once every event is in the
        # streams: until then the attempts fail and wait (0.5 s, doubling),
        # so appending is not in the window.
        hook_port = free_port()
        register(base, f"http://127.0.0.1:{hook_port}/hook", fleets, secret)
        for fleet in fleets:
            append_events(redis_port, fleet, cap, opts.events)
        server = await asyncio.start_server(receiver.serve, "127.0.0.1", hook_port, backlog=1024)
        try:
            await asyncio.wait_for(receiver.done.wait(), opts.timeout)
        except asyncio.TimeoutError:
            pass
        server.close()
        if not (receiver.opened and receiver.closed):
            raise SystemExit(f"no steady window: {receiver.counts} delivered")
        (t0, n0, cpu0, own0), (t1, n1, cpu1, own1) = receiver.opened, receiver.closed
        seconds, events = t1 - t0, max(n1 - n0, 1)
        (fu0, fs0), (ru0, rs0) = cpu0
        (fu1, fs1), (ru1, rs1) = cpu1
        per = lambda s: round(s / events * 1e6, 2)  # noqa: E731
        return {
            "scenario": "webhooks",
            "params": {"fleets": opts.fleets, "events_per_fleet": opts.events, "server_core": opts.server_core,
                       "load_core": opts.load_core},
            "results": {
                "delivered": receiver.total,
                "expected": opts.fleets * opts.events,
                "window_s": round(seconds, 3),
                "window_events": events,
                "events_per_s": round(events / seconds, 1),
                "server_cpu_us_per_event": per(fu1 - fu0 + fs1 - fs0),
                "server_user_us_per_event": per(fu1 - fu0),
                "server_system_us_per_event": per(fs1 - fs0),
                "server_cores": round((fu1 - fu0 + fs1 - fs0) / seconds, 3),
                "redis_cpu_us_per_event": per(ru1 - ru0 + rs1 - rs0),
                "receiver_cores": round((own1 - own0) / seconds, 3),
            },
        }
    finally:
        for proc in reversed(started):
            proc.terminate()
        for proc in started:
            proc.wait()


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--fleets", type=int, default=4)
    args.add_argument("--events", type=int, default=20000, help="events per fleet")
    args.add_argument("--server-core", type=int, default=0)
    args.add_argument("--load-core", type=int, default=1)
    args.add_argument("--bin", type=Path, default=REPO / "target/release/fleetgate")
    args.add_argument("--timeout", type=float, default=300)
    args.add_argument("--log", type=Path, help="fleetgate's log (default: discarded)")
    args.add_argument("--results", type=Path, default=REPO / "bench/results")
    args.add_argument("--receive", type=int, metavar="PORT", help="only serve 200s on PORT until killed")
    args.add_argument("--register", nargs="+", metavar="ARG", help="BASE_URL HOOK_URL FLEET…: only register")
    opts = args.parse_args()
    if opts.receive:
        asyncio.run(receive(opts.receive))
        return
    if opts.register:
        base, hook_url, *fleets = opts.register
        register(base, hook_url, fleets, os.environ["FLEETGATE_JWT_SECRET"])
        return
    line = asyncio.run(run(opts))
    opts.results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    with open(opts.results / f"{stamp}-webhooks.jsonl", "a") as out:
        out.write(json.dumps(line) + "\n")
    r = line["results"]
    print(
        f"{opts.fleets} fleets × {opts.events} events: {r['delivered']}/{r['expected']} delivered; "
        f"window {r['window_s']} s, {r['window_events']} events: "
        f"{r['events_per_s']} events/s; replica CPU per event {r['server_cpu_us_per_event']} µs "
        f"(user {r['server_user_us_per_event']}, system {r['server_system_us_per_event']}; "
        f"{r['server_cores']} cores), Redis {r['redis_cpu_us_per_event']} µs; "
        f"receiver {r['receiver_cores']} cores (near 1: the receiver, not the replica, set the pace)"
    )


if __name__ == "__main__":
    main()
