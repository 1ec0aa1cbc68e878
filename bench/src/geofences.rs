//! Geofences (contract section 11) under the ingest load: N geofences in
//! one fleet (polygons of 10–200 vertices and circles, scattered over an
//! area sized so that the share of fixes inside a geofence is the same for
//! every N), then HTTP ingest with the vehicles roaming that area, so they
//! enter and leave geofences. What an update costs the server and Redis is
//! read as in `ingest`; the server's metrics give the crossings, Redis's
//! position hashes where the vehicles ended up.
//!
//! Creating the geofences is outside the measured window: they are all in
//! place, and the server has loaded them, before the load's warm-up starts.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use clap::Args;
use fleetgate_testkit::sio;
use serde_json::{Value, json};

use crate::{
    Common,
    ingest::{self, Area, M_PER_DEG, exchange, unit},
    parse_duration, prom,
    report::{Failures, Report},
    resp::{self, Reply},
    stats::Latency,
};

#[derive(Args, Clone)]
#[group(id = "GeofenceParams")]
pub struct Params {
    #[command(flatten)]
    ingest: ingest::Params,
    /// Geofences in the fleet (0: the baseline, the same load without any).
    #[arg(long, default_value_t = 1000)]
    fences: usize,
    /// How they are created: `http` (`PUT …/geofences/{id}`, as a
    /// dispatcher would), `redis` (written in their stored form straight
    /// into Redis, needs --redis-addr), or `auto`: HTTP up to --http-max.
    #[arg(long, value_enum, default_value_t = Create::Auto)]
    create: Create,
    /// With `--create auto`: the most geofences created over HTTP (each
    /// `PUT` reloads the fleet's set, so 1,000 take seconds, 10,000 half an hour).
    #[arg(long, default_value_t = 1000)]
    http_max: usize,
    /// PUTs in flight at once (one keep-alive connection each).
    #[arg(long, default_value_t = 8)]
    create_concurrency: usize,
    /// Mean number of geofences over a point of the area: it sets the
    /// area's size (the sum of the geofences' areas over it).
    #[arg(long, default_value_t = 0.5)]
    density: f64,
    /// Share of circles; the rest are polygons.
    #[arg(long, default_value_t = 0.3)]
    circles: f64,
    /// Fewest vertices of a polygon (its ring has one more position, the first again).
    #[arg(long, default_value_t = 10)]
    min_vertices: usize,
    /// Most vertices of a polygon.
    #[arg(long, default_value_t = 200)]
    max_vertices: usize,
    /// Smallest radius of a geofence (a circle's, or a polygon's mean), metres.
    #[arg(long, default_value_t = 100.0)]
    min_radius_m: f64,
    /// Largest radius, metres (radii are log-uniform between the two).
    #[arg(long, default_value_t = 1000.0)]
    max_radius_m: f64,
    /// With --fences 0: the vehicles roam the area this many geofences would get.
    #[arg(long, default_value_t = 10_000)]
    baseline_area_of: usize,
    /// Centre of the area, `lat,lon`.
    #[arg(long, default_value = "37.55,127.0")]
    center: String,
    /// Seed of the geofences' shapes and places.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Longest wait for the server to answer the first update of the
    /// fleet (it loads the fleet's geofences) before the load starts.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    load_timeout: Duration,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Create {
    Http,
    Redis,
    Auto,
}

/// A geofence's shape around its centre, in metres east and north of it.
enum Local {
    Circle { radius_m: f64 },
    Polygon { ring: Vec<(f64, f64)> },
}

impl Local {
    fn area_m2(&self) -> f64 {
        match self {
            Self::Circle { radius_m } => std::f64::consts::PI * radius_m * radius_m,
            Self::Polygon { ring } => {
                let n = ring.len();
                (0..n)
                    .map(|i| {
                        let (a, b) = (ring[i], ring[(i + 1) % n]);
                        a.0 * b.1 - b.0 * a.1
                    })
                    .sum::<f64>()
                    .abs()
                    / 2.0
            }
        }
    }
}

