//! Event source schemas, declared in `schemas/sources/*.toml`.
//!
//! ```toml
//! name = "transactions"
//! topic = "transactions"
//! partitions = 4
//! event_time = "event_time"
//! id = "txn_id"
//! keys = ["user_id", "merchant_id"]
//!
//! [fields]
//! txn_id = "string"
//! amount = "float"
//! note = "string?"        # a trailing `?` makes a field optional
//! event_time = "timestamp"
//! ```

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Column holding the Kafka partition in the raw store.
pub const PARTITION_COLUMN: &str = "_partition";
/// Column holding the Kafka offset in the raw store.
pub const OFFSET_COLUMN: &str = "_offset";
/// Column holding the ingestion time in the raw store.
pub const INGEST_TIME_COLUMN: &str = "_ingest_time";

/// The type of a declared field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// UTF-8 string.
    String,
    /// 64-bit float.
    Float,
    /// 64-bit signed integer.
    Int,
    /// Boolean.
    Bool,
    /// RFC 3339 time, stored as UTC microseconds.
    Timestamp,
}

impl FieldType {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "string" => Self::String,
            "float" => Self::Float,
            "int" => Self::Int,
            "bool" => Self::Bool,
            "timestamp" => Self::Timestamp,
            _ => return None,
        })
    }

    /// The Arrow type a field of this type is stored as.
    pub fn arrow_type(self) -> DataType {
        match self {
            Self::String => DataType::Utf8,
            Self::Float => DataType::Float64,
            Self::Int => DataType::Int64,
            Self::Bool => DataType::Boolean,
            Self::Timestamp => timestamp_type(),
        }
    }
}

/// The Arrow type of event times: UTC microseconds.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// One declared field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDef {
    /// Name in the JSON event and the column name.
    pub name: String,
    /// Declared type.
    pub ty: FieldType,
    /// Whether the field must be present and non-null.
    pub required: bool,
}

/// An event source: a topic and the shape of its events.
#[derive(Debug, Clone)]
pub struct SourceSchema {
    /// Logical name (also the raw-store directory).
    pub name: String,
    /// Logical topic (before `kafka.topic_prefix`).
    pub topic: String,
    /// Partitions to create the topic with (`quiver stack up`).
    pub partitions: i32,
    /// The event-time column.
    pub event_time: String,
    /// The event id column, if any.
    pub id: Option<String>,
    /// Entity key columns.
    pub keys: Vec<String>,
    /// Declared fields, in order.
    pub fields: Vec<FieldDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: String,
    topic: Option<String>,
    partitions: Option<i64>,
    event_time: String,
    id: Option<String>,
    #[serde(default)]
    keys: Vec<String>,
    fields: toml::Table,
}

impl SourceSchema {
    /// The boolean column that holds this source's labels: `named` (it must be a boolean field
    /// of the source), or else its only boolean field. The error says what to name.
    pub fn label_column(&self, named: Option<&str>) -> std::result::Result<String, String> {
        let bools: Vec<&String> = self
            .fields
            .iter()
            .filter(|f| f.ty == FieldType::Bool)
            .map(|f| &f.name)
            .collect();
        match (named, bools.as_slice()) {
            (Some(name), _) if bools.iter().any(|b| *b == name) => Ok(name.to_string()),
            (Some(name), _) => Err(format!(
                "source `{}` has no boolean field `{name}`",
                self.name
            )),
            (None, [one]) => Ok((*one).clone()),
            (None, _) => Err(format!(
                "source `{}` has {} boolean fields: name the label column",
                self.name,
                bools.len()
            )),
        }
    }

