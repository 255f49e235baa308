//! The monitor's consumer: every partition of its topics assigned directly (no group, no
//! commits), each from the first message at or after a time.

use std::time::Duration;

use quiver_core::Config;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::{Error, Result};

/// A consumer assigned every partition of `topics` from the first message at or after
/// `from_ms` (ms since the epoch).
pub(crate) fn assigned(config: &Config, topics: &[String], from_ms: i64) -> Result<BaseConsumer> {
    let mut client = quiver_kafka::client_config(&config.kafka);
    client
        .set("group.id", "quiver-monitor")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "latest");
    let consumer: BaseConsumer = client.create()?;
    let timeout = Duration::from_millis(config.kafka.connect_timeout_ms);
    let mut wanted = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        if partitions == 0 {
            return Err(Error::Invalid(format!(
                "topic `{topic}` does not exist (or has no partition): start the stack and the worker first"
            )));
        }
        for p in 0..partitions {
            let p = i32::try_from(p).map_err(|e| Error::Invalid(e.to_string()))?;
            wanted.add_partition_offset(topic, p, Offset::Offset(from_ms))?;
        }
    }
    let mut start = consumer.offsets_for_times(wanted, timeout)?;
    // No message that recent: the end (`Offset::End`). A broker without timestamp lookups
    // answers something else: read those partitions from the beginning (the loop skips
    // messages older than `from_ms`).
    let unknown: Vec<(String, i32)> = start
        .elements()
        .iter()
        .filter(|e| !matches!(e.offset(), Offset::Offset(o) if o >= 0) && e.offset() != Offset::End)
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect();
    for (topic, partition) in unknown {
        start.set_partition_offset(&topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&start)?;
    Ok(consumer)
}
