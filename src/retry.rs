//! What both shippers (to a replica server, to an object store) do alike
//! between attempts: wait with backoff and jitter, stop promptly, and say
//! a recurring failure once a minute.

use std::sync::atomic::{AtomicBool, Ordering};
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
pub(crate) struct LogLimiter {
    last: Option<(String, std::time::Instant)>,
    quiet: u64,
}

impl LogLimiter {
    const EVERY: Duration = Duration::from_secs(60);

    pub(crate) fn failed(&mut self, msg: &str, now: std::time::Instant) -> Option<String> {
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
    pub(crate) fn recovered(&mut self) -> Option<String> {
        let (_, _) = self.last.take()?;
        let n = std::mem::take(&mut self.quiet);
        Some(format!("shipping again (after {} failures)", n + 1))
    }
}
