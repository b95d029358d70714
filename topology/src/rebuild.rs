//! `feedstream rebuild-state`: wipe one store of every task and rebuild it, from its
//! changelog or from its source topic, printing a digest to compare rebuilds.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use feedstream_stores::{InMemoryStore, KeyValueStore, RocksDbStore, StoreDigest, StoreName};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;

use crate::processor::task_dir;
use crate::state::{replay_changelog, Checkpoint, StateError, StateOpener};
use feedstream_core::event::{Envelope, InputTopic};
use feedstream_core::feed::{apply, FeedRules, TaskStores};
use feedstream_kafka::topics::{verify_layout, Topics, TopicsError};
use feedstream_kafka::{self as kafka, KafkaFailure, KafkaSettings, OutboundRecord};

#[derive(Debug, Clone)]
pub struct RebuildSettings {
    pub kafka: KafkaSettings,
    pub topics: Topics,
    pub state_dir: PathBuf,
    pub store: StoreName,
    /// Rebuild by replaying the source topic instead of the changelog.
    pub from_source: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Layout(#[from] TopicsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error(
        "store {path} is in use ({reason}); stop the processor that uses this --state-dir first"
    )]
    InUse { path: String, reason: String },
}

/// One task's rebuilt store.
#[derive(Debug, Clone)]
pub struct RebuiltTask {
    pub partition: i32,
    pub records: u64,
    pub elapsed: Duration,
    pub digest: StoreDigest,
    /// Records sent to the changelog to make it match a rebuild from source.
    pub republished: u64,
}

/// Combines the digests of every task, in task order.
pub fn combined_digest(tasks: &[RebuiltTask]) -> StoreDigest {
    let mut combined = StoreDigest::default();
    for task in tasks {
        let mut summary = task.digest.entries.to_be_bytes().to_vec();
        summary.extend(task.digest.hash.to_be_bytes());
        combined.add(&task.partition.to_be_bytes(), &summary);
    }
    combined.entries = tasks.iter().map(|task| task.digest.entries).sum();
    combined
}

/// Rebuilds `settings.store` for every task; `progress(partition, records)` is called
/// as records are applied.
pub async fn rebuild_state(
    settings: &RebuildSettings,
    progress: &mut dyn FnMut(i32, u64),
) -> Result<Vec<RebuiltTask>, RebuildError> {
    let partitions = verify_layout(&settings.kafka, &settings.topics, true)?;
    let mut rebuilt = Vec::new();
    for partition in 0..partitions {
        let started = Instant::now();
        let dir = task_dir(
            &settings.state_dir,
            &settings.topics.application_id,
            partition,
        );
        let path = dir.join(settings.store.as_str());
        let mut checkpoint = Checkpoint::read(&dir).ok().flatten().unwrap_or_default();
        if path.exists() {
            // Opening takes RocksDB's lock: a running processor makes this fail.
            RocksDbStore::open(&path).map_err(|error| RebuildError::InUse {
                path: path.display().to_string(),
                reason: error.to_string(),
            })?;
            // The checkpoint must stop vouching for the store before it is wiped.
            if checkpoint.offsets.remove(&settings.store).is_some() {
                checkpoint.write(&dir)?;
            }
            RocksDbStore::destroy(&path).map_err(StateError::from)?;
        }
        let opener = StateOpener {
            kafka: &settings.kafka,
            topics: &settings.topics,
            task_dir: &dir,
            partition,
        };
        let (store, records, position, republished) = if settings.from_source {
            rebuild_from_source(settings, partition, &path, progress).await?
        } else {
            let (store, restored) =
                opener.open_store(settings.store, None, &mut |_, n| progress(partition, n))?;
            (store, restored.records, restored.position, 0)
        };
        checkpoint.offsets.insert(settings.store, position);
        store.flush().map_err(StateError::from)?;
        checkpoint.write(&dir)?;
        rebuilt.push(RebuiltTask {
            partition,
            records,
            elapsed: started.elapsed(),
            digest: store.digest().map_err(StateError::from)?,
            republished,
        });
    }
    Ok(rebuilt)
}

