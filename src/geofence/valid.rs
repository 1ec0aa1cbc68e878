//! Polygon validity for geofences, with the rules (and the messages) of
//! `geo`'s `Validation` but in O(n log n): `geo` tests every pair of a
//! ring's segments, and every pair of holes and of parts, which made a
//! 10,000-vertex fence take seconds of CPU to accept. Here the segments,
//! holes and parts that could meet are found through an R-tree of their
//! bounding boxes first, and only those pairs are tested exactly.
//!
//! Rules: each ring has at least 3 distinct points and is simple (no two
//! segments meet except consecutive ones at their shared end); holes lie in
//! the exterior and touch it, or each other, at points only; parts of a
//! multipolygon neither overlap nor touch along a line.

use geo::{
    BoundingRect, Intersects, Line, LineString, Polygon, PreparedGeometry, Relate, RemoveRepeatedPoints,
    coordinate_position::CoordPos, dimensions::Dimensions,
};
use rstar::{AABB, RTree, primitives::GeomWithData};

type Boxed = GeomWithData<rstar::primitives::Rectangle<[f64; 2]>, usize>;

fn boxed(index: usize, min: geo::Coord<f64>, max: geo::Coord<f64>) -> Boxed {
    GeomWithData::new(rstar::primitives::Rectangle::from_corners([min.x, min.y], [max.x, max.y]), index)
}

fn envelope(min: geo::Coord<f64>, max: geo::Coord<f64>) -> AABB<[f64; 2]> {
    AABB::from_corners([min.x, min.y], [max.x, max.y])
}

fn line_box(l: &Line<f64>) -> (geo::Coord<f64>, geo::Coord<f64>) {
    let r = l.bounding_rect();
    (r.min(), r.max())
}

/// Whether two segments of one ring meet anywhere but where consecutive
/// segments are joined (`geo`'s rule: a spike or a loop counts).
fn segments_cross(a: &Line<f64>, b: &Line<f64>) -> bool {
    a.intersects(b) && a.start != b.end && a.end != b.start
}

/// Whether the ring crosses or touches itself.
pub fn has_self_intersection(ring: &LineString<f64>) -> bool {
    let lines: Vec<Line<f64>> = ring.lines().collect();
    let tree = RTree::bulk_load(
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let (min, max) = line_box(l);
                boxed(i, min, max)
            })
            .collect(),
    );
    lines.iter().enumerate().any(|(i, a)| {
        let (min, max) = line_box(a);
        tree.locate_in_envelope_intersecting(&envelope(min, max))
            .any(|b| b.data > i && segments_cross(a, &lines[b.data]))
    })
}

/// The pairs `(i, j)`, `i < j`, of rectangles that overlap.
fn overlapping_pairs(rects: &[Option<geo::Rect<f64>>]) -> Vec<(usize, usize)> {
    let tree =
        RTree::bulk_load(rects.iter().enumerate().filter_map(|(i, r)| r.map(|r| boxed(i, r.min(), r.max()))).collect());
    let mut pairs = Vec::new();
    for (i, r) in rects.iter().enumerate() {
        let Some(r) = r else { continue };
        pairs.extend(
            tree.locate_in_envelope_intersecting(&envelope(r.min(), r.max()))
                .filter(|b| b.data > i)
                .map(|b| (i, b.data)),
        );
    }
    pairs.sort_unstable();
    pairs
}

fn role(ring: usize) -> String {
    if ring == 0 { "exterior ring".to_owned() } else { format!("interior ring at index {}", ring - 1) }
}

/// Why `polygon` is not a valid area, in `geo`'s words.
pub fn check_polygon(polygon: &Polygon<f64>) -> Result<(), String> {
    let rings: Vec<&LineString<f64>> = std::iter::once(polygon.exterior()).chain(polygon.interiors()).collect();
    for (i, ring) in rings.iter().enumerate() {
        if ring.remove_repeated_points().0.len() < 4 {
            return Err(format!("{} must have at least 3 distinct points", role(i)));
        }
        if has_self_intersection(ring) {
            return Err(format!("{} has a self-intersection", role(i)));
        }
    }
    if polygon.interiors().is_empty() {
        return Ok(());
    }
    let exterior = Polygon::new(polygon.exterior().clone(), vec![]);
    let exterior = PreparedGeometry::from(&exterior);
    let holes: Vec<Polygon<f64>> = polygon.interiors().iter().map(|r| Polygon::new(r.clone(), vec![])).collect();
    for (i, hole) in holes.iter().enumerate() {
        let m = exterior.relate(hole);
        if !m.is_contains() {
            return Err(format!("{} is not contained within the polygon's exterior", role(i + 1)));
        }
        if m.get(CoordPos::OnBoundary, CoordPos::OnBoundary) == Dimensions::OneDimensional {
            return Err(format!("exterior ring and {} intersect on a line", role(i + 1)));
        }
    }
    let rects: Vec<_> = holes.iter().map(|h| h.bounding_rect()).collect();
    for (i, j) in overlapping_pairs(&rects) {
        let m = holes[i].relate(&holes[j]);
        if m.get(CoordPos::Inside, CoordPos::Inside) == Dimensions::TwoDimensional {
            return Err(format!("{} and {} intersect on an area", role(i + 1), role(j + 1)));
        }
        if m.get(CoordPos::OnBoundary, CoordPos::OnBoundary) == Dimensions::OneDimensional {
            return Err(format!("{} and {} intersect on a line", role(i + 1), role(j + 1)));
        }
    }
    Ok(())
}

