//! Golden tests: `tests/golden/*.toml` hold events (in arrival order) and expected feature
//! values at read times, for the views declared in the repository's `schemas/`. Every file is
//! run through the aggregation core exactly as the streaming path and the backfill run it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use chrono::DateTime;
use quiver_core::Catalog;
use quiver_core::schema::FieldType;
use quiver_features::{Applied, EntityState, Value, ViewCatalog, ViewPlan};

fn micros(text: &str) -> i64 {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_micros()
}

fn to_value(v: &toml::Value, ty: FieldType) -> Value {
    match (v, ty) {
        (toml::Value::Integer(i), FieldType::Float) => Value::Float(*i as f64),
        (toml::Value::Integer(i), _) => Value::Int(*i),
        (toml::Value::Float(f), _) => Value::Float(*f),
        (toml::Value::String(s), _) => Value::Str(s.clone()),
        (toml::Value::Boolean(b), _) => Value::Bool(*b),
        (other, _) => panic!("unsupported golden value {other:?}"),
    }
}

fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => (x - y).abs() <= 1e-12 * x.abs().max(1.0),
        _ => a == b,
    }
}

fn run(path: &Path, catalog: &Catalog, views: &ViewCatalog) -> Vec<String> {
    let file: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let view = views
        .view(file["view"].as_str().unwrap())
        .expect("view declared in schemas/views")
        .clone();
    let source = catalog.source(&view.source).unwrap().clone();
    let plan = ViewPlan::new(Arc::clone(&view));
    let mut states: BTreeMap<String, EntityState> = BTreeMap::new();
    let mut scratch = Vec::new();
    let mut late = 0;
    for (i, event) in file["events"].as_array().unwrap().iter().enumerate() {
        let event = event.as_table().unwrap();
        let entity = event[&view.entity].as_str().unwrap().to_string();
        let time = micros(event[&source.event_time].as_str().unwrap());
        let inputs: Vec<Value> = plan
            .input_columns()
            .map(|column| match column {
                None => Value::Null,
                Some(c) => {
                    let ty = source.fields.iter().find(|f| f.name == c).unwrap().ty;
                    event.get(c).map_or(Value::Null, |v| to_value(v, ty))
                }
            })
            .collect();
        let state = states.entry(entity).or_insert_with(|| plan.new_state());
        if plan.apply(state, time, (0, i as i64), &inputs, &mut scratch) == Applied::Late {
            late += 1;
        }
    }
    let mut failures = Vec::new();
    if let Some(expected) = file.get("late").and_then(toml::Value::as_integer)
        && late != expected
    {
        failures.push(format!("{name}: {late} late events, expected {expected}"));
    }
    let names: Vec<&str> = view.feature_names().collect();
    for read in file["reads"].as_array().unwrap() {
        let read = read.as_table().unwrap();
        let entity = read["entity"].as_str().unwrap();
        let at = read["at"].as_str().unwrap();
        let empty = plan.new_state();
        let values = plan.read(states.get(entity).unwrap_or(&empty), micros(at));
        let got = |feature: &str| {
            let i = names
                .iter()
                .position(|n| *n == feature)
                .unwrap_or_else(|| panic!("{name}: no feature {feature}"));
            values[i].clone()
        };
        for (feature, expected) in read
            .get("expect")
            .and_then(toml::Value::as_table)
            .into_iter()
            .flatten()
        {
            let ty = view
                .aggregations
                .iter()
                .find(|a| a.name == *feature)
                .and_then(|a| a.column.as_ref())
                .and_then(|c| source.fields.iter().find(|f| &f.name == c))
                .map_or(FieldType::Int, |f| f.ty);
            let want = match expected {
                toml::Value::Float(f) => Value::Float(*f),
                other => to_value(other, ty),
            };
            let have = got(feature);
            if !close(&have, &want) {
                failures.push(format!(
                    "{name}: {entity} at {at}: {feature} = {have:?}, expected {want:?}"
                ));
            }
        }
        for feature in read
            .get("null")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
        {
            let feature = feature.as_str().unwrap();
            if got(feature) != Value::Null {
                failures.push(format!(
                    "{name}: {entity} at {at}: {feature} = {:?}, expected null",
                    got(feature)
                ));
            }
        }
    }
    failures
}

#[test]
fn golden_files_match() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let catalog = Catalog::load(&repo.join("schemas")).unwrap();
    let views = ViewCatalog::load(&repo.join("schemas"), &catalog).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "golden files missing in {}",
        dir.display()
    );
    let failures: Vec<String> = files
        .iter()
        .flat_map(|f| run(f, &catalog, &views))
        .collect();
    assert!(
        failures.is_empty(),
        "golden mismatches:\n{}",
        failures.join("\n")
    );
}
