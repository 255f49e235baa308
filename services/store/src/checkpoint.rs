//! A partition's checkpoint: what a stream holds of one partition, in one small file
//! (`<stream>/.checkpoint-PPPPP`), so that a writer or a restarting worker learns it without
//! listing every segment.
//!
//! ```text
//! durable 41999                      the highest offset a segment of the partition covers
//! pending 2026-11-28 42000 42999     a segment being written past it (may or may not exist)
//! dropped 20999 1764288000000000     retention removed every offset up to 20999; the newest
//!                                    event time among them (µs; `-` when not tracked)
//! ```
//!
//! A segment past `durable` is announced as `pending` (fsynced) before it is renamed into place
//! and folded into `durable` after; a reader that finds a `pending` line checks whether that
//! segment exists. So a crash between the two never hides a segment from the overlap check.
//! Only writers holding the stream's lock write the file.

use chrono::NaiveDate;

use crate::segment::SegmentId;

/// What retention removed of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Every offset up to this one is gone (and never written again).
    pub through: i64,
    /// The newest event time (µs) among the removed rows: events older than it may be missing
    /// from what remains. `i64::MIN` when no removed segment had rows; `None` when unknown (a
    /// table without an event time), which counts as "up to now".
    pub event_time_max: Option<i64>,
}

/// One partition's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// The highest offset any segment of the partition covers (`None`: no segment yet).
    pub durable: Option<i64>,
    /// A segment past `durable` whose write may or may not have completed.
    pub pending: Option<(NaiveDate, SegmentId)>,
    /// What retention removed.
    pub dropped: Option<Dropped>,
}

impl Checkpoint {
    /// The last offset the partition holds or held: its segments' or, past them, what
    /// retention removed (`None`: nothing yet).
    pub fn held_through(&self) -> Option<i64> {
        self.durable.max(self.dropped.map(|d| d.through))
    }

    /// Folds a segment that exists into `durable`.
    pub(crate) fn covers(&mut self, id: SegmentId) {
        self.durable = Some(
            self.durable
                .map_or(id.last_offset, |d| d.max(id.last_offset)),
        );
    }

    /// Records that retention removed offsets up to `through`.
    pub(crate) fn drop_through(&mut self, through: i64, event_time_max: Option<i64>) {
        self.dropped = Some(match self.dropped {
            None => Dropped {
                through,
                event_time_max,
            },
            Some(old) => Dropped {
                through: old.through.max(through),
                // Unknown stays unknown.
                event_time_max: match (old.event_time_max, event_time_max) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                },
            },
        });
    }

    /// The text of the file.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        if let Some(d) = self.durable {
            out.push_str(&format!("durable {d}\n"));
        }
        if let Some((date, id)) = self.pending {
            out.push_str(&format!(
                "pending {} {} {}\n",
                date.format("%Y-%m-%d"),
                id.first_offset,
                id.last_offset
            ));
        }
        if let Some(d) = self.dropped {
            let time = d
                .event_time_max
                .map_or_else(|| "-".to_string(), |t| t.to_string());
            out.push_str(&format!("dropped {} {time}\n", d.through));
        }
        out
    }

    /// Parses the text of partition `partition`'s file; `None` when it does not parse (the
    /// caller then rebuilds it from a listing).
    pub(crate) fn decode(text: &str, partition: i32) -> Option<Self> {
        // A checkpoint is written only with something to say: an empty file is a lost write.
        if text.trim().is_empty() {
            return None;
        }
        let mut out = Checkpoint::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut words = line.split_whitespace();
            match (words.next()?, words.next(), words.next(), words.next()) {
                ("durable", Some(d), None, None) => out.durable = Some(d.parse().ok()?),
                ("pending", Some(date), Some(first), Some(last)) => {
                    let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
                    let id = SegmentId {
                        partition,
                        first_offset: first.parse().ok()?,
                        last_offset: last.parse().ok()?,
                    };
                    (id.first_offset <= id.last_offset).then_some(())?;
                    out.pending = Some((date, id));
                }
                ("dropped", Some(through), Some(time), None) => {
                    out.dropped = Some(Dropped {
                        through: through.parse().ok()?,
                        event_time_max: match time {
                            "-" => None,
                            t => Some(t.parse().ok()?),
                        },
                    });
                }
                _ => return None,
            }
            if words.next().is_some() {
                return None;
            }
        }
        Some(out)
    }
}

/// The name of the file that keeps a copy of a partition's `dropped` line: a checkpoint rebuilt
/// from a listing (lost or damaged) recovers what retention removed from it.
pub(crate) fn dropped_file_name(partition: i32) -> String {
    format!(".dropped-{partition:05}")
}

/// The checkpoint file name of a partition.
pub(crate) fn file_name(partition: i32) -> String {
    format!(".checkpoint-{partition:05}")
}

/// The partition of a checkpoint file name (or of its `dropped` copy's).
pub(crate) fn partition_of(name: &str) -> Option<i32> {
    name.strip_prefix(".checkpoint-")
        .or_else(|| name.strip_prefix(".dropped-"))?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(first: i64, last: i64) -> SegmentId {
        SegmentId {
            partition: 4,
            first_offset: first,
            last_offset: last,
        }
    }

    #[test]
    fn a_checkpoint_round_trips_through_its_text() {
        let date = NaiveDate::from_ymd_opt(2026, 11, 28).unwrap_or_default();
        let full = Checkpoint {
            durable: Some(41_999),
            pending: Some((date, id(42_000, 42_999))),
            dropped: Some(Dropped {
                through: 20_999,
                event_time_max: Some(1_764_288_000_000_000),
            }),
        };
        for cp in [
            Checkpoint {
                durable: Some(0),
                ..Checkpoint::default()
            },
            full,
            Checkpoint {
                dropped: Some(Dropped {
                    through: 5,
                    event_time_max: None,
                }),
                ..Checkpoint::default()
            },
        ] {
            assert_eq!(Checkpoint::decode(&cp.encode(), 4), Some(cp));
        }
        assert_eq!(partition_of(&file_name(4)), Some(4));
        assert_eq!(partition_of(&dropped_file_name(4)), Some(4));
        assert_eq!(partition_of(".lock"), None);
    }

    #[test]
    fn a_damaged_checkpoint_does_not_parse() {
        for bad in [
            "",
            "\n",
            "durable x\n",
            "durable 1 2\n",
            "pending 2026-13-01 1 2\n",
            "pending 2026-11-28 9 2\n",
            "dropped 5\n",
            "dropped 5 t\n",
            "something 1\n",
        ] {
            assert_eq!(Checkpoint::decode(bad, 0), None, "{bad}");
        }
    }

    #[test]
    fn coverage_and_drops_only_move_forward() {
        let mut cp = Checkpoint::default();
        cp.covers(id(0, 99));
        cp.covers(id(0, 50));
        assert_eq!(cp.durable, Some(99));
        cp.drop_through(40, Some(7));
        cp.drop_through(30, Some(3));
        assert_eq!(
            cp.dropped,
            Some(Dropped {
                through: 40,
                event_time_max: Some(7)
            })
        );
        cp.drop_through(50, None);
        assert_eq!(
            cp.dropped,
            Some(Dropped {
                through: 50,
                event_time_max: None
            })
        );
    }
}
