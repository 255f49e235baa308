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
    Array, ArrayRef, BooleanArray, BooleanBuilder, Float64Array, Float64Builder, Int32Array,
    Int64Array, Int64Builder, RecordBatch, StringArray, StringBuilder, StringViewArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quiver_core::schema::{FieldType, SourceSchema, timestamp_type};

use crate::definition::{FeatureView, Op};
use crate::value::{Input, Value};
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

    /// The value at `row`, owned ([`Column::input`] copied).
    pub fn value(&self, row: usize) -> Value {
        self.input(row).to_value()
    }

    /// The value at `row`, borrowing its string.
    pub fn input(&self, row: usize) -> Input<'a> {
        if self.is_null(row) {
            return Input::Null;
        }
        match *self {
            Self::Str(a) => Input::Str(a.value(row)),
            Self::StrView(a) => Input::Str(a.value(row)),
            Self::Float(a) => Input::Float(a.value(row)),
            Self::Int(a) => Input::Int(a.value(row)),
            Self::Int32(a) => Input::Int(i64::from(a.value(row))),
            Self::Bool(a) => Input::Bool(a.value(row)),
            Self::Time(a) => Input::Int(a.value(row)),
            Self::Other => Input::Null,
        }
    }

    /// The string at `row` as it is stored, when the column holds strings and the row is not
    /// null (entity keys and ids are strings in every demo source: no allocation for them).
    pub fn str(&self, row: usize) -> Option<&'a str> {
        match *self {
            Self::Str(a) if !a.is_null(row) => Some(a.value(row)),
            Self::StrView(a) if !a.is_null(row) => Some(a.value(row)),
            _ => None,
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
    let mut out = String::new();
    write_clock(clock, &mut out);
    out
}

/// [`clock_json`] into `out` (cleared first), for a caller rendering one clock per row.
pub fn write_clock(clock: &BTreeMap<i32, i64>, out: &mut String) {
    use std::fmt::Write as _;
    out.clear();
    out.push('{');
    for (i, (p, o)) in clock.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "\"{p}\":{o}");
    }
    out.push('}');
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

/// A feature column being built, typed by the log schema.
#[derive(Debug)]
enum FeatureColumn {
    Int(Int64Builder),
    Float(Float64Builder),
    Str(StringBuilder),
    Bool(BooleanBuilder),
}

impl FeatureColumn {
    fn new(ty: &DataType) -> Self {
        match ty {
            DataType::Int64 => Self::Int(Int64Builder::new()),
            DataType::Utf8 => Self::Str(StringBuilder::new()),
            DataType::Boolean => Self::Bool(BooleanBuilder::new()),
            _ => Self::Float(Float64Builder::new()),
        }
    }

    /// Appends a value (null when it is not of the column's type).
    fn push(&mut self, value: &Value) {
        match (self, value) {
            (Self::Int(b), Value::Int(x)) => b.append_value(*x),
            (Self::Int(b), _) => b.append_null(),
            (Self::Str(b), Value::Str(x)) => b.append_value(x),
            (Self::Str(b), _) => b.append_null(),
            (Self::Bool(b), Value::Bool(x)) => b.append_value(*x),
            (Self::Bool(b), _) => b.append_null(),
            (Self::Float(b), v) => b.append_option(v.as_f64()),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Int(b) => Arc::new(b.finish()),
            Self::Float(b) => Arc::new(b.finish()),
            Self::Str(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
        }
    }
}

/// Column builders of a feature-log batch.
#[derive(Debug)]
pub struct LogBuilder {
    schema: SchemaRef,
    entity: StringBuilder,
    id: Option<StringBuilder>,
    time: Vec<i64>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    as_of: Vec<i64>,
    late: BooleanBuilder,
    clock: StringBuilder,
    features: Vec<FeatureColumn>,
}

impl LogBuilder {
    /// An empty batch of a view's log, in `schema` (from [`log_schema`]); `with_id` when the
    /// source has an id field.
    pub fn new(schema: &SchemaRef, with_id: bool) -> Self {
        let first = schema.fields().len()
            - schema
                .fields()
                .iter()
                .rev()
                .take_while(|f| f.name() != CLOCK_COLUMN)
                .count();
        Self {
            schema: Arc::clone(schema),
            entity: StringBuilder::new(),
            id: with_id.then(StringBuilder::new),
            time: Vec::new(),
            partition: Vec::new(),
            offset: Vec::new(),
            as_of: Vec::new(),
            late: BooleanBuilder::new(),
            clock: StringBuilder::new(),
            features: schema.fields()[first..]
                .iter()
                .map(|f| FeatureColumn::new(f.data_type()))
                .collect(),
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

    /// Appends a row: its metadata and its feature values, in the view's order.
    pub fn push(&mut self, row: LogRow<'_>, values: &[Value]) {
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

    /// The batch.
    pub fn finish(mut self) -> Result<RecordBatch> {
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
        columns.extend(self.features.iter_mut().map(FeatureColumn::finish));
        Ok(RecordBatch::try_new(self.schema, columns)?)
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
