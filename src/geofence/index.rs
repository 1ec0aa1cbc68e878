//! One fleet's geofences as this replica tests fixes against them: an
//! R-tree (`rstar`) over their bounding boxes picks the few candidates of
//! a fix, and only those get the exact test of their shape. A fix costs
//! a tree descent (logarithmic in the fleet's geofences) plus the exact
//! tests of the boxes that hold it, so thousands of geofences cost about
//! what a few do.

use rstar::{AABB, RTree, RTreeObject};

use super::shape::Shape;

/// A geofence in the tree: its box, and where its shape is.
struct Entry {
    envelope: AABB<[f64; 2]>,
    slot: usize,
}

impl RTreeObject for Entry {
    type Envelope = AABB<[f64; 2]>;

    fn envelope(&self) -> Self::Envelope {
        self.envelope
    }
}

/// A fleet's geofences at one version of the store.
pub struct FleetIndex {
    /// The fleet's geofence version these were read at (the store's
    /// compare-and-set refuses a fix tested against another one).
    pub version: u64,
    tree: RTree<Entry>,
    /// (id, shape), sorted by id.
    fences: Vec<(String, Shape)>,
}

impl FleetIndex {
    pub fn new(version: u64, mut fences: Vec<(String, Shape)>) -> Self {
        fences.sort_by(|a, b| a.0.cmp(&b.0));
        let entries = fences
            .iter()
            .enumerate()
            .map(|(slot, (_, shape))| {
                let b = shape.bounds();
                Entry { envelope: AABB::from_corners([b.min().x, b.min().y], [b.max().x, b.max().y]), slot }
            })
            .collect();
        Self { version, tree: RTree::bulk_load(entries), fences }
    }

    /// This index with one geofence added or replaced, at `version`:
    /// what a write on this replica needs, without reading and parsing the
    /// whole set again.
    pub fn with(&self, version: u64, id: &str, shape: Shape) -> Self {
        let mut fences: Vec<(String, Shape)> = self.fences.iter().filter(|(f, _)| f != id).cloned().collect();
        fences.push((id.to_owned(), shape));
        Self::new(version, fences)
    }

    pub fn empty() -> Self {
        Self::new(0, Vec::new())
    }

    pub fn len(&self) -> usize {
        self.fences.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fences.is_empty()
    }

    /// The ids of the geofences holding the fix, sorted.
    pub fn containing(&self, lon: f64, lat: f64) -> Vec<String> {
        if self.fences.is_empty() {
            return Vec::new();
        }
        let mut slots: Vec<usize> = self
            .tree
            .locate_in_envelope_intersecting(&AABB::from_point([lon, lat]))
            .filter(|e| self.fences.get(e.slot).is_some_and(|(_, shape)| shape.contains(lon, lat)))
            .map(|e| e.slot)
            .collect();
        slots.sort_unstable();
        slots.into_iter().filter_map(|s| self.fences.get(s).map(|(id, _)| id.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use geo::{LineString, MultiPolygon, Point, Polygon};

    use super::*;

    fn square(x0: f64, y0: f64, x1: f64, y1: f64) -> Shape {
        let ring = LineString::from(vec![(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]);
        Shape::Area(MultiPolygon(vec![Polygon::new(ring, vec![])]))
    }

    #[test]
    fn finds_every_fence_holding_a_fix() {
        let index = FleetIndex::new(
            3,
            vec![
                ("b".into(), square(0.0, 0.0, 10.0, 10.0)),
                ("a".into(), square(5.0, 5.0, 15.0, 15.0)),
                ("c".into(), Shape::Circle { center: Point::new(0.0, 0.0), radius_m: 1000.0 }),
            ],
        );
        assert_eq!(index.containing(7.0, 7.0), vec!["a", "b"]);
        assert_eq!(index.containing(1.0, 1.0), vec!["b"]);
        assert_eq!(index.containing(0.001, 0.001), vec!["b", "c"]);
        assert_eq!(index.containing(-0.001, -0.001), vec!["c"]);
        assert!(index.containing(20.0, 20.0).is_empty());
        assert!(FleetIndex::empty().containing(0.0, 0.0).is_empty());
    }

    #[test]
    fn a_written_fence_replaces_or_joins_the_others() {
        let index = FleetIndex::new(3, vec![("a".into(), square(0.0, 0.0, 1.0, 1.0))]);
        let moved = index.with(4, "a", square(5.0, 5.0, 6.0, 6.0));
        assert_eq!((moved.version, moved.len()), (4, 1));
        assert!(moved.containing(0.5, 0.5).is_empty());
        assert_eq!(moved.containing(5.5, 5.5), vec!["a"]);
        let joined = moved.with(5, "b", square(5.0, 5.0, 7.0, 7.0));
        assert_eq!(joined.containing(5.5, 5.5), vec!["a", "b"]);
        assert_eq!(joined.containing(6.5, 6.5), vec!["b"]);
    }

    /// The tree answers exactly what testing every fence answers (a
    /// deterministic sweep over a grid of fences and fixes).
    #[test]
    fn the_tree_agrees_with_testing_every_fence() {
        let mut fences = Vec::new();
        for i in 0..20 {
            for j in 0..20 {
                let (x, y) = (f64::from(i) * 3.0 - 30.0, f64::from(j) * 3.0 - 30.0);
                let shape = if (i + j) % 3 == 0 {
                    Shape::Circle { center: Point::new(x, y), radius_m: 150_000.0 }
                } else {
                    square(x, y, x + 2.5, y + 4.0)
                };
                fences.push((format!("f{i}-{j}"), shape));
            }
        }
        let index = FleetIndex::new(1, fences.clone());
        for k in 0..4000 {
            let lon = -32.0 + f64::from(k % 67) * 0.97;
            let lat = -32.0 + f64::from(k / 67) * 1.03;
            let mut expected: Vec<String> =
                fences.iter().filter(|(_, s)| s.contains(lon, lat)).map(|(id, _)| id.clone()).collect();
            expected.sort();
            assert_eq!(index.containing(lon, lat), expected, "({lon}, {lat})");
        }
    }
}
