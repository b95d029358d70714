//! One input record through the feed rules, and what it causes as records to produce:
//! feed-events, changelog records, or a dead letter.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use feedstream_core::event::{
    Envelope, FeedChange, FeedEvent, InputTopic, EVENT_ID_HEADER, FEED_EVENT_VERSION,
};
use feedstream_core::feed::apply;
use feedstream_kafka::dead_letter::{dead_letter, Failure, Stage};
use feedstream_kafka::topics::Topics;
use feedstream_kafka::{InputRecord, TopicPartition};
use feedstream_stores::{StoreError, StoreName};

use super::outbound::{Destination, Outbound};
use super::task::Task;
use super::ProcessorSettings;
use crate::metrics::ProcessorMetrics;

/// The names of the topics the processor writes, made once: every outbound record
/// shares one.
pub(super) struct OutputTopics {
    feed_events: Arc<str>,
    changelogs: BTreeMap<StoreName, Arc<str>>,
}

impl OutputTopics {
    pub(super) fn new(topics: &Topics) -> Self {
        Self {
            feed_events: topics.feed_events.as_str().into(),
            changelogs: StoreName::ALL
                .into_iter()
                .map(|store| (store, topics.changelog(store).into()))
                .collect(),
        }
    }

    /// The store whose changelog `topic` is, if it is one.
    pub(super) fn changelog_of(&self, topic: &str) -> Option<StoreName> {
        self.changelogs
            .iter()
            .find(|(_, name)| name.as_ref() == topic)
            .map(|(store, _)| *store)
    }
}

/// What one batch produced and may commit.
pub(super) struct Effects {
    outputs: Arc<OutputTopics>,
    pub(super) outbound: Outbound,
    pub(super) commit: BTreeMap<TopicPartition, i64>,
    pub(super) feed_changes: u64,
    /// Of those, ENTRY_ADDED.
    pub(super) entries_added: u64,
    /// Reason of each dead letter sent.
    pub(super) dead_letters: Vec<&'static str>,
    pub(super) records: BTreeMap<String, u64>,
    /// Tasks whose stores the batch wrote, with the timestamp of the last event that
    /// did: their changelog records are taken once per batch (see [`changelog_records`]).
    pub(super) written: BTreeMap<i32, i64>,
    /// Changelog records among `outbound`.
    pub(super) changelog_records: u64,
}

impl Effects {
    /// Effects of a new batch, in the slots of an earlier one.
    pub(super) fn new(outputs: Arc<OutputTopics>, mut outbound: Outbound) -> Self {
        outbound.reset();
        Self {
            outputs,
            outbound,
            commit: BTreeMap::new(),
            feed_changes: 0,
            entries_added: 0,
            dead_letters: Vec::new(),
            records: BTreeMap::new(),
            written: BTreeMap::new(),
            changelog_records: 0,
        }
    }
}

/// Applies one record to its task and appends what it causes to `effects`.
pub(super) fn process_record(
    settings: &ProcessorSettings,
    metrics: &ProcessorMetrics,
    task: &mut Task,
    found_on: InputTopic,
    record: InputRecord,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let topics = &settings.topics;
    let decoded = Envelope::decode(
        record.payload.as_deref().unwrap_or_default(),
        record.key.as_deref(),
        found_on,
    );
    match decoded {
        Ok(event) => {
            let changes = apply(&event, &mut task.stores)?;
            let entries_added = changes
                .iter()
                .filter(|change| matches!(change, FeedChange::EntryAdded { .. }))
                .count() as u64;
            effects.feed_changes += changes.len() as u64;
            effects.entries_added += entries_added;
            tracing::debug!(event_id = %event.event_id, event_type = event.type_name(), task = task.partition, changes = changes.len(), "event processed");
            let mut event_id = itoa::Buffer::new();
            let event_id = event_id.format(event.event_id.get());
            for change in changes {
                let owner = change.key().get();
                let value = FeedEvent {
                    change,
                    cause_event_id: event.event_id,
                    timestamp: event.timestamp,
                    version: FEED_EVENT_VERSION,
                };
                let to = Destination {
                    topic: &effects.outputs.feed_events,
                    partition: None,
                    timestamp: event.timestamp,
                    header: Some((EVENT_ID_HEADER, event_id)),
                };
                effects.outbound.write(to, |key, payload| {
                    key.extend_from_slice(itoa::Buffer::new().format(owner).as_bytes());
                    value.write_json(payload);
                    true
                });
            }
            effects.written.insert(task.partition, event.timestamp);
            metrics.observe_event(
                event.type_name(),
                started.elapsed().as_secs_f64(),
                entries_added,
            );
        }
        Err(invalid) => {
            tracing::warn!(source = %record.source(), event_id = record.event_id.map(tracing::field::display), reason = %invalid, "dead-lettering input record");
            metrics.observe_event("INVALID", started.elapsed().as_secs_f64(), 0);
            let failure = Failure::permanent(invalid.code(), invalid.to_string(), Stage::Processor);
            effects.dead_letters.push(failure.reason);
            effects
                .outbound
                .push(dead_letter(&topics.dead_letter, &record, &failure));
        }
    }
    *effects.records.entry(record.topic.clone()).or_default() += 1;
    effects
        .commit
        .insert((record.topic, record.partition), record.offset + 1);
    Ok(())
}

/// Writes the task's store writes since the last batch to its stores, one write batch
/// per store, and appends their changelog records: one per key written, with its last
/// value, at the timestamp of the last event that wrote the task's stores.
pub(super) fn changelog_records(
    task: &mut Task,
    timestamp: i64,
    effects: &mut Effects,
) -> Result<(), StoreError> {
    for (store, change) in task.stores.drain_changes()? {
        effects.changelog_records += 1;
        let to = Destination {
            topic: &effects.outputs.changelogs[&store],
            partition: Some(task.partition),
            timestamp,
            header: None,
        };
        effects.outbound.write(to, |key, payload| {
            key.extend_from_slice(&change.key);
            match &change.value {
                Some(value) => {
                    payload.extend_from_slice(value);
                    true
                }
                None => false,
            }
        });
    }
    Ok(())
}