/// The geofences of a run: deterministic in (seed, index), so every run
/// and every N draws the same shapes (the first N of one long sequence).
struct Layout {
    p: Params,
    area: Area,
    /// Where the centres are, as fractions of the area's width and height.
    places: Vec<(f64, f64)>,
    shapes_m2: f64,
}

impl Layout {
    fn new(p: &Params) -> anyhow::Result<Self> {
        ensure!(p.density > 0.0 && p.density.is_finite(), "--density must be positive");
        ensure!((0.0..=1.0).contains(&p.circles), "--circles is a share in [0, 1]");
        ensure!(
            3 <= p.min_vertices && p.min_vertices <= p.max_vertices,
            "--min-vertices: at least 3, at most --max-vertices"
        );
        ensure!(0.0 < p.min_radius_m && p.min_radius_m <= p.max_radius_m, "radii: 0 < --min-radius-m ≤ --max-radius-m");
        let (lat, lon) = p
            .center
            .split_once(',')
            .and_then(|(a, b)| Some((a.trim().parse::<f64>().ok()?, b.trim().parse::<f64>().ok()?)))
            .context("--center: expected lat,lon")?;
        let sized_by = if p.fences == 0 { p.baseline_area_of.max(1) } else { p.fences };
        let mut shapes_m2 = 0.0;
        let mut places = Vec::with_capacity(p.fences);
        for i in 0..sized_by {
            let (shape, place) = Self::draw(p, i);
            shapes_m2 += shape.area_m2();
            if i < p.fences {
                places.push(place);
            }
        }
        let side = (shapes_m2 / p.density).sqrt();
        let half_lat = side / 2.0 / M_PER_DEG;
        let half_lon = side / 2.0 / (M_PER_DEG * lat.to_radians().cos());
        let area = Area { south: lat - half_lat, west: lon - half_lon, north: lat + half_lat, east: lon + half_lon };
        Ok(Self { p: p.clone(), area, places, shapes_m2 })
    }

    /// Geofence `i`: its shape and where in the area its centre goes.
    fn draw(p: &Params, i: usize) -> (Local, (f64, f64)) {
        let mut rng = p.seed.wrapping_mul(0xA076_1D64_78BD_642F) ^ (i as u64).wrapping_mul(0xE703_7ED1_A0B4_28DB);
        let circle = unit(&mut rng) < p.circles;
        let radius = (p.min_radius_m.ln() + unit(&mut rng) * (p.max_radius_m / p.min_radius_m).ln()).exp();
        let shape = if circle {
            Local::Circle { radius_m: radius }
        } else {
            let n = p.min_vertices
                + ((unit(&mut rng) * (p.max_vertices - p.min_vertices + 1) as f64) as usize)
                    .min(p.max_vertices - p.min_vertices);
            // A smooth blob: the radius varies with the angle by three
            // waves (never below 0.65 of the mean), and the vertices come
            // at increasing angles, so the ring is star-shaped around the
            // centre and never crosses itself.
            let phases: Vec<f64> = (0..3).map(|_| unit(&mut rng) * std::f64::consts::TAU).collect();
            let step = std::f64::consts::TAU / n as f64;
            let ring = (0..n)
                .map(|k| {
                    let a = (k as f64 + 0.4 * (unit(&mut rng) - 0.5)) * step;
                    let f = 1.0
                        + 0.2 * (2.0 * a + phases[0]).sin()
                        + 0.1 * (3.0 * a + phases[1]).sin()
                        + 0.05 * (5.0 * a + phases[2]).sin();
                    (radius * f * a.cos(), radius * f * a.sin())
                })
                .collect();
            Local::Polygon { ring }
        };
        (shape, (unit(&mut rng), unit(&mut rng)))
    }

    fn id(i: usize) -> String {
        format!("gf-{i:06}")
    }

