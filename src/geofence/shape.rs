//! A geofence's shape from its GeoJSON Feature (RFC 7946, contract section
//! 11): a `Polygon` or `MultiPolygon` (holes allowed), or a `Point` with
//! `properties.radius` in metres (a circle on the sphere). Parsing is
//! validation: what comes out is a shape the index can test, and the
//! Feature as it is stored and served; anything else is refused with the
//! field at fault.
//!
//! Coordinates are taken as plain longitude/latitude on a flat plane for
//! polygons (antimeridian-free: a polygon edge never spans more than 180°
//! of longitude; one that does is refused, and an area across the
//! antimeridian is written as a `MultiPolygon` of its two halves). Circles
//! are measured on the sphere, so they hold across the antimeridian and
//! near the poles. A point on a polygon's edge (or a hole's) is inside.

use geo::{BoundingRect, Coord, Distance, Haversine, Intersects, LineString, MultiPolygon, Point, Polygon, Rect};
use serde_json::{Map, Value};

/// The largest radius accepted: half the Earth's circumference is the
/// farthest any point can be, so a larger circle says the unit is wrong.
pub const MAX_RADIUS_M: f64 = 20_000_000.0;

/// Mean Earth radius (m), the sphere circles are measured on.
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Why a Feature is not a geofence: the field at fault and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ShapeError {
    pub field: String,
    pub reason: String,
}

fn fault(field: impl Into<String>, reason: impl Into<String>) -> ShapeError {
    ShapeError { field: field.into(), reason: reason.into() }
}

/// What a geofence covers.
#[derive(Debug, Clone)]
pub enum Shape {
    Area(MultiPolygon<f64>),
    /// Centre and radius in metres.
    Circle {
        center: Point<f64>,
        radius_m: f64,
    },
}

impl Shape {
    /// Whether the fix at (`lon`, `lat`) is inside (edges included).
    pub fn contains(&self, lon: f64, lat: f64) -> bool {
        let p = Point::new(lon, lat);
        match self {
            Self::Area(area) => area.intersects(&p),
            Self::Circle { center, radius_m } => Haversine.distance(*center, p) <= *radius_m,
        }
    }

    /// The smallest lon/lat box holding the shape, for the index. A circle
    /// over a pole or across the antimeridian gets every longitude.
    pub fn bounds(&self) -> Rect<f64> {
        match self {
            Self::Area(area) => area.bounding_rect().unwrap_or_else(|| Rect::new((0.0, 0.0), (0.0, 0.0))),
            Self::Circle { center, radius_m } => circle_bounds(center.x(), center.y(), *radius_m),
        }
    }

    pub fn vertices(&self) -> usize {
        match self {
            Self::Area(area) => area
                .0
                .iter()
                .map(|p| p.exterior().0.len() + p.interiors().iter().map(|r| r.0.len()).sum::<usize>())
                .sum(),
            Self::Circle { .. } => 1,
        }
    }
}

fn circle_bounds(lon: f64, lat: f64, radius_m: f64) -> Rect<f64> {
    let d = radius_m / EARTH_RADIUS_M; // angular radius
    let dlat = d.to_degrees();
    let (south, north) = (lat - dlat, lat + dlat);
    if north >= 90.0 || south <= -90.0 || d >= std::f64::consts::FRAC_PI_2 {
        return Rect::new((-180.0, south.max(-90.0)), (180.0, north.min(90.0)));
    }
    // The widest longitude of a small circle on the sphere.
    let ratio = (d.sin() / lat.to_radians().cos()).min(1.0);
    let dlon = ratio.asin().to_degrees();
    let (west, east) = (lon - dlon, lon + dlon);
    if west < -180.0 || east > 180.0 {
        return Rect::new((-180.0, south), (180.0, north));
    }
    Rect::new((west, south), (east, north))
}

