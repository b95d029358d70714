//! Records that cannot be processed go to the dead-letter topic, unchanged, with headers
//! that say why and where they came from, so nothing is lost and processing goes on.
//! `feedstream dlq` reads them back with [`DeadLetterHeaders::parse`].

use rdkafka::message::{Headers, Message};

use crate::topics::{partition_counts, Topics};
use crate::{InputRecord, KafkaFailure, KafkaSettings, OutboundRecord};

/// Which stage refused the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Processor,
    Sink,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Processor => "processor",
            Stage::Sink => "sink",
        }
    }
}

/// Why a record is dead-lettered, and how hard it was tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Stable short name (`undecodable`, `wrong_key`, `write_rejected`, ...).
    pub reason: &'static str,
    /// The error itself, for people.
    pub detail: String,
    pub stage: Stage,
    pub attempts: u32,
    /// Unix milliseconds of the first and the last failed attempt.
    pub first_failure_ms: i64,
    pub last_failure_ms: i64,
}

impl Failure {
    /// A failure that no retry can change (the record itself is malformed): one attempt.
    pub fn permanent(reason: &'static str, detail: String, stage: Stage) -> Self {
        let now = now_ms();
        Self {
            reason,
            detail,
            stage,
            attempts: 1,
            first_failure_ms: now,
            last_failure_ms: now,
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

/// Header names of a dead-letter record.
pub mod header {
    pub const REASON: &str = "reason";
    pub const DETAIL: &str = "detail";
    pub const STAGE: &str = "stage";
    pub const SOURCE_TOPIC: &str = "source_topic";
    pub const SOURCE_PARTITION: &str = "source_partition";
    pub const SOURCE_OFFSET: &str = "source_offset";
    pub const ATTEMPTS: &str = "attempts";
    pub const FIRST_FAILURE_MS: &str = "first_failure_time_ms";
    pub const LAST_FAILURE_MS: &str = "last_failure_time_ms";
    /// On a record `feedstream dlq replay` published: the dead letter it replays
    /// (`<partition>:<offset>` of the dead-letter topic).
    pub const REPLAY_OF: &str = "dlq_replay_of";
}

/// The dead-letter record for `record`: original key, value and timestamp, plus headers
/// for the failure, the source position and, when the original had one, `event_id`.
pub fn dead_letter(topic: &str, record: &InputRecord, failure: &Failure) -> OutboundRecord {
    let mut headers = vec![
        (header::REASON, failure.reason.to_string()),
        (header::DETAIL, failure.detail.clone()),
        (header::STAGE, failure.stage.name().to_string()),
        (header::SOURCE_TOPIC, record.topic.clone()),
        (header::SOURCE_PARTITION, record.partition.to_string()),
        (header::SOURCE_OFFSET, record.offset.to_string()),
        (header::ATTEMPTS, failure.attempts.to_string()),
        (
            header::FIRST_FAILURE_MS,
            failure.first_failure_ms.to_string(),
        ),
        (header::LAST_FAILURE_MS, failure.last_failure_ms.to_string()),
    ];
    if let Some(event_id) = record.event_id {
        headers.push((
            feedstream_core::event::EVENT_ID_HEADER,
            event_id.to_string(),
        ));
    }
    OutboundRecord {
        topic: topic.into(),
        partition: None,
        key: record.key.clone().unwrap_or_default(),
        payload: record.payload.clone(),
        timestamp: record.timestamp,
        headers,
    }
}

/// The headers of a dead-letter record, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterHeaders {
    pub reason: String,
    pub detail: String,
    pub stage: String,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub attempts: u32,
    pub first_failure_ms: i64,
    pub last_failure_ms: i64,
}

impl DeadLetterHeaders {
    /// `None` when a header is missing or malformed: not a record this build wrote.
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Option<Self> {
        fn number<T: std::str::FromStr>(text: Option<String>) -> Option<T> {
            text?.parse().ok()
        }
        Some(Self {
            reason: get(header::REASON)?,
            detail: get(header::DETAIL).unwrap_or_default(),
            stage: get(header::STAGE)?,
            source_topic: get(header::SOURCE_TOPIC)?,
            source_partition: number(get(header::SOURCE_PARTITION))?,
            source_offset: number(get(header::SOURCE_OFFSET))?,
            attempts: number(get(header::ATTEMPTS))?,
            first_failure_ms: number(get(header::FIRST_FAILURE_MS))?,
            last_failure_ms: number(get(header::LAST_FAILURE_MS))?,
        })
    }
}

/// Which dead letters an operator means.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    pub reason: Option<String>,
    pub source_topic: Option<String>,
    /// Unix milliseconds bounds on the last failure, inclusive.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

impl DeadLetterFilter {
    pub fn matches(&self, headers: &DeadLetterHeaders) -> bool {
        self.reason.as_ref().is_none_or(|r| *r == headers.reason)
            && self
                .source_topic
                .as_ref()
                .is_none_or(|t| *t == headers.source_topic)
            && self.since_ms.is_none_or(|t| headers.last_failure_ms >= t)
            && self.until_ms.is_none_or(|t| headers.last_failure_ms <= t)
    }
}

/// A record of the dead-letter topic, read back.
#[derive(Debug, Clone)]
pub struct StoredDeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub event_id: Option<String>,
    pub headers: DeadLetterHeaders,
    /// Whether `feedstream dlq replay` already published it again.
    pub replayed: bool,
}

impl StoredDeadLetter {
    /// `<partition>:<offset>` in the dead-letter topic: what a replay marker names.
    pub fn position(&self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }
}

/// Every dead letter in the topic, oldest first per partition, each marked replayed
/// when a replay marker names it. Records without dead-letter headers are skipped.
pub fn read_dead_letters(
    settings: &KafkaSettings,
    topics: &Topics,
) -> Result<Vec<StoredDeadLetter>, KafkaFailure> {
    let topic = &topics.dead_letter;
    let partitions = partition_counts(settings, std::time::Duration::from_secs(10))?
        .get(topic)
        .copied()
        .unwrap_or(0);
    let consumer = crate::standalone_consumer(settings, &format!("{}-dlq", topics.application_id))?;
    let mut letters = Vec::new();
    let mut replayed = std::collections::BTreeSet::new();
    for partition in 0..partitions {
        crate::read_partition(
            &consumer,
            topic,
            partition,
            &mut |message| {
                let get = |name: &str| {
                    message.headers().and_then(|headers| {
                        headers
                            .iter()
                            .find(|header| header.key == name)
                            .and_then(|header| header.value)
                            .map(|value| String::from_utf8_lossy(value).into_owned())
                    })
                };
                if let Some(of) = get(header::REPLAY_OF) {
                    replayed.insert(of);
                } else if let Some(headers) = DeadLetterHeaders::parse(get) {
                    letters.push(StoredDeadLetter {
                        partition,
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        payload: message.payload().map(<[u8]>::to_vec),
                        event_id: get(feedstream_core::event::EVENT_ID_HEADER),
                        headers,
                        replayed: false,
                    });
                }
                Ok::<(), KafkaFailure>(())
            },
            &mut |_| {},
        )?;
    }
    for letter in &mut letters {
        letter.replayed = replayed.contains(&letter.position());
    }
    Ok(letters)
}

/// Publishes `letter` again to its source topic and partition, unchanged, then marks it
/// replayed in the dead-letter topic, so that a second replay skips it. A crash between
/// the two publishes it twice, which the topology absorbs (it is idempotent by event).
pub async fn replay(
    producer: &crate::BatchProducer,
    topics: &Topics,
    letter: &StoredDeadLetter,
) -> Result<(), KafkaFailure> {
    let position = letter.position();
    let mut headers = vec![(header::REPLAY_OF, position.clone())];
    if let Some(event_id) = &letter.event_id {
        headers.push((feedstream_core::event::EVENT_ID_HEADER, event_id.clone()));
    }
    let republished = OutboundRecord {
        topic: letter.headers.source_topic.as_str().into(),
        partition: Some(letter.headers.source_partition),
        key: letter.key.clone().unwrap_or_default(),
        payload: letter.payload.clone(),
        timestamp: None,
        headers,
    };
    producer.deliver(std::slice::from_ref(&republished)).await?;
    let marker = OutboundRecord {
        topic: topics.dead_letter.as_str().into(),
        partition: Some(letter.partition),
        key: letter.key.clone().unwrap_or_default(),
        payload: None,
        timestamp: None,
        headers: vec![(header::REPLAY_OF, position)],
    };
    producer.deliver(std::slice::from_ref(&marker)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_read_back_as_written() {
        let record = InputRecord {
            topic: "post-events".into(),
            partition: 3,
            offset: 42,
            key: Some(b"7".to_vec()),
            payload: Some(b"{oops".to_vec()),
            timestamp: Some(1_700_000_000_000),
            event_id: Some(99),
        };
        let failure = Failure {
            reason: "write_rejected",
            detail: "check constraint".into(),
            stage: Stage::Sink,
            attempts: 5,
            first_failure_ms: 10,
            last_failure_ms: 20,
        };
        let written = dead_letter("dead-letter-events", &record, &failure);
        assert_eq!(written.payload, record.payload);
        assert_eq!(written.key, b"7");
        let get = |name: &str| {
            written
                .headers
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.clone())
        };
        assert_eq!(get("event_id").as_deref(), Some("99"));
        let parsed = DeadLetterHeaders::parse(get).unwrap();
        assert_eq!(
            parsed,
            DeadLetterHeaders {
                reason: "write_rejected".into(),
                detail: "check constraint".into(),
                stage: "sink".into(),
                source_topic: "post-events".into(),
                source_partition: 3,
                source_offset: 42,
                attempts: 5,
                first_failure_ms: 10,
                last_failure_ms: 20,
            }
        );
        assert_eq!(DeadLetterHeaders::parse(|_| None), None);

        let all = DeadLetterFilter::default();
        assert!(all.matches(&parsed));
        let by = |filter: DeadLetterFilter| filter.matches(&parsed);
        assert!(by(DeadLetterFilter {
            reason: Some("write_rejected".into()),
            source_topic: Some("post-events".into()),
            since_ms: Some(20),
            until_ms: Some(20),
        }));
        assert!(!by(DeadLetterFilter {
            reason: Some("undecodable".into()),
            ..all.clone()
        }));
        assert!(!by(DeadLetterFilter {
            source_topic: Some("follow-events".into()),
            ..all.clone()
        }));
        assert!(!by(DeadLetterFilter {
            since_ms: Some(21),
            ..all.clone()
        }));
        assert!(!by(DeadLetterFilter {
            until_ms: Some(19),
            ..all
        }));
    }
}
