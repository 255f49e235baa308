//! The feature log's Arrow layout, shared by the streaming path (which writes it), the backfill
//! (which rewrites it) and `quiver verify` (which compares against it): one row per event and
//! view with the vector as of that event.
//!
//! Columns: the entity key, the source's id field (if any), `event_time`, `_partition`,
//! `_offset`, `_as_of` (the read time), `_late`, `_clock` (the other partitions' shard offsets
//! merged in, as a JSON object), then one column per feature in declaration order.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Float64Array, Int32Array, Int64Array,
    RecordBatch, StringArray, StringBuilder, StringViewArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quiver_core::schema::{FieldType, SourceSchema, timestamp_type};

use crate::definition::{FeatureView, Op};
use crate::value::Value;
use crate::{Error, Result};

/// Read time of the row's vector.
pub const AS_OF_COLUMN: &str = "_as_of";
/// Whether the event was dropped from aggregation as late.
pub const LATE_COLUMN: &str = "_late";
/// The other partitions' shard offsets merged into the row's vector.
pub const CLOCK_COLUMN: &str = "_clock";
/// The event time column of the log.
pub const EVENT_TIME_COLUMN: &str = "event_time";

/// The output type of a feature.
pub fn feature_type(op: Op, column: Option<FieldType>) -> DataType {
    match (op, column) {
        (Op::Count | Op::DistinctCount, _) => DataType::Int64,
        (Op::Last, Some(FieldType::String)) => DataType::Utf8,
        (Op::Last, Some(FieldType::Bool)) => DataType::Boolean,
        (Op::Last, Some(FieldType::Int | FieldType::Timestamp)) => DataType::Int64,
        _ => DataType::Float64,
    }
}

/// The schema of a view's feature log.
pub fn log_schema(view: &FeatureView, source: &SourceSchema) -> SchemaRef {
    let mut fields = vec![Field::new(&view.entity, DataType::Utf8, false)];
    if let Some(id) = &source.id {
        fields.push(Field::new(id, DataType::Utf8, true));
    }
    fields.push(Field::new(EVENT_TIME_COLUMN, timestamp_type(), false));
    fields.push(Field::new("_partition", DataType::Int32, false));
    fields.push(Field::new("_offset", DataType::Int64, false));
    fields.push(Field::new(AS_OF_COLUMN, timestamp_type(), false));
    fields.push(Field::new(LATE_COLUMN, DataType::Boolean, false));
    fields.push(Field::new(CLOCK_COLUMN, DataType::Utf8, false));
    for agg in &view.aggregations {
        let column_type = agg
            .column
            .as_ref()
            .and_then(|c| source.fields.iter().find(|f| &f.name == c))
            .map(|f| f.ty);
        fields.push(Field::new(
            &agg.name,
            feature_type(agg.op, column_type),
            true,
        ));
    }
    Arc::new(Schema::new(fields))
}

/// Index of the first feature column in a log schema.
pub fn first_feature_column(schema: &Schema, view: &FeatureView) -> usize {
    schema.fields().len() - view.aggregations.len()
}

