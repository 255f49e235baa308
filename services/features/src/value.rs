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
        Input::from(self).as_f64()
    }

    /// Bytes identifying the value for distinct counting (type-tagged, stable across runs).
    pub fn identity_bytes(&self, out: &mut Vec<u8>) {
        Input::from(self).identity_bytes(out);
    }
}

/// An aggregation input as read from a decoded batch: a [`Value`] that borrows its string, so
/// applying an event allocates nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Input<'a> {
    /// Missing.
    #[default]
    Null,
    /// Boolean.
    Bool(bool),
    /// Integer.
    Int(i64),
    /// Float.
    Float(f64),
    /// String.
    Str(&'a str),
}

impl<'a> From<&'a Value> for Input<'a> {
    fn from(value: &'a Value) -> Self {
        match value {
            Value::Null => Input::Null,
            Value::Bool(b) => Input::Bool(*b),
            Value::Int(i) => Input::Int(*i),
            Value::Float(f) => Input::Float(*f),
            Value::Str(s) => Input::Str(s),
        }
    }
}

impl Input<'_> {
    /// The numeric value, if any.
    pub fn as_f64(self) -> Option<f64> {
        match self {
            Input::Int(i) => Some(i as f64),
            Input::Float(f) => Some(f),
            _ => None,
        }
    }

    /// The owned value.
    pub fn to_value(self) -> Value {
        match self {
            Input::Null => Value::Null,
            Input::Bool(b) => Value::Bool(b),
            Input::Int(i) => Value::Int(i),
            Input::Float(f) => Value::Float(f),
            Input::Str(s) => Value::Str(s.to_string()),
        }
    }

    /// Whether `value` is exactly this input (floats bit for bit).
    pub fn is(self, value: &Value) -> bool {
        match (self, value) {
            (Input::Null, Value::Null) => true,
            (Input::Bool(a), Value::Bool(b)) => a == *b,
            (Input::Int(a), Value::Int(b)) => a == *b,
            (Input::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (Input::Str(a), Value::Str(b)) => a == b,
            _ => false,
        }
    }

    /// Bytes identifying the value for distinct counting (type-tagged, stable across runs).
    pub fn identity_bytes(self, out: &mut Vec<u8>) {
        out.clear();
        match self {
            Input::Null => out.push(0),
            Input::Bool(b) => out.extend_from_slice(&[1, u8::from(b)]),
            Input::Int(i) => {
                out.push(2);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Input::Float(f) => {
                out.push(3);
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Input::Str(s) => {
                out.push(4);
                out.extend_from_slice(s.as_bytes());
            }
        }
    }
}

/// What an aggregation input can be read from: an owned [`Value`] (tests, training rows) or a
/// borrowed [`Input`] (decoded batches).
pub trait AsInput {
    /// The input.
    fn as_input(&self) -> Input<'_>;
}

impl AsInput for Value {
    fn as_input(&self) -> Input<'_> {
        Input::from(self)
    }
}

impl AsInput for Input<'_> {
    fn as_input(&self) -> Input<'_> {
        *self
    }
}