    /// The Feature `PUT` sends for geofence `i`.
    fn feature(&self, i: usize) -> String {
        let (shape, _) = Self::draw(&self.p, i);
        let (fx, fy) = self.places[i];
        let (w, h) = self.area.size_m();
        let (cx, cy) = (fx * w, fy * h);
        let pos = |dx: f64, dy: f64| {
            let (lat, lon) = self.area.lat_lon_at(cx + dx, cy + dy);
            format!("[{lon:.6},{lat:.6}]")
        };
        match shape {
            Local::Circle { radius_m } => format!(
                r#"{{"type":"Feature","properties":{{"name":"circle {i}","radius":{radius_m:.1}}},"geometry":{{"type":"Point","coordinates":{}}}}}"#,
                pos(0.0, 0.0)
            ),
            Local::Polygon { ring } => {
                let mut coords: Vec<String> = ring.iter().map(|(x, y)| pos(*x, *y)).collect();
                coords.push(coords[0].clone());
                format!(
                    r#"{{"type":"Feature","properties":{{"name":"polygon {i}"}},"geometry":{{"type":"Polygon","coordinates":[[{}]]}}}}"#,
                    coords.join(",")
                )
            }
        }
    }

    /// Geofence `i` as the server stores it (`geofence::shape::parse`:
    /// the Feature with its `id` set, rebuilt from its members).
    fn stored(&self, i: usize) -> anyhow::Result<String> {
        let v: Value = serde_json::from_str(&self.feature(i))?;
        Ok(json!({
            "type": "Feature",
            "id": Self::id(i),
            "geometry": { "type": v["geometry"]["type"], "coordinates": v["geometry"]["coordinates"] },
            "properties": v["properties"],
        })
        .to_string())
    }
}

