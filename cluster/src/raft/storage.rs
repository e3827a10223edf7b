//! The durable Raft log, hard state and snapshot, in redb (`raft.redb` in the data directory).
//!
//! Tables: `raft_log` maps an index to the protobuf-encoded [`Entry`]; `raft_meta` holds the
//! format version, the [`HardState`], the latest [`Snapshot`] (metadata with the [`ConfState`],
//! plus the encoded cluster state) and the index/term of the last discarded entry. Every write is
//! one transaction; [`RaftStorage::save`] takes a whole `Ready` (snapshot, entries, hard state) so
//! it costs one fsync. The uncompacted log is also kept in memory: it is bounded by the snapshot
//! interval, and it keeps the [`Storage`] reads that raft-rs makes on every message off the disk.
//!
//! The configuration is persisted only inside snapshots: after a restart raft-rs starts from the
//! snapshot's `ConfState` and the replay of the log re-applies later configuration changes.

use std::cell::Cell;
use std::path::Path;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

const FILE_NAME: &str = "raft.redb";
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const FORMAT_KEY: &str = "format";
const HARD_STATE_KEY: &str = "hard_state";
const SNAPSHOT_KEY: &str = "snapshot";
const TRUNCATED_KEY: &str = "truncated";
const FORMAT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot create raft data directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("raft database: {0}")]
    Db(#[from] redb::Error),
    #[error("raft storage is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        source: protobuf::ProtobufError,
    },
    #[error("entries from {first} would overwrite the snapshot at {snapshot}")]
    OverwriteSnapshot { first: u64, snapshot: u64 },
    #[error("entries are not contiguous with the log (last index {last}, next given {next})")]
    Gap { last: u64, next: u64 },
    #[error("cannot compact to {index}: the snapshot covers only up to {snapshot}")]
    CompactBeyondSnapshot { index: u64, snapshot: u64 },
    #[error("snapshot at {index} is not newer than the one held at {current}")]
    SnapshotOutOfDate { index: u64, current: u64 },
    #[error("cannot snapshot at {index}: the log ends at {last}")]
    SnapshotBeyondLog { index: u64, last: u64 },
}

fn db_err(e: impl Into<redb::Error>) -> StorageError {
    StorageError::Db(e.into())
}

fn encode(what: &'static str, m: &impl protobuf::Message) -> Result<Vec<u8>, StorageError> {
    m.write_to_bytes()
        .map_err(|source| StorageError::Encode { what, source })
}

fn decode<M: protobuf::Message>(what: &str, bytes: &[u8]) -> Result<M, StorageError> {
    M::parse_from_bytes(bytes).map_err(|e| StorageError::Corrupt(format!("{what}: {e}")))
}

pub struct RaftStorage {
    db: Database,
    hard_state: HardState,
    snapshot: Snapshot,
    /// Index and term of the entry just before the first one kept (the snapshot's, or the last
    /// compacted one): raft-rs needs that term to match the next append.
    truncated: (u64, u64),
    /// `entries[i].index == truncated.0 + 1 + i`.
    entries: Vec<Entry>,
    /// Set when raft asked for a snapshot that the one held cannot serve (see
    /// [`Self::take_snapshot_request`]).
    snapshot_wanted: Cell<bool>,
}

