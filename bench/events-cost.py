#!/usr/bin/env python3
"""What the event stream (contract section 12) costs Redis: the position
script exactly as the store sends it (read from src/store/), run by
redis-benchmark against a private redis-server with the stream off
(`FLEETGATE_EVENTS_MAX=0`) and on (10000), alternately; Redis CPU per
update from INFO cpu, medians over the runs. Then the memory of a full
stream (MEMORY USAGE) at a few caps.

    python3 bench/events-cost.py [--runs 8] [--updates 60000]

Needs redis-server, redis-cli and redis-benchmark on PATH. Each update is a
new vehicle, so every one is accepted; no watcher, no geofence.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POSITION = (
    '{"fleet":"demo","vehicleId":"bus-123","lat":37.5665123,"lon":126.9780456,"ts":1732200000000,'
    '"heading":90.0,"speed":12.5,"accuracy":5.0,"receivedAt":1732200000012}'
)


def script() -> str:
    lua = REPO / "src/store/redis/lua"
    # As the store builds it: the shared event append, then the position script.
    return (lua / "events_append.lua").read_text() + (lua / "put_positions.lua").read_text()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    def __init__(self) -> None:
        self.port = str(free_port())
        self.proc = subprocess.Popen(
            ["redis-server", "--port", self.port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(100):
            if self.cli("PING") == "PONG":
                return
            time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    def cli(self, *args: str) -> str:
        out = subprocess.run(["redis-cli", "-p", self.port, *args], capture_output=True, text=True)
        return out.stdout.strip()

    def cpu(self) -> float:
        lines = self.cli("INFO", "cpu").splitlines()
        return sum(float(l.split(":")[1]) for l in lines if l.startswith(("used_cpu_user:", "used_cpu_sys:")))

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def command(sha: str, cap: int, batch: int) -> list[str]:
    keys = ["fg:{demo}:idx", "fg:{demo}:presence", "fg:{demo}:events", "fg:{demo}:events:n"]
    per: list[str] = []
    for i in range(batch):
        keys += [f"fg:{{demo}}:pos:b{i}-__rand_int__", f"fg:{{demo}}:conns:b{i}"]
        per += ["1732200000000", POSITION, f"b{i}", "99999999999999"]
    head = ["600000", "1732200000000", "60000", "fg:{demo}:positions", "node", "0", str(cap), "demo"]
    tail = ["0", "fg:{demo}:geofences:version", "fg:{demo}:fence-inside:"] + [""] * batch
    return ["EVALSHA", sha, str(len(keys)), *keys, *head, *per, *tail]


def cpu_per_update(redis: Redis, sha: str, cap: int, batch: int, updates: int) -> float:
    redis.cli("FLUSHALL")
    cmd = command(sha, cap, batch)
    bench = ["redis-benchmark", "-p", redis.port, "-r", "1000000000", "-c", "4", "-P", "8", "-q"]
    subprocess.run([*bench, "-n", "5000", *cmd], check=True, stdout=subprocess.DEVNULL)
    before = redis.cpu()
    calls = max(updates // batch, 1)
    subprocess.run([*bench, "-n", str(calls), *cmd], check=True, stdout=subprocess.DEVNULL)
    return (redis.cpu() - before) / (calls * batch) * 1e6


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--runs", type=int, default=8)
    args.add_argument("--updates", type=int, default=60000)
    opts = args.parse_args()
    redis = Redis()
    try:
        sha = redis.cli("SCRIPT", "LOAD", script())
        for batch in (1, 16):
            off, on = [], []
            for _ in range(opts.runs):
                off.append(cpu_per_update(redis, sha, 0, batch, opts.updates))
                on.append(cpu_per_update(redis, sha, 10000, batch, opts.updates))
            diff = statistics.median(b - a for a, b in zip(off, on))
            print(
                f"{batch:>2} update(s) per call: Redis CPU per update, stream off {statistics.median(off):.2f} µs, "
                f"on {statistics.median(on):.2f} µs, difference {diff:.2f} µs (medians of {opts.runs})"
            )
        for cap in (1000, 10000, 100000):
            redis.cli("FLUSHALL")
            cmd = command(sha, cap, 16)
            bench = ["redis-benchmark", "-p", redis.port, "-r", "1000000000", "-c", "1", "-P", "8", "-q"]
            subprocess.run([*bench, "-n", str(cap * 2 // 16 + 100), *cmd], check=True, stdout=subprocess.DEVNULL)
            size = int(redis.cli("MEMORY", "USAGE", "fg:{demo}:events", "SAMPLES", "0"))
            length = int(redis.cli("XLEN", "fg:{demo}:events"))
            print(f"cap {cap}: {length} events kept, MEMORY USAGE {size} bytes ({size / length:.0f} per event)")
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
