//! Rebuilding one entity's shard of an owned partition from the raw store, when the copy Redis
//! holds cannot be read (it does not decode, or does not fit the view): a poison pill must
//! neither stop the partition nor be replaced by a shard that forgot the entity's history. The
//! partition's raw segments are read in offset order and the entity's events applied as the hot
//! path applied them; the result is written back to Redis.

use std::sync::Arc;
use std::time::Instant;

use quiver_features::{EntityShards, Shard};

use crate::worker::Worker;
use crate::{Result, events};

impl Worker {
    /// The shard of `entity` in partition `partition` of view `v` of source `s`, as the raw
    /// store's events of that partition make it (`None`: the entity has none there), written
    /// back to Redis.
    pub(crate) fn rebuild_from_raw(
        &mut self,
        s: usize,
        v: usize,
        partition: i32,
        entity: &str,
    ) -> Result<Option<Shard>> {
        let started = Instant::now();
        let source = &self.sources[s];
        let view = &source.views[v];
        let plan = Arc::clone(view.plan());
        let mut shards = EntityShards::new();
        let mut events_read = 0usize;
        for segment in self.raw.segments(&source.schema.name)? {
            if segment.id.partition != partition {
                continue;
            }
            for batch in self.raw.read_raw(&segment)? {
                let rows = view.rows(&batch)?;
                let mut inputs = Vec::new();
                events_read += rows.len();
                for row in 0..rows.len() {
                    if rows.entity(row) != entity {
                        continue;
                    }
                    rows.inputs(row, &mut inputs);
                    shards.apply(
                        &plan,
                        partition,
                        rows.offset(row),
                        rows.time(row),
                        &inputs,
                        &mut self.scratch,
                    );
                }
            }
        }
        let Some(shard) = shards.get(partition).cloned() else {
            events::shard_rebuilt(
                &view.view().name,
                entity,
                partition,
                None,
                events_read,
                started.elapsed(),
            );
            return Ok(None);
        };
        let name = view.view().name.clone();
        let ttl = source.ttls[v];
        let writes = self
            .online
            .write_shards(&name, partition, ttl, &[(entity, &shard)])?;
        events::shard_rebuilt(
            &name,
            entity,
            partition,
            Some(shard.applied_offset),
            events_read,
            started.elapsed(),
        );
        if writes.refused > 0 {
            // Redis holds a later applied offset than the raw store reaches: the raw store is
            // behind Redis, which the write order never allows; said, not hidden.
            events::shard_rebuild_refused(&name, entity, partition, shard.applied_offset);
        }
        Ok(Some(shard))
    }
}
