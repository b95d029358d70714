//! Records that cannot be processed go to the dead-letter topic, unchanged, with headers
//! that say why and where they came from, so nothing is lost and processing goes on.

use crate::kafka::{InputRecord, OutboundRecord};

/// Which stage refused the record.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    Processor,
    Sink,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Processor => "processor",
            Stage::Sink => "sink",
        }
    }
}

/// The dead-letter record for `record`: original key and bytes, plus headers `reason`,
/// `stage`, `source_topic`, `source_partition`, `source_offset`, `attempts` and, when the
/// original had one, `event_id`.
pub fn dead_letter(
    topic: &str,
    record: &InputRecord,
    reason: &str,
    stage: Stage,
    attempts: u32,
) -> OutboundRecord {
    let mut headers = vec![
        ("reason", reason.to_string()),
        ("stage", stage.name().to_string()),
        ("source_topic", record.topic.clone()),
        ("source_partition", record.partition.to_string()),
        ("source_offset", record.offset.to_string()),
        ("attempts", attempts.to_string()),
    ];
    if let Some(event_id) = record.event_id {
        headers.push((crate::event::EVENT_ID_HEADER, event_id.to_string()));
    }
    OutboundRecord {
        topic: topic.to_string(),
        partition: None,
        key: record.key.clone().unwrap_or_default(),
        payload: record.payload.clone(),
        timestamp: record.timestamp,
        headers,
    }
}