/// A column downcast once, for reading many rows.
#[derive(Debug, Clone, Copy)]
pub enum Column<'a> {
    /// Strings.
    Str(&'a StringArray),
    /// Strings, as DataFusion's view type.
    StrView(&'a StringViewArray),
    /// Floats.
    Float(&'a Float64Array),
    /// Integers.
    Int(&'a Int64Array),
    /// 32-bit integers (partitions).
    Int32(&'a Int32Array),
    /// Booleans.
    Bool(&'a BooleanArray),
    /// Timestamps (µs).
    Time(&'a TimestampMicrosecondArray),
    /// A type features do not read: always null.
    Other,
}

impl<'a> Column<'a> {
    /// Downcasts `array`.
    pub fn new(array: &'a dyn Array) -> Self {
        let any = array.as_any();
        if let Some(a) = any.downcast_ref::<StringArray>() {
            Self::Str(a)
        } else if let Some(a) = any.downcast_ref::<StringViewArray>() {
            Self::StrView(a)
        } else if let Some(a) = any.downcast_ref::<Float64Array>() {
            Self::Float(a)
        } else if let Some(a) = any.downcast_ref::<Int64Array>() {
            Self::Int(a)
        } else if let Some(a) = any.downcast_ref::<Int32Array>() {
            Self::Int32(a)
        } else if let Some(a) = any.downcast_ref::<BooleanArray>() {
            Self::Bool(a)
        } else if let Some(a) = any.downcast_ref::<TimestampMicrosecondArray>() {
            Self::Time(a)
        } else {
            Self::Other
        }
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            Self::Str(a) => a.is_null(row),
            Self::StrView(a) => a.is_null(row),
            Self::Float(a) => a.is_null(row),
            Self::Int(a) => a.is_null(row),
            Self::Int32(a) => a.is_null(row),
            Self::Bool(a) => a.is_null(row),
            Self::Time(a) => a.is_null(row),
            Self::Other => true,
        }
    }

    /// The value at `row`.
    pub fn value(&self, row: usize) -> Value {
        if self.is_null(row) {
            return Value::Null;
        }
        match self {
            Self::Str(a) => Value::Str(a.value(row).to_string()),
            Self::StrView(a) => Value::Str(a.value(row).to_string()),
            Self::Float(a) => Value::Float(a.value(row)),
            Self::Int(a) => Value::Int(a.value(row)),
            Self::Int32(a) => Value::Int(i64::from(a.value(row))),
            Self::Bool(a) => Value::Bool(a.value(row)),
            Self::Time(a) => Value::Int(a.value(row)),
            Self::Other => Value::Null,
        }
    }

    /// The value at `row` as an entity key or id (strings as they are, other types printed).
    pub fn key(&self, row: usize) -> String {
        match self {
            Self::Str(a) if !a.is_null(row) => a.value(row).to_string(),
            _ => match self.value(row) {
                Value::Str(s) => s,
                Value::Int(i) => i.to_string(),
                Value::Null => String::new(),
                other => format!("{other:?}"),
            },
        }
    }

    /// The integer at `row` (timestamps and offsets), or `None` when null or not an integer.
    pub fn int(&self, row: usize) -> Option<i64> {
        if self.is_null(row) {
            return None;
        }
        match self {
            Self::Int(a) => Some(a.value(row)),
            Self::Int32(a) => Some(i64::from(a.value(row))),
            Self::Time(a) => Some(a.value(row)),
            _ => None,
        }
    }
}

/// Renders a clock (partition → applied offset of that partition's shard) as the log stores it.
pub fn clock_json(clock: &BTreeMap<i32, i64>) -> String {
    let mut out = String::from("{");
    for (i, (p, o)) in clock.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("\"{p}\":{o}"));
    }
    out.push('}');
    out
}

/// Parses a logged clock.
pub fn parse_clock(text: &str) -> Result<BTreeMap<i32, i64>> {
    if text == "{}" {
        return Ok(BTreeMap::new());
    }
    let bad = || Error::Log(format!("malformed `{CLOCK_COLUMN}` value `{text}`"));
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(bad)?;
    let mut out = BTreeMap::new();
    for pair in inner.split(',').filter(|p| !p.trim().is_empty()) {
        let (p, o) = pair.split_once(':').ok_or_else(bad)?;
        let p = p.trim().trim_matches('"').parse().map_err(|_| bad())?;
        let o = o.trim().parse().map_err(|_| bad())?;
        out.insert(p, o);
    }
    Ok(out)
}

/// One log row, borrowed.
#[derive(Debug)]
pub struct LogRow<'a> {
    /// Entity key.
    pub entity: &'a str,
    /// The event's id, if the source has one.
    pub id: Option<&'a Value>,
    /// Event time (µs).
    pub time: i64,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Read time of the vector (µs).
    pub as_of: i64,
    /// Dropped as late.
    pub late: bool,
    /// `_clock` as JSON.
    pub clock: &'a str,
}

/// Column builders of a feature-log batch.
#[derive(Debug)]
pub struct LogBuilder {
    entity: StringBuilder,
    id: Option<StringBuilder>,
    time: Vec<i64>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    as_of: Vec<i64>,
    late: BooleanBuilder,
    clock: StringBuilder,
    features: Vec<Vec<Value>>,
}

impl LogBuilder {
    /// An empty batch of a view with `features` features; `with_id` when the source has an id.
    pub fn new(features: usize, with_id: bool) -> Self {
        Self {
            entity: StringBuilder::new(),
            id: with_id.then(StringBuilder::new),
            time: Vec::new(),
            partition: Vec::new(),
            offset: Vec::new(),
            as_of: Vec::new(),
            late: BooleanBuilder::new(),
            clock: StringBuilder::new(),
            features: vec![Vec::new(); features],
        }
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.time.len()
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.time.is_empty()
    }

    /// Appends a row.
    pub fn push(&mut self, row: LogRow<'_>, values: Vec<Value>) {
        self.entity.append_value(row.entity);
        if let Some(b) = self.id.as_mut() {
            match row.id {
                Some(Value::Str(s)) => b.append_value(s),
                Some(Value::Int(i)) => b.append_value(i.to_string()),
                None | Some(Value::Null) => b.append_null(),
                Some(other) => b.append_value(format!("{other:?}")),
            }
        }
        self.time.push(row.time);
        self.partition.push(row.partition);
        self.offset.push(row.offset);
        self.as_of.push(row.as_of);
        self.late.append_value(row.late);
        self.clock.append_value(row.clock);
        for (column, value) in self.features.iter_mut().zip(values) {
            column.push(value);
        }
    }

    /// The batch, in `schema` (from [`log_schema`]).
    pub fn finish(mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = vec![Arc::new(self.entity.finish())];
        if let Some(id) = self.id.as_mut() {
            columns.push(Arc::new(id.finish()));
        }
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(self.time).with_timezone("UTC"),
        ));
        columns.push(Arc::new(Int32Array::from(self.partition)));
        columns.push(Arc::new(Int64Array::from(self.offset)));
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(self.as_of).with_timezone("UTC"),
        ));
        columns.push(Arc::new(self.late.finish()));
        columns.push(Arc::new(self.clock.finish()));
        let first_feature = columns.len();
        for (i, values) in self.features.into_iter().enumerate() {
            let column: ArrayRef = match schema.field(first_feature + i).data_type() {
                DataType::Int64 => Arc::new(
                    values
                        .iter()
                        .map(|v| match v {
                            Value::Int(x) => Some(*x),
                            _ => None,
                        })
                        .collect::<Int64Array>(),
                ),
                DataType::Utf8 => {
                    let mut b = StringBuilder::new();
                    values.iter().for_each(|v| {
                        b.append_option(if let Value::Str(x) = v {
                            Some(x.as_str())
                        } else {
                            None
                        })
                    });
                    Arc::new(b.finish())
                }
                DataType::Boolean => Arc::new(
                    values
                        .iter()
                        .map(|v| match v {
                            Value::Bool(x) => Some(*x),
                            _ => None,
                        })
                        .collect::<BooleanArray>(),
                ),
                _ => Arc::new(values.iter().map(Value::as_f64).collect::<Float64Array>()),
            };
            columns.push(column);
        }
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

