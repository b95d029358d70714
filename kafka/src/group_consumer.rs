//! A member of a consumer group that hands out batches cut at membership changes and
//! commits offsets synchronously.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;

use crate::client_log;
use crate::membership::{MembershipChange, MembershipContext};
use crate::metrics::LagLabels;
use crate::settings::{consumer_config, standalone_consumer, with_consumer_properties};
use crate::{InputRecord, KafkaFailure, KafkaSettings, Reader, TopicPartition};

/// What one read of a [`GroupConsumer`] may take.
#[derive(Debug, Clone, Copy)]
pub struct Intake {
    pub max_records: usize,
    /// How long the read waits for a first record.
    pub max_wait: Duration,
    /// How long, after the first record, it goes on taking records as they arrive.
    pub linger: Duration,
}

#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<InputRecord>,
    pub changes: Vec<MembershipChange>,
}

/// Who a member is: its group, its client id, and its instance id when it is a static
/// member.
#[derive(Debug, Clone)]
pub struct MemberIdentity {
    pub group_id: String,
    pub client_id: String,
    /// `group.instance.id`. A static member that shuts down keeps its partitions
    /// assigned to it, unprocessed, for the broker's session timeout, and takes them back
    /// when it returns within it: a rolling restart moves no task and restores nothing
    /// elsewhere. Without it, a member that leaves hands its partitions to the others at
    /// once, and takes some back (restoring them) when it returns.
    pub instance_id: Option<String>,
}

/// A member of a consumer group with manual, synchronous offset commits.
pub struct GroupConsumer {
    consumer: StreamConsumer<MembershipContext>,
    /// A client of its own for the end offsets [`GroupConsumer::caught_up`] asks for.
    /// The broker answers one connection's requests in order, so on the member's
    /// connection that ListOffsets waited behind the fetch the broker was holding, up
    /// to `fetch.wait.max.ms` (500 ms) whenever the partitions it fetched had nothing
    /// new: most of a replayed backlog's time went there.
    offsets: Reader,
    /// What [`GroupConsumer::join`] was given, to join again after a fatal error.
    settings: KafkaSettings,
    identity: MemberIdentity,
    topics: Vec<String>,
    lag: Family<LagLabels, Gauge>,
    /// Since when and how many times this member has tried to join while the broker
    /// still holds its instance id for a killed predecessor.
    rejoining: Option<(Instant, u32)>,
    /// A record that arrived after a membership change: first of the next batch.
    held: Option<InputRecord>,
    /// Offsets whose commit failed, committed with the next ones.
    uncommitted: BTreeMap<TopicPartition, i64>,
    /// The partitions this member owns, as of the changes handed out so far.
    assignment: BTreeSet<TopicPartition>,
}

/// Wait between joins while the instance id is still held by a killed predecessor: the
/// broker's session timeout (10 s here) bounds how many joins that takes.
const REJOIN_INTERVAL: Duration = Duration::from_secs(1);

impl GroupConsumer {
    /// Joins the group and subscribes to `topics` with Kafka's consumer group protocol
    /// (KIP-848): the broker assigns, incrementally, so when a member joins or leaves
    /// only the partitions that move are revoked and assigned, and the others keep
    /// being processed. Its `range` assignor gives partition i of every topic to the
    /// same member when the topics have equal partition counts: the co-partitioning the
    /// processor's tasks rely on. Session timeout and heartbeats are the broker's
    /// (`group.consumer.*` in deploy/kafka/broker.properties). The lag of each owned
    /// partition is kept in `lag`, refreshed every few seconds.
    pub fn join(
        settings: &KafkaSettings,
        identity: &MemberIdentity,
        topics: &[&str],
        lag: Family<LagLabels, Gauge>,
    ) -> Result<Self, KafkaFailure> {
        let topics: Vec<String> = topics.iter().map(|topic| topic.to_string()).collect();
        Ok(Self {
            consumer: subscribe(settings, identity, &topics, lag.clone())?,
            offsets: standalone_consumer(settings, &format!("{}-offsets", identity.client_id))?,
            settings: settings.clone(),
            identity: identity.clone(),
            topics,
            lag,
            rejoining: None,
            held: None,
            uncommitted: BTreeMap::new(),
            assignment: BTreeSet::new(),
        })
    }

