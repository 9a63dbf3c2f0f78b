//! The server's counters and `/metrics` in the Prometheus text format.

use super::Shared;
use crate::hex::hex;
use crate::status::now_ns;
use crate::status::DiskStatus;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The counters `/metrics` reports (Prometheus text format).
#[derive(Default)]
pub(super) struct Metrics {
    bytes_received: AtomicU64,
    logs_applied: AtomicU64,
    apply_nanos: AtomicU64,
    reclaimed_bytes: AtomicU64,
    /// Refusals by reason (handshake reasons, limits, HTTP statuses).
    refusals: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Metrics {
    /// One refusal, for `reason`.
    pub(super) fn refused(&self, reason: &str) {
        *self.refusals.lock().entry(reason.to_string()).or_insert(0) += 1;
    }

    /// `n` bytes of a log received.
    pub(super) fn received(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `n` bytes of abandoned uploads removed.
    pub(super) fn reclaimed(&self, n: u64) {
        self.reclaimed_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// A verify and apply that took `took`; `applied` when it applied a
    /// log (not when it held it already, nor when it refused it).
    pub(super) fn applied(&self, took: std::time::Duration, applied: bool) {
        self.apply_nanos.fetch_add(
            u64::try_from(took.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if applied {
            self.logs_applied.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The Prometheus text of the server's counters, and each disk's RPO.
pub(super) fn metrics_text(shared: &Shared) -> String {
    use std::fmt::Write;
    let m = &shared.metrics;
    let mut t = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, lines: Vec<(String, String)>| {
        let _ = writeln!(
            t,
            "# HELP blockrep_{name} {help}\n# TYPE blockrep_{name} {kind}"
        );
        for (labels, v) in lines {
            let _ = writeln!(t, "blockrep_{name}{labels} {v}");
        }
    };
    let one = |v: String| vec![(String::new(), v)];
    metric(
        "bytes_received_total",
        "Log bytes received.",
        "counter",
        one(m.bytes_received.load(Ordering::Relaxed).to_string()),
    );
    metric(
        "logs_applied_total",
        "Logs applied.",
        "counter",
        one(m.logs_applied.load(Ordering::Relaxed).to_string()),
    );
    metric(
        "apply_seconds_total",
        "Time spent verifying and applying logs.",
        "counter",
        one(format!(
            "{:.6}",
            m.apply_nanos.load(Ordering::Relaxed) as f64 / 1e9
        )),
    );
    metric(
        "uploads_reclaimed_bytes_total",
        "Bytes of abandoned partial uploads removed.",
        "counter",
        one(m.reclaimed_bytes.load(Ordering::Relaxed).to_string()),
    );
    metric(
        "connections",
        "Connections open.",
        "gauge",
        one(shared.connections.load(Ordering::Relaxed).to_string()),
    );
    metric(
        "disks_open",
        "Disks the server holds open (those that exist, and pushes under way).",
        "gauge",
        one(shared.disks.lock().len().to_string()),
    );
    let refusals = m
        .refusals
        .lock()
        .iter()
        .map(|(r, n)| {
            (
                format!("{{reason=\"{}\"}}", r.replace('"', "'")),
                n.to_string(),
            )
        })
        .collect();
    metric("refusals_total", "Refusals by reason.", "counter", refusals);
    let now = now_ns();
    let mut rpo = Vec::new();
    let mut health = Vec::new();
    for ((who, id), d) in shared.disks.lock().iter() {
        let Some(r) = d.replica.lock().clone() else {
            continue;
        };
        let labels = format!("{{primary=\"{who}\",disk=\"{}\"}}", hex(&id.0));
        let st = DiskStatus::of_replica(&r, now);
        if let Some(ns) = st.rpo_ns {
            rpo.push((labels.clone(), format!("{:.3}", ns as f64 / 1e9)));
        }
        let (h, _) =
            super::health::health_of(&shared.conf().health, &st, d.last_received.lock().elapsed());
        health.push((labels, (h as u8).to_string()));
    }
    metric(
        "rpo_seconds",
        "Age of each disk's latest point.",
        "gauge",
        rpo,
    );
    metric(
        "health",
        "Replication health: 0 normal, 1 warning, 2 critical.",
        "gauge",
        health,
    );
    t
}