/// Whether two values of one feature agree under the design brief's consistency rule: exactly,
/// except floats of `sum`, `mean` and `stddev`, which may differ by 1e-9 relative.
pub fn values_agree(op: Op, a: &Value, b: &Value) -> bool {
    match (op, a, b) {
        (Op::Sum | Op::Mean | Op::Stddev, Value::Float(x), Value::Float(y)) => {
            x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs())
        }
        (_, Value::Float(x), Value::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_round_trip() {
        let clock = BTreeMap::from([(0, 17), (3, -1), (12, 400)]);
        let text = clock_json(&clock);
        assert_eq!(text, r#"{"0":17,"3":-1,"12":400}"#);
        assert_eq!(parse_clock(&text).unwrap(), clock);
        assert!(parse_clock("{}").unwrap().is_empty());
        assert!(parse_clock("[1]").is_err());
        assert!(parse_clock(r#"{"a":1}"#).is_err());
    }

    #[test]
    fn float_features_agree_within_the_tolerance_only_where_the_brief_allows() {
        let a = Value::Float(1.0);
        let b = Value::Float(1.0 + 1e-12);
        assert!(values_agree(Op::Sum, &a, &b));
        assert!(values_agree(Op::Stddev, &a, &b));
        assert!(!values_agree(Op::Max, &a, &b));
        assert!(!values_agree(Op::Mean, &a, &Value::Float(1.001)));
        assert!(values_agree(Op::Count, &Value::Int(3), &Value::Int(3)));
        assert!(!values_agree(Op::Count, &Value::Int(3), &Value::Null));
    }
}
