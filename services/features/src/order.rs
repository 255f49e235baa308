//! Arrival order: where an event sits in its source.

use std::collections::BTreeMap;

/// Arrival order of an event: (source partition, offset).
pub type Seq = (i32, i64);

/// A vector clock over source partitions: partition → the offset of the last event of that
/// partition included (the feature log's `_clock`).
pub type Clock = BTreeMap<i32, i64>;
