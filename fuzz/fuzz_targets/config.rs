//! Configuration loading never panics: any text as the user's config file, and its lines as
//! `QUIVER__*` environment overrides (`KEY=value`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use quiver_core::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Config::from_layers(Some((Path::new("fuzzed.toml"), text)), Vec::new());
    let env: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| {
            (
                format!("QUIVER__{}", k.trim().to_ascii_uppercase()),
                v.to_string(),
            )
        })
        .collect();
    if let Ok(config) = Config::from_layers(None, env) {
        let _ = config.validate();
        let _ = config.to_toml();
    }
});
