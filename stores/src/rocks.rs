use std::path::{Path, PathBuf};

use rocksdb::{Options, WriteBatch, DB};

use crate::{ChangeRecord, KeyValueStore, StoreError};

/// A RocksDB database holding one store of one task.
pub struct RocksDbStore {
    db: DB,
    path: PathBuf,
}

impl RocksDbStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path).map_err(|source| StoreError::Directory {
            path: path.display().to_string(),
            source,
        })?;
        let mut options = Options::default();
        options.create_if_missing(true);
        // Tasks are many and small; a large per-database write buffer would multiply.
        options.set_write_buffer_size(8 << 20);
        options.set_max_open_files(256);
        let db = DB::open(&options, path).map_err(|source| StoreError::RocksDb {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
        })
    }

    /// Deletes the store's files. The store must not be open.
    pub fn destroy(path: &Path) -> Result<(), StoreError> {
        if !path.exists() {
            return Ok(());
        }
        DB::destroy(&Options::default(), path).map_err(|source| StoreError::RocksDb {
            path: path.display().to_string(),
            source,
        })?;
        std::fs::remove_dir_all(path).or_else(|source| match source.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(StoreError::Directory {
                path: path.display().to_string(),
                source,
            }),
        })
    }

    /// Makes every acknowledged write durable on disk (memtable and WAL flushed).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|source| self.error(source))?;
        self.db.flush_wal(true).map_err(|source| self.error(source))
    }

    /// Makes every acknowledged write durable (fsyncs the WAL): cheaper than a flush,
    /// done before each checkpoint.
    pub fn sync_wal(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(|source| self.error(source))
    }

    /// Approximate on-disk size of the live data, for metrics.
    pub fn approximate_size_bytes(&self) -> u64 {
        self.db
            .property_int_value(rocksdb::properties::TOTAL_SST_FILES_SIZE)
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    fn error(&self, source: rocksdb::Error) -> StoreError {
        StoreError::RocksDb {
            path: self.path.display().to_string(),
            source,
        }
    }
}

impl KeyValueStore for RocksDbStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(key).map_err(|source| self.error(source))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db.put(key, value).map_err(|source| self.error(source))
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.db.delete(key).map_err(|source| self.error(source))
    }

    fn write_batch(&mut self, changes: &[ChangeRecord]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for change in changes {
            match &change.value {
                Some(value) => batch.put(&change.key, value),
                None => batch.delete(&change.key),
            }
        }
        self.db.write(batch).map_err(|source| self.error(source))
    }

    // Both scans use a raw iterator: its key and value are slices into RocksDB's
    // block, where the plain iterator copies each into two boxes.
    fn visit_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let mut iterator = self.db.raw_iterator();
        iterator.seek(prefix);
        while let Some((key, value)) = iterator.item() {
            if !key.starts_with(prefix) || !visit(key, value) {
                break;
            }
            iterator.next();
        }
        iterator.status().map_err(|source| self.error(source))
    }

    fn scan_prefix_rev(
        &self,
        prefix: &[u8],
        upper: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        // The seek lands on the last key ≤ `upper`; `upper` itself is excluded.
        let mut iterator = self.db.raw_iterator();
        iterator.seek_for_prev(upper);
        while let Some((key, value)) = iterator.item() {
            if key != upper && (!key.starts_with(prefix) || !visit(key, value)) {
                break;
            }
            iterator.prev();
        }
        iterator.status().map_err(|source| self.error(source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InMemoryStore;

    #[test]
    fn matches_the_in_memory_store_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let mut memory = InMemoryStore::default();
        {
            let mut rocks = RocksDbStore::open(&path).unwrap();
            for (key, value) in [(&b"a1"[..], &b"x"[..]), (b"a2", b"y"), (b"b1", b"z")] {
                rocks.put(key, value).unwrap();
                memory.put(key, value).unwrap();
            }
            rocks.delete(b"a2").unwrap();
            memory.delete(b"a2").unwrap();
            let batch = [
                ChangeRecord {
                    key: b"a3".to_vec(),
                    value: Some(b"q".to_vec()),
                },
                ChangeRecord {
                    key: b"a1".to_vec(),
                    value: None,
                },
            ];
            rocks.write_batch(&batch).unwrap();
            memory.write_batch(&batch).unwrap();
            assert_eq!(
                rocks.scan_prefix(b"a").unwrap(),
                memory.scan_prefix(b"a").unwrap()
            );
            for (key, value) in [(&b"a5"[..], &b"v"[..]), (b"a7", b"w"), (b"0", b"u")] {
                rocks.put(key, value).unwrap();
                memory.put(key, value).unwrap();
            }
            for upper in [&b"a7"[..], b"a8", b"a5", b"a1", b"a0"] {
                let newest_two = |store: &dyn KeyValueStore| {
                    let mut seen = Vec::new();
                    store
                        .scan_prefix_rev(b"a", upper, &mut |key, _| {
                            seen.push(key.to_vec());
                            seen.len() < 2
                        })
                        .unwrap();
                    seen
                };
                assert_eq!(newest_two(&rocks), newest_two(&memory), "below {upper:?}");
            }
            rocks.flush().unwrap();
        }
        let reopened = RocksDbStore::open(&path).unwrap();
        assert_eq!(reopened.get(b"b1").unwrap(), Some(b"z".to_vec()));
        assert_eq!(reopened.digest().unwrap(), memory.digest().unwrap());
        drop(reopened);
        RocksDbStore::destroy(&path).unwrap();
        assert!(!path.exists());
    }
}
