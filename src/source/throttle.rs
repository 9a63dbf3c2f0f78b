//! Bandwidth limits and progress reports for long copies (initial sync,
//! resync), so replication does not starve the guest's own I/O.

use crate::log::WriterOptions;
use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// A bandwidth limit shared by any number of copies: each
/// [`consume`](Throttle::consume) waits until the bytes fit the rate. Bursts
/// up to a tenth of a second's worth pass without waiting.
#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: std::sync::atomic::AtomicU64,
    consumed: std::sync::atomic::AtomicU64,
    /// When the bytes consumed so far are paid for at the rate.
    paid_until: Mutex<Instant>,
}

impl Throttle {
    /// A limit of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        Throttle {
            bytes_per_sec: std::sync::atomic::AtomicU64::new(bytes_per_sec.max(1)),
            consumed: std::sync::atomic::AtomicU64::default(),
            paid_until: Mutex::new(Instant::now()),
        }
    }

    /// The limit.
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes the limit (at least 1) for the bytes consumed from now on;
    /// copies under way slow down or speed up at once.
    pub fn set_bytes_per_sec(&self, bytes_per_sec: u64) {
        self.bytes_per_sec
            .store(bytes_per_sec.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Bytes accounted so far.
    pub fn consumed(&self) -> u64 {
        self.consumed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Accounts for `bytes`, sleeping as long as the rate requires.
    pub fn consume(&self, bytes: u64) {
        self.consumed
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec() as f64);
        let wait = {
            let mut paid = self.paid_until.lock();
            let now = Instant::now();
            let burst = Duration::from_millis(100);
            // Idle time earns at most a burst of credit.
            let start = (*paid).max(now.checked_sub(burst).unwrap_or(now));
            *paid = start + cost;
            paid.saturating_duration_since(now + burst)
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// How far a long copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the disk done.
    pub done: u64,
    /// Bytes of the disk in all.
    pub total: u64,
}

/// Options of a long copy: the log writer's tuning, bandwidth limits for
/// reading the disk and for writing the log, and a progress callback.
#[derive(Default)]
pub struct TransferOptions<'a> {
    /// The log writer's tuning.
    pub writer: WriterOptions,
    /// Limits reads of the source disk.
    pub read_limit: Option<&'a Throttle>,
    /// Limits the log's output.
    pub write_limit: Option<&'a Throttle>,
    /// Called after each chunk with the bytes of the disk done.
    pub progress: Option<&'a mut dyn FnMut(Progress)>,
}

impl std::fmt::Debug for TransferOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferOptions")
            .field("writer", &self.writer)
            .field("read_limit", &self.read_limit)
            .field("write_limit", &self.write_limit)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl From<WriterOptions> for TransferOptions<'_> {
    fn from(writer: WriterOptions) -> Self {
        TransferOptions {
            writer,
            ..TransferOptions::default()
        }
    }
}

impl TransferOptions<'_> {
    pub(crate) fn read(&self, bytes: u64) {
        if let Some(t) = self.read_limit {
            t.consume(bytes);
        }
    }

    pub(crate) fn wrote(&self, bytes: u64) {
        if let Some(t) = self.write_limit {
            t.consume(bytes);
        }
    }

    pub(crate) fn report(&mut self, done: u64, total: u64) {
        if let Some(p) = self.progress.as_mut() {
            p(Progress { done, total });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_holds_the_rate_after_the_burst() {
        // 1 MB/s: the first 100 KB pass at once, 200 KB more take ~0.2 s.
        let t = Throttle::new(1_000_000);
        let start = Instant::now();
        t.consume(100_000);
        t.consume(100_000);
        t.consume(100_000);
        assert!(start.elapsed() >= Duration::from_millis(190));
    }
}