/// A parsed geofence: its shape and the Feature to store (its `id` set to
/// the geofence id, `bbox` members dropped since they are recomputed).
#[derive(Debug, Clone)]
pub struct Parsed {
    pub shape: Shape,
    pub feature: Value,
}

const FEATURE_MEMBERS: [&str; 5] = ["type", "id", "geometry", "properties", "bbox"];
const GEOMETRY_MEMBERS: [&str; 3] = ["type", "coordinates", "bbox"];

/// Reads a Feature sent for geofence `id`, allowing at most `max_vertices`
/// positions over all its rings.
pub fn parse(id: &str, body: &Value, max_vertices: usize) -> Result<Parsed, ShapeError> {
    parse_with(id, body, max_vertices, true)
}

/// A Feature that passed [`parse`] when it was stored: read again without
/// the topology checks (self-crossings, holes, overlaps), which are the
/// costly part and would be repeated by every reload.
pub fn parse_stored(id: &str, body: &Value) -> Result<Parsed, ShapeError> {
    parse_with(id, body, usize::MAX, false)
}

fn parse_with(id: &str, body: &Value, max_vertices: usize, check: bool) -> Result<Parsed, ShapeError> {
    let Value::Object(feature) = body else { return Err(fault("body", "must be a GeoJSON Feature object")) };
    if let Some(k) = feature.keys().find(|k| !FEATURE_MEMBERS.contains(&k.as_str())) {
        return Err(fault(k.as_str(), "unknown member (a Feature has type, id, geometry, properties, bbox)"));
    }
    match feature.get("type") {
        Some(Value::String(t)) if t == "Feature" => {}
        _ => return Err(fault("type", "must be \"Feature\"")),
    }
    match feature.get("id") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == id => {}
        Some(_) => return Err(fault("id", "differs from the path's geofence id")),
    }
    let properties = match feature.get("properties") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => return Err(fault("properties", "must be an object")),
    };
    if properties.contains_key("inside") {
        return Err(fault("properties.inside", "is filled in by the server"));
    }
    let Some(Value::Object(geometry)) = feature.get("geometry") else {
        return Err(fault("geometry", "required: a Polygon, MultiPolygon or Point object"));
    };
    if let Some(k) = geometry.keys().find(|k| !GEOMETRY_MEMBERS.contains(&k.as_str())) {
        return Err(fault(format!("geometry.{k}"), "unknown member"));
    }
    let coordinates = geometry.get("coordinates").ok_or_else(|| fault("geometry.coordinates", "required"))?;
    let shape = match geometry.get("type").and_then(Value::as_str) {
        Some("Polygon") => {
            let polygon = polygon(coordinates, "geometry.coordinates", max_vertices, &mut 0, check)?;
            Shape::Area(MultiPolygon(vec![polygon]))
        }
        Some("MultiPolygon") => {
            let Value::Array(items) = coordinates else {
                return Err(fault("geometry.coordinates", "must be an array of polygons"));
            };
            if items.is_empty() {
                return Err(fault("geometry.coordinates", "must hold at least one polygon"));
            }
            let mut seen = 0;
            let polygons = items
                .iter()
                .enumerate()
                .map(|(i, p)| polygon(p, &format!("geometry.coordinates[{i}]"), max_vertices, &mut seen, check))
                .collect::<Result<Vec<_>, _>>()?;
            if check {
                super::valid::check_parts(&polygons).map_err(|e| fault("geometry.coordinates", e))?;
            }
            Shape::Area(MultiPolygon(polygons))
        }
        Some("Point") => {
            let center = position(coordinates, "geometry.coordinates")?;
            let radius_m = match properties.get("radius") {
                Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
                Some(_) => return Err(fault("properties.radius", "must be a number of metres")),
                None => return Err(fault("properties.radius", "required for a Point (a circle's radius in metres)")),
            };
            if !(radius_m.is_finite() && radius_m > 0.0) {
                return Err(fault("properties.radius", "must be greater than 0 (metres)"));
            }
            if radius_m > MAX_RADIUS_M {
                return Err(fault("properties.radius", format!("at most {MAX_RADIUS_M} metres")));
            }
            Shape::Circle { center: Point(center), radius_m }
        }
        Some(_) => return Err(fault("geometry.type", "must be Polygon, MultiPolygon or Point")),
        None => return Err(fault("geometry.type", "required")),
    };
    let mut stored = Map::new();
    stored.insert("type".into(), "Feature".into());
    stored.insert("id".into(), id.into());
    stored.insert(
        "geometry".into(),
        serde_json::json!({ "type": geometry.get("type").cloned().unwrap_or(Value::Null), "coordinates": coordinates }),
    );
    stored.insert("properties".into(), Value::Object(properties));
    Ok(Parsed { shape, feature: Value::Object(stored) })
}

