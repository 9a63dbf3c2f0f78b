//! A TCP proxy that injects faults between a shipper and a server: it cuts
//! connections at random byte offsets of the upload, cuts answers on their
//! way back (an acknowledgement lost after the server applied), stalls
//! and delays. Seeded, so a failing run can be replayed.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The faults, each drawn per connection or per chunk.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Every connection's upload is cut at a random offset below this
    /// many bytes.
    pub cut_within: Option<u64>,
    /// Chance (percent) a connection's answers are cut after fewer than
    /// 2000 bytes went back.
    pub drop_answer_percent: u64,
    /// Chance (per mille) a chunk waits `stall` first.
    pub stall_per_mille: u64,
    pub stall: Duration,
    /// Every chunk waits up to this long.
    pub delay: Duration,
    /// Chance (percent) a connection is answered at once with an HTTP
    /// `503 Slow Down` (as an overloaded object store answers) and
    /// closed, without reaching the server.
    pub refuse_percent: u64,
}

impl Faults {
    pub const NONE: Faults = Faults {
        cut_within: None,
        drop_answer_percent: 0,
        stall_per_mille: 0,
        stall: Duration::ZERO,
        delay: Duration::ZERO,
        refuse_percent: 0,
    };
}

/// What the proxy did.
#[derive(Debug, Default)]
pub struct Counts {
    pub connections: AtomicU64,
    /// Connections cut (either way).
    pub cuts: AtomicU64,
    /// Of which, cut on the answers' way back.
    pub answers_cut: AtomicU64,
    pub up_bytes: AtomicU64,
    /// Connections answered 503 instead.
    pub refused: AtomicU64,
}

/// A running proxy; stops accepting when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    faults: Arc<parking_lot::Mutex<Faults>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Proxy {
    /// Forwards connections on a new loopback port to `target`.
    pub fn start(target: SocketAddr, faults: Faults, seed: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let faults = Arc::new(parking_lot::Mutex::new(faults));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, f, s) = (counts.clone(), faults.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = seed;
            while !s.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                c.connections.fetch_add(1, Ordering::SeqCst);
                let plan = *f.lock();
                if next(&mut rng) % 100 < plan.refuse_percent {
                    c.refused.fetch_add(1, Ordering::SeqCst);
                    std::thread::spawn(move || refuse(client));
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let up_cut = plan.cut_within.map(|w| next(&mut rng) % w.max(1));
                let down_cut = (next(&mut rng) % 100 < plan.drop_answer_percent)
                    .then(|| next(&mut rng) % 2000);
                let seed = next(&mut rng);
                let (c1, c2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let counts = c.clone();
                std::thread::spawn(move || {
                    pump(client, server, up_cut, plan, seed, &counts, true);
                });
                let counts = c.clone();
                std::thread::spawn(move || {
                    pump(c2, c1, down_cut, plan, seed ^ 0x5555, &counts, false);
                });
            }
        });
        Proxy {
            addr,
            counts,
            faults,
            stop,
        }
    }

    /// Changes the faults of the connections to come.
    pub fn set(&self, faults: Faults) {
        *self.faults.lock() = faults;
    }
}

/// Reads the request's head, answers 503 and closes.
fn refuse(mut client: TcpStream) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code></Error>";
    let _ = write!(
        client,
        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.shutdown(Shutdown::Both);
}

/// splitmix64: well mixed from the first draw, whatever the seed.
fn next(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Copies `from` to `to` until either closes, or until `cut` bytes went
/// through: then both ends are shut down.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    cut: Option<u64>,
    plan: Faults,
    mut rng: u64,
    counts: &Counts,
    up: bool,
) {
    let mut buf = vec![0u8; 16 << 10];
    let mut done = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if plan.stall_per_mille > 0 && next(&mut rng) % 1000 < plan.stall_per_mille {
            std::thread::sleep(plan.stall);
        }
        if !plan.delay.is_zero() {
            let us = next(&mut rng) % (plan.delay.as_micros() as u64 + 1);
            std::thread::sleep(Duration::from_micros(us));
        }
        let n = match cut {
            Some(c) if done + n as u64 >= c => {
                let k = (c - done) as usize;
                let _ = to.write_all(&buf[..k]);
                counts.cuts.fetch_add(1, Ordering::SeqCst);
                if !up {
                    counts.answers_cut.fetch_add(1, Ordering::SeqCst);
                }
                let _ = to.shutdown(Shutdown::Both);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
            _ => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        done += n as u64;
        if up {
            counts.up_bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
