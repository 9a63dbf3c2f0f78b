//! The `blockrep` command: the end-to-end demo, and operator commands to
//! inspect logs, replicas and trackers and to sync an image.

mod bench;
mod demo;
mod ops;

use blockrep::{Error, Result};
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const USAGE: &str = "usage:
  blockrep demo [--size SIZE] [--seconds N] [--dir DIR]
  blockrep bench [--size SIZE] [--dir DIR]
  blockrep log inspect FILE [--json]
  blockrep replica status|points|verify DIR [--image PATH] [--json]
  blockrep replica export DIR [--image PATH] --point N OUT
  blockrep tracker inspect FILE [--json]
  blockrep sync SOURCE-IMAGE REPLICA-DIR [--json]
SIZE takes K, M, G suffixes (powers of 1024). --image names a replica's
image kept outside its directory (a disk adopted after a failover).";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("blockrep: {e}");
        std::process::exit(1);
    }
}

fn run(args: &[String]) -> Result<()> {
    let json = args.iter().any(|a| a == "--json");
    let mut words: Vec<&str> = args.iter().map(String::as_str).collect();
    // `--image PATH` (replica commands) may come anywhere.
    let image = match words.iter().position(|w| *w == "--image") {
        Some(i) if i + 1 < words.len() => {
            let p = words[i + 1];
            words.drain(i..i + 2);
            Some(p)
        }
        Some(_) => return Err(Error::invalid("--image needs a path")),
        None => None,
    };
    match words.as_slice() {
        ["demo", rest @ ..] => demo::run(demo_options(rest)?),
        ["bench", rest @ ..] => bench::run(bench_options(rest)?),
        ["log", "inspect", file, ..] => ops::log_inspect(file, json),
        ["replica", "status", dir, ..] => ops::replica_status(dir, image, json),
        ["replica", "points", dir, ..] => ops::replica_points(dir, image, json),
        ["replica", "verify", dir, ..] => ops::replica_verify(dir, image, json),
        ["replica", "export", dir, "--point", n, out] => {
            ops::replica_export(dir, image, parse_u64(n)?, out)
        }
        ["tracker", "inspect", file, ..] => ops::tracker_inspect(file, json),
        ["sync", source, dir, ..] => ops::sync(source, dir, json),
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(Error::invalid(format!("unknown command line\n{USAGE}"))),
    }
}

fn demo_options(rest: &[&str]) -> Result<demo::DemoOptions> {
    let mut o = demo::DemoOptions {
        size: 1 << 30,
        seconds: 10,
        dir: None,
    };
    let mut it = rest.iter();
    while let Some(&flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| Error::invalid(format!("{flag} needs a value")))?;
        match flag {
            "--size" => o.size = parse_size(value)?,
            "--seconds" => o.seconds = parse_u64(value)?.max(1),
            "--dir" => o.dir = Some(value.into()),
            _ => return Err(Error::invalid(format!("unknown demo flag {flag}\n{USAGE}"))),
        }
    }
    if o.size < 1 << 20 {
        return Err(Error::invalid("the demo disk is at least 1M"));
    }
    Ok(o)
}

fn bench_options(rest: &[&str]) -> Result<bench::BenchOptions> {
    let mut o = bench::BenchOptions {
        size: 4 << 30,
        dir: None,
    };
    let mut it = rest.iter();
    while let Some(&flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| Error::invalid(format!("{flag} needs a value")))?;
        match flag {
            "--size" => o.size = parse_size(value)?,
            "--dir" => o.dir = Some(value.into()),
            _ => {
                return Err(Error::invalid(format!(
                    "unknown bench flag {flag}\n{USAGE}"
                )))
            }
        }
    }
    if o.size < 16 << 20 {
        return Err(Error::invalid("the bench image is at least 16M"));
    }
    Ok(o)
}

fn parse_u64(s: &str) -> Result<u64> {
    s.parse()
        .map_err(|_| Error::invalid(format!("{s:?} is not a number")))
}

fn parse_size(s: &str) -> Result<u64> {
    let (num, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    parse_u64(num)?
        .checked_shl(shift)
        .ok_or_else(|| Error::invalid(format!("size {s} is too large")))
}

/// Bytes for people.
pub fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A progress bar on standard error (redrawn at most ten times a second;
/// plain lines when standard error is not a terminal).
pub struct Progress {
    what: &'static str,
    total: u64,
    start: Instant,
    last_ms: AtomicU64,
    tty: bool,
}

impl Progress {
    /// A bar for `what`, out of `total` units.
    pub fn new(what: &'static str, total: u64) -> Self {
        Progress {
            what,
            total: total.max(1),
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// `done` units are done.
    pub fn set(&self, done: u64) {
        let ms = self.start.elapsed().as_millis() as u64;
        let every = if self.tty { 100 } else { 2000 };
        if ms < self.last_ms.load(Ordering::Relaxed) + every {
            return;
        }
        self.last_ms.store(ms, Ordering::Relaxed);
        self.draw(done.min(self.total));
    }

    fn draw(&self, done: u64) {
        let pct = done * 100 / self.total;
        let filled = (pct / 4) as usize;
        let bar = format!("{}{}", "#".repeat(filled), " ".repeat(25 - filled));
        let mut e = std::io::stderr();
        if self.tty {
            let _ = write!(e, "\r  {} [{bar}] {pct:3}%", self.what);
        } else {
            let _ = writeln!(e, "  {} {pct}%", self.what);
        }
        let _ = e.flush();
    }

    /// All done: the final line.
    pub fn done(&self) {
        self.draw(self.total);
        if self.tty {
            eprintln!(" {:.1} s", self.start.elapsed().as_secs_f64());
        }
    }
}
