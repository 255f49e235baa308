//! Feature and input values.

use serde::{Deserialize, Serialize};

/// A value: an aggregation input or a finalised feature. Serialized tagged (it is stored in
/// binary online state); the API renders it as plain JSON itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum Value {
    /// Missing (an empty window for `mean`, `min`, `max`, `last`, `stddev`).
    #[default]
    Null,
    /// Boolean.
    Bool(bool),
    /// Integer (`count`, `distinct_count`, int columns).
    Int(i64),
    /// Float.
    Float(f64),
    /// String.
    Str(String),
}

impl Value {
    /// The numeric value, if any.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Bytes identifying the value for distinct counting (type-tagged, stable across runs).
    pub fn identity_bytes(&self, out: &mut Vec<u8>) {
        out.clear();
        match self {
            Value::Null => out.push(0),
            Value::Bool(b) => out.extend_from_slice(&[1, u8::from(*b)]),
            Value::Int(i) => {
                out.push(2);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Value::Float(f) => {
                out.push(3);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::Str(s) => {
                out.push(4);
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
}