/// Replays the store's source topic through the topology logic into a fresh store, then
/// sends the changelog whatever makes it equal to the result.
async fn rebuild_from_source(
    settings: &RebuildSettings,
    partition: i32,
    path: &std::path::Path,
    progress: &mut dyn FnMut(i32, u64),
) -> Result<(RocksDbStore, u64, i64, u64), RebuildError> {
    let (source, found_on) = match settings.store {
        StoreName::Followers => (&settings.topics.follow_events, InputTopic::FollowEvents),
        StoreName::AuthorPosts => (&settings.topics.post_events, InputTopic::PostEvents),
    };
    let scratch = tempfile::tempdir().map_err(|source| StateError::File {
        path: "temporary directory".into(),
        source,
    })?;
    let target = RocksDbStore::open(path).map_err(StateError::from)?;
    // The other store stays empty: events of one source only write their own store.
    let other = RocksDbStore::open(&scratch.path().join("other")).map_err(StateError::from)?;
    let (followers, recent) = if settings.store == StoreName::Followers {
        (target, other)
    } else {
        (other, target)
    };
    // Store content does not depend on the rules; only the discarded outputs do.
    let mut stores = TaskStores::new(followers, recent, FeedRules::default());

    let consumer = kafka::standalone_consumer(
        &settings.kafka,
        &format!("{}-rebuild", settings.topics.application_id),
    )?;
    let records = kafka::read_partition(
        &consumer,
        source,
        partition,
        &mut |message| {
            let payload = message.payload().unwrap_or_default();
            if let Ok(event) = Envelope::decode(payload, message.key(), found_on) {
                apply(&event, &mut stores).map_err(StateError::from)?;
                // Into the store now; the changelog gets the difference at the end.
                stores.drain_changes().map_err(StateError::from)?;
            }
            Ok::<(), RebuildError>(())
        },
        &mut |n| progress(partition, n),
    )?;

    let name = settings.store;
    let store = stores.store_mut(name);

    // What the changelog holds now, to send only the difference.
    let changelog: Arc<str> = settings.topics.changelog(name).into();
    let (low, high) = consumer
        .fetch_watermarks(&changelog, partition, Duration::from_secs(10))
        .map_err(KafkaFailure::Operation)?;
    let mut logged = InMemoryStore::default();
    replay_changelog(
        &consumer,
        &changelog,
        partition,
        low,
        high,
        &mut logged,
        &mut |_| {},
    )?;
    let rebuilt_entries = store.scan_prefix(&[]).map_err(StateError::from)?;
    let record = |key: Vec<u8>, payload: Option<Vec<u8>>| OutboundRecord {
        topic: changelog.clone(),
        partition: Some(partition),
        key,
        payload,
        timestamp: None,
        headers: Vec::new(),
    };
    let mut outbound = Vec::new();
    for (key, value) in &rebuilt_entries {
        if logged.get(key).map_err(StateError::from)?.as_ref() != Some(value) {
            outbound.push(record(key.clone(), Some(value.clone())));
        }
    }
    let rebuilt_keys: std::collections::BTreeSet<&Vec<u8>> =
        rebuilt_entries.iter().map(|(key, _)| key).collect();
    for (key, _) in logged.scan_prefix(&[]).map_err(StateError::from)? {
        if !rebuilt_keys.contains(&key) {
            outbound.push(record(key, None));
        }
    }
    let producer = kafka::batch_producer(
        &settings.kafka,
        &format!("{}-rebuild", settings.topics.application_id),
    )?;
    let acknowledged = producer.deliver(&outbound).await?;
    let position = acknowledged
        .last_offset(&changelog, partition)
        .map_or(high, |offset| (offset + 1).max(high));

    let store = into_store(stores, name);
    Ok((store, records, position, outbound.len() as u64))
}

fn into_store(stores: TaskStores<RocksDbStore>, name: StoreName) -> RocksDbStore {
    let (followers, recent) = stores.into_stores();
    match name {
        StoreName::Followers => followers,
        StoreName::AuthorPosts => recent,
    }
}
