"""Fixtures for the python-socketio smoke tests and the HTTP API tests: start
fleetgate (and, when available, Redis) on free local ports, mint HS256 tokens,
and wrap python-socketio clients so events can be awaited with timeouts.
"""

from __future__ import annotations

import collections
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import jwt
import pytest
import requests
import socketio

NAMESPACE = "/fleet"
TIMEOUT = 10.0  # seconds, for every wait in these tests
SECRET = "smoke-test-secret-" + uuid.uuid4().hex
REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "debug" / "fleetgate"


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _stop(proc: subprocess.Popen, grace: float = 15.0) -> int | None:
    """SIGTERM, then SIGKILL after `grace` seconds. The exit code, or None if it had to be killed."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
        return None


class Fleetgate:
    """One fleetgate process on free ports; `url` is its http base URL."""

    def __init__(self, binary: Path, name: str, extra_env: dict[str, str] | None = None):
        self.port = free_port()
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix=f"fleetgate-{name}-", suffix=".log")[1])
        env = dict(os.environ)
        # Never inherit settings that would change what is being tested.
        for key in list(env):
            if key.startswith("FLEETGATE_"):
                del env[key]
        env.update(
            FLEETGATE_ADDR=f"127.0.0.1:{self.port}",
            FLEETGATE_METRICS_ADDR=f"127.0.0.1:{self.metrics_port}",
            FLEETGATE_JWT_SECRET=SECRET,
            FLEETGATE_LOG="warn",
            FLEETGATE_SHUTDOWN_GRACE_SECS="5",
        )
        env.update(extra_env or {})
        if env.get("FLEETGATE_DEMO") == "true":
            # The demo refuses real keys: it signs with a secret of its own.
            del env["FLEETGATE_JWT_SECRET"]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([str(binary)], env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"fleetgate exited with {self.proc.returncode} before it was ready; log:\n{_tail(self.log_path)}"
                )
            try:
                r = requests.get(self.url + "/readyz", timeout=2)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}: {r.text[:200]}"
            except requests.RequestException as exc:
                last = repr(exc)
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"fleetgate not ready after {timeout}s ({last}); log:\n{_tail(self.log_path)}")

    def stop(self) -> int | None:
        rc = _stop(self.proc)
        self._log.close()
        return rc

    def log(self) -> str:
        return _tail(self.log_path)


def stop_cleanly(*servers: Fleetgate) -> None:
    """Stop every server; fail if one did not exit 0 on SIGTERM."""
    codes = [(fg, fg.stop()) for fg in servers]
    for fg, rc in codes:
        assert rc == 0, f"fleetgate on {fg.url} exited with {rc} after SIGTERM; log:\n{fg.log()}"


class Redis:
    """A throwaway redis-server with no persistence."""

    def __init__(self, binary: str):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="fleetgate-redis-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_pong(self.port, [self.proc], self.log_path)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        _stop(self.proc, grace=5)
        self._log.close()


class RedisCluster:
    """A throwaway three-primary Redis Cluster (cluster-enabled redis-server
    processes joined by `redis-cli --cluster create`)."""

    def __init__(self, binary: str, primaries: int = 3):
        self.dir = Path(tempfile.mkdtemp(prefix="fleetgate-rcluster-"))
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen] = []
        self.log_path = self.dir / "cluster.log"
        self._log = self.log_path.open("wb")
        try:
            for i in range(primaries):
                port = _free_cluster_port()
                node_dir = self.dir / str(i)
                node_dir.mkdir()
                self.procs.append(
                    subprocess.Popen(
                        [
                            binary, "--port", str(port), "--bind", "127.0.0.1",
                            "--cluster-enabled", "yes", "--cluster-node-timeout", "1500",
                            "--cluster-config-file", str(node_dir / "nodes.conf"),
                            "--dir", str(node_dir), "--save", "", "--appendonly", "no",
                        ],
                        stdout=self._log,
                        stderr=subprocess.STDOUT,
                    )
                )  # fmt: skip
                self.ports.append(port)
            for port in self.ports:
                _wait_pong(port, self.procs, self.log_path)
            cli = shutil.which("redis-cli") or "redis-cli"
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                check=True, stdout=self._log, stderr=subprocess.STDOUT, timeout=60,
            )  # fmt: skip
            deadline = time.monotonic() + 30
            while not all(
                b"cluster_state:ok" in subprocess.run([cli, "-p", str(p), "cluster", "info"], capture_output=True).stdout
                for p in self.ports
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Redis Cluster did not form; log:\n{_tail(self.log_path)}")
                time.sleep(0.2)
        except Exception:
            self.stop()
            raise
        self.nodes = ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def stop(self) -> None:
        for proc in self.procs:
            _stop(proc, grace=5)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def _wait_pong(port: int, procs: list[subprocess.Popen], log_path: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"redis-server exited early; log:\n{_tail(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"redis-server on {port} did not answer PING")


def _redis_binary() -> str:
    binary = os.environ.get("FLEETGATE_TEST_REDIS_SERVER") or shutil.which("redis-server")
    if not binary or not (shutil.which(binary) or os.access(binary, os.X_OK)):
        pytest.skip("no redis-server (set FLEETGATE_TEST_REDIS_SERVER to its path)")
    return binary


@pytest.fixture(scope="session")
def fleetgate_bin() -> Path:
    binary = Path(os.environ.get("FLEETGATE_BIN", str(DEFAULT_BIN)))
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(f"fleetgate binary not found at {binary}: run `cargo build` or set FLEETGATE_BIN")
    return binary


@pytest.fixture(scope="session")
def server(fleetgate_bin):
    """A single in-memory fleetgate."""
    fg = Fleetgate(fleetgate_bin, "memory")
    yield fg
    stop_cleanly(fg)


@pytest.fixture(scope="session")
def redis_server():
    r = Redis(_redis_binary())
    yield r
    r.stop()


@pytest.fixture(scope="session")
def redis_cluster():
    c = RedisCluster(_redis_binary())
    yield c
    c.stop()


def _two_replicas(fleetgate_bin, env):
    a = Fleetgate(fleetgate_bin, "replica-a", env)
    try:
        b = Fleetgate(fleetgate_bin, "replica-b", env)
    except Exception:
        a.stop()
        raise
    return a, b


@pytest.fixture(scope="session")
def redis_replicas(fleetgate_bin, redis_server):
    """Two fleetgate replicas sharing one Redis."""
    a, b = _two_replicas(fleetgate_bin, {"FLEETGATE_REDIS_URL": redis_server.url})
    yield a, b
    stop_cleanly(b, a)


@pytest.fixture(scope="session")
def cluster_replicas(fleetgate_bin, redis_cluster):
    """Two fleetgate replicas sharing a three-primary Redis Cluster."""
    a, b = _two_replicas(fleetgate_bin, {"FLEETGATE_REDIS_CLUSTER_NODES": redis_cluster.nodes})
    yield a, b
    stop_cleanly(b, a)


@pytest.fixture(scope="session", params=["redis", "redis-cluster"])
def replicas(request):
    """Two replicas sharing one Redis, then (a second run of each test) two
    sharing a Redis Cluster: the cross-replica tests hold in both modes."""
    return request.getfixturevalue("redis_replicas" if request.param == "redis" else "cluster_replicas")


@pytest.fixture(scope="session")
def fleetgate_factory(fleetgate_bin):
    """Starts extra in-memory servers with the given FLEETGATE_* settings, one per
    distinct setting, shared by the whole test session."""
    started: dict[tuple, Fleetgate] = {}

    def make(name: str, **env: str) -> Fleetgate:
        key = tuple(sorted(env.items()))
        if key not in started:
            started[key] = Fleetgate(fleetgate_bin, name, env)
        return started[key]

    yield make
    stop_cleanly(*started.values())


# --------------------------------------------------------------------------- tokens


def mint(role: str, sub: str, fleet: str, vehicle: str | None = None, ttl: int = 600, secret: str = SECRET) -> str:
    claims = {"sub": sub, "fleet": fleet, "role": role, "exp": int(time.time()) + ttl}
    if vehicle is not None:
        claims["vehicle"] = vehicle
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.fixture
def fleet() -> str:
    """A fresh fleet per test, so tests never see each other's vehicles."""
    return "t-" + uuid.uuid4().hex[:10]


