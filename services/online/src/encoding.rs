//! How a shard is stored: a version byte, then postcard. Version 2 carries the fingerprint of
//! the view definition that wrote the shard; version 1 (before fingerprints) is still read, as
//! [`Shard::LEGACY_DEFINITION`].

use quiver_features::{EntityState, Shard};
use serde::Deserialize;

use crate::{Error, Result};

/// Encoding version prefixed to every shard written.
const VERSION: u8 = 2;

/// The encoding before view fingerprints.
const VERSION_1: u8 = 1;

/// A version-1 shard.
#[derive(Deserialize)]
struct ShardV1 {
    applied_offset: i64,
    state: EntityState,
}

/// Compact binary encoding (version byte + postcard).
pub fn encode(shard: &Shard) -> Vec<u8> {
    let mut out = vec![VERSION];
    // Serializing plain data into a Vec cannot fail.
    if let Ok(bytes) = postcard::to_allocvec(shard) {
        out.extend_from_slice(&bytes);
    }
    out
}

/// Decodes [`encode`]'s output (`key` and `field` name it in errors).
pub fn decode(key: &str, field: &str, bytes: &[u8]) -> Result<Shard> {
    let err = |detail: String| Error::Decode {
        key: key.to_string(),
        field: field.to_string(),
        detail,
    };
    match bytes.split_first() {
        Some((&VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| err(e.to_string())),
        Some((&VERSION_1, rest)) => postcard::from_bytes::<ShardV1>(rest)
            .map(|v1| Shard {
                applied_offset: v1.applied_offset,
                definition: Shard::LEGACY_DEFINITION,
                state: v1.state,
            })
            .map_err(|e| err(e.to_string())),
        Some((v, _)) => Err(err(format!("unknown encoding version {v}"))),
        None => Err(err("empty value".to_string())),
    }
}

/// The shards of one hash (`HGETALL` reply), by partition; fields other than `p<n>` are
/// skipped. Fails on the first shard that does not decode.
pub fn parse_hash(
    key: &str,
    raw: impl IntoIterator<Item = (String, Vec<u8>)>,
) -> Result<Vec<(i32, Shard)>> {
    let mut fetched = split_hash(key, raw);
    match fetched.undecodable.pop() {
        Some((_, error)) => Err(error),
        None => Ok(fetched.shards),
    }
}

/// One entity's hash as read: its shards and, apart, the partitions whose shard does not
/// decode.
#[derive(Debug)]
pub struct Fetched {
    /// Its shards, by partition.
    pub shards: Vec<(i32, Shard)>,
    /// The partitions whose shard does not decode, and why.
    pub undecodable: Vec<(i32, crate::Error)>,
}

/// The shards of one hash by partition, and apart the partitions whose shard does not decode
/// (with why), so that one bad field does not make the others unreadable.
pub fn split_hash(key: &str, raw: impl IntoIterator<Item = (String, Vec<u8>)>) -> Fetched {
    let mut shards = Vec::new();
    let mut undecodable = Vec::new();
    for (name, bytes) in raw {
        let Some(partition) = name.strip_prefix('p').and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        match decode(key, &name, &bytes) {
            Ok(shard) => shards.push((partition, shard)),
            Err(error) => undecodable.push((partition, error)),
        }
    }
    shards.sort_by_key(|(p, _)| *p);
    undecodable.sort_by_key(|(p, _)| *p);
    Fetched {
        shards,
        undecodable,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use quiver_core::Catalog;
    use quiver_features::{Value, ViewCatalog, ViewPlan};

    use super::*;

    #[test]
    fn shards_of_every_operation_round_trip() {
        let catalog = Catalog::from_texts([(
            "t.toml",
            "name = \"t\"\nevent_time = \"ts\"\nkeys = [\"k\"]\n[fields]\nk = \"string\"\nx = \"float\"\ns = \"string\"\nts = \"timestamp\"\n",
        )])
        .unwrap();
        let mut view = String::from("name = \"v\"\nentity = \"k\"\nsource = \"t\"\n");
        for (name, op, column) in [
            ("a", "count", None),
            ("b", "sum", Some("x")),
            ("c", "mean", Some("x")),
            ("d", "min", Some("x")),
            ("e", "max", Some("x")),
            ("f", "last", Some("s")),
            ("g", "distinct_count", Some("s")),
            ("h", "stddev", Some("x")),
        ] {
            view.push_str(&format!(
                "[[features]]\nname = \"{name}\"\nop = \"{op}\"\nwindow = \"1h\"\n"
            ));
            if let Some(c) = column {
                view.push_str(&format!("column = \"{c}\"\n"));
            }
        }
        let views = ViewCatalog::from_texts([("v.toml", view.as_str())], &catalog).unwrap();
        let plan = ViewPlan::new(Arc::clone(&views.views[0]));
        let mut state = plan.new_state();
        let mut scratch = Vec::new();
        for i in 0..5 {
            let x = Value::Float(i as f64);
            let s = Value::Str(format!("s{i}"));
            let inputs = [
                Value::Null,
                x.clone(),
                x.clone(),
                x.clone(),
                x.clone(),
                s.clone(),
                s,
                x,
            ];
            plan.apply(&mut state, 1_000_000 * i, (0, i), &inputs, &mut scratch);
        }
        let shard = Shard {
            applied_offset: 4,
            definition: plan.fingerprint(),
            state,
        };
        let decoded = decode("k", "p0", &encode(&shard)).unwrap();
        assert_eq!(decoded, shard);
        assert!(decoded.readable_by(&plan));
        // A version-1 shard (no fingerprint) reads as legacy, and still fits.
        let mut v1 = vec![VERSION_1];
        v1.extend(postcard::to_allocvec(&(4i64, &shard.state)).unwrap());
        let legacy = decode("k", "p0", &v1).unwrap();
        assert_eq!(legacy.definition, Shard::LEGACY_DEFINITION);
        assert_eq!(legacy.state, shard.state);
        assert!(legacy.readable_by(&plan));
        assert!(decode("k", "p0", &[9, 1, 2]).is_err());
        let parsed = parse_hash(
            "k",
            [
                ("o0".to_string(), b"4".to_vec()),
                ("p0".to_string(), encode(&shard)),
            ],
        )
        .unwrap();
        assert_eq!(parsed, vec![(0, shard.clone())]);

        // One field that does not decode is set apart; the others are still read.
        let hash = || {
            [
                ("p2".to_string(), b"\x02garbage".to_vec()),
                ("p0".to_string(), encode(&shard)),
                ("o2".to_string(), b"7".to_vec()),
            ]
        };
        let fetched = split_hash("k", hash());
        assert_eq!(fetched.shards, vec![(0, shard.clone())]);
        let undecodable: Vec<i32> = fetched.undecodable.iter().map(|(p, _)| *p).collect();
        assert_eq!(undecodable, [2]);
        assert!(
            parse_hash("k", hash()).is_err(),
            "the strict reader refuses it"
        );
    }

    #[test]
    fn dense_sketches_encode_as_they_always_did() {
        // The registers are written as one byte string; postcard writes a byte sequence the same
        // way (a length, then the bytes), so shards written before and after read alike.
        #[derive(serde::Serialize)]
        enum Before {
            #[allow(dead_code)]
            Sparse(Vec<u32>),
            Dense(Vec<u8>),
        }
        let mut sketch = quiver_features::hll::Hll::default();
        for i in 0..5_000u64 {
            sketch.add_hash(quiver_features::hll::hash(&i.to_le_bytes()));
        }
        let quiver_features::hll::Hll::Dense(registers) = &sketch else {
            panic!("5 000 values make a dense sketch");
        };
        let now = postcard::to_allocvec(&sketch).unwrap();
        assert_eq!(
            now,
            postcard::to_allocvec(&Before::Dense(registers.clone())).unwrap()
        );
        let back: quiver_features::hll::Hll = postcard::from_bytes(&now).unwrap();
        assert_eq!(back, sketch);
    }
}