impl RaftStorage {
    /// Opens or creates `dir/raft.redb`, restoring and checking everything saved before.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join(FILE_NAME)).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            // Opening for write creates the tables on first start.
            txn.open_table(LOG).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let format = meta
                .get(FORMAT_KEY)
                .map_err(db_err)?
                .map(|v| v.value().to_vec());
            match format.as_deref() {
                None => {
                    meta.insert(FORMAT_KEY, [FORMAT].as_slice())
                        .map_err(db_err)?;
                }
                Some([FORMAT]) => {}
                Some(other) => {
                    return Err(StorageError::Corrupt(format!(
                        "unknown storage format {other:?} (this build reads {FORMAT})"
                    )));
                }
            }
        }
        txn.commit().map_err(db_err)?;

        let txn = db.begin_read().map_err(db_err)?;
        let meta = txn.open_table(META).map_err(db_err)?;
        let read = |key: &str| -> Result<Option<Vec<u8>>, StorageError> {
            Ok(meta.get(key).map_err(db_err)?.map(|v| v.value().to_vec()))
        };
        let mut hard_state: HardState = match read(HARD_STATE_KEY)? {
            Some(b) => decode("hard state", &b)?,
            None => HardState::default(),
        };
        let snapshot: Snapshot = match read(SNAPSHOT_KEY)? {
            Some(b) => decode("snapshot", &b)?,
            None => Snapshot::default(),
        };
        let truncated = match read(TRUNCATED_KEY)? {
            None => (0, 0),
            Some(b) => match <[u8; 16]>::try_from(b.as_slice()) {
                Ok(b) => {
                    let (i, t) = b.split_at(8);
                    let num = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or_default());
                    (num(i), num(t))
                }
                Err(_) => {
                    return Err(StorageError::Corrupt(format!(
                        "truncation record has {} bytes, expected 16",
                        b.len()
                    )));
                }
            },
        };

        let log = txn.open_table(LOG).map_err(db_err)?;
        let mut entries = Vec::new();
        for row in log.iter().map_err(db_err)? {
            let (key, value) = row.map_err(db_err)?;
            let index = key.value();
            let entry: Entry = decode(&format!("log entry {index}"), value.value())?;
            let expected = truncated.0 + 1 + entries.len() as u64;
            if index != expected || entry.index != index {
                return Err(StorageError::Corrupt(format!(
                    "log entry stored at {index} (holding index {}) where {expected} was expected",
                    entry.index
                )));
            }
            entries.push(entry);
        }

        let last = truncated.0 + entries.len() as u64;
        let (snap_index, snap_term) = (snapshot.get_metadata().index, snapshot.get_metadata().term);
        if snap_index < truncated.0 || snap_index > last {
            return Err(StorageError::Corrupt(format!(
                "snapshot at {snap_index} outside the log ({}..={last})",
                truncated.0
            )));
        }
        // Everything in the snapshot is committed; a commit index persisted without fsync may lag.
        hard_state.commit = hard_state.commit.max(snap_index);
        if hard_state.commit > last {
            return Err(StorageError::Corrupt(format!(
                "commit index {} beyond the last log index {last}",
                hard_state.commit
            )));
        }
        drop((log, meta, txn));
        let storage = Self {
            db,
            hard_state,
            snapshot,
            truncated,
            entries,
            snapshot_wanted: Cell::new(false),
        };
        match storage.term(snap_index) {
            Ok(term) if term != snap_term => Err(StorageError::Corrupt(format!(
                "snapshot at {snap_index} has term {snap_term} but the log says {term}"
            ))),
            _ => Ok(storage),
        }
    }

    /// Nothing was ever saved: no log, no snapshot, no vote.
    pub fn is_fresh(&self) -> bool {
        self.last_index_() == 0 && self.hard_state == HardState::default()
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The latest snapshot (empty metadata if none).
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Persists a `Ready`'s snapshot, entries and hard state in one transaction, in that order;
    /// `sync` = fsync before returning (required whenever raft-rs says `must_sync`).
    pub fn save(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StorageError> {
        let mut snap_index = self.snapshot.get_metadata().index;
        let mut truncated = self.truncated;
        let mut last = self.last_index_();
        if let Some(s) = snapshot {
            let meta = s.get_metadata();
            if meta.index < snap_index {
                return Err(StorageError::SnapshotOutOfDate {
                    index: meta.index,
                    current: snap_index,
                });
            }
            snap_index = meta.index;
            truncated = (meta.index, meta.term);
            last = meta.index;
        }
        if let Some(first) = entries.first() {
            if first.index <= snap_index {
                return Err(StorageError::OverwriteSnapshot {
                    first: first.index,
                    snapshot: snap_index,
                });
            }
            if first.index > last + 1 {
                return Err(StorageError::Gap {
                    last,
                    next: first.index,
                });
            }
            if let Some(w) = entries.windows(2).find(|w| w[1].index != w[0].index + 1) {
                return Err(StorageError::Gap {
                    last: w[0].index,
                    next: w[1].index,
                });
            }
        }
        let mut new_hs = self.hard_state.clone();
        if let Some(s) = snapshot {
            new_hs.term = new_hs.term.max(s.get_metadata().term);
            new_hs.commit = s.get_metadata().index;
        }
        if let Some(hs) = hard_state {
            new_hs = hs.clone();
        }

        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(if sync {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(db_err)?;
        {
            let mut log = txn.open_table(LOG).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            if let Some(s) = snapshot {
                log.retain(|_, _| false).map_err(db_err)?;
                meta.insert(SNAPSHOT_KEY, encode("snapshot", s)?.as_slice())
                    .map_err(db_err)?;
                meta.insert(TRUNCATED_KEY, truncation_record(truncated).as_slice())
                    .map_err(db_err)?;
            }
            if let Some(first) = entries.first() {
                log.retain_in(first.index.., |_, _| false).map_err(db_err)?;
                for e in entries {
                    log.insert(e.index, encode("log entry", e)?.as_slice())
                        .map_err(db_err)?;
                }
            }
            if new_hs != self.hard_state {
                meta.insert(HARD_STATE_KEY, encode("hard state", &new_hs)?.as_slice())
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;

        if let Some(s) = snapshot {
            self.snapshot = s.clone();
            self.truncated = truncated;
            self.entries.clear();
        }
        if let Some(first) = entries.first() {
            let keep = (first.index - self.truncated.0 - 1) as usize;
            self.entries.truncate(keep);
            self.entries.extend_from_slice(entries);
        }
        self.hard_state = new_hs;
        Ok(())
    }

    /// Appends entries (replacing any from the first given index on), durably.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.save(None, entries, None, true)
    }

    pub fn set_hard_state(&mut self, hs: &HardState) -> Result<(), StorageError> {
        self.save(None, &[], Some(hs), true)
    }

    /// Replaces the log with a snapshot received from the leader, durably.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.save(Some(snapshot), &[], None, true)
    }

    /// Records a snapshot of the applied state at `index` (which must be in the log), durably.
    pub fn create_snapshot(
        &mut self,
        index: u64,
        conf_state: ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        let current = self.snapshot.get_metadata().index;
        if index <= current {
            return Err(StorageError::SnapshotOutOfDate { index, current });
        }
        let last = self.last_index_();
        let term = self
            .term(index)
            .map_err(|_| StorageError::SnapshotBeyondLog { index, last })?;
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(conf_state);
        let bytes = encode("snapshot", &snapshot)?;
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        txn.open_table(META)
            .map_err(db_err)?
            .insert(SNAPSHOT_KEY, bytes.as_slice())
            .map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        self.snapshot = snapshot;
        Ok(())
    }

    /// Discards the entries before `index`; only what the snapshot covers may go.
    pub fn compact(&mut self, index: u64) -> Result<(), StorageError> {
        if index <= self.first_index_() {
            return Ok(());
        }
        let snapshot = self.snapshot.get_metadata().index;
        if index > snapshot + 1 {
            return Err(StorageError::CompactBeyondSnapshot { index, snapshot });
        }
        let truncated = (index - 1, self.term(index - 1).unwrap_or(0));
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_durability(Durability::Immediate).map_err(db_err)?;
        {
            let mut log = txn.open_table(LOG).map_err(db_err)?;
            log.retain_in(..index, |_, _| false).map_err(db_err)?;
            txn.open_table(META)
                .map_err(db_err)?
                .insert(TRUNCATED_KEY, truncation_record(truncated).as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        let drop_count = (index - self.first_index_()) as usize;
        self.entries.drain(..drop_count);
        self.truncated = truncated;
        Ok(())
    }

    /// Whether raft wanted a newer snapshot than the one held (resets the flag). The owner should
    /// then snapshot the applied state; raft asks again on its next probe.
    pub fn take_snapshot_request(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    fn first_index_(&self) -> u64 {
        self.truncated.0 + 1
    }

    fn last_index_(&self) -> u64 {
        self.truncated.0 + self.entries.len() as u64
    }
}

fn truncation_record((index, term): (u64, u64)) -> [u8; 16] {
    let mut b = [0; 16];
    b[..8].copy_from_slice(&index.to_le_bytes());
    b[8..].copy_from_slice(&term.to_le_bytes());
    b
}

impl Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.snapshot.get_metadata().get_conf_state().clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index_() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        // raft-rs documents a panic here; an error is enough.
        if high > self.last_index_() + 1 || low > high {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let offset = self.first_index_();
        let mut entries = self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if idx < self.truncated.0 {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        self.entries
            .get((idx - self.truncated.0 - 1) as usize)
            .map(|e| e.term)
            .ok_or(raft::Error::Store(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let meta = self.snapshot.get_metadata();
        let conf = meta.get_conf_state();
        // A peer added after the snapshot would refuse it (it is not in its configuration).
        let knows_peer = conf.voters.contains(&to) || conf.learners.contains(&to);
        if meta.index == 0 || meta.index < request_index || !knows_peer {
            self.snapshot_wanted.set(true);
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::Message as _;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("entry {index}").into_bytes().into(),
            ..Default::default()
        }
    }

    fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range.map(|i| entry(i, term)).collect()
    }

    fn ctx() -> GetEntriesContext {
        GetEntriesContext::empty(false)
    }

    fn voters(ids: &[u64]) -> ConfState {
        ConfState::from((ids.to_vec(), vec![]))
    }

    fn snapshot(index: u64, term: u64) -> Snapshot {
        let mut s = Snapshot {
            data: b"state".to_vec().into(),
            ..Default::default()
        };
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s.mut_metadata().set_conf_state(voters(&[1, 2, 3]));
        s
    }

    #[test]
    fn fresh_storage_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let s = RaftStorage::open(dir.path()).unwrap();
        assert!(s.is_fresh());
        assert_eq!(s.first_index().unwrap(), 1);
        assert_eq!(s.last_index().unwrap(), 0);
        assert_eq!(s.term(0).unwrap(), 0);
        assert!(!s.initial_state().unwrap().initialized());
        assert!(s.snapshot(0, 2).is_err());
        assert!(s.take_snapshot_request());
        assert!(!s.take_snapshot_request());
    }

    #[test]
    fn append_and_reopen_restores_everything() {
        let dir = tempfile::tempdir().unwrap();
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 4,
            ..Default::default()
        };
        {
            let mut s = RaftStorage::open(dir.path()).unwrap();
            s.apply_snapshot(&snapshot(1, 1)).unwrap();
            s.save(None, &entries(2..=5, 2), Some(&HardState::default()), true)
                .unwrap();
            // Conflicting suffix from a new leader replaces 4..
            s.append(&entries(4..=6, 3)).unwrap();
            s.set_hard_state(&hs).unwrap();
        }
        let s = RaftStorage::open(dir.path()).unwrap();
        assert!(!s.is_fresh());
        assert_eq!(s.hard_state(), &hs);
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (2, 6));
        let terms: Vec<u64> = (1..=6).map(|i| s.term(i).unwrap()).collect();
        assert_eq!(terms, [1, 2, 2, 3, 3, 3]);
        let state = s.initial_state().unwrap();
        assert_eq!(state.conf_state.voters, [1, 2, 3]);
        let got = s.entries(2, 7, None, ctx()).unwrap();
        assert_eq!(
            got.iter().map(|e| e.index).collect::<Vec<_>>(),
            [2, 3, 4, 5, 6]
        );
        assert_eq!(got[2].data.as_ref(), b"entry 4");
    }

    #[test]
    fn entry_ranges_and_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RaftStorage::open(dir.path()).unwrap();
        s.append(&entries(1..=10, 1)).unwrap();
        assert_eq!(s.entries(3, 6, None, ctx()).unwrap().len(), 3);
        assert_eq!(s.entries(3, 3, None, ctx()).unwrap().len(), 0);
        // A size limit still returns at least one entry.
        assert_eq!(s.entries(3, 10, 1, ctx()).unwrap().len(), 1);
        assert!(matches!(
            s.entries(5, 12, None, ctx()),
            Err(raft::Error::Store(raft::StorageError::Unavailable))
        ));
        assert!(matches!(
            s.term(11),
            Err(raft::Error::Store(raft::StorageError::Unavailable))
        ));
        // Appends must neither leave a gap nor start inside a snapshot.
        assert!(matches!(
            s.append(&entries(13..=14, 1)),
            Err(StorageError::Gap { last: 10, next: 13 })
        ));
        assert!(matches!(
            s.append(&[entry(11, 1), entry(13, 1)]),
            Err(StorageError::Gap { .. })
        ));
    }

    #[test]
    fn snapshot_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = RaftStorage::open(dir.path()).unwrap();
            s.append(&entries(1..=10, 1)).unwrap();
            s.append(&entries(11..=20, 2)).unwrap();
            assert!(matches!(
                s.compact(8),
                Err(StorageError::CompactBeyondSnapshot {
                    index: 8,
                    snapshot: 0
                })
            ));
            s.create_snapshot(15, voters(&[1, 2]), b"at 15".to_vec())
                .unwrap();
            assert!(matches!(
                s.create_snapshot(25, voters(&[1]), vec![]),
                Err(StorageError::SnapshotBeyondLog { .. })
            ));
            s.compact(16).unwrap();
            assert_eq!(s.first_index().unwrap(), 16);
            assert_eq!(s.term(15).unwrap(), 2);
            assert!(matches!(
                s.entries(14, 17, None, ctx()),
                Err(raft::Error::Store(raft::StorageError::Compacted))
            ));
            assert!(matches!(
                s.append(&entries(15..=16, 3)),
                Err(StorageError::OverwriteSnapshot {
                    first: 15,
                    snapshot: 15
                })
            ));
        }
        let s = RaftStorage::open(dir.path()).unwrap();
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (16, 20)
        );
        assert_eq!(s.term(15).unwrap(), 2);
        let snap = s.snapshot(0, 2).unwrap();
        assert!(!s.take_snapshot_request());
        // Peer 3 is not in that snapshot's configuration: a newer one is wanted.
        assert!(s.snapshot(0, 3).is_err());
        assert!(s.take_snapshot_request());
        assert_eq!(snap.get_metadata().index, 15);
        assert_eq!(snap.get_metadata().term, 2);
        assert_eq!(snap.data.as_ref(), b"at 15");
        assert_eq!(s.initial_state().unwrap().conf_state.voters, [1, 2]);
    }

    #[test]
    fn received_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = RaftStorage::open(dir.path()).unwrap();
            s.append(&entries(1..=5, 1)).unwrap();
            s.apply_snapshot(&snapshot(50, 4)).unwrap();
            assert_eq!(
                (s.first_index().unwrap(), s.last_index().unwrap()),
                (51, 50)
            );
            assert_eq!(s.hard_state().commit, 50);
            assert_eq!(s.hard_state().term, 4);
            assert!(matches!(
                s.apply_snapshot(&snapshot(40, 4)),
                Err(StorageError::SnapshotOutOfDate { .. })
            ));
            s.append(&entries(51..=52, 4)).unwrap();
        }
        let s = RaftStorage::open(dir.path()).unwrap();
        assert_eq!(
            (s.first_index().unwrap(), s.last_index().unwrap()),
            (51, 52)
        );
        assert_eq!(s.term(50).unwrap(), 4);
        assert_eq!(s.latest_snapshot().data.as_ref(), b"state");
    }

    fn tamper(dir: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
        let db = Database::create(dir.join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        f(&txn);
        txn.commit().unwrap();
    }

    fn open_err(dir: &Path) -> String {
        match RaftStorage::open(dir) {
            Ok(_) => panic!("corrupt storage opened"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn corruption_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        RaftStorage::open(dir.path())
            .unwrap()
            .append(&entries(1..=5, 1))
            .unwrap();

        tamper(dir.path(), |txn| {
            txn.open_table(LOG)
                .unwrap()
                .insert(3, [0xff, 0xff].as_slice())
                .unwrap();
        });
        let e = open_err(dir.path());
        assert!(e.contains("corrupt") && e.contains("log entry 3"), "{e}");

        tamper(dir.path(), |txn| {
            let bytes = entry(3, 1).write_to_bytes().unwrap();
            let mut log = txn.open_table(LOG).unwrap();
            log.insert(3, bytes.as_slice()).unwrap();
            log.remove(4).unwrap();
        });
        assert!(open_err(dir.path()).contains("where 4 was expected"));

        tamper(dir.path(), |txn| {
            let bytes = entry(4, 1).write_to_bytes().unwrap();
            txn.open_table(LOG)
                .unwrap()
                .insert(4, bytes.as_slice())
                .unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(HARD_STATE_KEY, [0x08].as_slice())
                .unwrap();
        });
        assert!(open_err(dir.path()).contains("hard state"));

        tamper(dir.path(), |txn| {
            let mut meta = txn.open_table(META).unwrap();
            meta.remove(HARD_STATE_KEY).unwrap();
            meta.insert(FORMAT_KEY, [9].as_slice()).unwrap();
        });
        assert!(open_err(dir.path()).contains("unknown storage format"));

        // Not a redb file at all.
        std::fs::write(dir.path().join(FILE_NAME), b"definitely not redb").unwrap();
        let e = open_err(dir.path());
        assert!(e.contains("raft database"), "{e}");
    }
}
