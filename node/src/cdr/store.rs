//! Durable call records in redb (`cdr.redb` in the data directory).
//!
//! Table `cdrs`: key = a sequence number that only grows (it continues from the last key after a
//! restart), value = the record as JSON. A single writer thread commits everything queued (up to
//! [`MAX_BATCH`]) in one fsynced transaction, so the cost of a commit is shared by the batch and
//! the node keeps up with thousands of records per second. See ADR 0006.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::CallRecord;

const CDRS: TableDefinition<u64, &[u8]> = TableDefinition::new("cdrs");
const FILE_NAME: &str = "cdr.redb";
/// Records per transaction at most, so one commit never grows without bound after a stall.
pub const MAX_BATCH: usize = 4096;
/// Pause before retrying a failed commit.
const RETRY_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CdrError {
    #[error("cannot create CDR directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("CDR database: {0}")]
    Db(#[from] redb::Error),
    #[error("CDR record {seq} is unreadable: {source}")]
    Decode { seq: u64, source: serde_json::Error },
    #[error("cannot encode CDR: {0}")]
    Encode(serde_json::Error),
    #[error("CDR writer has stopped")]
    WriterStopped,
    #[error("CDR commit failed: {0}")]
    Commit(String),
}

fn db_err(e: impl Into<redb::Error>) -> CdrError {
    CdrError::Db(e.into())
}

/// Read side of the store; cheap to clone. Reads block: call them from `spawn_blocking`.
#[derive(Clone)]
pub struct CdrStore {
    db: Arc<Database>,
}

/// Write side: hands records to the writer thread; cheap to clone, one per call actor if need be.
#[derive(Clone)]
pub struct CdrWriter {
    tx: Sender<WriterMsg>,
}

enum WriterMsg {
    Record(Vec<u8>),
    /// Answer once everything sent before is committed.
    Flush(oneshot::Sender<Result<(), String>>),
    /// Commit everything sent before, answer, and stop.
    Shutdown(oneshot::Sender<Result<(), String>>),
}

impl CdrStore {
    /// Opens (or creates) `dir/cdr.redb` and starts the writer thread.
    pub fn open(dir: &Path) -> Result<(CdrStore, CdrWriter), CdrError> {
        std::fs::create_dir_all(dir)?;
        let db = Arc::new(Database::create(dir.join(FILE_NAME)).map_err(db_err)?);
        let next_seq = {
            let txn = db.begin_write().map_err(db_err)?;
            let last = {
                // Opening the table for write creates it on first start.
                let table = txn.open_table(CDRS).map_err(db_err)?;
                table.last().map_err(db_err)?.map(|(k, _)| k.value())
            };
            txn.commit().map_err(db_err)?;
            last.map_or(1, |k| k.saturating_add(1))
        };
        let (tx, rx) = mpsc::channel();
        let writer_db = Arc::clone(&db);
        std::thread::Builder::new()
            .name("cdr-writer".into())
            .spawn(move || run_writer(writer_db, rx, next_seq))?;
        Ok((CdrStore { db }, CdrWriter { tx }))
    }

    /// Up to `limit` records with a sequence number above `after_seq`, oldest first.
    pub fn list(
        &self,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, CallRecord)>, CdrError> {
        let start = match after_seq {
            None => 0,
            Some(seq) => match seq.checked_add(1) {
                Some(next) => next,
                None => return Ok(Vec::new()),
            },
        };
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(CDRS).map_err(db_err)?;
        let mut records = Vec::with_capacity(limit.min(1024));
        for entry in table.range(start..).map_err(db_err)?.take(limit) {
            let (key, value) = entry.map_err(db_err)?;
            let seq = key.value();
            let record = serde_json::from_slice(value.value())
                .map_err(|source| CdrError::Decode { seq, source })?;
            records.push((seq, record));
        }
        Ok(records)
    }
}

impl CdrWriter {
    /// Queues `record` for the next commit; never blocks.
    pub fn submit(&self, record: CallRecord) -> Result<(), CdrError> {
        let bytes = serde_json::to_vec(&record).map_err(CdrError::Encode)?;
        self.tx
            .send(WriterMsg::Record(bytes))
            .map_err(|_| CdrError::WriterStopped)
    }

    /// Waits until every record submitted before this call is durable.
    pub async fn flush(&self) -> Result<(), CdrError> {
        self.request(WriterMsg::Flush).await
    }

    /// Commits everything submitted so far and stops the writer; later submits fail.
    pub async fn shutdown(&self) -> Result<(), CdrError> {
        self.request(WriterMsg::Shutdown).await
    }

    async fn request(
        &self,
        msg: impl FnOnce(oneshot::Sender<Result<(), String>>) -> WriterMsg,
    ) -> Result<(), CdrError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(msg(reply))
            .map_err(|_| CdrError::WriterStopped)?;
        done.await
            .map_err(|_| CdrError::WriterStopped)?
            .map_err(CdrError::Commit)
    }
}

