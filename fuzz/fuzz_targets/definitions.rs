//! Schema and view definitions never panic: any text as a source schema, and as a feature view
//! over the demo sources; a view that parses has a fingerprint and a plan that fits its own
//! empty state.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use quiver_core::Catalog;
use quiver_core::schema::SourceSchema;
use quiver_features::{FeatureView, ViewPlan};

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        Catalog::from_texts([
            (
                "transactions.toml",
                include_str!("../../schemas/sources/transactions.toml"),
            ),
            (
                "labels.toml",
                include_str!("../../schemas/sources/labels.toml"),
            ),
        ])
        .expect("demo sources")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = SourceSchema::parse("fuzzed", text);
    if let Ok(view) = FeatureView::parse("fuzzed.toml", text, catalog()) {
        let plan = ViewPlan::new(Arc::new(view));
        assert_ne!(plan.fingerprint(), 0);
        assert!(plan.fits(&plan.new_state()));
    }
});
