#!/usr/bin/env python3
"""What the event stream (contract section 12) costs Redis: the position
script exactly as the store sends it (read from src/store/), run by
redis-benchmark against a private redis-server with the stream off
(`FLEETGATE_EVENTS_MAX=0`) and on (10000), alternately; Redis CPU per
update from INFO cpu, medians over the runs. Then the memory of a full
stream (MEMORY USAGE) at a few caps.

    python3 bench/events-cost.py [--runs 8] [--updates 60000] [--rev REV]
    python3 bench/events-cost.py --instructions [--runs 3] [--rev REV]

Needs redis-server, redis-cli and redis-benchmark on PATH. Each update is a
new vehicle, so every one is accepted; no watcher, no geofence. `--rev`
takes the scripts of another commit (`git show`), for a before/after.

CPU time on a machine shared with other work varies by more than the
stream costs; `--instructions` counts instead what redis-server executes
(valgrind's callgrind, from the first update after a warm-up past the cap to
the last, the same updates in the same order every run: vehicles numbered,
not drawn), which repeats to within about 1.5 % of the difference (Lua's
garbage collector and Redis's hash seed). Needs valgrind (Debian's package).
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


def script(rev: str | None = None) -> str:
    def read(name: str) -> str:
        path = f"src/store/redis/lua/{name}"
        if rev is None:
            return (REPO / path).read_text()
        return subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], check=True, capture_output=True, text=True).stdout

    # As the store builds it: the shared event append, then the position script.
    return read("events_append.lua") + read("put_positions.lua")


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
    subprocess.run([*bench, "-n", "5000", *cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before = redis.cpu()
    calls = max(updates // batch, 1)
    subprocess.run([*bench, "-n", str(calls), *cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (redis.cpu() - before) / (calls * batch) * 1e6


def resp(args: list[str]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Counted:
    """redis-server under callgrind, driven over one pipelined connection."""

    def __init__(self, out: Path) -> None:
        self.out, self.port = out, free_port()
        self.proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/callgrind.%p", "redis-server",
             "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port))
                self.reader = self.sock.makefile("rb")
                if self.call("PING") == "PONG":
                    break
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server under valgrind did not start")
                time.sleep(0.2)

    def reply(self):
        line = self.reader.readline()
        kind, rest = line[:1], line[1:].strip()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            return None if int(rest) < 0 else self.reader.read(int(rest) + 2)[:-2].decode()
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        return rest.decode()

    def call(self, *args: str):
        self.sock.sendall(resp(list(args)))
        return self.reply()

    def updates(self, template: list[str], calls: int, first: int) -> None:
        for start in range(0, calls, 8):
            n = min(8, calls - start)
            self.sock.sendall(b"".join(
                resp([a.replace("__rand_int__", f"{first + start + i:012d}") for a in template]) for i in range(n)
            ))
            for _ in range(n):
                self.reply()

    def instructions(self, template: list[str], calls: int, batch: int) -> int:
        """Instructions redis-server executed for `calls` calls after a warm-up past the cap."""
        self.call("FLUSHALL")
        warm = 12000 // batch
        self.updates(template, warm, 0)
        pid = str(self.proc.pid)
        subprocess.run(["callgrind_control", "-z", pid], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.updates(template, calls, warm)
        before = set(self.out.glob("callgrind.*"))
        subprocess.run(["callgrind_control", "-d", pid], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            new = set(self.out.glob("callgrind.*")) - before
            if new:
                break
            time.sleep(0.1)
        dump = new.pop()
        total = next(int(l.split()[1]) for l in dump.read_text().splitlines() if l.startswith(("summary:", "totals:")))
        dump.unlink()
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def instructions(opts: argparse.Namespace) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        redis = Counted(Path(out))
        try:
            sha = redis.call("SCRIPT", "LOAD", script(opts.rev))
            for batch, calls in ((1, 4000), (16, 400)):
                off, on = [], []
                for _ in range(opts.runs):
                    off.append(redis.instructions(command(sha, 0, batch), calls, batch) / (calls * batch))
                    on.append(redis.instructions(command(sha, 10000, batch), calls, batch) / (calls * batch))
                diff = statistics.median(b - a for a, b in zip(off, on))
                print(
                    f"{batch:>2} update(s) per call: Redis instructions per update, stream off {statistics.median(off):.0f}, "
                    f"on {statistics.median(on):.0f}, difference {diff:.0f} ({diff / statistics.median(off):.1%}; "
                    f"differences {', '.join(f'{b - a:.0f}' for a, b in zip(off, on))})"
                )
        finally:
            redis.stop()


def main() -> None:
    args = argparse.ArgumentParser()
    args.add_argument("--runs", type=int, default=None, help="alternations (8; 3 with --instructions)")
    args.add_argument("--updates", type=int, default=60000)
    args.add_argument("--rev", help="the scripts of this commit instead of the work tree's")
    args.add_argument("--instructions", action="store_true", help="count instructions (callgrind) instead of CPU time")
    opts = args.parse_args()
    if opts.instructions:
        opts.runs = opts.runs or 3
        instructions(opts)
        return
    opts.runs = opts.runs or 8
    redis = Redis()
    try:
        sha = redis.cli("SCRIPT", "LOAD", script(opts.rev))
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
            subprocess.run([*bench, "-n", str(cap * 2 // 16 + 100), *cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            size = int(redis.cli("MEMORY", "USAGE", "fg:{demo}:events", "SAMPLES", "0"))
            length = int(redis.cli("XLEN", "fg:{demo}:events"))
            print(f"cap {cap}: {length} events kept, MEMORY USAGE {size} bytes ({size / length:.0f} per event)")
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
