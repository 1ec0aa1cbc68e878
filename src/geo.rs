//! Bounding boxes and the grid that indexes box subscriptions, so that an
//! update looks at the boxes near it instead of every viewer's box.
//!
//! The grid has a few levels of square cells (0.01° up to the whole world).
//! A box is filed under the finest level at which it spans at most
//! `MAX_CELLS_PER_AXIS`² cells; an update probes one cell per level and
//! checks the candidates it finds exactly.

use serde_json::Value;

use crate::error::ApiError;

/// Cell edge in degrees for each level, finest first.
const LEVELS: [f64; 5] = [0.01, 0.1, 1.0, 10.0, 360.0];
const MAX_CELLS_PER_AXIS: i64 = 4;

/// `[minLon, minLat, maxLon, maxLat]`, edges inclusive. A box whose
/// `minLon > maxLon` crosses the antimeridian (RFC 7946 §5.2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBox {
    pub min_lon: f64,
    pub min_lat: f64,
    pub max_lon: f64,
    pub max_lat: f64,
}

/// A grid cell: level and integer coordinates.
pub type Cell = (u8, i32, i32);

impl BBox {
    /// Parses the `bbox` of a subscription or a query; `field` names it in errors.
    pub fn from_json(v: &Value, field: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::invalid(format!("{field}: must be [minLon, minLat, maxLon, maxLat]"));
        let arr = v.as_array().filter(|a| a.len() == 4).ok_or_else(bad)?;
        let mut n = [0.0; 4];
        for (slot, item) in n.iter_mut().zip(arr) {
            *slot = item.as_f64().filter(|f| f.is_finite()).ok_or_else(bad)?;
        }
        Self::new(n[0], n[1], n[2], n[3]).map_err(|m| ApiError::invalid(format!("{field}: {m}")))
    }

    pub fn new(min_lon: f64, min_lat: f64, max_lon: f64, max_lat: f64) -> Result<Self, &'static str> {
        let lon_ok = |x: f64| (-180.0..=180.0).contains(&x);
        let lat_ok = |y: f64| (-90.0..=90.0).contains(&y);
        if !(lon_ok(min_lon) && lon_ok(max_lon)) {
            return Err("longitudes must be in [-180, 180]");
        }
        if !(lat_ok(min_lat) && lat_ok(max_lat)) {
            return Err("latitudes must be in [-90, 90]");
        }
        if min_lat > max_lat {
            return Err("minLat must not exceed maxLat");
        }
        Ok(Self { min_lon, min_lat, max_lon, max_lat })
    }

    pub fn contains(&self, lon: f64, lat: f64) -> bool {
        let lat_in = lat >= self.min_lat && lat <= self.max_lat;
        let lon_in = if self.min_lon <= self.max_lon {
            lon >= self.min_lon && lon <= self.max_lon
        } else {
            lon >= self.min_lon || lon <= self.max_lon
        };
        lat_in && lon_in
    }

    /// The longitude spans of the box: two when it crosses the antimeridian.
    fn lon_spans(&self) -> impl Iterator<Item = (f64, f64)> {
        let (a, b) = if self.min_lon <= self.max_lon {
            ((self.min_lon, self.max_lon), None)
        } else {
            ((self.min_lon, 180.0), Some((-180.0, self.max_lon)))
        };
        std::iter::once(a).chain(b)
    }

    /// The cells this box is filed under.
    pub fn cells(&self) -> Vec<Cell> {
        for (level, size) in LEVELS.iter().enumerate() {
            let mut cells = Vec::new();
            let (y0, y1) = (cell_index(self.min_lat, *size), cell_index(self.max_lat, *size));
            let mut fits = y1 - y0 < MAX_CELLS_PER_AXIS;
            for (lo, hi) in self.lon_spans() {
                let (x0, x1) = (cell_index(lo, *size), cell_index(hi, *size));
                fits &= x1 - x0 < MAX_CELLS_PER_AXIS;
                if !fits {
                    break;
                }
                for x in x0..=x1 {
                    for y in y0..=y1 {
                        cells.push((level as u8, x as i32, y as i32));
                    }
                }
            }
            if fits {
                cells.dedup();
                return cells;
            }
        }
        vec![((LEVELS.len() - 1) as u8, 0, 0)]
    }
}

/// The cells, one per level, a point falls in.
pub fn point_cells(lon: f64, lat: f64) -> impl Iterator<Item = Cell> {
    LEVELS
        .iter()
        .enumerate()
        .map(move |(level, size)| (level as u8, cell_index(lon, *size) as i32, cell_index(lat, *size) as i32))
}

fn cell_index(deg: f64, size: f64) -> i64 {
    // Shift to non-negative so floor and the world cell behave at the edges.
    let idx = ((deg + 180.0) / size).floor() as i64;
    if size >= 360.0 { 0 } else { idx }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_checks() {
        let b = BBox::from_json(&json!([126.9, 37.4, 127.1, 37.7]), "bbox").unwrap();
        assert!(b.contains(126.978, 37.5665));
        assert!(b.contains(126.9, 37.4));
        assert!(!b.contains(129.07, 35.17));
        assert!(BBox::from_json(&json!([1, 2, 3]), "bbox").is_err());
        assert!(BBox::from_json(&json!([1, 5, 3, 2]), "bbox").is_err());
        assert!(BBox::from_json(&json!([1, "2", 3, 4]), "bbox").is_err());
    }

    #[test]
    fn antimeridian_boxes() {
        let b = BBox::new(170.0, -20.0, -170.0, -10.0).unwrap();
        assert!(b.contains(175.0, -15.0));
        assert!(b.contains(-175.0, -15.0));
        assert!(!b.contains(0.0, -15.0));
    }

    #[test]
    fn every_contained_point_probes_a_filed_cell() {
        let boxes = [
            BBox::new(126.97, 37.56, 126.98, 37.57).unwrap(),
            BBox::new(126.0, 37.0, 128.0, 38.0).unwrap(),
            BBox::new(-180.0, -90.0, 180.0, 90.0).unwrap(),
            BBox::new(170.0, -20.0, -170.0, -10.0).unwrap(),
        ];
        for b in boxes {
            let filed = b.cells();
            assert!(filed.len() <= 2 * (MAX_CELLS_PER_AXIS * MAX_CELLS_PER_AXIS) as usize);
            for (lon, lat) in [(b.min_lon, b.min_lat), (b.max_lon, b.max_lat), (b.min_lon, b.max_lat)] {
                assert!(point_cells(lon, lat).any(|c| filed.contains(&c)), "{b:?} at {lon},{lat}");
            }
        }
    }
}