pub async fn run(common: &Common, mut p: Params) -> anyhow::Result<Report> {
    let layout = Layout::new(&p)?;
    let target = sio::Target::parse(&p.ingest.url, &common.path)?;
    let minter = common.minter()?;
    let token = minter.mint("dispatcher", "bench-dispatcher", &common.fleet)?;
    let how = match p.create {
        Create::Auto if p.fences > p.http_max => Create::Redis,
        Create::Auto => Create::Http,
        other => other,
    };
    // The server's count is over all its fleets: what this run adds is the difference.
    let metrics = p.ingest.metrics_url.as_deref().map(|u| sio::Target::parse(u, "/")).transpose()?;
    let indexed = async |m: &Option<sio::Target>| -> anyhow::Result<Option<(f64, f64)>> {
        let Some(m) = m else { return Ok(None) };
        let s = prom::scrape(&m.addr).await?;
        let get = |k: &str| s.get(k).copied().unwrap_or(0.0);
        Ok(Some((get("fleetgate_geofences"), get("fleetgate_geofence_reloads_total"))))
    };
    let before = indexed(&metrics).await?;
    let created = Instant::now();
    let creation = match how {
        _ if p.fences == 0 => json!({}),
        Create::Redis => {
            let addr = common.redis_addr.as_deref().context("--create redis needs --redis-addr")?;
            seed(addr, &common.fleet, &layout).await?
        }
        _ => create_http(&target.addr, &common.fleet, &token, &layout, p.create_concurrency).await?,
    };
    let create_s = created.elapsed().as_secs_f64();

    // The fleet's first update loads its geofences on the server; the
    // window must not pay for that.
    let loaded = Instant::now();
    if let Err(e) = prime(&target.addr, &common.fleet, &token, &layout.area, p.load_timeout).await {
        // A result, not a setup error: a fleet whose set cannot be loaded
        // takes no updates, and the run should say so.
        let failures = Failures::default();
        failures.add("load_failed", &e);
        return Ok(Report {
            scenario: "geofences",
            label: common.label.clone(),
            params: json!({ "url": target.http_base, "fleet": common.fleet, "geofences": params_json(&p) }),
            results: json!({ "geofences": {
                "count": p.fences,
                "created_via": via(how, p.fences),
                "create_s": create_s,
                "creation": creation,
                "load_s": loaded.elapsed().as_secs_f64(),
                "load_error": e.to_string(),
            } }),
            failures: failures.json(),
            tool: json!({}),
            summary: vec![format!(
                "{} geofences created in {create_s:.1} s, but the server did not load them: {e}",
                p.fences
            )],
        });
    }
    let load_s = loaded.elapsed().as_secs_f64();
    let after = indexed(&metrics).await?;
    let mut reloads = None;
    if let (Some((fences0, reloads0)), Some((fences1, reloads1))) = (before, after) {
        ensure!(
            (fences1 - fences0) as usize == p.fences,
            "the server indexes {} geofences more than before, not the {} created (see its log)",
            fences1 - fences0,
            p.fences
        );
        reloads = Some(reloads1 - reloads0);
    }
    eprintln!(
        "   {} geofences in place ({create_s:.1} s) and loaded ({load_s:.1} s, {} reloads of the set); the load starts",
        p.fences,
        reloads.map_or("?".into(), |r| r.to_string())
    );

    p.ingest.roam = Some(layout.area);
    let vehicles = p.ingest.vehicles.max(p.ingest.connections);
    let mut report = ingest::run(common, p.ingest.clone()).await?;
    let inside = match &common.redis_addr {
        Some(addr) => where_vehicles_are(addr, &common.fleet, vehicles).await.ok(),
        None => None,
    };

    let r = &report.results;
    let window = r["window_s"].as_f64().unwrap_or(0.0).max(1e-9);
    let accepted = r["accepted_in_window"].as_f64().unwrap_or(0.0);
    let moved = |key: &str| r["metrics"]["delta"][key].as_f64().unwrap_or(0.0);
    let events = moved("fleetgate_geofence_events_total{kind=\"enter\"}")
        + moved("fleetgate_geofence_events_total{kind=\"exit\"}");
    let evaluations = moved("fleetgate_geofence_evaluation_seconds_count");
    let batches = moved("fleetgate_ingest_batches_total");
    let per_update = |v: f64| (accepted > 0.0).then(|| v / accepted);
    let evalsha = r["redis"]["info"]["per_command_per_s"]["evalsha"].as_f64().map(|x| x * window);
    let commands = r["redis"]["info"]["commands_per_s"].as_f64().map(|x| x * window);
    let (w, h) = layout.area.size_m();
    let geofences = json!({
        "count": p.fences,
        "created_via": via(how, p.fences),
        "create_s": create_s,
        "creation": creation,
        "load_s": load_s,
        "reloads_before_window": reloads,
        "area": layout.area.json(),
        "area_km": [w / 1e3, h / 1e3],
        "shapes_km2": layout.shapes_m2 / 1e6,
        "density": p.density,
        "events_in_window": events,
        "events_per_s": events / window,
        "enter_per_s": moved("fleetgate_geofence_events_total{kind=\"enter\"}") / window,
        "exit_per_s": moved("fleetgate_geofence_events_total{kind=\"exit\"}") / window,
        "events_per_update": per_update(events),
        "reloads_in_window": moved("fleetgate_geofence_reloads_total"),
        "evaluation_us_per_batch": (evaluations > 0.0).then(|| moved("fleetgate_geofence_evaluation_seconds_sum") * 1e6 / evaluations),
        "batches_per_update": per_update(batches),
        "evalsha_per_update": evalsha.and_then(per_update),
        "redis_commands_per_update": commands.and_then(per_update),
        "redis_command_calls_per_update": r["redis"]["info"]["per_command_per_s"].as_object().map(|m| {
            m.iter().map(|(k, v)| (k.clone(), json!(v.as_f64().unwrap_or(0.0) * window / accepted.max(1.0)))).collect::<serde_json::Map<_, _>>()
        }),
        "vehicles_inside_at_end": inside,
    });
    report.summary.push(format!(
        "{} geofences ({}, {create_s:.1} s): {:.1} crossings/s, {} Redis commands and {} script calls per update{}",
        p.fences,
        geofences["created_via"].as_str().unwrap_or_default(),
        events / window,
        crate::report::num(&geofences["redis_commands_per_update"], 2),
        crate::report::num(&geofences["evalsha_per_update"], 3),
        inside
            .as_ref()
            .map(|i| format!(", {:.0} % of vehicles inside one at the end", i["share"].as_f64().unwrap_or(0.0) * 100.0))
            .unwrap_or_default(),
    ));
    if let Value::Object(results) = &mut report.results {
        results.insert("geofences".into(), geofences);
    }
    if let Value::Object(params) = &mut report.params {
        params.insert("geofences".into(), params_json(&p));
    }
    report.scenario = "geofences";
    Ok(report)
}

