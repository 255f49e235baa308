//! Event decoding never panics: any bytes, split into a batch of payloads (a `0xff` byte ends
//! one), through the decoder of the demo `transactions` source, with and without the
//! future-skew limit. Every payload comes out either in the batch or rejected, once.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use quiver_core::decode::{EventDecoder, RawEvent};
use quiver_core::schema::SourceSchema;

const SOURCE: &str = include_str!("../../schemas/sources/transactions.toml");

fn decoders() -> &'static [EventDecoder; 2] {
    static DECODERS: OnceLock<[EventDecoder; 2]> = OnceLock::new();
    DECODERS.get_or_init(|| {
        let source = Arc::new(SourceSchema::parse("transactions", SOURCE).expect("demo schema"));
        let plain = EventDecoder::new(Arc::clone(&source), 4096);
        let skewed = plain.clone().with_max_future_skew_ms(300_000);
        [plain, skewed]
    })
}

fuzz_target!(|data: &[u8]| {
    let events: Vec<RawEvent<'_>> = data
        .split(|b| *b == 0xff)
        .enumerate()
        .map(|(i, payload)| RawEvent {
            offset: i as i64,
            payload: (!payload.is_empty()).then_some(payload),
        })
        .collect();
    for decoder in decoders() {
        if let Ok(out) = decoder.decode(0, &events, 1_795_687_200_000) {
            assert_eq!(out.batch.num_rows() + out.rejected.len(), events.len());
        }
    }
});
