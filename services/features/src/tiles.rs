//! One window group's tiles, flat: the tile starts in ascending order, and every tile's partials
//! in one array (tile `i` holds `partials[i * width .. (i + 1) * width]`, `width` being the
//! group's aggregation count).
//!
//! Events arrive mostly in time order, so a new tile is nearly always pushed at the back, and
//! eviction takes tiles from the front: no allocation per tile, no tree node, and a clone (the
//! copy on write of a shard after it was published) is one copy per group. A range of tiles is
//! two binary searches.
//!
//! Stored, a group is the map of tile start to partials it always was (postcard writes a map
//! and a sequence of pairs alike), so shards written before this layout read unchanged. A
//! stored group whose tiles differ in width, or whose starts do not ascend, does not decode.

use std::fmt;
use std::ops::{Bound, RangeBounds};

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::definition::Op;
use crate::partial::Partial;

/// One group's tiles (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Tiles {
    /// Tile starts, strictly ascending.
    starts: Vec<i64>,
    /// The partials of every tile, tile after tile, all tiles of one width.
    partials: Vec<Partial>,
}

impl Tiles {
    /// How many tiles are held.
    pub(crate) fn len(&self) -> usize {
        self.starts.len()
    }

    /// Partials per tile (0 without a tile).
    fn width(&self) -> usize {
        self.partials
            .len()
            .checked_div(self.starts.len())
            .unwrap_or(0)
    }

    /// The partials of tile `index`.
    fn tile(&self, index: usize) -> &[Partial] {
        let width = self.width();
        &self.partials[index * width..(index + 1) * width]
    }

    /// The tiles in start order, with their starts.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (i64, &[Partial])> {
        (0..self.starts.len()).map(|index| (self.starts[index], self.tile(index)))
    }

    /// The tiles whose start lies in `range`, in start order (as `BTreeMap::range`).
    pub(crate) fn range(
        &self,
        range: impl RangeBounds<i64>,
    ) -> impl Iterator<Item = (i64, &[Partial])> {
        let first = match range.start_bound() {
            Bound::Included(lower) => self.starts.partition_point(|start| start < lower),
            Bound::Excluded(lower) => self.starts.partition_point(|start| start <= lower),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(upper) => self.starts.partition_point(|start| start <= upper),
            Bound::Excluded(upper) => self.starts.partition_point(|start| start < upper),
            Bound::Unbounded => self.starts.len(),
        };
        (first..end.max(first)).map(|index| (self.starts[index], self.tile(index)))
    }

    /// Drops the tiles that start before `floor`.
    pub(crate) fn evict_before(&mut self, floor: i64) {
        let evicted = self.starts.partition_point(|start| *start < floor);
        if evicted > 0 {
            let width = self.width();
            self.starts.drain(..evicted);
            self.partials.drain(..evicted * width);
        }
    }

    /// The partials of the tile starting at `start`, made empty (one per operation of `ops`,
    /// the group's) if missing.
    pub(crate) fn tile_mut(&mut self, start: i64, ops: &[Op]) -> &mut [Partial] {
        let width = ops.len();
        let index = match self.starts.last() {
            // In order: the newest tile, or a new one after it.
            Some(last) if *last == start => self.starts.len() - 1,
            None => self.push(start, ops),
            Some(last) if *last < start => self.push(start, ops),
            Some(_) => match self.starts.binary_search(&start) {
                Ok(index) => index,
                Err(index) => {
                    self.starts.insert(index, start);
                    let at = index * width;
                    self.partials
                        .splice(at..at, ops.iter().map(|op| Partial::new(*op)));
                    index
                }
            },
        };
        &mut self.partials[index * width..(index + 1) * width]
    }

    /// Appends an empty tile. The arrays grow by exactly one tile: an entity's tile count is
    /// mostly small and changes once a hop, so doubling would leave most of the room unused.
    fn push(&mut self, start: i64, ops: &[Op]) -> usize {
        self.starts.reserve_exact(1);
        self.partials.reserve_exact(ops.len());
        self.starts.push(start);
        self.partials.extend(ops.iter().map(|op| Partial::new(*op)));
        self.starts.len() - 1
    }

    /// Whether every tile holds one partial per operation of `ops`, each of its kind and well
    /// formed.
    pub(crate) fn fit(&self, ops: &[Op]) -> bool {
        self.partials.len() == self.starts.len() * ops.len()
            && self
                .partials
                .chunks(ops.len().max(1))
                .all(|tile| Partial::all_valid_for(tile, ops))
    }
}

