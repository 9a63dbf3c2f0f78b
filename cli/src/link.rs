//! A slow link for the benchmarks: a TCP relay on loopback that forwards
//! to one address at a fixed rate, each direction through its own token
//! bucket shared by every connection (one link, not one per connection),
//! as a WAN line between two sites would be. Bandwidth only: no added
//! latency, loss or reordering.

use blockrep::{Error, Result};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes moved per read: small enough that the bucket paces smoothly
/// (1.3 ms at 100 Mbit/s), large enough to cost little CPU.
const CHUNK: usize = 16 << 10;

/// A token bucket: `take` sleeps until the bytes fit the rate. Tokens may
/// go negative (a debt paid by sleeping), so a chunk larger than the burst
/// still passes at the rate.
struct Bucket {
    bytes_per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(bytes_per_second: f64) -> Bucket {
        Bucket {
            bytes_per_second,
            burst: 4.0 * CHUNK as f64,
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    fn take(&self, n: usize) {
        let debt = {
            let mut s = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.bytes_per_second;
            s.0 = (s.0 + refill).min(self.burst) - n as f64;
            s.1 = now;
            -s.0
        };
        if debt > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(debt / self.bytes_per_second));
        }
    }
}

/// A running relay; dropped, it stops accepting (connections under way
/// end when either side closes).
pub struct Link {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Link {
    /// Listens on a loopback port and forwards every connection to
    /// `target`, `megabits` per second each way.
    pub fn start(target: SocketAddr, megabits: f64) -> Result<Link> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("listen for the link", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("listen for the link", e))?;
        let rate = megabits * 1e6 / 8.0;
        let (up, down) = (Arc::new(Bucket::new(rate)), Arc::new(Bucket::new(rate)));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(target) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                        continue;
                    };
                    let (up, down) = (up.clone(), down.clone());
                    std::thread::spawn(move || pump(client, server, &up));
                    std::thread::spawn(move || pump(s2, c2, &down));
                }
            })
        };
        Ok(Link {
            addr,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` to `to` at the bucket's rate until `from` ends, then
/// passes the end on.
fn pump(mut from: TcpStream, mut to: TcpStream, bucket: &Bucket) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        bucket.take(n);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