# --------------------------------------------------------------------------- clients


class FleetClient:
    """A python-socketio client on /fleet that records every event it receives."""

    def __init__(self, url: str, token: str | None, transports=("websocket",), auth: dict | None = None):
        self.url = url
        self.token = token
        self.auth = auth  # handshake auth object; overrides {"token": token} when given
        self.transports = list(transports)
        self.sio = socketio.Client(reconnection=False)
        self._lock = threading.Lock()
        self._events: dict[str, queue.Queue] = collections.defaultdict(queue.Queue)
        self.connect_errors: queue.Queue = queue.Queue()
        self.disconnected = threading.Event()
        self.sio.on("*", self._on_any, namespace=NAMESPACE)
        self.sio.on("connect_error", self.connect_errors.put, namespace=NAMESPACE)
        self.sio.on("disconnect", lambda *reason: self.disconnected.set(), namespace=NAMESPACE)

    def _on_any(self, event, *args):
        data = args[0] if len(args) == 1 else args
        self._queue(event).put(data)

    def _queue(self, event: str) -> queue.Queue:
        with self._lock:
            return self._events[event]

    def connect(self) -> "FleetClient":
        auth = self.auth if self.auth is not None else ({"token": self.token} if self.token is not None else None)
        self.sio.connect(
            self.url,
            namespaces=[NAMESPACE],
            auth=auth,
            transports=self.transports,
            wait_timeout=TIMEOUT,
        )
        return self

    def call(self, event: str, data) -> dict:
        return self.sio.call(event, data, namespace=NAMESPACE, timeout=TIMEOUT)

    def wait_for(self, event: str, predicate=lambda d: True, timeout: float = TIMEOUT):
        """The first `event` payload matching `predicate` (earlier ones are dropped)."""
        q = self._queue(event)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching {event!r} event within {timeout}s")
            try:
                data = q.get(timeout=left)
            except queue.Empty:
                continue
            if predicate(data):
                return data

    def close(self) -> None:
        try:
            self.sio.disconnect()
        except Exception:
            pass


