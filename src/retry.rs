//! What both shippers (to a replica server, to an object store) do alike
//! between attempts: wait with backoff and jitter, stop promptly, and say
//! a recurring failure once a minute.

use crate::error::{Error, Result};
use crate::source::Spool;
use crate::status::LogSink;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Sleeps `d` in small steps; false when asked to stop meanwhile.
pub(crate) fn pause(d: Duration, stop: &AtomicBool) -> bool {
    let step = Duration::from_millis(20);
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
    !stop.load(Ordering::SeqCst)
}

/// The wait after a failure: between half and all of `wait` (jitter, so
/// many primaries cut off at once do not come back at once).
pub(crate) fn backoff(wait: Duration) -> Duration {
    let jitter = crate::id::random_u64().unwrap_or(0) % 1000;
    wait / 2 + wait.mul_f64(jitter as f64 / 2000.0)
}

/// Failures said at most once a minute each, with the count of those
/// not said; a recovery said once.
#[derive(Debug, Default)]
struct LogLimiter {
    last: Option<(String, std::time::Instant)>,
    quiet: u64,
}

impl LogLimiter {
    const EVERY: Duration = Duration::from_secs(60);

    fn failed(&mut self, msg: &str, now: std::time::Instant) -> Option<String> {
        match &self.last {
            Some((m, at)) if m == msg && now.duration_since(*at) < Self::EVERY => {
                self.quiet += 1;
                None
            }
            _ => {
                let line = if self.quiet > 0 {
                    format!("{msg} (and {} more failures before)", self.quiet)
                } else {
                    msg.to_string()
                };
                self.last = Some((msg.to_string(), now));
                self.quiet = 0;
                Some(line)
            }
        }
    }

    /// Progress after failures: says so once, and forgets them.
    fn recovered(&mut self) -> Option<String> {
        let (_, _) = self.last.take()?;
        let n = std::mem::take(&mut self.quiet);
        Some(format!("shipping again (after {} failures)", n + 1))
    }
}

/// A shipper's thread: asked to stop and joined when halted or dropped.
pub(crate) struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Runs `f` on a thread named `name`; `stop` is what `f` watches.
    pub(crate) fn spawn(
        name: &str,
        stop: Arc<AtomicBool>,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<Worker> {
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .map_err(|e| Error::io(format!("start the thread {name}"), e))?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }

    /// Asks the thread to stop and waits for it.
    pub(crate) fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A shipper's log lines: a failure said once a minute while it recurs,
/// a recovery said once; nothing without a sink (a library prints
/// nothing of its own accord).
pub(crate) struct Reporter {
    sink: Option<LogSink>,
    limiter: Mutex<LogLimiter>,
}

impl Reporter {
    pub(crate) fn new(sink: Option<LogSink>) -> Self {
        Reporter {
            sink,
            limiter: Mutex::new(LogLimiter::default()),
        }
    }

    pub(crate) fn say(&self, line: &str) {
        if let Some(sink) = &self.sink {
            sink(line);
        }
    }

    /// A failure; returns its message (for the status).
    pub(crate) fn failed(&self, e: &Error) -> String {
        let msg = e.to_string();
        if let Some(line) = self.limiter.lock().failed(&msg, std::time::Instant::now()) {
            self.say(&line);
        }
        msg
    }

    /// Progress: says so once after failures.
    pub(crate) fn recovered(&self) {
        if let Some(line) = self.limiter.lock().recovered() {
            self.say(&line);
        }
    }
}

/// What a shipper's status shows of its spool: the logs and bytes not yet
/// acknowledged, and the age (ns) of the acknowledged point.
pub(crate) fn spool_progress(spool: &Spool) -> (u64, u64, Option<u64>) {
    let sp = spool.status();
    let rpo = (sp.acked.created_ns > 0)
        .then(|| crate::status::now_ns().saturating_sub(sp.acked.created_ns));
    (sp.pending_logs, sp.pending_bytes, rpo)
}
