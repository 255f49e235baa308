//! What the hot path reads from Redis: the shards its state cache misses (an unreadable one
//! rebuilt from the raw store when this worker owns its partition), and other sources' views
//! at scoring time.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use quiver_features::Shard;

use super::Draft;
use crate::claims::LookupVector;
use crate::worker::Worker;
use crate::{Error, Result, events};

impl Worker {
    /// Reads what a view's cache misses for a batch of partition `p` from Redis, in one
    /// round trip.
    pub(super) fn load<K: AsRef<str>>(
        &mut self,
        s: usize,
        p: i32,
        v: usize,
        keys: &[K],
    ) -> Result<()> {
        let now = Instant::now();
        let own = &self.ownership[s];
        let cache = &self.caches[s][v];
        let partitions = &self.partitions;
        let durable = |q: i32| partitions.get(&(s, q)).map_or(-1, |st| st.flushed_through);
        let missing: Vec<&str> =
            cache.to_read(keys.iter().map(AsRef::as_ref), own, now, p, durable);
        if missing.is_empty() {
            return Ok(());
        }
        let view = &self.sources[s].views[v];
        let name = view.view().name.clone();
        let fetched = self.online.fetch(&name, &missing)?;
        events::cache_loads(&name, missing.len());
        let plan = Arc::clone(view.plan());
        // Shards of another definition of the view: never read or mixed with ours.
        if let Some(foreign) = fetched
            .iter()
            .flat_map(|f| &f.shards)
            .map(|(_, shard)| shard)
            .find(|shard| shard.of_other_definition(&plan))
        {
            return Err(Error::DefinitionChanged {
                view: name,
                recorded: foreign.definition,
                current: plan.fingerprint(),
            });
        }
        // Only what Redis held is checked (what the cache holds was checked when loaded). A
        // shard that cannot be read is never used: an owned partition's is rebuilt from the raw
        // store (starting it empty would forget the entity's history at the next write), another
        // member's is left to its owner.
        let mut loaded: Vec<(String, Vec<(i32, Shard)>)> = Vec::with_capacity(missing.len());
        let mut rebuild = Vec::new();
        for (key, fetched) in missing.iter().zip(fetched) {
            let mut shards = fetched.shards;
            let mut unreadable: Vec<(i32, String)> = fetched
                .undecodable
                .into_iter()
                .map(|(q, error)| (q, error.to_string()))
                .collect();
            shards.retain(|(q, shard)| {
                let readable = shard.readable_by(&plan);
                if !readable {
                    unreadable.push((*q, "it does not fit the view's layout".to_string()));
                }
                readable
            });
            for (q, why) in unreadable {
                let owned = self.ownership[s].owns(q);
                events::unreadable_shard(&name, key, q, &why, owned);
                if owned {
                    rebuild.push((loaded.len(), q));
                }
            }
            loaded.push((key.to_string(), shards));
        }
        for (i, q) in rebuild {
            let key = loaded[i].0.clone();
            if let Some(shard) = self.rebuild_from_raw(s, v, q, &key)? {
                let shards = &mut loaded[i].1;
                shards.push((q, shard));
                shards.sort_by_key(|(p, _)| *p);
            }
        }
        let cache = &mut self.caches[s][v];
        let partitions = &self.partitions;
        let durable = |q: i32| partitions.get(&(s, q)).map_or(-1, |st| st.flushed_through);
        for (key, shards) in loaded {
            cache.load(&key, shards, &self.ownership[s], now, durable);
        }
        Ok(())
    }

    /// Reads the other sources' views of the events to be scored, at scoring time.
    pub(super) fn lookups(&mut self, s: usize, drafts: &mut [Draft]) -> Result<()> {
        let source = &self.sources[s];
        if !source.scored || source.lookups.is_empty() || self.models.production().is_none() {
            return Ok(());
        }
        let now = Utc::now().timestamp_micros();
        for lookup in &source.lookups {
            let k = source.schema.keys.iter().position(|k| *k == lookup.key);
            let keys: Vec<&str> = drafts
                .iter()
                .map(|d| k.map_or("", |k| d.keys[k].as_str()))
                .collect();
            let fetched = self.online.fetch(&lookup.view().name, &keys)?;
            for (draft, fetched) in drafts.iter_mut().zip(fetched) {
                if draft.claimed || draft.settled {
                    continue;
                }
                // Another source's view: its owner rebuilds what cannot be read.
                let entity = k.map_or("", |k| draft.keys[k].as_str());
                for (q, error) in &fetched.undecodable {
                    let why = error.to_string();
                    events::unreadable_shard(&lookup.view().name, entity, *q, &why, false);
                }
                let mut entity = quiver_features::EntityShards::from_shards(fetched.shards);
                entity.retain_fitting(&lookup.plan);
                draft.lookups.push(LookupVector {
                    event_time_max: entity.event_time_max(),
                    values: entity.read_at(&lookup.plan, now),
                });
            }
        }
        Ok(())
    }
}