/// The writer thread. On shutdown the channel and the database are closed before the answer, so
/// later submits fail at once and the file can be reopened.
fn run_writer(db: Arc<Database>, rx: Receiver<WriterMsg>, next_seq: u64) {
    let stopped = write_loop(&db, &rx, next_seq);
    drop(rx);
    drop(db);
    if let Some((stop, result)) = stopped {
        // The shutdown caller may have given up waiting.
        let _ = stop.send(result);
    }
}

/// Batch, commit, answer waiters, repeat. Returns the shutdown request and its result, or None
/// when every writer handle was dropped.
fn write_loop(
    db: &Database,
    rx: &Receiver<WriterMsg>,
    mut next_seq: u64,
) -> Option<(Reply, Result<(), String>)> {
    let written = metrics::counter!("switchyard_cdr_written_total");
    let failures = metrics::counter!("switchyard_cdr_commit_failures_total");
    let commit_secs = metrics::histogram!("switchyard_cdr_commit_seconds");
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut waiters: Vec<Reply> = Vec::new();
    let mut stop: Option<Reply> = None;
    loop {
        if batch.is_empty() && waiters.is_empty() && stop.is_none() {
            // Every writer handle dropped: nothing more can arrive.
            let Ok(msg) = rx.recv() else { return None };
            take(msg, &mut batch, &mut waiters, &mut stop);
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(msg) => take(msg, &mut batch, &mut waiters, &mut stop),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        if !batch.is_empty() {
            let started = Instant::now();
            if let Err(e) = commit(db, next_seq, &batch) {
                failures.increment(1);
                tracing::error!(error = %e, records = batch.len(), "CDR commit failed");
                answer(&mut waiters, &Err(e.to_string()));
                if let Some(stop) = stop {
                    tracing::error!(records = batch.len(), "CDR writer stopping; records lost");
                    return Some((stop, Err(e.to_string())));
                }
                // Keep the batch and try again: records wait in memory rather than vanish.
                std::thread::sleep(RETRY_DELAY);
                continue;
            }
            commit_secs.record(started.elapsed().as_secs_f64());
            written.increment(batch.len() as u64);
            next_seq += batch.len() as u64;
            batch.clear();
        }
        answer(&mut waiters, &Ok(()));
        if stop.is_some() {
            // Stop only once the channel is drained, so records racing the shutdown are kept.
            match rx.try_recv() {
                Ok(msg) => take(msg, &mut batch, &mut waiters, &mut stop),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                    return stop.map(|stop| (stop, Ok(())));
                }
            }
        }
    }
}

type Reply = oneshot::Sender<Result<(), String>>;

fn take(
    msg: WriterMsg,
    batch: &mut Vec<Vec<u8>>,
    waiters: &mut Vec<Reply>,
    stop: &mut Option<Reply>,
) {
    match msg {
        WriterMsg::Record(bytes) => batch.push(bytes),
        WriterMsg::Flush(reply) => waiters.push(reply),
        // A second shutdown request just waits for the first.
        WriterMsg::Shutdown(reply) if stop.is_some() => waiters.push(reply),
        WriterMsg::Shutdown(reply) => *stop = Some(reply),
    }
}