/// One `[lon, lat]` (an altitude after them is allowed and ignored).
fn position(v: &Value, field: &str) -> Result<Coord<f64>, ShapeError> {
    let Value::Array(items) = v else { return Err(fault(field, "must be a position [lon, lat]")) };
    if !(2..=3).contains(&items.len()) {
        return Err(fault(field, "must be a position [lon, lat] (or [lon, lat, altitude])"));
    }
    let number = |i: usize| match &items[i] {
        Value::Number(n) => n.as_f64().filter(|f| f.is_finite()),
        _ => None,
    };
    let (Some(lon), Some(lat)) = (number(0), number(1)) else {
        return Err(fault(field, "longitude and latitude must be numbers"));
    };
    if items.len() == 3 && number(2).is_none() {
        return Err(fault(field, "altitude must be a number"));
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err(fault(field, "longitude must be within [-180, 180]"));
    }
    if !(-90.0..=90.0).contains(&lat) {
        return Err(fault(field, "latitude must be within [-90, 90]"));
    }
    Ok(Coord { x: lon, y: lat })
}

/// A linear ring: closed, at least four positions, no edge across the
/// antimeridian. `seen` counts positions over the whole Feature.
fn ring(v: &Value, field: &str, max_vertices: usize, seen: &mut usize) -> Result<LineString<f64>, ShapeError> {
    let Value::Array(items) = v else { return Err(fault(field, "must be a ring: an array of positions")) };
    *seen += items.len();
    if *seen > max_vertices {
        return Err(fault("geometry.coordinates", format!("more than {max_vertices} vertices")));
    }
    if items.len() < 4 {
        return Err(fault(field, "a ring needs at least 4 positions (the last repeating the first)"));
    }
    let coords =
        items.iter().enumerate().map(|(i, p)| position(p, &format!("{field}[{i}]"))).collect::<Result<Vec<_>, _>>()?;
    if coords.first() != coords.last() {
        return Err(fault(field, "ring is not closed (its last position must equal its first)"));
    }
    if let Some(i) = coords.windows(2).position(|w| (w[1].x - w[0].x).abs() > 180.0) {
        return Err(fault(
            format!("{field}[{}]", i + 1),
            "edge spans more than 180° of longitude; split an area across the antimeridian into a MultiPolygon",
        ));
    }
    Ok(LineString(coords))
}