/// Why the parts of a multipolygon (each valid already) do not make one
/// area: two of them overlap or share an edge.
pub fn check_parts(parts: &[Polygon<f64>]) -> Result<(), String> {
    let rects: Vec<_> = parts.iter().map(|p| p.bounding_rect()).collect();
    for (i, j) in overlapping_pairs(&rects) {
        let m = parts[i].relate(&parts[j]);
        if m.get(CoordPos::Inside, CoordPos::Inside) == Dimensions::TwoDimensional {
            return Err(format!("polygons at indices {i} and {j} overlap"));
        }
        if m.get(CoordPos::OnBoundary, CoordPos::OnBoundary) == Dimensions::OneDimensional {
            return Err(format!("polygons at indices {i} and {j} touch on a line"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::{MultiPolygon, Validation, coord};

    /// A tiny deterministic generator, so the comparison needs no extra crate.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 33) % 7) as f64
        }
    }

    fn ring(coords: &[(f64, f64)]) -> LineString<f64> {
        let mut c: Vec<_> = coords.iter().map(|&(x, y)| coord! { x: x, y: y }).collect();
        c.push(c[0]);
        LineString(c)
    }

    #[test]
    fn agrees_with_geo_on_random_small_rings() {
        // On a 7×7 lattice rings touch, cross, repeat points and spike often.
        let mut rng = Lcg(7);
        for n in 3..9 {
            for _ in 0..400 {
                let pts: Vec<(f64, f64)> = (0..n).map(|_| (rng.next(), rng.next())).collect();
                let polygon = Polygon::new(ring(&pts), vec![]);
                let ours = check_polygon(&polygon).err();
                let theirs = polygon.check_validation().err().map(|e| e.to_string());
                assert_eq!(ours, theirs, "{pts:?}");
            }
        }
    }

    #[test]
    fn holes_and_parts_follow_geo() {
        let outer = ring(&[(0., 0.), (10., 0.), (10., 10.), (0., 10.)]);
        let cases = [
            vec![ring(&[(1., 1.), (2., 1.), (2., 2.), (1., 2.)])],
            vec![ring(&[(1., 1.), (12., 1.), (12., 2.), (1., 2.)])],
            vec![ring(&[(0., 1.), (2., 1.), (2., 2.), (0., 2.)])],
            vec![ring(&[(1., 1.), (3., 1.), (3., 3.), (1., 3.)]), ring(&[(2., 2.), (4., 2.), (4., 4.), (2., 4.)])],
            vec![ring(&[(1., 1.), (3., 1.), (3., 3.), (1., 3.)]), ring(&[(3., 1.), (5., 1.), (5., 3.), (3., 3.)])],
            vec![ring(&[(1., 1.), (3., 1.), (3., 3.), (1., 3.)]), ring(&[(3., 3.), (5., 3.), (5., 5.), (3., 5.)])],
        ];
        for holes in cases {
            let polygon = Polygon::new(outer.clone(), holes.clone());
            let theirs = polygon.check_validation().err().map(|e| e.to_string());
            assert_eq!(check_polygon(&polygon).err(), theirs, "{holes:?}");
        }
        let square = |x: f64, y: f64| Polygon::new(ring(&[(x, y), (x + 2., y), (x + 2., y + 2.), (x, y + 2.)]), vec![]);
        for parts in [
            vec![square(0., 0.), square(5., 5.)],
            vec![square(0., 0.), square(1., 1.)],
            vec![square(0., 0.), square(2., 0.)],
            vec![square(0., 0.), square(2., 2.)],
        ] {
            let theirs = MultiPolygon(parts.clone()).check_validation().err().map(|e| e.to_string());
            assert_eq!(check_parts(&parts).err(), theirs);
        }
    }

    #[test]
    fn a_large_ring_is_checked_without_testing_every_pair() {
        // 20,000 vertices round a circle: valid; with one vertex pulled
        // across the centre: not.
        let n = 20_000;
        let mut pts: Vec<(f64, f64)> =
            (0..n).map(|i| (i as f64 / n as f64 * std::f64::consts::TAU).sin_cos()).map(|(s, c)| (c, s)).collect();
        assert_eq!(check_polygon(&Polygon::new(ring(&pts), vec![])), Ok(()));
        pts[n / 2] = (2.0, 0.0);
        assert!(check_polygon(&Polygon::new(ring(&pts), vec![])).is_err());
    }
}