fn via(how: Create, fences: usize) -> &'static str {
    match how {
        _ if fences == 0 => "none",
        Create::Redis => "redis",
        _ => "http",
    }
}

fn params_json(p: &Params) -> Value {
    json!({
        "count": p.fences, "create": format!("{:?}", p.create).to_lowercase(), "http_max": p.http_max,
        "density": p.density, "circles": p.circles, "vertices": [p.min_vertices, p.max_vertices],
        "radius_m": [p.min_radius_m, p.max_radius_m], "seed": p.seed, "center": p.center,
    })
}

/// `PUT`s every geofence, `concurrency` at a time; the time a `PUT` takes
/// by how many geofences the fleet had then (each reloads the fleet's set).
async fn create_http(
    addr: &str,
    fleet: &str,
    token: &str,
    layout: &Layout,
    concurrency: usize,
) -> anyhow::Result<Value> {
    let n = layout.places.len();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Failures::default());
    // Tenths of the run: how long PUTs took as the fleet grew.
    let tenths: Arc<Vec<Latency>> = Arc::new((0..10).map(|_| Latency::default()).collect());
    let started = Instant::now();
    let bodies: Arc<Vec<String>> = Arc::new((0..n).map(|i| layout.feature(i)).collect());
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (next, done, failures, tenths, bodies) =
            (next.clone(), done.clone(), failures.clone(), tenths.clone(), bodies.clone());
        let (addr, fleet, token) = (addr.to_owned(), fleet.to_owned(), token.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut conn = None;
            let mut buf = Vec::new();
            loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= n {
                    break;
                }
                let body = &bodies[i];
                let req = format!(
                    "PUT /api/v1/fleets/{fleet}/geofences/{} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    Layout::id(i),
                    body.len()
                );
                let t = Instant::now();
                match tokio::time::timeout(Duration::from_secs(60), exchange(&mut conn, &addr, req.as_bytes(), &mut buf)).await {
                    Ok(Ok(r)) if r.status == 200 => {
                        tenths[i * 10 / n].record(t.elapsed());
                    }
                    Ok(Ok(r)) => {
                        failures.add(&format!("http_{}", r.status), String::from_utf8_lossy(&buf[r.body.clone()]).chars().take(300).collect::<String>());
                        if !r.keep_alive {
                            conn = None;
                        }
                    }
                    Ok(Err(e)) => {
                        failures.add("http_error", e);
                        conn = None;
                    }
                    Err(_) => {
                        failures.add("http_timeout", "no answer to a PUT within 60 s");
                        conn = None;
                    }
                }
                done.fetch_add(1, Relaxed);
            }
        }));
    }
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let d = done.load(Relaxed);
                eprintln!(
                    "   geofences: {d}/{n} created over HTTP, {:.0}/s",
                    d as f64 / started.elapsed().as_secs_f64()
                );
            }
        })
    };
    for t in tasks {
        t.await.context("a creating task failed")?;
    }
    progress.abort();
    let secs = started.elapsed().as_secs_f64();
    if failures.total() > 0 {
        bail!("creating geofences over HTTP failed: {}", failures.json());
    }
    Ok(json!({
        "via": "http",
        "concurrency": concurrency,
        "seconds": secs,
        "per_s": n as f64 / secs.max(1e-9),
        "put_ms_by_tenth": tenths.iter().map(|l| l.json()).collect::<Vec<_>>(),
    }))
}