    /// Parses one source file's text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> std::result::Result<Self, Vec<String>> {
        let raw: RawSource = parse_toml(origin, text)?;
        let mut errors = Vec::new();
        let mut fields = Vec::new();
        for (name, value) in &raw.fields {
            let Some(spec) = value.as_str() else {
                errors.push(format!(
                    "{origin}: field `{name}`: type must be a string like \"float\""
                ));
                continue;
            };
            let (ty_name, required) = match spec.strip_suffix('?') {
                Some(t) => (t, false),
                None => (spec, true),
            };
            if name.starts_with('_') {
                errors.push(format!(
                    "{origin}: field `{name}`: names starting with `_` are reserved"
                ));
            }
            match FieldType::parse(ty_name) {
                Some(ty) => fields.push(FieldDef { name: name.clone(), ty, required }),
                None => errors.push(format!(
                    "{origin}: field `{name}`: unknown type `{ty_name}` (expected string, float, int, bool or timestamp)"
                )),
            }
        }
        let find = |name: &str| fields.iter().find(|f| f.name == name);
        match find(&raw.event_time) {
            None => errors.push(format!(
                "{origin}: event_time `{}` is not a declared field",
                raw.event_time
            )),
            Some(f) if f.ty != FieldType::Timestamp => errors.push(format!(
                "{origin}: event_time `{}` must have type timestamp",
                raw.event_time
            )),
            Some(_) => {}
        }
        for key in raw.keys.iter().chain(raw.id.iter()) {
            match find(key) {
                None => errors.push(format!("{origin}: key `{key}` is not a declared field")),
                Some(f) if !matches!(f.ty, FieldType::String | FieldType::Int) => errors.push(
                    format!("{origin}: key `{key}` must be a string or int field"),
                ),
                Some(_) => {}
            }
        }
        let partitions = raw.partitions.unwrap_or(1);
        if !(1..=10_000).contains(&partitions) {
            errors.push(format!("{origin}: partitions must be between 1 and 10000"));
        }
        if raw.name.is_empty()
            || !raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            errors.push(format!(
                "{origin}: name `{}` must be non-empty [A-Za-z0-9_-]",
                raw.name
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Keys, id and event time are always required.
        let must: BTreeSet<&String> = raw
            .keys
            .iter()
            .chain(raw.id.iter())
            .chain([&raw.event_time])
            .collect();
        for f in &mut fields {
            if must.contains(&f.name) {
                f.required = true;
            }
        }
        Ok(Self {
            topic: raw.topic.unwrap_or_else(|| raw.name.clone()),
            name: raw.name,
            partitions: partitions as i32,
            event_time: raw.event_time,
            id: raw.id,
            keys: raw.keys,
            fields,
        })
    }

    /// Schema of the raw store: the declared fields, then partition, offset and ingest time.
    pub fn raw_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .fields
            .iter()
            .map(|f| Field::new(&f.name, f.ty.arrow_type(), !f.required))
            .collect();
        fields.push(Field::new(PARTITION_COLUMN, DataType::Int32, false));
        fields.push(Field::new(OFFSET_COLUMN, DataType::Int64, false));
        fields.push(Field::new(
            INGEST_TIME_COLUMN,
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ));
        Arc::new(Schema::new(fields))
    }

    /// Fields whose values must be non-empty when they are strings (keys and id).
    pub fn identity_fields(&self) -> impl Iterator<Item = &String> {
        self.keys.iter().chain(self.id.iter())
    }
}

/// Deserializes a definition file, its syntax errors as one line prefixed by `origin`.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    origin: &str,
    text: &str,
) -> std::result::Result<T, Vec<String>> {
    toml::from_str(text).map_err(|e| {
        let message = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        vec![format!("{origin}: {message}")]
    })
}

/// Reads every `*.toml` file of `dir` as `(path, text)`, sorted by path. A missing directory is
/// an error if `required`, and no files otherwise.
pub fn read_toml_files(dir: &Path, required: bool) -> Result<Vec<(String, String)>> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(Vec::new()),
        other => other.map_err(io(dir))?,
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            files.push((path.display().to_string(), text));
        }
    }
    files.sort();
    Ok(files)
}