fn answer(waiters: &mut Vec<Reply>, result: &Result<(), String>) {
    for waiter in waiters.drain(..) {
        // A waiter that gave up is not an error.
        let _ = waiter.send(result.clone());
    }
}

fn commit(db: &Database, first_seq: u64, batch: &[Vec<u8>]) -> Result<(), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut table = txn.open_table(CDRS)?;
        for (seq, bytes) in (first_seq..).zip(batch) {
            table.insert(seq, bytes.as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdr::{Disposition, HangupBy, OfferRecord};

    fn record(id: usize) -> CallRecord {
        CallRecord {
            id: format!("call-{id}"),
            node: "node1".into(),
            caller_call_id: format!("sip-{id}"),
            agent_call_id: None,
            caller: "alice".into(),
            did: "100".into(),
            queue: Some("sales".into()),
            agent: Some("2001".into()),
            arrived_ms: 1_000,
            queued_ms: Some(1_100),
            offers: vec![OfferRecord {
                agent: "2001".into(),
                queue: "sales".into(),
                offered_ms: 1_200,
                ended_ms: 1_300,
                outcome: crate::acd::OfferOutcome::Answered,
            }],
            answered_ms: Some(1_300),
            ended_ms: 9_000,
            wait_ms: 200,
            talk_ms: 7_700,
            disposition: Disposition::Answered,
            hangup_by: HangupBy::Caller,
            recording: None,
            caller_rtp: None,
            agent_rtp: None,
            dtmf: String::new(),
            monitors: Vec::new(),
            hold_ms: 0,
            flow: None,
            menu: String::new(),
            priority: 0,
            survey_score: None,
            callback_of: None,
            transferred_to: None,
            pool: None,
            skills: Default::default(),
            failover: None,
        }
    }

    #[tokio::test]
    async fn write_reopen_and_continue_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, writer) = CdrStore::open(dir.path()).unwrap();
            for i in 0..3 {
                writer.submit(record(i)).unwrap();
            }
            writer.flush().await.unwrap();
            let listed = store.list(None, 10).unwrap();
            let seqs: Vec<u64> = listed.iter().map(|(s, _)| *s).collect();
            assert_eq!(seqs, [1, 2, 3]);
            assert_eq!(listed[1].1, record(1));
            writer.submit(record(3)).unwrap();
            writer.shutdown().await.unwrap();
            assert!(matches!(
                writer.submit(record(9)),
                Err(CdrError::WriterStopped)
            ));
        }
        let (store, writer) = CdrStore::open(dir.path()).unwrap();
        writer.submit(record(4)).unwrap();
        writer.flush().await.unwrap();
        let listed = store.list(Some(3), 10).unwrap();
        let got: Vec<(u64, String)> = listed.into_iter().map(|(s, r)| (s, r.id)).collect();
        assert_eq!(got, [(4, "call-3".into()), (5, "call-4".into())]);
        assert_eq!(store.list(Some(1), 2).unwrap().len(), 2);
        assert!(store.list(Some(u64::MAX), 10).unwrap().is_empty());
        writer.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_submits_are_group_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = CdrStore::open(dir.path()).unwrap();
        let started = Instant::now();
        let tasks: Vec<_> = (0..10)
            .map(|t| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    for i in 0..500 {
                        writer.submit(record(t * 500 + i)).unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        writer.flush().await.unwrap();
        let elapsed = started.elapsed();
        println!("5000 CDRs durable in {elapsed:?}");
        let all = store.list(None, 10_000).unwrap();
        assert_eq!(all.len(), 5_000);
        assert!(all.windows(2).all(|w| w[1].0 == w[0].0 + 1));
        let mut ids: Vec<String> = all.into_iter().map(|(_, r)| r.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 5_000);
        // One fsync per record would take many seconds; batches take well under one.
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        writer.shutdown().await.unwrap();
    }
}