impl Serialize for Tiles {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Tiles {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(TilesVisitor)
    }
}

struct TilesVisitor;

impl<'de> Visitor<'de> for TilesVisitor {
    type Value = Tiles;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a map of tile start to the tile's partials")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tiles, A::Error> {
        use serde::de::Error;
        let mut tiles = Tiles::default();
        let mut width = None;
        while let Some((start, partials)) = map.next_entry::<i64, Vec<Partial>>()? {
            if tiles.starts.last().is_some_and(|last| *last >= start) {
                return Err(A::Error::custom("tile starts do not ascend"));
            }
            if *width.get_or_insert(partials.len()) != partials.len() {
                return Err(A::Error::custom("tiles of different widths"));
            }
            tiles.starts.push(start);
            tiles.partials.extend(partials);
        }
        Ok(tiles)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const OPS: [Op; 2] = [Op::Count, Op::Max];

    fn count(tile: &[Partial]) -> u64 {
        match tile[0] {
            Partial::Count(n) => n,
            _ => unreachable!("the first partial counts"),
        }
    }

    #[test]
    fn tiles_behave_like_a_sorted_map_through_inserts_and_evictions() {
        let mut tiles = Tiles::default();
        let mut model: BTreeMap<i64, u64> = BTreeMap::new();
        // A deterministic walk: mostly forwards, sometimes back, sometimes an eviction.
        let mut state = 7u64;
        for step in 0..2_000i64 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let jitter = (state >> 33) % 9;
            let start = (step / 3 - jitter as i64) * 10;
            if let Partial::Count(n) = &mut tiles.tile_mut(start, &OPS)[0] {
                *n += 1;
            }
            *model.entry(start).or_default() += 1;
            if step % 50 == 0 {
                let floor = start - 40;
                tiles.evict_before(floor);
                model.retain(|s, _| *s >= floor);
            }
            let held: Vec<(i64, u64)> = tiles.iter().map(|(s, t)| (s, count(t))).collect();
            let expected: Vec<(i64, u64)> = model.iter().map(|(s, n)| (*s, *n)).collect();
            assert_eq!(held, expected, "after step {step}");
            let (lower, upper) = (start - 30, start);
            let held: Vec<i64> = tiles.range(lower..upper).map(|(s, _)| s).collect();
            let expected: Vec<i64> = model.range(lower..upper).map(|(s, _)| *s).collect();
            assert_eq!(held, expected);
            let held: Vec<i64> = tiles.range(upper..=upper + 10).map(|(s, _)| s).collect();
            let expected: Vec<i64> = model.range(upper..=upper + 10).map(|(s, _)| *s).collect();
            assert_eq!(held, expected);
        }
        assert!(tiles.fit(&OPS));
        assert!(!tiles.fit(&OPS[..1]));
    }

    #[test]
    fn a_group_is_stored_as_the_map_it_was() {
        let mut tiles = Tiles::default();
        for start in [30, 10, 20] {
            tiles.tile_mut(start, &OPS);
        }
        let map: BTreeMap<i64, Vec<Partial>> = tiles
            .iter()
            .map(|(start, tile)| (start, tile.to_vec()))
            .collect();
        let bytes = postcard::to_allocvec(&tiles).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&map).unwrap());
        assert_eq!(postcard::from_bytes::<Tiles>(&bytes).unwrap(), tiles);
    }

    #[test]
    fn a_stored_group_of_uneven_tiles_does_not_decode() {
        let mut map: BTreeMap<i64, Vec<Partial>> = BTreeMap::new();
        map.insert(0, vec![Partial::Count(1)]);
        map.insert(10, vec![Partial::Count(1), Partial::Max(None)]);
        let bytes = postcard::to_allocvec(&map).unwrap();
        assert!(postcard::from_bytes::<Tiles>(&bytes).is_err());
        let empty = postcard::to_allocvec(&BTreeMap::<i64, Vec<Partial>>::new()).unwrap();
        assert_eq!(
            postcard::from_bytes::<Tiles>(&empty).unwrap(),
            Tiles::default()
        );
    }
}
