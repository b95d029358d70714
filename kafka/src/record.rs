//! Records as the runtimes handle them, detached from librdkafka's borrowed messages.

use std::sync::Arc;

use rdkafka::message::{Headers, Message};

use feedstream_core::event::EVENT_ID_HEADER;

/// One partition of one topic.
pub type TopicPartition = (String, i32);

/// A record read from an input topic, detached from the consumer.
#[derive(Debug, Clone)]
pub struct InputRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The record's timestamp (Unix ms), when it has one.
    pub timestamp: Option<i64>,
    /// The `event_id` header, when present and numeric.
    pub event_id: Option<u64>,
}

impl InputRecord {
    pub(crate) fn from_message<M: Message>(message: &M) -> Self {
        let event_id = message.headers().and_then(|headers| {
            headers
                .iter()
                .find(|header| header.key == EVENT_ID_HEADER)
                .and_then(|header| header.value)
                .and_then(|value| std::str::from_utf8(value).ok())
                .and_then(|text| text.parse().ok())
        });
        Self {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            timestamp: message.timestamp().to_millis(),
            event_id,
        }
    }

    /// A short description for logs and dead-letter headers.
    pub fn source(&self) -> String {
        format!("{}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

/// One record to produce.
#[derive(Debug, Clone)]
pub struct OutboundRecord {
    /// Shared by the records of a batch: a fan-out writes thousands to one topic.
    pub topic: Arc<str>,
    /// `None` lets the partitioner choose by key.
    pub partition: Option<i32>,
    pub key: Vec<u8>,
    /// `None` is a tombstone.
    pub payload: Option<Vec<u8>>,
    pub timestamp: Option<i64>,
    pub headers: Vec<(&'static str, String)>,
}