/// Every declared source.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Sources sorted by name.
    pub sources: Vec<Arc<SourceSchema>>,
}

impl Catalog {
    /// Loads `<dir>/sources/*.toml`, reporting every problem in every file at once.
    pub fn load(dir: &Path) -> Result<Self> {
        let files = read_toml_files(&dir.join("sources"), true)?;
        Self::from_texts(files.iter().map(|(o, t)| (o.as_str(), t.as_str())))
    }

    /// Builds a catalog from `(origin, text)` pairs, without I/O.
    pub fn from_texts<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut errors = Vec::new();
        let mut sources: Vec<Arc<SourceSchema>> = Vec::new();
        for (origin, text) in files {
            match SourceSchema::parse(origin, text) {
                Ok(s) => {
                    if sources
                        .iter()
                        .any(|o| o.name == s.name || o.topic == s.topic)
                    {
                        errors.push(format!(
                            "{origin}: source `{}` or topic `{}` declared twice",
                            s.name, s.topic
                        ));
                    }
                    sources.push(Arc::new(s));
                }
                Err(mut e) => errors.append(&mut e),
            }
        }
        if sources.is_empty() && errors.is_empty() {
            errors.push("no sources declared (expected sources/*.toml)".to_string());
        }
        if !errors.is_empty() {
            return Err(Error::Schema(errors));
        }
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { sources })
    }

    /// A source by name.
    pub fn source(&self, name: &str) -> Option<&Arc<SourceSchema>> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// The sources named in `names`, or all of them when `names` is empty.
    pub fn select(&self, names: &[String]) -> Result<Vec<Arc<SourceSchema>>> {
        if names.is_empty() {
            return Ok(self.sources.clone());
        }
        let mut errors = Vec::new();
        let mut out = Vec::new();
        for name in names {
            match self.source(name) {
                Some(s) => out.push(s.clone()),
                None => errors.push(format!(
                    "ingest.sources: unknown source `{name}` (declared: {})",
                    self.sources
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(Error::Config(errors))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const TRANSACTIONS: &str = r#"
name = "transactions"
partitions = 4
event_time = "event_time"
id = "txn_id"
keys = ["user_id", "merchant_id"]

[fields]
txn_id = "string"
user_id = "string"
merchant_id = "string"
amount = "float"
country = "string"
note = "string?"
event_time = "timestamp"
"#;

    #[test]
    fn parses_fields_in_order_with_optional_marker() {
        let s = SourceSchema::parse("t.toml", TRANSACTIONS).unwrap();
        assert_eq!(s.topic, "transactions");
        let names: Vec<_> = s.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "txn_id",
                "user_id",
                "merchant_id",
                "amount",
                "country",
                "note",
                "event_time"
            ]
        );
        assert!(!s.fields[5].required);
        assert!(s.fields[3].required);
        let schema = s.raw_schema();
        assert_eq!(schema.fields().len(), 10);
        assert_eq!(schema.field(9).name(), INGEST_TIME_COLUMN);
    }

    #[test]
    fn reports_every_schema_problem() {
        let text = r#"
name = "x"
event_time = "ts"
keys = ["user", "amount"]
[fields]
amount = "decimal"
ts = "string"
_hidden = "int"
"#;
        let errs = SourceSchema::parse("x.toml", text).unwrap_err();
        let all = errs.join("\n");
        assert!(all.contains("unknown type `decimal`"), "{all}");
        assert!(
            all.contains("event_time `ts` must have type timestamp"),
            "{all}"
        );
        assert!(all.contains("key `user` is not a declared field"), "{all}");
        assert!(all.contains("reserved"), "{all}");
    }

    #[test]
    fn duplicate_topics_are_rejected() {
        let err =
            Catalog::from_texts([("a.toml", TRANSACTIONS), ("b.toml", TRANSACTIONS)]).unwrap_err();
        assert!(err.to_string().contains("declared twice"), "{err}");
    }
}