fn polygon(
    v: &Value,
    field: &str,
    max_vertices: usize,
    seen: &mut usize,
    check: bool,
) -> Result<Polygon<f64>, ShapeError> {
    let Value::Array(rings) = v else { return Err(fault(field, "must be an array of rings")) };
    let Some((outer, holes)) = rings.split_first() else {
        return Err(fault(field, "must hold an exterior ring"));
    };
    let exterior = ring(outer, &format!("{field}[0]"), max_vertices, seen)?;
    let interiors = holes
        .iter()
        .enumerate()
        .map(|(i, r)| ring(r, &format!("{field}[{}]", i + 1), max_vertices, seen))
        .collect::<Result<Vec<_>, _>>()?;
    let polygon = Polygon::new(exterior, interiors);
    if check {
        super::valid::check_polygon(&polygon).map_err(|e| fault(field, e))?;
    }
    Ok(polygon)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn square(x0: f64, y0: f64, x1: f64, y1: f64) -> Value {
        json!([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
    }

    fn feature(geometry: Value, properties: Value) -> Value {
        json!({ "type": "Feature", "geometry": geometry, "properties": properties })
    }

    fn err(body: Value) -> ShapeError {
        parse("g", &body, 10_000).unwrap_err()
    }

    #[test]
    fn a_polygon_with_a_hole() {
        let body = feature(
            json!({"type": "Polygon", "coordinates": [square(0.0, 0.0, 10.0, 10.0), square(4.0, 4.0, 6.0, 6.0)]}),
            json!({"name": "depot"}),
        );
        let p = parse("depot", &body, 10_000).unwrap();
        assert!(p.shape.contains(1.0, 1.0));
        assert!(!p.shape.contains(5.0, 5.0), "the hole is outside");
        assert!(p.shape.contains(4.0, 5.0), "the hole's edge is inside");
        assert!(p.shape.contains(0.0, 5.0), "the edge is inside");
        assert!(p.shape.contains(10.0, 10.0), "a corner is inside");
        assert!(!p.shape.contains(10.000001, 5.0));
        assert_eq!(p.feature["id"], "depot");
        assert_eq!(p.feature["properties"]["name"], "depot");
    }

    #[test]
    fn circles_are_metres_on_the_sphere() {
        let body = feature(json!({"type": "Point", "coordinates": [126.978, 37.5665]}), json!({"radius": 100}));
        let p = parse("c", &body, 10).unwrap();
        // 0.0008° of latitude is about 89 m; 0.001° about 111 m.
        assert!(p.shape.contains(126.978, 37.5665 + 0.0008));
        assert!(!p.shape.contains(126.978, 37.5665 + 0.001));
        // Near the pole, a degree of longitude is a few metres: a circle
        // of 100 km around 89.5° N holds every longitude at 89.9° N.
        let polar =
            parse("p", &feature(json!({"type": "Point", "coordinates": [0, 89.5]}), json!({"radius": 100000})), 10)
                .unwrap();
        for lon in [-180.0, -90.0, 0.0, 90.0, 179.9] {
            assert!(polar.shape.contains(lon, 89.9), "{lon}");
            let b = polar.shape.bounds();
            assert!(b.min().x <= lon && lon <= b.max().x);
        }
        assert!(!polar.shape.contains(180.0, 88.0));
        // Across the antimeridian, a circle still holds both sides.
        let dateline =
            parse("d", &feature(json!({"type": "Point", "coordinates": [179.999, 0]}), json!({"radius": 1000})), 10)
                .unwrap();
        assert!(dateline.shape.contains(-179.999, 0.0));
        let b = dateline.shape.bounds();
        assert!(b.min().x <= -179.999);
    }

    #[test]
    fn circle_bounds_hold_the_circle() {
        // Every point on the circle's edge lies in its box (a sweep).
        for lat in [-89.0, -60.0, -1.0, 0.0, 45.0, 80.0, 89.9] {
            for radius in [1.0, 500.0, 50_000.0, 2_000_000.0] {
                let center = Point::new(10.0, lat);
                let b = circle_bounds(10.0, lat, radius);
                for bearing in (0..360).step_by(5) {
                    use geo::Destination;
                    let edge = Haversine.destination(center, f64::from(bearing), radius * 0.999_999);
                    let (x, y) = (edge.x(), edge.y());
                    assert!(b.min().y - 1e-9 <= y && y <= b.max().y + 1e-9, "lat {lat} r {radius} b {bearing}");
                    assert!(b.min().x - 1e-9 <= x && x <= b.max().x + 1e-9, "lat {lat} r {radius} b {bearing}");
                }
            }
        }
    }

    #[test]
    fn bad_geometry_names_the_fault() {
        let open = json!([[0, 0], [1, 0], [1, 1], [0, 1]]);
        assert_eq!(
            err(feature(json!({"type": "Polygon", "coordinates": [open]}), json!({}))).field,
            "geometry.coordinates[0]"
        );
        let bow = json!([[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]);
        let e = err(feature(json!({"type": "Polygon", "coordinates": [bow]}), json!({})));
        assert!(e.reason.contains("self-intersection"), "{e}");
        let far = json!([[0, 0], [181, 0], [1, 1], [0, 0]]);
        assert_eq!(
            err(feature(json!({"type": "Polygon", "coordinates": [far]}), json!({}))).field,
            "geometry.coordinates[0][1]"
        );
        let e = err(feature(json!({"type": "Polygon", "coordinates": [square(0.0, 0.0, 1.0, 91.0)]}), json!({})));
        assert!(e.reason.contains("latitude"), "{e}");
        let e =
            err(feature(json!({"type": "Polygon", "coordinates": [[[0, 0], ["1", 0], [1, 1], [0, 0]]]}), json!({})));
        assert_eq!(e.field, "geometry.coordinates[0][1]");
        let e = err(feature(
            json!({"type": "Polygon", "coordinates": [[[170, 0], [-170, 0], [-170, 1], [170, 0]]]}),
            json!({}),
        ));
        assert!(e.reason.contains("antimeridian"), "{e}");
        assert_eq!(
            err(feature(json!({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}), json!({}))).field,
            "geometry.type"
        );
        assert_eq!(err(feature(json!({"type": "Polygon"}), json!({}))).field, "geometry.coordinates");
        assert_eq!(
            err(feature(json!({"type": "Polygon", "coordinates": []}), json!({}))).field,
            "geometry.coordinates"
        );
        assert_eq!(err(json!({"type": "Feature", "properties": {}})).field, "geometry");
    }

    #[test]
    fn bad_circles_and_members() {
        let point = json!({"type": "Point", "coordinates": [10, 10]});
        for radius in [json!(0), json!(-5), json!(20_000_001), json!("100"), json!(null)] {
            assert_eq!(err(feature(point.clone(), json!({ "radius": radius }))).field, "properties.radius", "{radius}");
        }
        assert_eq!(err(feature(point.clone(), json!({}))).field, "properties.radius");
        assert_eq!(err(feature(point.clone(), json!({"radius": 5, "inside": []}))).field, "properties.inside");
        let mut extra = feature(point.clone(), json!({"radius": 5}));
        extra["colour"] = json!("red");
        assert_eq!(err(extra).field, "colour");
        assert_eq!(err(json!({"type": "Featur", "geometry": point, "properties": {"radius": 5}})).field, "type");
        assert_eq!(
            err(json!({"type": "Feature", "id": "other", "geometry": point, "properties": {"radius": 5}})).field,
            "id"
        );
        assert_eq!(err(json!([1, 2])).field, "body");
        assert_eq!(
            err(feature(json!({"type": "Point", "coordinates": [10, 10], "crs": 1}), json!({"radius": 5}))).field,
            "geometry.crs"
        );
    }

    #[test]
    fn vertex_limit_counts_every_ring() {
        let body = feature(
            json!({"type": "MultiPolygon", "coordinates": [[square(0.0, 0.0, 1.0, 1.0)], [square(2.0, 2.0, 3.0, 3.0)]]}),
            json!({}),
        );
        assert!(parse("g", &body, 10).is_ok());
        let e = parse("g", &body, 9).unwrap_err();
        assert!(e.reason.contains("more than 9 vertices"), "{e}");
    }

    #[test]
    fn overlapping_multipolygon_parts_are_refused() {
        let body = feature(
            json!({"type": "MultiPolygon", "coordinates": [[square(0.0, 0.0, 2.0, 2.0)], [square(1.0, 1.0, 3.0, 3.0)]]}),
            json!({}),
        );
        assert_eq!(err(body).field, "geometry.coordinates");
    }
}
