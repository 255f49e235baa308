//! Segment names: a partition and the inclusive offset range a file covers.

use std::path::PathBuf;

use chrono::NaiveDate;

/// Identity of a segment: partition and inclusive offset range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentId {
    /// Kafka partition.
    pub partition: i32,
    /// First offset covered.
    pub first_offset: i64,
    /// Last offset covered (inclusive).
    pub last_offset: i64,
}

impl SegmentId {
    /// The file name with extension `ext`.
    pub fn file_name(&self, ext: &str) -> String {
        format!(
            "part-{:05}-{:020}-{:020}.{ext}",
            self.partition, self.first_offset, self.last_offset
        )
    }

    /// Parses a file name produced by [`SegmentId::file_name`] with extension `ext`.
    pub fn parse(name: &str, ext: &str) -> Option<Self> {
        let stem = name
            .strip_prefix("part-")?
            .strip_suffix(ext)?
            .strip_suffix('.')?;
        let mut parts = stem.split('-');
        let partition = parts.next()?.parse().ok()?;
        let first_offset = parts.next()?.parse().ok()?;
        let last_offset = parts.next()?.parse().ok()?;
        if parts.next().is_some() || last_offset < first_offset {
            return None;
        }
        Some(Self {
            partition,
            first_offset,
            last_offset,
        })
    }

    /// Whether the two ranges share an offset of the same partition.
    pub fn overlaps(&self, other: &SegmentId) -> bool {
        self.partition == other.partition
            && self.first_offset <= other.last_offset
            && other.first_offset <= self.last_offset
    }

    /// The parts of this range that none of `existing` covers, in offset order.
    pub fn uncovered(&self, existing: &[SegmentId]) -> Vec<SegmentId> {
        let mut covered: Vec<(i64, i64)> = existing
            .iter()
            .filter(|e| e.overlaps(self))
            .map(|e| (e.first_offset, e.last_offset))
            .collect();
        covered.sort_unstable();
        let mut out = Vec::new();
        let mut next = self.first_offset;
        for (first, last) in covered {
            if first > next {
                out.push(SegmentId {
                    first_offset: next,
                    last_offset: first - 1,
                    ..*self
                });
            }
            next = next.max(last.saturating_add(1));
        }
        if next <= self.last_offset {
            out.push(SegmentId {
                first_offset: next,
                ..*self
            });
        }
        out
    }
}

/// A segment on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFile {
    /// Its identity.
    pub id: SegmentId,
    /// Its path.
    pub path: PathBuf,
}

impl SegmentFile {
    /// The date directory it sits in (`date=YYYY-MM-DD`).
    pub fn date(&self) -> Option<NaiveDate> {
        date_of(self.path.parent()?)
    }
}

/// The date of a `date=YYYY-MM-DD` directory.
pub(crate) fn date_of(dir: &std::path::Path) -> Option<NaiveDate> {
    let name = dir.file_name()?.to_str()?;
    NaiveDate::parse_from_str(name.strip_prefix("date=")?, "%Y-%m-%d").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(first: i64, last: i64) -> SegmentId {
        SegmentId {
            partition: 2,
            first_offset: first,
            last_offset: last,
        }
    }

    #[test]
    fn segment_names_round_trip_and_sort_by_offset() {
        let a = id(9, 120);
        let b = id(121, 5000);
        assert_eq!(
            a.file_name("arrow"),
            "part-00002-00000000000000000009-00000000000000000120.arrow"
        );
        assert_eq!(SegmentId::parse(&a.file_name("arrow"), "arrow"), Some(a));
        assert_eq!(SegmentId::parse(&a.file_name("arrow"), "parquet"), None);
        assert!(a.file_name("arrow") < b.file_name("arrow"));
        assert!(a < b);
    }

    #[test]
    fn foreign_names_are_ignored() {
        for name in [
            "part-1-2.arrow",
            "x.arrow",
            "part-00001-5-4.arrow",
            "part-1-2-3-4.arrow",
            ".part-1-2-3.arrow.tmp-9",
        ] {
            assert_eq!(SegmentId::parse(name, "arrow"), None, "{name}");
        }
    }

    #[test]
    fn only_the_offsets_no_segment_holds_are_left() {
        let other_partition = SegmentId {
            partition: 3,
            ..id(0, 1000)
        };
        assert_eq!(id(10, 20).uncovered(&[other_partition]), vec![id(10, 20)]);
        assert_eq!(
            id(10, 20).uncovered(&[id(0, 9), id(21, 30)]),
            vec![id(10, 20)]
        );
        assert_eq!(id(10, 20).uncovered(&[id(5, 12)]), vec![id(13, 20)]);
        assert_eq!(id(10, 20).uncovered(&[id(15, 25)]), vec![id(10, 14)]);
        assert_eq!(
            id(10, 20).uncovered(&[id(12, 13), id(16, 16)]),
            vec![id(10, 11), id(14, 15), id(17, 20)]
        );
        assert!(id(10, 20).uncovered(&[id(10, 20)]).is_empty());
        assert!(id(10, 20).uncovered(&[id(0, 12), id(11, 30)]).is_empty());
    }
}
