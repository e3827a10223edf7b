//! raft-rs logs through slog; this drain forwards its records to `tracing` so they land in the
//! node's log with everything else.

use std::fmt::Write as _;

use slog::{Drain, Level, OwnedKVList, Record, Serializer};

const TARGET: &str = "switchyard_cluster::raft";

pub(crate) fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut kv = KvText(String::new());
        // Writing into a String cannot fail; an error would only lose the key-value pairs.
        let _ = slog::KV::serialize(&record.kv(), record, &mut kv);
        let _ = slog::KV::serialize(values, record, &mut kv);
        let (msg, kv) = (record.msg(), kv.0);
        match record.level() {
            Level::Critical | Level::Error => tracing::error!(target: TARGET, "{msg}{kv}"),
            Level::Warning => tracing::warn!(target: TARGET, "{msg}{kv}"),
            Level::Info => tracing::info!(target: TARGET, "{msg}{kv}"),
            Level::Debug => tracing::debug!(target: TARGET, "{msg}{kv}"),
            Level::Trace => tracing::trace!(target: TARGET, "{msg}{kv}"),
        }
        Ok(())
    }
}

struct KvText(String);

impl Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}
