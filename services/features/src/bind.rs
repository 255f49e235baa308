//! A view bound to its source: which columns of a decoded (raw-schema) batch it reads, and the
//! per-batch accessors every path uses to read an event's entity, time, offset, id and inputs.
//!
//! Columns are resolved by name against each batch's own schema, so a projection of the raw
//! store (the batch replay reads only what it needs) binds the same way as a whole decoded
//! micro-batch; nothing depends on column positions.

use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::SchemaRef;
use quiver_core::schema::{OFFSET_COLUMN, SourceSchema};

use crate::definition::FeatureView;
use crate::log::{Column, log_schema};
use crate::state::ViewPlan;
use crate::value::{Input, Value};
use crate::{Error, Result};

/// A compiled view and the source columns it reads.
#[derive(Debug, Clone)]
pub struct BoundView {
    plan: Arc<ViewPlan>,
    source: Arc<SourceSchema>,
    log_schema: SchemaRef,
}

impl ViewPlan {
    /// Binds the plan to `source` (the view's source): every column it reads must exist there.
    pub fn bind(self, source: &Arc<SourceSchema>) -> Result<BoundView> {
        let view = self.view();
        let mut missing = Vec::new();
        if view.source != source.name {
            missing.push(format!(
                "view `{}` reads source `{}`, not `{}`",
                view.name, view.source, source.name
            ));
        }
        let has = |c: &str| source.fields.iter().any(|f| f.name == c);
        for column in std::iter::once(view.entity.as_str())
            .chain(std::iter::once(source.event_time.as_str()))
            .chain(view.aggregations.iter().filter_map(|a| a.column.as_deref()))
        {
            if !has(column) {
                missing.push(format!(
                    "view `{}`: column `{column}` is not in source `{}`",
                    view.name, source.name
                ));
            }
        }
        if !missing.is_empty() {
            return Err(Error::Definition(missing));
        }
        Ok(BoundView {
            log_schema: log_schema(view, source),
            source: Arc::clone(source),
            plan: Arc::new(self),
        })
    }
}

impl BoundView {
    /// The compiled view.
    pub fn plan(&self) -> &Arc<ViewPlan> {
        &self.plan
    }

    /// The view's definition.
    pub fn view(&self) -> &Arc<FeatureView> {
        self.plan.view()
    }

    /// The source it reads.
    pub fn source(&self) -> &Arc<SourceSchema> {
        &self.source
    }

    /// The schema of its feature log.
    pub fn log_schema(&self) -> &SchemaRef {
        &self.log_schema
    }

    /// The source columns it reads, besides `_offset` (for projections).
    pub fn columns(&self) -> Vec<&str> {
        let view = self.view();
        let mut out = vec![view.entity.as_str(), self.source.event_time.as_str()];
        out.extend(self.source.id.as_deref());
        out.extend(view.aggregations.iter().filter_map(|a| a.column.as_deref()));
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The accessors of one decoded batch.
    pub fn rows<'a>(&self, batch: &'a RecordBatch) -> Result<BoundRows<'a>> {
        let schema = batch.schema();
        let column = |name: &str| -> Result<&'a dyn Array> {
            let i = schema.index_of(name).map_err(|_| {
                Error::Log(format!(
                    "column `{name}` missing from a batch of source `{}`",
                    self.source.name
                ))
            })?;
            Ok(batch.column(i).as_ref())
        };
        let view = self.view();
        let times = column(&self.source.event_time)?
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or_else(|| Error::Log("the event time column is not a timestamp".into()))?;
        let offsets = column(OFFSET_COLUMN)?
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::Log("the offset column is not int64".into()))?;
        let inputs = view
            .aggregations
            .iter()
            .map(|a| a.column.as_deref().map(column).transpose())
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .map(|c| c.map(Column::new))
            .collect();
        Ok(BoundRows {
            entity: Column::new(column(&view.entity)?),
            id: self
                .source
                .id
                .as_deref()
                .map(column)
                .transpose()?
                .map(Column::new),
            times,
            offsets,
            inputs,
        })
    }
}

/// One batch's columns as a bound view reads them.
#[derive(Debug)]
pub struct BoundRows<'a> {
    entity: Column<'a>,
    id: Option<Column<'a>>,
    times: &'a TimestampMicrosecondArray,
    offsets: &'a Int64Array,
    inputs: Vec<Option<Column<'a>>>,
}

impl<'a> BoundRows<'a> {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether the batch has no row.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The entity key of `row`.
    pub fn entity(&self, row: usize) -> String {
        self.entity.key(row)
    }

    /// The entity key of `row`, borrowed when the column holds it as a string (else rendered,
    /// as [`BoundRows::entity`]).
    pub fn entity_str(&self, row: usize) -> std::borrow::Cow<'a, str> {
        match self.entity.str(row) {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(self.entity.key(row)),
        }
    }

    /// The event time of `row` (µs).
    pub fn time(&self, row: usize) -> i64 {
        self.times.value(row)
    }

    /// The source offset of `row`.
    pub fn offset(&self, row: usize) -> i64 {
        self.offsets.value(row)
    }

    /// The event id of `row`, if the source declares one.
    pub fn id(&self, row: usize) -> Option<Value> {
        self.id.map(|c| c.value(row))
    }

    /// The aggregation inputs of `row`, one per feature (`Null` for `count`), into `out`
    /// (borrowing the batch's strings).
    pub fn inputs(&self, row: usize, out: &mut Vec<Input<'a>>) {
        out.clear();
        out.extend(
            self.inputs
                .iter()
                .map(|c| c.map_or(Input::Null, |c| c.input(row))),
        );
    }
}