    /// Waits up to `intake.max_wait` for a first record, then takes records for
    /// `intake.linger` more (zero: only those already fetched), up to
    /// `intake.max_records`: a record is handed on at once when traffic is light, and
    /// batches grow by themselves under load (from what arrived while the last batch
    /// was written). Stops early at a membership change or at shutdown. Records of the
    /// returned batch all precede its changes. Fails only when the client failed for
    /// good ([`KafkaFailure::Fatal`]).
    pub async fn next_batch(
        &mut self,
        intake: Intake,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Batch, KafkaFailure> {
        let mut batch = Batch::default();
        self.serve_offsets_client();
        if !self.uncommitted.is_empty() {
            if let Err(error) = self.commit(&BTreeMap::new()) {
                tracing::debug!(%error, "earlier offsets still not committed");
            }
        }
        let now = tokio::time::Instant::now();
        // Until when this read takes records: the first one's wait, then its linger.
        let mut until = now + intake.max_wait;
        if let Some(record) = self.held.take() {
            batch.records.push(record);
            until = now + intake.linger;
        }
        while batch.records.len() < intake.max_records && !*shutdown.borrow() {
            if self.consumer.context().has_changes() {
                break;
            }
            let remaining = until.saturating_duration_since(tokio::time::Instant::now());
            // A zero step still takes a record already fetched (the receive is polled
            // once before the timeout is looked at).
            let step = remaining.min(Duration::from_millis(100));
            let received = tokio::select! {
                received = tokio::time::timeout(step, self.consumer.recv()) => {
                    received.map(|received| received.map(|message| InputRecord::from_message(&message)))
                }
                _ = shutdown.changed() => break,
            };
            match received {
                Ok(Ok(record)) => {
                    if self.consumer.context().has_changes() {
                        self.held = Some(record);
                        break;
                    }
                    if batch.records.is_empty() {
                        until = tokio::time::Instant::now() + intake.linger;
                    }
                    batch.records.push(record);
                }
                Ok(Err(error)) => {
                    if let Some((code, reason)) = self.consumer.client().fatal_error() {
                        self.after_fatal(code, reason, shutdown).await?;
                    } else if client_log::is_connection_failure(&error) {
                        tracing::debug!(%error, "consumer error; librdkafka retries");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    } else {
                        tracing::warn!(%error, "consumer error; librdkafka retries");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    if remaining.is_zero() {
                        break;
                    }
                }
                // Nothing more fetched within the linger: hand on what there is.
                Err(_) if !batch.records.is_empty() => {
                    if remaining.is_zero() {
                        break;
                    }
                }
                // Nothing fetched: a client that failed for good fetches nothing ever.
                Err(_) => {
                    if let Some((code, reason)) = self.consumer.client().fatal_error() {
                        self.after_fatal(code, reason, shutdown).await?;
                    } else if remaining.is_zero() {
                        break;
                    }
                }
            }
        }
        batch.changes = self.consumer.context().take();
        for change in &batch.changes {
            match change {
                MembershipChange::Revoked(partitions) => {
                    for partition in partitions {
                        self.uncommitted.remove(partition);
                        self.assignment.remove(partition);
                    }
                }
                MembershipChange::Assigned(partitions) => {
                    self.assignment.extend(partitions.iter().cloned());
                    if let Some((since, joins)) = self.rejoining.take() {
                        tracing::info!(
                            waited = ?since.elapsed(),
                            joins,
                            "joined the group again with this instance id"
                        );
                    }
                }
            }
        }
        // librdkafka hands out no record fetched under an assignment that has since
        // been revoked, so a record held back at a change belongs to the assignment
        // that follows it: it is dropped only if its partition is gone (it is then
        // read again from the committed offset by its next owner). Dropping it because
        // its partition was revoked *and assigned again* would skip it for good: the
        // fetch goes on after it.
        if self.held.as_ref().is_some_and(|held| {
            !self
                .assignment
                .contains(&(held.topic.clone(), held.partition))
        }) {
            self.held = None;
        }
        if !batch.changes.is_empty() {
            tracing::debug!(changes = ?batch.changes, "consumer group membership changed");
        }
        Ok(batch)
    }

    /// After librdkafka's client failed for good. A static member restarted after a
    /// kill -9 is refused (`UNRELEASED_INSTANCE_ID`, fatal in librdkafka) until the
    /// broker expires its predecessor's session, which keeps the predecessor's
    /// partitions meanwhile: this member, which owns nothing yet, joins again every
    /// [`REJOIN_INTERVAL`] until it is let in. Any other fatal error ends the member.
    async fn after_fatal(
        &mut self,
        code: RDKafkaErrorCode,
        reason: String,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), KafkaFailure> {
        if code != RDKafkaErrorCode::UnreleasedInstanceId || !self.assignment.is_empty() {
            return Err(KafkaFailure::Fatal { code, reason });
        }
        let (_, joins) = self.rejoining.get_or_insert_with(|| {
            tracing::warn!(
                group = %self.identity.group_id,
                instance = self.identity.instance_id.as_deref().unwrap_or_default(),
                "the broker still holds this instance id for a member that did not leave \
                 (killed?); joining again once it expires that member's session"
            );
            (Instant::now(), 0)
        });
        *joins += 1;
        tokio::select! {
            _ = tokio::time::sleep(REJOIN_INTERVAL) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        let fresh = subscribe(
            &self.settings,
            &self.identity,
            &self.topics,
            self.lag.clone(),
        )?;
        let failed = std::mem::replace(&mut self.consumer, fresh);
        // Closing a consumer polls it until librdkafka is done: off the runtime's threads.
        tokio::task::block_in_place(|| drop(failed));
        Ok(())
    }

    /// Commits `next offset to read` for each partition, with any earlier offsets whose
    /// commit failed, and waits for the broker. Offsets that fail to commit are kept and
    /// tried again with the next commit or batch, so a failure is never final while the
    /// partition stays assigned; until then a restart replays from the older commit.
    pub fn commit(&mut self, offsets: &BTreeMap<TopicPartition, i64>) -> Result<(), KafkaFailure> {
        for (partition, offset) in offsets {
            let pending = self.uncommitted.entry(partition.clone()).or_insert(*offset);
            *pending = (*pending).max(*offset);
        }
        if self.uncommitted.is_empty() {
            return Ok(());
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &self.uncommitted {
            list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                .map_err(KafkaFailure::Operation)?;
        }
        tokio::task::block_in_place(|| self.consumer.commit(&list, CommitMode::Sync))
            .map_err(KafkaFailure::Operation)?;
        self.uncommitted.clear();
        Ok(())
    }

    /// Whether this member has read everything the broker holds of each of `partitions`
    /// of `topic`, asked in one request of the offsets client. The end offsets are asked
    /// of the broker at the time of the question: a fetch response reads its partitions
    /// one after another, so the watermark it carried can miss a record stored before a
    /// later record of another partition. Before the first record arrives the position
    /// is unknown; then the committed offset (or, without one, the start of the
    /// partition) is where reading resumes.
    pub fn caught_up(
        &self,
        topic: &str,
        partitions: &[i32],
        timeout: Duration,
    ) -> Result<BTreeMap<i32, bool>, KafkaFailure> {
        let list = |offset: Offset| -> Result<TopicPartitionList, KafkaFailure> {
            let mut list = TopicPartitionList::new();
            for partition in partitions {
                list.add_partition_offset(topic, *partition, offset)
                    .map_err(KafkaFailure::Operation)?;
            }
            Ok(list)
        };
        let offsets_of = |list: &TopicPartitionList| -> BTreeMap<i32, i64> {
            list.elements_for_topic(topic)
                .into_iter()
                .filter_map(|element| match element.offset() {
                    Offset::Offset(offset) => Some((element.partition(), offset)),
                    _ => None,
                })
                .collect()
        };
        tokio::task::block_in_place(|| {
            // A ListOffsets for "latest" (Offset::End, timestamp -1) of every partition.
            let ends = self
                .offsets
                .offsets_for_times(list(Offset::End)?, timeout)
                .map_err(KafkaFailure::Operation)?;
            let ends = offsets_of(&ends);
            let mut positions = self
                .consumer
                .position()
                .map(|positions| offsets_of(&positions))
                .unwrap_or_default();
            if partitions.iter().any(|p| !positions.contains_key(p)) {
                let committed = self
                    .consumer
                    .committed_offsets(list(Offset::Invalid)?, timeout)
                    .map_err(KafkaFailure::Operation)?;
                for (partition, offset) in offsets_of(&committed) {
                    positions.entry(partition).or_insert(offset);
                }
            }
            Ok(partitions
                .iter()
                .map(|partition| {
                    let end = ends.get(partition).copied().unwrap_or(i64::MAX);
                    // Without a position or a committed offset, reading starts at the
                    // beginning, offset 0 for inputs (they are kept forever).
                    let resumes_at = positions.get(partition).copied().unwrap_or(0);
                    (*partition, resumes_at >= end)
                })
                .collect())
        })
    }

    /// Hands the offsets client's queued events (statistics, errors) to its context:
    /// it reads no records, so nothing else polls it, and unpolled events pile up.
    fn serve_offsets_client(&self) {
        while let Some(event) = self.offsets.poll(Duration::ZERO) {
            if let Err(error) = event {
                tracing::debug!(%error, "offsets client error; librdkafka retries");
                break;
            }
        }
    }

    /// What a transaction needs to commit this member's offsets (KIP-447): the broker
    /// refuses them from a member that is no longer in the group's current epoch.
    pub fn group_metadata(&self) -> Option<rdkafka::consumer::ConsumerGroupMetadata> {
        self.consumer.group_metadata()
    }

    /// Stops fetching these partitions (the member stays in the group), or resumes.
    pub fn set_paused(
        &self,
        partitions: &[TopicPartition],
        paused: bool,
    ) -> Result<(), KafkaFailure> {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in partitions {
            list.add_partition(topic, *partition);
        }
        let result = if paused {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        };
        result.map_err(KafkaFailure::Operation)
    }
}

/// A consumer of `identity`'s group, subscribed to `topics`.
fn subscribe(
    settings: &KafkaSettings,
    identity: &MemberIdentity,
    topics: &[String],
    lag: Family<LagLabels, Gauge>,
) -> Result<StreamConsumer<MembershipContext>, KafkaFailure> {
    let mut config = consumer_config(settings, &identity.client_id);
    config
        .set("group.id", &identity.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("group.protocol", "consumer")
        .set("group.remote.assignor", "range")
        // Restoration and retried sink writes happen between polls.
        .set("max.poll.interval.ms", "300000")
        // Bounds what librdkafka prefetches (one queue for all partitions) while the
        // runtime is busy or retrying: memory stays bounded whatever the input rate.
        // The runtimes buffer records themselves (the processor up to 4,000 per
        // partition), so more prefetch only holds the same backlog twice: a replaying
        // processor peaked at 109-124 MB RSS with 16 MB here, 98 MB with 4 MB, at the
        // same backlog speed within the bench's noise (bench/results/2-core-epyc-write-batch/).
        .set("queued.max.messages.kbytes", "4096");
    if let Some(instance_id) = &identity.instance_id {
        config.set("group.instance.id", instance_id);
    }
    let context = MembershipContext {
        changes: Mutex::default(),
        group: identity.group_id.clone(),
        lag,
    };
    let consumer: StreamConsumer<MembershipContext> = with_consumer_properties(config, settings)
        .create_with_context(context)
        .map_err(KafkaFailure::Configuration)?;
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(KafkaFailure::Operation)?;
    Ok(consumer)
}