/// Writes the geofences into Redis as the server stores them (the fleet's
/// hash of Features, then its version bumped), without the HTTP API:
/// every `PUT` reloads the fleet's whole set, so creating N that way
/// takes time quadratic in N.
async fn seed(addr: &str, fleet: &str, layout: &Layout) -> anyhow::Result<Value> {
    let started = Instant::now();
    let mut conn = resp::Conn::connect(addr).await?;
    let key = format!("fg:{{{fleet}}}:geofences").into_bytes();
    let n = layout.places.len();
    let mut bytes = 0usize;
    let mut i = 0;
    while i < n {
        let end = (i + 500).min(n);
        let mut cmd = vec![b"HSET".to_vec(), key.clone()];
        for j in i..end {
            let json = layout.stored(j)?;
            bytes += json.len();
            cmd.push(Layout::id(j).into_bytes());
            cmd.push(json.into_bytes());
        }
        for reply in conn.pipeline(&[cmd]).await? {
            if let Reply::Error(e) = reply {
                bail!("seeding geofences: {e}");
            }
        }
        i = end;
    }
    conn.pipeline(&[vec![b"INCR".to_vec(), format!("fg:{{{fleet}}}:geofences:version").into_bytes()]]).await?;
    let secs = started.elapsed().as_secs_f64();
    Ok(json!({ "via": "redis", "seconds": secs, "stored_bytes": bytes }))
}

