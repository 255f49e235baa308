//! Everything the worker produces — predictions and dead letters — through one idempotent
//! producer, with the acknowledgements a partition's commit waits for.
//!
//! Each hot batch of a partition gets an [`Acks`]: one count per message it produced, decreased
//! by the delivery callback on librdkafka's thread. A partition's offsets are committed only up
//! to the last batch whose messages are all acknowledged; a failed delivery fails the partition,
//! which then replays from its commit (and re-emits from its claims).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quiver_core::Config;
use quiver_kafka::headers;
use rdkafka::ClientContext;
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;

use crate::prediction::Variant;
use crate::worker::IngestStats;
use crate::{Error, Result, events};

/// How long a send may wait for room in librdkafka's queue before the partition fails.
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(30);

/// The acknowledgements one hot batch waits for.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    pending: AtomicUsize,
    failure: Mutex<Option<String>>,
}

impl Acks {
    /// Whether every message was acknowledged.
    pub(crate) fn done(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// The first delivery failure, if any.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }
}

/// What a delivery callback learns about its message.
#[derive(Debug)]
pub(crate) struct Delivery {
    acks: Arc<Acks>,
    prediction: Option<Acked>,
    /// Set on a dead letter sent with its payload: what its marker would carry, should the
    /// broker refuse it as too large.
    dead_letter: Option<Marker>,
}

/// A dead letter as a marker: its headers (reason, provenance) and key, no payload, and a
/// [`headers::TRUNCATED`] header with the payload's size.
#[derive(Debug, Clone)]
pub(crate) struct Marker {
    topic: String,
    key: Option<Vec<u8>>,
    headers: OwnedHeaders,
    source: (String, i32, i64),
    size: usize,
}

/// Whether a failed delivery is the broker refusing the message as too large (a topic whose
/// `max.message.bytes` is below the client's `message.max.bytes`).
pub(crate) fn refused_as_too_large(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    )
}

/// A prediction's labels and its event's broker timestamp, for the metrics.
#[derive(Debug)]
pub(crate) struct Acked {
    pub(crate) model_id: Arc<str>,
    pub(crate) variant: Variant,
    pub(crate) decision: bool,
    pub(crate) event_timestamp_ms: Option<i64>,
}

/// The delivery callbacks.
pub(crate) struct DeliveryContext {
    stats: Arc<IngestStats>,
    /// Dead letters the broker refused as too large, to go again as markers (from the poll
    /// loop: a callback cannot produce). Their batches keep waiting for them meanwhile.
    refused: Mutex<Vec<(Arc<Acks>, Marker)>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        match result {
            Ok(_) => {
                if let Some(p) = &delivery.prediction {
                    let latency = p
                        .event_timestamp_ms
                        .map(|ts| (chrono::Utc::now().timestamp_millis() - ts).max(0) as f64 / 1e3);
                    events::prediction_acked(
                        &p.model_id,
                        p.variant,
                        p.decision,
                        latency.unwrap_or(0.0),
                    );
                    self.stats.prediction_acked(latency);
                }
            }
            Err((error, _)) => {
                if refused_as_too_large(error.rdkafka_error_code())
                    && let Some(marker) = delivery.dead_letter
                    && let Ok(mut refused) = self.refused.lock()
                {
                    // Still pending: the marker's delivery settles it.
                    refused.push((delivery.acks, marker));
                    return;
                }
                if let Ok(mut f) = delivery.acks.failure.lock() {
                    f.get_or_insert_with(|| error.to_string());
                }
            }
        }
        delivery.acks.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The worker's producer.
pub(crate) struct Producer {
    inner: ThreadedProducer<DeliveryContext>,
    /// The largest message the client sends (`message.max.bytes`).
    max_message_bytes: usize,
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// Room kept in a dead letter for its record framing and the headers' names.
const DEAD_LETTER_OVERHEAD: usize = 1024;

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

/// Where a dead letter comes from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

impl Producer {
    /// An idempotent producer; a hot batch's messages leave together (1 ms linger).
    pub(crate) fn new(config: &Config, stats: Arc<IngestStats>) -> Result<Self> {
        let inner = quiver_kafka::producer_config(&config.kafka)
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .create_with_context(DeliveryContext {
                stats,
                refused: Mutex::new(Vec::new()),
            })
            .map_err(|source| Error::Client {
                context: "create producer",
                source,
            })?;
        // librdkafka refused the configuration above if the property does not parse.
        let max_message_bytes = config
            .kafka
            .properties
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        Ok(Self {
            inner,
            max_message_bytes,
        })
    }

    fn send(&self, mut record: BaseRecord<'_, [u8], [u8], Box<Delivery>>) -> Result<()> {
        let deadline = std::time::Instant::now() + QUEUE_FULL_WAIT;
        let topic = record.topic.to_string();
        record
            .delivery_opaque
            .acks
            .pending
            .fetch_add(1, Ordering::AcqRel);
        loop {
            match self.inner.send(record) {
                Ok(()) => return Ok(()),
                Err((e, back))
                    if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(2));
                    record = back;
                }
                Err((e, back)) => {
                    back.delivery_opaque
                        .acks
                        .pending
                        .fetch_sub(1, Ordering::AcqRel);
                    return Err(Error::Delivery {
                        topic,
                        detail: e.to_string(),
                    });
                }
            }
        }
    }

