//! The compression workers of a log writer: records go out to a few
//! threads and come back in order, while the writer goes on gathering.

use super::writer::Pending;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

type Job = (u64, Pending);

pub(super) struct EncodePool {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Job>,
    workers: Vec<JoinHandle<()>>,
    next_send: u64,
    next_write: u64,
    /// Encoded records that came back ahead of their turn.
    ready: BTreeMap<u64, Pending>,
}

impl EncodePool {
    pub(super) fn new(threads: usize, salt: u64) -> Self {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, done) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let workers = (0..threads)
            .map(|_| {
                let (rx, tx) = (rx.clone(), tx.clone());
                std::thread::spawn(move || loop {
                    let job = rx.lock().recv();
                    let Ok((i, mut p)) = job else { break };
                    p.encode(salt);
                    if tx.send((i, p)).is_err() {
                        break;
                    }
                })
            })
            .collect();
        EncodePool {
            jobs: Some(jobs),
            done,
            workers,
            next_send: 0,
            next_write: 0,
            ready: BTreeMap::new(),
        }
    }

    /// Hands `p` to a worker, or, when the workers already have `limit`
    /// records queued, encodes it on the calling thread: the caller is a
    /// worker too instead of waiting. False when the workers are gone.
    pub(super) fn submit(&mut self, mut p: Pending, salt: u64, limit: usize) -> bool {
        let queued = self.in_flight() - self.ready.len();
        if queued >= limit {
            p.encode(salt);
            self.ready.insert(self.next_send, p);
            self.next_send += 1;
            return true;
        }
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|j| j.send((self.next_send, p)).is_ok());
        self.next_send += u64::from(sent);
        sent
    }

    /// Records sent and not yet handed back.
    pub(super) fn in_flight(&self) -> usize {
        (self.next_send - self.next_write) as usize
    }

    /// The next record in order; waits for it when `wait`, else returns
    /// `None` if it is not back yet. `None` with records in flight and
    /// `wait` means a worker died.
    pub(super) fn next_ready(&mut self, wait: bool) -> Option<Pending> {
        loop {
            if let Some(p) = self.ready.remove(&self.next_write) {
                self.next_write += 1;
                return Some(p);
            }
            if self.next_write == self.next_send {
                return None;
            }
            let msg = if wait {
                self.done.recv().ok()
            } else {
                self.done.try_recv().ok()
            };
            let (i, p) = msg?;
            self.ready.insert(i, p);
        }
    }
}

impl Drop for EncodePool {
    fn drop(&mut self) {
        self.jobs = None; // closes the queue: workers finish and exit
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