/// One update of a vehicle outside the load, answered: the server has
/// loaded the fleet's geofences. Retried while it answers `unavailable`
/// (a large set may take longer to read than a store call may).
async fn prime(addr: &str, fleet: &str, token: &str, area: &Area, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut conn = None;
    let mut buf = Vec::new();
    let mut last = String::new();
    while started.elapsed() < timeout {
        let (lat, lon) = area.lat_lon_at(0.0, 0.0);
        let body = format!("{{\"lat\":{lat:.6},\"lon\":{lon:.6},\"ts\":{}}}", crate::stats::now_ms());
        let req = format!(
            "PUT /api/v1/fleets/{fleet}/vehicles/prime/location HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        match tokio::time::timeout(Duration::from_secs(30), exchange(&mut conn, addr, req.as_bytes(), &mut buf)).await {
            Ok(Ok(r)) if r.status == 200 && r.accepted => return Ok(()),
            Ok(Ok(r)) => {
                last = format!(
                    "{}: {}",
                    r.status,
                    String::from_utf8_lossy(&buf[r.body]).chars().take(200).collect::<String>()
                );
                if !r.keep_alive {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                last = e.to_string();
                conn = None;
            }
            Err(_) => {
                last = "no answer within 30 s".into();
                conn = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("the fleet's first update was not accepted within {timeout:?} (last answer {last})")
}

/// Which geofences the vehicles' last fixes are inside, from field `g` of
/// their position hashes (what the store diffs crossings against).
async fn where_vehicles_are(addr: &str, fleet: &str, vehicles: usize) -> anyhow::Result<Value> {
    let mut conn = resp::Conn::connect(addr).await?;
    let cmds: Vec<Vec<Vec<u8>>> = (0..vehicles)
        .map(|v| vec![b"HGET".to_vec(), format!("fg:{{{fleet}}}:pos:v-{v}").into_bytes(), b"g".to_vec()])
        .collect();
    let mut inside = 0usize;
    let mut fences = 0usize;
    let mut most = 0usize;
    for reply in conn.pipeline(&cmds).await? {
        if let Reply::Text(t) = reply {
            let k = t.split(|b| *b == b' ').filter(|s| !s.is_empty()).count();
            inside += usize::from(k > 0);
            fences += k;
            most = most.max(k);
        }
    }
    Ok(json!({
        "vehicles": vehicles,
        "inside": inside,
        "share": inside as f64 / vehicles.max(1) as f64,
        "mean_fences": fences as f64 / vehicles.max(1) as f64,
        "most_fences": most,
    }))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        p: Params,
    }

    fn params(args: &[&str]) -> Params {
        Cli::parse_from(std::iter::once("t").chain(args.iter().copied())).p
    }

    #[test]
    fn shapes_are_closed_and_in_range() {
        let layout = Layout::new(&params(&["--fences", "300"])).unwrap();
        let (mut circles, mut polygons) = (0, 0);
        for i in 0..300 {
            let v: Value = serde_json::from_str(&layout.feature(i)).unwrap();
            match v["geometry"]["type"].as_str().unwrap() {
                "Point" => {
                    circles += 1;
                    let r = v["properties"]["radius"].as_f64().unwrap();
                    assert!((99.9..=1000.1).contains(&r), "{r}");
                }
                "Polygon" => {
                    polygons += 1;
                    let ring = v["geometry"]["coordinates"][0].as_array().unwrap();
                    assert!((11..=201).contains(&ring.len()), "{}", ring.len());
                    assert_eq!(ring.first(), ring.last());
                }
                other => panic!("{other}"),
            }
            let stored: Value = serde_json::from_str(&layout.stored(i).unwrap()).unwrap();
            assert_eq!(stored["id"], Layout::id(i));
            assert_eq!(stored["geometry"], v["geometry"]);
        }
        assert!(circles > 50 && polygons > 150, "{circles} circles, {polygons} polygons");
    }

    /// Whether segments ab and cd share a point (touching included).
    fn segments_meet(a: (f64, f64), b: (f64, f64), c: (f64, f64), d: (f64, f64)) -> bool {
        let orient =
            |p: (f64, f64), q: (f64, f64), r: (f64, f64)| (q.0 - p.0) * (r.1 - p.1) - (q.1 - p.1) * (r.0 - p.0);
        let on = |p: (f64, f64), q: (f64, f64), r: (f64, f64)| {
            r.0 >= p.0.min(q.0) && r.0 <= p.0.max(q.0) && r.1 >= p.1.min(q.1) && r.1 <= p.1.max(q.1)
        };
        let (d1, d2, d3, d4) = (orient(c, d, a), orient(c, d, b), orient(a, b, c), orient(a, b, d));
        if ((d1 > 0.0 && d2 < 0.0) || (d1 < 0.0 && d2 > 0.0)) && ((d3 > 0.0 && d4 < 0.0) || (d3 < 0.0 && d4 > 0.0)) {
            return true;
        }
        (d1 == 0.0 && on(c, d, a))
            || (d2 == 0.0 && on(c, d, b))
            || (d3 == 0.0 && on(a, b, c))
            || (d4 == 0.0 && on(a, b, d))
    }

    /// Rings as sent (six decimals) never cross or touch themselves: what
    /// is written straight into Redis would pass the server's validation.
    fn assert_simple(layout: &Layout, range: std::ops::Range<usize>) {
        for i in range {
            let v: Value = serde_json::from_str(&layout.feature(i)).unwrap();
            let Some(ring) = v["geometry"]["coordinates"][0].as_array() else { continue };
            let pts: Vec<(f64, f64)> = ring.iter().map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap())).collect();
            let n = pts.len() - 1;
            for a in 0..n {
                for b in a + 2..n {
                    if a == 0 && b == n - 1 {
                        continue; // the closing edge meets the first at the first position
                    }
                    assert!(!segments_meet(pts[a], pts[a + 1], pts[b], pts[b + 1]), "geofence {i}: edges {a} and {b}");
                }
            }
        }
    }

    #[test]
    fn polygons_are_simple() {
        assert!(segments_meet((0.0, 0.0), (1.0, 1.0), (1.0, 0.0), (0.0, 1.0)), "a bow tie crosses");
        assert!(segments_meet((0.0, 0.0), (1.0, 0.0), (1.0, 0.0), (2.0, 1.0)), "a shared end touches");
        assert!(!segments_meet((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)));
        assert_simple(&Layout::new(&params(&["--fences", "100000"])).unwrap(), 0..2000);
    }

    /// Every geofence of the largest run (slow: `cargo test --release -- --ignored`).
    #[test]
    #[ignore]
    fn all_polygons_of_the_largest_run_are_simple() {
        assert_simple(&Layout::new(&params(&["--fences", "100000"])).unwrap(), 0..100_000);
    }

    /// The area grows with N so the geofences cover the same share of it.
    #[test]
    fn density_is_kept() {
        let small = Layout::new(&params(&["--fences", "100"])).unwrap();
        let large = Layout::new(&params(&["--fences", "10000"])).unwrap();
        for l in [&small, &large] {
            let (w, h) = l.area.size_m();
            assert!((l.shapes_m2 / (w * h) - 0.5).abs() < 1e-6);
        }
        assert!(large.area.size_m().0 > 5.0 * small.area.size_m().0);
        // The first fences are the same whatever N.
        assert_eq!(Layout::draw(&small.p, 7).0.area_m2(), Layout::draw(&large.p, 7).0.area_m2());
    }
}
