//! Test harness: real `fleetgate` processes on free ports, a private
//! `redis-server` (or Redis Cluster, or primary + replica + Sentinels;
//! each optionally TLS-only with certificates made by `openssl`) per test,
//! tokens, and the fixtures several test files share ([`api`], [`keys`],
//! [`store`]). Sockets connect with `fleetgate_testkit::Client`, on the
//! Socket.IO framing the load tool uses: the contract's frames written out
//! by hand, so a test sees exactly what a client sees.

#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use fleetgate_testkit::sio::Target;
use serde_json::{Value, json};

pub mod api;
pub mod keys;
pub mod store;

pub const SECRET: &str = "integration-test-secret";
const WAIT: Duration = Duration::from_secs(10);

/// A port free now and not handed out before in this process: tests run
/// side by side, and the kernel may hand the same free port to two of them.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<std::collections::BTreeSet<u16>> = Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port");
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Where replicas share their state in a test: the `FLEETGATE_*` setting
/// that points a replica at it.
pub trait SharedRedis {
    fn env(&self) -> (&'static str, String);

    /// Every setting a replica needs (the address, plus TLS files).
    fn envs(&self) -> Vec<(&'static str, String)> {
        vec![self.env()]
    }
}

/// A private redis-server, killed on drop.
pub struct Redis {
    pub port: u16,
    child: Child,
}

fn redis_server(port: u16, extra: &[&str]) -> Child {
    redis_server_on(port, None, extra)
}

/// A redis-server on `port`, plain text, or TLS only when `tls` is given
/// (then `port` is its TLS port and it has no plain-text port).
fn redis_server_on(port: u16, tls: Option<&TlsServer>, extra: &[&str]) -> Child {
    redis_process(None, port, tls, extra)
}

/// [`redis_server_on`] with a configuration file (which must come first,
/// as Sentinel's does).
fn redis_process(conf: Option<&str>, port: u16, tls: Option<&TlsServer>, extra: &[&str]) -> Child {
    let mut cmd = Command::new(std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into()));
    cmd.args(conf);
    match tls {
        None => cmd.args(["--port", &port.to_string()]),
        Some(tls) => cmd.args(["--port", "0", "--tls-port", &port.to_string()]).args(tls.args()),
    };
    let mut child = cmd
        .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (the test script installs it)");
    let deadline = Instant::now() + WAIT;
    loop {
        // Ready once it answers, and it must be this process that does:
        // another test's server that took the port first would share its data.
        let tls_args: Vec<String> = tls.map(|t| t.certs.cli_args()).unwrap_or_default();
        let info = Command::new("redis-cli")
            .args(&tls_args)
            .args(["-p", &port.to_string(), "info", "server"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if let Some(pid) = info.lines().find_map(|l| l.trim().strip_prefix("process_id:")) {
            if pid.parse::<u32>().ok() == Some(child.id()) {
                break;
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("another redis-server answers on port {port}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("redis-server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// A test CA, a server certificate for 127.0.0.1/localhost and a client
/// certificate it signed, made with `openssl` in a temporary directory
/// (removed on drop).
pub struct Certs {
    pub dir: std::path::PathBuf,
}

impl Certs {
    pub fn generate() -> Arc<Self> {
        let dir = std::env::temp_dir().join(format!("fleetgate-certs-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("certificate directory");
        let certs = Self { dir };
        certs.ca("ca");
        // A second CA that signed nothing here: trusting it must fail.
        certs.ca("other-ca");
        certs.leaf("server", "subjectAltName=IP:127.0.0.1,DNS:localhost");
        certs.leaf("client", "subjectAltName=DNS:fleetgate-client");
        Arc::new(certs)
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn openssl(&self, args: &[&str]) {
        keys::openssl_in(Some(&self.dir), args);
    }

    fn ca(&self, name: &str) {
        let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
        self.openssl(&["genrsa", "-out", &key, "2048"]);
        let subject = format!("/CN=fleetgate test {name}");
        self.openssl(&["req", "-x509", "-new", "-key", &key, "-sha256", "-days", "2", "-subj", &subject, "-out", &crt]);
    }

    fn leaf(&self, name: &str, san: &str) {
        let (key, csr, crt, ext) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
        self.openssl(&["genrsa", "-out", &key, "2048"]);
        self.openssl(&["req", "-new", "-key", &key, "-subj", &format!("/CN={name}"), "-out", &csr]);
        std::fs::write(self.dir.join(&ext), format!("{san}\nbasicConstraints=CA:FALSE\n")).expect("extensions file");
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-sha256",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ]);
    }

    /// The settings that make a replica trust the test CA (and, with
    /// `client_cert`, present the client certificate).
    pub fn envs(&self, client_cert: bool) -> Vec<(&'static str, String)> {
        let mut envs = vec![("FLEETGATE_REDIS_TLS_CA_FILE", self.path("ca.crt"))];
        if client_cert {
            envs.push(("FLEETGATE_REDIS_TLS_CERT_FILE", self.path("client.crt")));
            envs.push(("FLEETGATE_REDIS_TLS_KEY_FILE", self.path("client.key")));
        }
        envs
    }

    /// `redis-cli` flags to reach a TLS server of these certificates.
    pub fn cli_args(&self) -> Vec<String> {
        [
            "--tls",
            "--cacert",
            &self.path("ca.crt"),
            "--cert",
            &self.path("client.crt"),
            "--key",
            &self.path("client.key"),
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How a TLS-only redis-server is set up: its certificates, and whether
/// clients must present one.
#[derive(Clone)]
pub struct TlsServer {
    pub certs: Arc<Certs>,
    pub require_client_cert: bool,
}

impl TlsServer {
    /// What a replica needs to reach this server: the CA, and the client
    /// certificate when one is required.
    pub fn client_envs(&self) -> Vec<(&'static str, String)> {
        self.certs.envs(self.require_client_cert)
    }

    fn args(&self) -> Vec<String> {
        let c = &self.certs;
        vec![
            "--tls-cert-file".into(),
            c.path("server.crt"),
            "--tls-key-file".into(),
            c.path("server.key"),
            "--tls-ca-cert-file".into(),
            c.path("ca.crt"),
            "--tls-auth-clients".into(),
            if self.require_client_cert { "yes" } else { "no" }.into(),
        ]
    }
}

/// A private redis-server serving TLS only, killed on drop.
pub struct TlsRedis {
    pub port: u16,
    pub tls: TlsServer,
    child: Child,
}

impl TlsRedis {
    pub fn start(require_client_cert: bool) -> Self {
        let tls = TlsServer { certs: Certs::generate(), require_client_cert };
        let port = free_port();
        Self { port, child: redis_server_on(port, Some(&tls), &[]), tls }
    }
}

impl SharedRedis for TlsRedis {
    fn env(&self) -> (&'static str, String) {
        ("FLEETGATE_REDIS_URL", format!("rediss://127.0.0.1:{}", self.port))
    }

    fn envs(&self) -> Vec<(&'static str, String)> {
        let mut envs = vec![self.env()];
        envs.extend(self.tls.client_envs());
        envs
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    pub fn start() -> Self {
        let port = free_port();
        Self { port, child: redis_server(port, &[]) }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl SharedRedis for Redis {
    fn env(&self) -> (&'static str, String) {
        ("FLEETGATE_REDIS_URL", self.url())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private three-primary Redis Cluster (cluster-enabled redis-server
/// processes joined by `redis-cli --cluster create`), killed on drop.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Child>,
    dir: std::path::PathBuf,
    /// `Some`: TLS only, the cluster bus included.
    pub tls: Option<TlsServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A cluster serving TLS only (`--tls-cluster yes`).
    pub fn start_tls() -> Self {
        Self::start_with(Some(TlsServer { certs: Certs::generate(), require_client_cert: false }))
    }

    fn start_with(tls: Option<TlsServer>) -> Self {
        let dir = std::env::temp_dir().join(format!("fleetgate-rcluster-{}-{}", std::process::id(), free_port()));
        let mut cluster = Self { ports: Vec::new(), children: Vec::new(), dir, tls };
        let cli_tls: Vec<String> = cluster.tls.as_ref().map(|t| t.certs.cli_args()).unwrap_or_default();
        for i in 0..3 {
            // The cluster bus listens on port + 10000.
            let port = loop {
                let p = free_port();
                if p < 55_000 && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
                    break p;
                }
            };
            let node_dir = cluster.dir.join(i.to_string());
            std::fs::create_dir_all(&node_dir).expect("cluster node directory");
            let conf = node_dir.join("nodes.conf");
            let (conf, node_dir) = (conf.to_string_lossy().into_owned(), node_dir.to_string_lossy().into_owned());
            let mut args = vec!["--cluster-enabled", "yes", "--cluster-config-file", &conf, "--dir", &node_dir];
            if cluster.tls.is_some() {
                args.extend(["--tls-cluster", "yes"]);
            }
            cluster.children.push(redis_server_on(port, cluster.tls.as_ref(), &args));
            cluster.ports.push(port);
        }
        let nodes: Vec<String> = cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = Command::new("redis-cli")
            .args(&cli_tls)
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli must be installed with redis-server");
        assert!(created.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.ports.iter().all(|p| {
            Command::new("redis-cli")
                .args(&cli_tls)
                .args(["-p", &p.to_string(), "cluster", "info"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        }) {
            assert!(Instant::now() < deadline, "the Redis Cluster did not form");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }
}

impl SharedRedis for RedisCluster {
    fn env(&self) -> (&'static str, String) {
        ("FLEETGATE_REDIS_CLUSTER_NODES", address_list(&self.ports, self.tls.as_ref()))
    }

    fn envs(&self) -> Vec<(&'static str, String)> {
        let mut envs = vec![self.env()];
        envs.extend(self.tls.iter().flat_map(TlsServer::client_envs));
        envs
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        stop_all(&mut self.children, &self.dir);
    }
}

/// A private primary, one replica of it and two Sentinels watching them
/// as `mymaster` (short timeouts, so failovers take a second or two),
/// optionally TLS only (replication and Sentinel links included); killed
/// on drop.
pub struct SentinelRedis {
    pub primary: u16,
    pub replica: u16,
    pub sentinels: Vec<u16>,
    pub tls: Option<TlsServer>,
    children: Vec<Child>,
    dir: std::path::PathBuf,
}

pub const SENTINEL_MASTER: &str = "mymaster";

impl SentinelRedis {
    pub fn start(tls: bool) -> Self {
        let tls = tls.then(|| TlsServer { certs: Certs::generate(), require_client_cert: false });
        let dir = std::env::temp_dir().join(format!("fleetgate-sentinel-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("sentinel directory");
        let (primary, replica) = (free_port(), free_port());
        // Built first so that whatever started is killed if a step fails.
        let mut redis = Self { primary, replica, sentinels: Vec::new(), tls, children: Vec::new(), dir };
        let (tls, dir) = (redis.tls.clone(), redis.dir.clone());
        // Diskless full syncs start at once (the default waits 5 s), so the
        // demoted primary is a replica again soon after the failover.
        let mut replication = vec!["--repl-diskless-sync-delay", "0"];
        if tls.is_some() {
            replication.extend(["--tls-replication", "yes"]);
        }
        // A full sync leaves dump.rdb in the server's directory, which any
        // later redis-server started there would load: keep it in ours.
        let node_dirs: Vec<String> = ["primary", "replica"]
            .iter()
            .map(|name| {
                let d = dir.join(name);
                std::fs::create_dir_all(&d).expect("node directory");
                d.to_string_lossy().into_owned()
            })
            .collect();
        let mut primary_args = vec!["--dir", &node_dirs[0]];
        primary_args.extend(&replication);
        redis.children.push(redis_server_on(primary, tls.as_ref(), &primary_args));
        let primary_port = primary.to_string();
        let mut replica_args = vec!["--dir", &node_dirs[1], "--replicaof", "127.0.0.1", &primary_port];
        replica_args.extend(&replication);
        redis.children.push(redis_server_on(replica, tls.as_ref(), &replica_args));
        for i in 0..2 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            let mut text = format!(
                "sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                 sentinel failover-timeout {SENTINEL_MASTER} 4000\n\
                 sentinel parallel-syncs {SENTINEL_MASTER} 1\n"
            );
            if tls.is_some() {
                text.push_str("tls-replication yes\n");
            }
            std::fs::write(&conf, text).expect("sentinel.conf");
            let conf = conf.to_string_lossy().into_owned();
            redis.children.push(redis_process(Some(&conf), port, tls.as_ref(), &["--sentinel"]));
            redis.sentinels.push(port);
        }
        // A forced failover needs a replica the Sentinels know and that is in sync.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !redis.sentinels.iter().all(|s| {
            let out = redis.cli(*s, &["sentinel", "replicas", SENTINEL_MASTER]);
            out.contains(&redis.replica.to_string()) && !out.contains("s_down") && !out.contains("disconnected")
        }) || !redis.cli(redis.replica, &["info", "replication"]).contains("master_link_status:up")
        {
            assert!(Instant::now() < deadline, "the sentinels did not find the replica");
            std::thread::sleep(Duration::from_millis(100));
        }
        redis
    }

    /// `redis-cli` against one of the processes; its output.
    pub fn cli(&self, port: u16, args: &[&str]) -> String {
        let tls: Vec<String> = self.tls.as_ref().map(|t| t.certs.cli_args()).unwrap_or_default();
        Command::new("redis-cli")
            .args(&tls)
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The port of the primary the first Sentinel names.
    pub fn current_primary(&self) -> Option<u16> {
        let out = self.cli(self.sentinels[0], &["sentinel", "get-master-addr-by-name", SENTINEL_MASTER]);
        out.lines().nth(1)?.trim().parse().ok()
    }

    /// `SENTINEL FAILOVER`, then waits until the replica is the primary.
    pub fn fail_over(&self) {
        let out = self.cli(self.sentinels[0], &["sentinel", "failover", SENTINEL_MASTER]);
        assert!(out.contains("OK"), "SENTINEL FAILOVER: {out}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.current_primary() != Some(self.replica) || !self.cli(self.replica, &["role"]).starts_with("master") {
            assert!(Instant::now() < deadline, "the failover did not complete");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl SharedRedis for SentinelRedis {
    fn env(&self) -> (&'static str, String) {
        ("FLEETGATE_REDIS_SENTINELS", address_list(&self.sentinels, self.tls.as_ref()))
    }

    fn envs(&self) -> Vec<(&'static str, String)> {
        let mut envs = vec![self.env(), ("FLEETGATE_REDIS_SENTINEL_MASTER", SENTINEL_MASTER.to_owned())];
        envs.extend(self.tls.iter().flat_map(TlsServer::client_envs));
        envs
    }
}

impl Drop for SentinelRedis {
    fn drop(&mut self) {
        stop_all(&mut self.children, &self.dir);
    }
}

/// `127.0.0.1:<port>` of each of `ports`, comma-separated, as `rediss://`
/// addresses when the servers speak TLS.
fn address_list(ports: &[u16], tls: Option<&TlsServer>) -> String {
    let scheme = if tls.is_some() { "rediss://" } else { "" };
    ports.iter().map(|p| format!("{scheme}127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
}

/// Kills the processes of a multi-process Redis and removes their directory.
fn stop_all(children: &mut [Child], dir: &std::path::Path) {
    for child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs fleetgate with `envs` until it exits by itself (a start-up
/// failure): its exit status and what it wrote to stderr.
pub fn start_failure(envs: &[(&str, String)]) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetgate"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FLEETGATE_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("FLEETGATE_METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
        .env("FLEETGATE_JWT_SECRET", SECRET)
        .env("FLEETGATE_LOG", "warn")
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn fleetgate");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fleetgate did not exit: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    (status, stderr)
}

/// A running gateway process, killed on drop.
pub struct Server {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    child: Option<Child>,
}

impl Server {
    pub fn start(envs: &[(&str, String)]) -> Self {
        Self::start_with_args(envs, &[])
    }

    pub fn start_with_args(envs: &[(&str, String)], args: &[&str]) -> Self {
        let server = Self::spawn(envs, args, Stdio::inherit());
        server.wait_ready();
        server
    }

    /// [`Server::start`] with the process's log (stderr) written to `log`.
    pub fn start_logged(envs: &[(&str, String)], log: &std::path::Path) -> Self {
        let server = Self::spawn(envs, &[], std::fs::File::create(log).expect("log file").into());
        server.wait_ready();
        server
    }

    fn spawn(envs: &[(&str, String)], args: &[&str], stderr: Stdio) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetgate"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("FLEETGATE_ADDR", addr.to_string())
            .env("FLEETGATE_METRICS_ADDR", metrics_addr.to_string())
            .env("FLEETGATE_JWT_SECRET", SECRET)
            .env("FLEETGATE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr);
        // An empty value removes the variable (e.g. the default secret).
        for (k, v) in envs {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let child = cmd.spawn().expect("spawn fleetgate");
        Self { addr, metrics_addr, child: Some(child) }
    }

    /// Starts a process without waiting for `/readyz`: for a server that
    /// is not ready yet, by design. It answers `/healthz` on return.
    pub fn start_unready(envs: &[(&str, String)]) -> Self {
        let server = Self::spawn(envs, &[], Stdio::inherit());
        let deadline = Instant::now() + WAIT;
        while http_get(server.addr, "/healthz").map(|(s, _)| s) != Some(200) {
            assert!(Instant::now() < deadline, "fleetgate did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        while http_get(self.addr, "/readyz").map(|(s, _)| s) != Some(200) {
            assert!(Instant::now() < deadline, "fleetgate did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    /// The value of one series in the `/metrics` exposition (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        http_get(self.metrics_addr, "/metrics")
            .map(|(_, body)| {
                body.lines().filter_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse::<f64>().ok()).sum()
            })
            .unwrap_or(0.0)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("wait")
    }
}

/// A server's Socket.IO endpoint, so `Client::connect` takes `&server`.
impl From<&Server> for Target {
    fn from(server: &Server) -> Self {
        server.addr.into()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A bare HTTP/1.1 request: status and body.
pub fn http_request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    http_request_as(addr, method, path, body, None)
}

/// [`http_request`] with a bearer token.
pub fn http_request_as(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    bearer: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let body = body.unwrap_or("");
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Some((status, body))
}

pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path, None)
}

/// An HS256 token signed with [`SECRET`].
pub fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

pub fn token_for(fleet: &str, role: &str, sub: &str) -> String {
    token(json!({ "sub": sub, "fleet": fleet, "role": role, "exp": now_ms() / 1000 + 600 }))
}

/// A private mosquitto broker on a free port (never the host's own on
/// 1883), without persistence, killed on drop.
pub struct Mosquitto {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    pub fn start() -> Self {
        Self::start_with(|_| "allow_anonymous true\n".into())
    }

    /// A broker whose listener takes the settings `conf` writes for its
    /// directory (TLS files, a password file, …).
    pub fn start_with(conf: impl FnOnce(&std::path::Path) -> String) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("fleetgate-mosquitto-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("broker directory");
        // mosquitto 2 listens only on loopback, and refuses anonymous
        // clients, unless its configuration says otherwise.
        let conf = format!(
            "listener {port} 127.0.0.1\n{}persistence false\nmax_queued_messages 100000\nlog_dest stderr\nlog_type error\n",
            conf(&dir)
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).expect("broker configuration");
        let mut broker = Self { port, dir, child: None };
        broker.spawn();
        broker
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's directory (its configuration, certificates, password file).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    fn spawn(&mut self) {
        let bin = std::env::var("MOSQUITTO").unwrap_or_else(|_| {
            if std::path::Path::new("/usr/sbin/mosquitto").exists() {
                "/usr/sbin/mosquitto".into()
            } else {
                "mosquitto".into()
            }
        });
        let child = Command::new(bin)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (the test script installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the broker and starts it again on the same port: every
    /// session and subscription is gone (no persistence).
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
