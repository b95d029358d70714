//! Task state on disk: opening a task's stores, restoring them from their changelogs,
//! and the checkpoint file that says which changelog offsets the local stores reflect.
//!
//! Rules (DESIGN.md §5): a checkpoint never claims more than the local store holds (the
//! WAL is synced before it is written, and it is written atomically); missing or corrupt
//! local state means a full restore from the changelog, never silently empty state.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use feedstream_stores::{KeyValueStore, RocksDbStore, StoreError, StoreName};
use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Message};

use feedstream_kafka::topics::Topics;
use feedstream_kafka::{self as kafka, KafkaFailure, KafkaSettings, Span};

const CHECKPOINT_FILE: &str = "checkpoint";
const CHECKPOINT_HEADER: &str = "feedstream-checkpoint v1";

/// Why a task's state could not be opened or restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kafka(#[from] KafkaFailure),
    #[error("state directory file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StateError {
    pub fn is_retriable(&self) -> bool {
        match self {
            StateError::Kafka(failure) => failure.is_retriable(),
            StateError::Store(_) | StateError::File { .. } => false,
        }
    }
}

/// Changelog offsets (next offset to read) the local stores of one task reflect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    pub offsets: BTreeMap<StoreName, i64>,
}

impl Checkpoint {
    pub fn path(task_dir: &Path) -> PathBuf {
        task_dir.join(CHECKPOINT_FILE)
    }

    /// `Ok(None)` when there is no checkpoint; `Err` with a reason when it is unreadable.
    pub fn read(task_dir: &Path) -> Result<Option<Self>, String> {
        let text = match std::fs::read_to_string(Self::path(task_dir)) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.to_string()),
        };
        Self::parse(&text).map(Some)
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(CHECKPOINT_HEADER) {
            return Err("unknown checkpoint format".into());
        }
        let mut offsets = BTreeMap::new();
        for line in lines.filter(|line| !line.is_empty()) {
            let (store, offset) = line
                .split_once(' ')
                .ok_or_else(|| format!("malformed line {line:?}"))?;
            let offset: i64 = offset
                .parse()
                .map_err(|_| format!("malformed offset in {line:?}"))?;
            if offset < 0 {
                return Err(format!("negative offset in {line:?}"));
            }
            let store: StoreName = store.parse().map_err(|error| format!("{error}"))?;
            offsets.insert(store, offset);
        }
        Ok(Self { offsets })
    }

    /// Writes atomically: a temporary file, fsync, rename.
    pub fn write(&self, task_dir: &Path) -> Result<(), StateError> {
        let path = Self::path(task_dir);
        let temporary = task_dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        let error = |source| StateError::File {
            path: path.display().to_string(),
            source,
        };
        let mut text = format!("{CHECKPOINT_HEADER}\n");
        for (store, offset) in &self.offsets {
            text.push_str(&format!("{store} {offset}\n"));
        }
        std::fs::create_dir_all(task_dir).map_err(error)?;
        let mut file = std::fs::File::create(&temporary).map_err(error)?;
        file.write_all(text.as_bytes()).map_err(error)?;
        file.sync_all().map_err(error)?;
        std::fs::rename(&temporary, &path).map_err(error)
    }

    pub fn remove(task_dir: &Path) -> Result<(), StateError> {
        match std::fs::remove_file(Self::path(task_dir)) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => Err(StateError::File {
                path: Self::path(task_dir).display().to_string(),
                source,
            }),
            _ => Ok(()),
        }
    }
}

/// What restoring one store did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub store: StoreName,
    pub records: u64,
    pub elapsed: Duration,
    /// Next changelog offset the store now reflects.
    pub position: i64,
    /// Why it restored from the beginning, if it did.
    pub full_restore_reason: Option<String>,
}

/// A task's stores, restored.
pub struct OpenedTask {
    pub followers: RocksDbStore,
    pub author_posts: RocksDbStore,
    pub restored: Vec<Restored>,
}

/// Opens one task's stores and brings each up to the end of its changelog.
pub struct StateOpener<'a> {
    pub kafka: &'a KafkaSettings,
    pub topics: &'a Topics,
    pub task_dir: &'a Path,
    pub partition: i32,
}

