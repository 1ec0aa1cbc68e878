//! The demo fleet: simulated vehicles that drive loops around a city and
//! publish through the same path as real ones, so `--demo` shows the whole
//! system working with nothing else running.

use std::{f64::consts::TAU, sync::Arc, time::Duration};

use socketioxide::adapter::Adapter;

use crate::{
    auth::Role,
    clock,
    gateway::{Gateway, Source},
    position::PositionUpdate,
    session::Session,
};

pub const FLEET: &str = "demo";

/// Seoul City Hall: the routes circle around it.
const CENTER: (f64, f64) = (37.5665, 126.9780);
const METERS_PER_DEG_LAT: f64 = 111_320.0;

struct Route {
    id: String,
    /// Radii of the ellipse in metres and its rotation.
    rx: f64,
    ry: f64,
    tilt: f64,
    /// Offset of the loop's centre in metres.
    cx: f64,
    cy: f64,
    /// Radians per second along the loop, and where it starts.
    omega: f64,
    phase: f64,
}

impl Route {
    fn new(i: usize) -> Self {
        let k = i as f64;
        let golden = 2.399_963_229_728_653; // spreads the loops evenly
        Self {
            id: format!("bus-{:02}", i + 1),
            rx: 1_500.0 + 4_000.0 * ((k * 0.37).sin().abs()),
            ry: 900.0 + 2_500.0 * ((k * 0.61).cos().abs()),
            tilt: k * golden,
            cx: 3_000.0 * (k * golden).cos(),
            cy: 2_000.0 * (k * golden).sin(),
            omega: 0.004 + 0.002 * ((k * 1.3).sin().abs()),
            phase: k * golden,
        }
    }

    /// Position (lat, lon), heading (degrees) and speed (m/s) at time `t` seconds.
    fn at(&self, t: f64) -> (f64, f64, f64, f64) {
        let a = self.phase + self.omega * t;
        let (x0, y0) = (self.rx * a.cos(), self.ry * a.sin());
        let (dx0, dy0) = (-self.rx * a.sin() * self.omega, self.ry * a.cos() * self.omega);
        let (s, c) = self.tilt.sin_cos();
        let (x, y) = (self.cx + x0 * c - y0 * s, self.cy + x0 * s + y0 * c);
        let (dx, dy) = (dx0 * c - dy0 * s, dx0 * s + dy0 * c);
        let lat = CENTER.0 + y / METERS_PER_DEG_LAT;
        let lon = CENTER.1 + x / (METERS_PER_DEG_LAT * CENTER.0.to_radians().cos());
        let heading = (dx.atan2(dy).to_degrees() + 360.0) % 360.0;
        (lat, lon, heading, dx.hypot(dy))
    }
}

/// A few geofences the routes cross, so the map shows arrivals: created
/// only when the fleet has none (a restart against Redis keeps the
/// operator's).
async fn seed_geofences<A: Adapter>(gateway: &Gateway<A>) {
    match gateway.geofences.list(FLEET).await {
        Ok(existing) if existing.is_empty() => {}
        _ => return,
    }
    let (lat, lon) = CENTER;
    let dlat = |m: f64| m / METERS_PER_DEG_LAT;
    let dlon = |m: f64| m / (METERS_PER_DEG_LAT * lat.to_radians().cos());
    let corner = |x: f64, y: f64| serde_json::json!([lon + dlon(x), lat + dlat(y)]);
    let (x0, y0, x1, y1) = (1_200.0, 600.0, 2_600.0, 1_800.0);
    let fences = [
        (
            "city-hall",
            serde_json::json!({
                "type": "Feature",
                "geometry": { "type": "Point", "coordinates": [lon, lat] },
                "properties": { "name": "City Hall", "radius": 700 },
            }),
        ),
        (
            "north-depot",
            serde_json::json!({
                "type": "Feature",
                "geometry": { "type": "Polygon", "coordinates": [[
                    corner(x0, y0), corner(x1, y0), corner(x1, y1), corner(x0, y1), corner(x0, y0),
                ]] },
                "properties": { "name": "North depot" },
            }),
        ),
    ];
    for (id, fence) in fences {
        if let Err(e) = gateway.geofences.put(FLEET, id, &fence).await {
            tracing::debug!(error = %e, id, "demo geofence not created");
        }
    }
}

/// Publishes every vehicle's position once a second until the process ends.
pub async fn run<A: Adapter>(gateway: Arc<Gateway<A>>, vehicles: usize) {
    seed_geofences(&gateway).await;
    let routes: Vec<Route> = (0..vehicles).map(Route::new).collect();
    let session = Session {
        session_id: "demo-simulator".into(),
        sub: "demo-simulator".into(),
        fleet: FLEET.into(),
        role: Role::Dispatcher,
        vehicle: None,
        vehicles: None,
        expires_at: i64::MAX,
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = clock::now_ms();
        let t = (now as f64 / 1000.0) % (TAU / 0.001);
        for route in &routes {
            let (lat, lon, heading, speed) = route.at(t);
            let update = PositionUpdate {
                vehicle_id: Some(route.id.clone()),
                lat,
                lon,
                ts: Some(now),
                heading: Some(heading),
                speed: Some((speed * 10.0).round() / 10.0),
                accuracy: Some(5.0),
            };
            if let Err(e) = gateway.publish_update(&session, update, Source::Simulator).await {
                tracing::debug!(code = e.code.as_str(), "demo update refused");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_stay_in_the_city_and_move() {
        for i in 0..50 {
            let r = Route::new(i);
            let (lat, lon, heading, speed) = r.at(1000.0);
            assert!((lat - CENTER.0).abs() < 0.2 && (lon - CENTER.1).abs() < 0.2);
            assert!((0.0..360.0).contains(&heading));
            assert!(speed > 1.0 && speed < 40.0, "speed {speed}");
            assert_ne!(r.at(1000.0).0, r.at(1001.0).0);
        }
    }
}