@pytest.fixture
def clients():
    """Factory for connected clients; all are disconnected after the test."""
    made: list[FleetClient] = []

    def make(
        url: str, token: str | None, transports=("websocket",), connect: bool = True, auth: dict | None = None
    ) -> FleetClient:
        c = FleetClient(url, token, transports, auth)
        made.append(c)
        return c.connect() if connect else c

    yield make
    for c in made:
        c.close()


# --------------------------------------------------------------------------- metrics


def scrape(fg: Fleetgate) -> str:
    r = requests.get(f"http://127.0.0.1:{fg.metrics_port}/metrics", timeout=TIMEOUT)
    r.raise_for_status()
    return r.text


@pytest.fixture(scope="session")
def metrics_scrape(fleetgate_bin, redis_server) -> str:
    """The /metrics text of a Redis-backed replica after the traffic a real
    deployment sees: vehicles and viewers on both transports,
    positions relayed from a second replica, refusals of every kind, HTTP
    calls, chat and a revocation."""
    env = {"FLEETGATE_REDIS_URL": redis_server.url}
    a = Fleetgate(fleetgate_bin, "metrics-a", env)
    b = Fleetgate(fleetgate_bin, "metrics-b", env)
    made: list[FleetClient] = []

    def client(fg: Fleetgate, token: str | None, transports=("websocket",)) -> FleetClient:
        c = FleetClient(fg.url, token, transports)
        made.append(c)
        return c.connect()

    try:
        fleet = "m-" + uuid.uuid4().hex[:8]
        now = lambda: int(time.time() * 1000)  # noqa: E731
        viewer = client(a, mint("viewer", "viewer-1", fleet))
        viewer.wait_for("session")
        viewer.call("subscribe", {})
        client(a, mint("viewer", "viewer-2", fleet), ("polling",)).call("subscribe", {"vehicles": ["bus-a"]})
        local = client(a, mint("vehicle", "bus-a", fleet))
        local.wait_for("session")
        remote = client(b, mint("vehicle", "bus-b", fleet))
        remote.wait_for("session")
        for i in range(3):
            local.call("locationupdate", {"lat": 37.5 + i / 1000, "lon": 127.0, "ts": now()})
            remote.call("locationupdate", {"lat": 37.6 + i / 1000, "lon": 127.0, "ts": now()})
            time.sleep(0.05)
        viewer.wait_for("locationupdate", lambda d: d.get("vehicleId") == "bus-b")
        local.call("locationupdate", {"lat": 37.5, "lon": 127.0, "ts": now() - 600_000})  # stale
        local.call("locationupdate", {"lat": 137.5, "lon": 127.0})  # invalid
        viewer.call("locationupdate", {"lat": 37.5, "lon": 127.0})  # forbidden
        # Chat between two members, so the adapter carries a room message.
        dispatcher = client(b, mint("dispatcher", "ops-1", fleet))
        dispatcher.wait_for("session")
        viewer.call("join_room", {"room": "ops"})
        dispatcher.call("join_room", {"room": "ops"})
        dispatcher.call("chat", {"room": "ops", "text": "hello"})
        viewer.wait_for("chat")
        # Refused handshakes.
        refused = FleetClient(a.url, "not-a-token")
        try:
            refused.connect()
        except Exception:
            pass
        # HTTP: ingest, reads, a miss, a revocation.
        token = mint("dispatcher", "ops-2", fleet)
        headers = {"Authorization": f"Bearer {token}"}
        requests.put(
            f"{a.url}/api/v1/fleets/{fleet}/vehicles/van-1/location",
            json={"lat": 37.55, "lon": 126.99, "ts": now()},
            headers=headers,
            timeout=TIMEOUT,
        )
        requests.get(f"{a.url}/api/v1/fleets/{fleet}/vehicles", headers=headers, timeout=TIMEOUT)
        requests.get(f"{a.url}/api/v1/fleets/{fleet}/vehicles", timeout=TIMEOUT)
        requests.get(f"{a.url}/no-such-route", timeout=TIMEOUT)
        victim = client(a, mint("viewer", "viewer-3", fleet))
        session_id = victim.wait_for("session")["sessionId"]
        requests.delete(f"{a.url}/api/v1/sessions/{session_id}", headers=headers, timeout=TIMEOUT)
        time.sleep(0.5)  # the demo fleet moves at least once more
        return scrape(a)
    finally:
        for c in made:
            c.close()
        stop_cleanly(b, a)


@pytest.fixture(scope="session")
def fresh_scrape(fleetgate_bin, redis_server) -> str:
    """The first /metrics text of a Redis-backed replica that has seen no
    traffic (only the readiness checks that tell it is up): what a dashboard
    or an alert rule sees right after a rollout."""
    fg = Fleetgate(fleetgate_bin, "fresh", {"FLEETGATE_REDIS_URL": redis_server.url})
    try:
        return scrape(fg)
    finally:
        stop_cleanly(fg)