impl StateOpener<'_> {
    /// Opens both stores (RocksDB), restores them, writes a fresh checkpoint.
    pub fn open(&self, progress: &mut dyn FnMut(StoreName, u64)) -> Result<OpenedTask, StateError> {
        let checkpoint = match Checkpoint::read(self.task_dir) {
            Ok(Some(checkpoint)) => Some(checkpoint),
            Ok(None) => None,
            Err(reason) => {
                tracing::warn!(task = self.partition, %reason, "corrupt checkpoint; restoring every store from its changelog");
                None
            }
        };
        // Until restoration completes, no checkpoint may vouch for these stores: a crash
        // in the middle of a full restore must lead to another full restore.
        Checkpoint::remove(self.task_dir)?;
        let from = |store: StoreName| {
            checkpoint
                .as_ref()
                .and_then(|c| c.offsets.get(&store).copied())
        };
        let (followers, followers_restored) =
            self.open_store(StoreName::Followers, from(StoreName::Followers), progress)?;
        let (author_posts, recent_restored) = self.open_store(
            StoreName::AuthorPosts,
            from(StoreName::AuthorPosts),
            progress,
        )?;
        let restored = vec![followers_restored, recent_restored];
        Checkpoint {
            offsets: restored.iter().map(|r| (r.store, r.position)).collect(),
        }
        .write(self.task_dir)?;
        Ok(OpenedTask {
            followers,
            author_posts,
            restored,
        })
    }

    /// Opens one store and restores it from `from` (its checkpointed offset), or from
    /// the beginning when there is no usable local state.
    pub fn open_store(
        &self,
        store: StoreName,
        from: Option<i64>,
        progress: &mut dyn FnMut(StoreName, u64),
    ) -> Result<(RocksDbStore, Restored), StateError> {
        let started = Instant::now();
        let path = self.task_dir.join(store.as_str());
        let changelog = self.topics.changelog(store);
        let restorer = kafka::standalone_consumer(
            self.kafka,
            &format!("{}-restore", self.topics.application_id),
        )?;
        let (low, high) = watermarks(&restorer, &changelog, self.partition)?;

        let mut reason = match from {
            None if path.exists() => Some("local store without a checkpoint".to_string()),
            None => Some("no local state".to_string()),
            Some(offset) if offset > high => Some(format!(
                "checkpoint {offset} is beyond the changelog end {high}"
            )),
            Some(offset) if offset < low => Some(format!(
                "checkpoint {offset} is before the changelog start {low}"
            )),
            Some(_) => None,
        };
        let mut kv = match (&reason, RocksDbStore::open(&path)) {
            (None, Ok(kv)) => kv,
            (None, Err(error)) => {
                reason = Some(format!("local store unreadable: {error}"));
                RocksDbStore::destroy(&path)?;
                RocksDbStore::open(&path)?
            }
            (Some(_), opened) => {
                drop(opened);
                RocksDbStore::destroy(&path)?;
                RocksDbStore::open(&path)?
            }
        };
        let start = if reason.is_some() {
            low
        } else {
            from.unwrap_or(low)
        };
        if let Some(reason) = &reason {
            tracing::info!(task = self.partition, store = store.as_str(), %reason, "restoring the store from the beginning of its changelog");
        }
        let records = replay_changelog(
            &restorer,
            &changelog,
            self.partition,
            start,
            high,
            &mut kv,
            &mut |n| progress(store, n),
        )?;
        kv.flush()?;
        Ok((
            kv,
            Restored {
                store,
                records,
                elapsed: started.elapsed(),
                position: high,
                full_restore_reason: reason,
            },
        ))
    }
}

fn watermarks(
    consumer: &kafka::Reader,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), StateError> {
    block(|| consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)))
        .map_err(KafkaFailure::Operation)
        .map_err(StateError::from)
}

/// Runs blocking Kafka or disk work from async code without stalling other tasks.
fn block<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Applies changelog records `[start, end)` of one partition to `kv`; a record without
/// a value deletes its key. Returns how many records it applied.
pub fn replay_changelog<S: KeyValueStore>(
    consumer: &kafka::Reader,
    topic: &str,
    partition: i32,
    start: i64,
    end: i64,
    kv: &mut S,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, StateError> {
    let mut apply = |message: &BorrowedMessage<'_>| -> Result<(), StateError> {
        let key = message.key().unwrap_or_default();
        match message.payload() {
            Some(value) => kv.put(key, value)?,
            None => kv.delete(key)?,
        }
        Ok(())
    };
    block(|| {
        kafka::read_span(
            consumer,
            topic,
            partition,
            Span { start, end },
            &mut apply,
            progress,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::read(dir.path()), Ok(None));
        let checkpoint = Checkpoint {
            offsets: BTreeMap::from([(StoreName::Followers, 42), (StoreName::AuthorPosts, 0)]),
        };
        checkpoint.write(dir.path()).unwrap();
        assert_eq!(Checkpoint::read(dir.path()), Ok(Some(checkpoint)));

        for corrupt in [
            "",
            "garbage\n",
            "feedstream-checkpoint v1\nfollowers x\n",
            "feedstream-checkpoint v1\nfollowers -1\n",
            "feedstream-checkpoint v1\nfollower 1\n",
        ] {
            std::fs::write(Checkpoint::path(dir.path()), corrupt).unwrap();
            assert!(
                Checkpoint::read(dir.path()).is_err(),
                "{corrupt:?} accepted"
            );
        }
        Checkpoint::remove(dir.path()).unwrap();
        assert_eq!(Checkpoint::read(dir.path()), Ok(None));
    }
}