    /// Produces a prediction.
    pub(crate) fn prediction(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        acks: &Arc<Acks>,
        acked: Acked,
    ) -> Result<()> {
        self.send(
            BaseRecord::with_opaque_to(
                topic,
                Box::new(Delivery {
                    acks: Arc::clone(acks),
                    prediction: Some(acked),
                    dead_letter: None,
                }),
            )
            .key(key.as_bytes())
            .payload(payload),
        )
    }

    /// Produces a dead letter: the original payload, the reason and its provenance in headers.
    /// A dead letter too large for the client's `message.max.bytes` goes as a marker: no
    /// payload, and a [`headers::TRUNCATED`] header with the payload's size (a dead letter that
    /// cannot be sent would otherwise stop its partition for good).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dead_letter(
        &self,
        dlq_topic: &str,
        origin: Origin<'_>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        reason: &str,
        detail: &str,
        acks: &Arc<Acks>,
    ) -> Result<()> {
        let partition = origin.partition.to_string();
        let offset = origin.offset.to_string();
        let size = payload.map_or(0, <[u8]>::len);
        let framing = key.map_or(0, <[u8]>::len)
            + reason.len()
            + detail.len()
            + origin.topic.len()
            + DEAD_LETTER_OVERHEAD;
        let too_large = size + framing > self.max_message_bytes;
        let hdrs = OwnedHeaders::new()
            .insert(Header {
                key: headers::REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: headers::ERROR,
                value: Some(detail),
            })
            .insert(Header {
                key: headers::SOURCE_TOPIC,
                value: Some(origin.topic),
            })
            .insert(Header {
                key: headers::SOURCE_PARTITION,
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: headers::SOURCE_OFFSET,
                value: Some(offset.as_str()),
            });
        let marker = Marker {
            topic: dlq_topic.to_string(),
            key: key.map(<[u8]>::to_vec),
            headers: hdrs,
            source: (origin.topic.to_string(), origin.partition, origin.offset),
            size,
        };
        if too_large {
            return self.send_marker(Arc::clone(acks), marker);
        }
        let mut record = BaseRecord::with_opaque_to(
            dlq_topic,
            Box::new(Delivery {
                acks: Arc::clone(acks),
                prediction: None,
                dead_letter: Some(marker.clone()),
            }),
        )
        .payload(payload.unwrap_or_default())
        .headers(marker.headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.send(record)
    }

    /// Sends a dead letter as its marker (counted).
    fn send_marker(&self, acks: Arc<Acks>, marker: Marker) -> Result<()> {
        let size = marker.size.to_string();
        let (topic, partition, offset) = &marker.source;
        events::dead_letter_truncated(topic, *partition, *offset, marker.size);
        let headers = marker.headers.insert(Header {
            key: headers::TRUNCATED,
            value: Some(size.as_str()),
        });
        let mut record = BaseRecord::with_opaque_to(
            &marker.topic,
            Box::new(Delivery {
                acks,
                prediction: None,
                dead_letter: None,
            }),
        )
        .payload(&[][..])
        .headers(headers);
        if let Some(key) = &marker.key {
            record = record.key(key.as_slice());
        }
        self.send(record)
    }

    /// Sends again, as markers, the dead letters the broker refused as too large. Their
    /// batches were kept waiting; a marker that cannot be sent fails its batch.
    pub(crate) fn resend_refused(&self) {
        let refused = match self.inner.context().refused.lock() {
            Ok(mut r) if !r.is_empty() => std::mem::take(&mut *r),
            _ => return,
        };
        for (acks, marker) in refused {
            // The refused message is settled once its marker is in the queue.
            let sent = self.send_marker(Arc::clone(&acks), marker);
            if let Err(e) = sent
                && let Ok(mut f) = acks.failure.lock()
            {
                f.get_or_insert_with(|| e.to_string());
            }
            acks.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Waits (at most `timeout`) until everything produced is acknowledged or failed, sending
    /// refused dead letters again as markers meanwhile.
    pub(crate) fn flush(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            self.resend_refused();
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let flushed = self.inner.flush(left.min(Duration::from_millis(100)));
            let refused = self
                .inner
                .context()
                .refused
                .lock()
                .is_ok_and(|r| !r.is_empty());
            if (flushed.is_ok() && !refused) || left.is_zero() {
                return;
            }
        }
    }
}

/// A partition's hot batches waiting for their acknowledgements, oldest first.
#[derive(Debug, Default)]
pub(crate) struct AckQueue {
    batches: VecDeque<(i64, Arc<Acks>)>,
    /// Every message of every batch up to this offset is acknowledged.
    through: Option<i64>,
}

impl AckQueue {
    /// Registers a hot batch ending at `last`.
    pub(crate) fn push(&mut self, last: i64, acks: Arc<Acks>) {
        self.batches.push_back((last, acks));
    }

    /// Moves past acknowledged batches; returns the highest offset all of whose messages (and
    /// every earlier one's) are acknowledged, or a delivery failure.
    pub(crate) fn advance(&mut self) -> std::result::Result<Option<i64>, String> {
        while let Some((last, acks)) = self.batches.front() {
            if let Some(failure) = acks.failure() {
                return Err(failure);
            }
            if !acks.done() {
                break;
            }
            self.through = Some(*last);
            self.batches.pop_front();
        }
        Ok(self.through)
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_size_refusal_turns_a_dead_letter_into_a_marker() {
        assert!(refused_as_too_large(Some(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
        assert!(refused_as_too_large(Some(
            RDKafkaErrorCode::InvalidMessageSize
        )));
        assert!(!refused_as_too_large(Some(
            RDKafkaErrorCode::RequestTimedOut
        )));
        assert!(!refused_as_too_large(None));
    }
}
