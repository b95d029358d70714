//! Reading one partition from a start offset to an end offset with a consumer in no
//! group: what restores, rebuilds, `dlq list` and the benchmark's ceilings do.

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::{KafkaFailure, Reader};

/// How long a partition may give no record before the read is reported stalled.
const QUIET: Duration = Duration::from_secs(60);

/// Offsets `start..end` of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: i64,
    pub end: i64,
}

/// The partition's offsets from its beginning to its end, as of the call.
pub fn whole_partition(
    consumer: &Reader,
    topic: &str,
    partition: i32,
) -> Result<Span, KafkaFailure> {
    let (start, end) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .map_err(KafkaFailure::Operation)?;
    Ok(Span { start, end })
}

/// Reads a whole partition (see [`whole_partition`]) with [`read_span`].
pub fn read_partition<E: From<KafkaFailure>>(
    consumer: &Reader,
    topic: &str,
    partition: i32,
    each: &mut dyn FnMut(&BorrowedMessage<'_>) -> Result<(), E>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, E> {
    let span = whole_partition(consumer, topic, partition)?;
    read_span(consumer, topic, partition, span, each, progress)
}

/// Calls `each` for every record of `span` in offset order and returns how many there
/// were; `progress` hears the count every 10,000 records and at the end. Compaction
/// leaves gaps, so the read ends when the consumer's position passes the end, whether
/// or not a record sits at `end - 1`. A partition that gives nothing for a minute
/// before its end fails with [`KafkaFailure::Stalled`] (retriable).
pub fn read_span<E: From<KafkaFailure>>(
    consumer: &Reader,
    topic: &str,
    partition: i32,
    span: Span,
    each: &mut dyn FnMut(&BorrowedMessage<'_>) -> Result<(), E>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, E> {
    if span.start >= span.end {
        return Ok(0);
    }
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(span.start))
        .map_err(KafkaFailure::Operation)?;
    consumer.assign(&list).map_err(KafkaFailure::Operation)?;
    let mut count = 0u64;
    let mut next = span.start;
    let mut quiet_since = Instant::now();
    while next < span.end {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                quiet_since = Instant::now();
                each(&message)?;
                count += 1;
                next = message.offset() + 1;
                if count % 10_000 == 0 {
                    progress(count);
                }
            }
            Some(Err(error)) => return Err(KafkaFailure::Operation(error).into()),
            None => {
                next = next.max(position(consumer, topic, partition).unwrap_or(next));
                if next < span.end && quiet_since.elapsed() > QUIET {
                    return Err(KafkaFailure::Stalled {
                        topic: topic.to_string(),
                        partition,
                        reached: next,
                        end: span.end,
                        quiet: QUIET,
                    }
                    .into());
                }
            }
        }
    }
    consumer.unassign().map_err(KafkaFailure::Operation)?;
    progress(count);
    Ok(count)
}

fn position(consumer: &Reader, topic: &str, partition: i32) -> Option<i64> {
    let positions = consumer.position().ok()?;
    match positions.find_partition(topic, partition)?.offset() {
        Offset::Offset(at) => Some(at),
        _ => None,
    }
}
