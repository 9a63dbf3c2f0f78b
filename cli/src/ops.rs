//! Operator commands: inspect logs, replicas and tracker files; export a
//! point; sync an image no one is writing.

use super::{human, now_ns, Progress};
use blockrep::io::{FileStorage, FsDir, Storage};
use blockrep::log::{LogSummary, MappedLog, ReadOptions};
use blockrep::replica::Replica;
use blockrep::source::{Source, Spool, TransferOptions};
use blockrep::status::DiskStatus;
use blockrep::tracker::PersistentTracker;
use blockrep::{DiskId, Error, Geometry, Result};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;

/// Key-value pairs printed as text lines or one JSON object.
pub struct Out(serde_json::Map<String, Value>);

impl Out {
    pub fn new() -> Self {
        Out(serde_json::Map::new())
    }
    /// Adds `k`: anything serde serialises (numbers, strings, ids, digests).
    pub fn put(&mut self, k: &str, v: impl serde::Serialize) -> &mut Self {
        self.0
            .insert(k.into(), serde_json::to_value(v).unwrap_or(Value::Null));
        self
    }
    pub fn print(&self, json: bool) {
        if json {
            println!("{}", Value::Object(self.0.clone()));
        } else {
            for (k, v) in &self.0 {
                match v {
                    Value::String(s) => println!("{k:>18}: {s}"),
                    v => println!("{k:>18}: {v}"),
                }
            }
        }
    }
}

/// `v` as one line of JSON.
pub fn json_of(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Opens the replica in `dir`, its image in `dir` unless `--image PATH`
/// names another (an adopted disk, say).
pub fn open_replica(dir: &str, image: Option<&str>) -> Result<Replica> {
    let d = Path::new(dir);
    if !d.join("state").exists() {
        return Err(Error::invalid(format!(
            "{dir}: not a replica directory (no state file)"
        )));
    }
    let fs = Arc::new(FsDir::new(d)?);
    Ok(match image {
        Some(p) => Replica::open_with_image(fs, Arc::new(FileStorage::open(p)?))?,
        None => Replica::open(fs)?,
    })
}

/// `blockrep log inspect FILE`: header, counts, and the verification.
/// The transport to a local replica: every unacknowledged log of `spool`
/// applied to the replica in `dir` (created from the first, a full log,
/// when `replica` is `None`), then acknowledged.
pub fn apply_spool(spool: &Spool, dir: &Path, replica: &mut Option<Replica>) -> Result<()> {
    while let Some(l) = spool.next_to_ship() {
        let path = l
            .path
            .as_ref()
            .ok_or_else(|| Error::invalid("the spool is not on a file system"))?;
        let log = MappedLog::open(path, &ReadOptions::default())?;
        match replica {
            None => *replica = Some(Replica::create(Arc::new(FsDir::new(dir)?), &log)?),
            Some(r) => {
                r.apply(&log)?;
            }
        }
        spool.ack(l.point.sequence, &l.point.digest)?;
    }
    Ok(())
}

pub fn log_inspect(file: &str, json: bool) -> Result<()> {
    let log = MappedLog::open(file, &ReadOptions::default())?;
    let (h, t) = (log.header(), log.trailer());
    let mut o = Out::new();
    o.put("disk_id", h.disk_id)
        .put("kind", h.kind)
        .put("epoch", h.epoch)
        .put("sequence", h.sequence)
        .put("base_sequence", h.base_sequence)
        .put("base_digest", h.base_digest)
        .put("disk_size", h.geometry.size())
        .put("block_size", h.geometry.block_size())
        .put("consistency", h.consistency)
        .put("label", &h.label)
        .put("created_ns", h.created_ns)
        .put("records", t.records)
        .put("blocks", t.blocks)
        .put("data_blocks", t.data_blocks)
        .put("raw_bytes", t.raw_bytes)
        .put("bytes", log.bytes().len())
        .put("digest", t.digest)
        .put("verify", "ok: every record, checksum and the trailer");
    if let Some(g) = h.group {
        o.put("group_members", g.members);
    }
    o.print(json);
    Ok(())
}

/// `blockrep replica status DIR`.
pub fn replica_status(dir: &str, image: Option<&str>, json: bool) -> Result<()> {
    let r = open_replica(dir, image)?;
    let s = DiskStatus::of_replica(&r, now_ns());
    if json {
        println!("{}", json_of(&s));
    } else {
        let mut o = Out::new();
        o.put("disk_id", s.disk_id)
            .put("role", s.role.name())
            .put("epoch", s.epoch)
            .put("latest_point", s.latest_point)
            .put(
                "rpo",
                s.rpo_ns
                    .map_or("none".into(), |r| format!("{:.1} s", r as f64 / 1e9)),
            )
            .put("geometry", r.status().geometry.to_string())
            .put("points", r.points().len());
        o.print(false);
    }
    Ok(())
}

/// `blockrep replica points DIR`.
pub fn replica_points(dir: &str, image: Option<&str>, json: bool) -> Result<()> {
    let r = open_replica(dir, image)?;
    let points = r.points();
    if json {
        println!("{}", json_of(&points));
    } else {
        println!(
            "{:>10} {:>6} {:>12} {:>10}  label",
            "sequence", "epoch", "consistency", "undo"
        );
        for p in &points {
            println!(
                "{:>10} {:>6} {:>12} {:>10}  {}",
                p.sequence,
                p.epoch,
                json_of(&p.consistency).trim_matches('"'),
                human(p.undo_bytes),
                p.label
            );
        }
    }
    Ok(())
}

/// `blockrep replica verify DIR`: opens it (finishing or undoing an
/// interrupted operation) and reads every retained point whole.
pub fn replica_verify(dir: &str, image: Option<&str>, json: bool) -> Result<()> {
    let r = open_replica(dir, image)?;
    let g = r.status().geometry;
    let mut buf = vec![0u8; 1 << 20];
    let points = r.points();
    let bar = Progress::new("verify", points.len() as u64 * g.size());
    let mut done = 0;
    for p in &points {
        let v = r.view(p.sequence)?;
        let size = v.geometry().size();
        let mut off = 0;
        while off < size {
            let n = (size - off).min(buf.len() as u64) as usize;
            v.read_at(&mut buf[..n], off)?;
            off += n as u64;
            bar.set(done + off);
        }
        done += size;
    }
    bar.done();
    let mut o = Out::new();
    o.put("verify", "ok: state, undo logs and every point read back")
        .put("points", r.points().len())
        .put("geometry", g.to_string());
    o.print(json);
    Ok(())
}

/// `blockrep replica export DIR --point N OUT`.
pub fn replica_export(dir: &str, image: Option<&str>, point: u64, out: &str) -> Result<()> {
    let r = open_replica(dir, image)?;
    // The point's own size (a resize changes it from point to point).
    let size = r.view(point)?.geometry().size();
    let bar = Progress::new("export", size);
    r.export_with(point, out, &mut |done| bar.set(done))?;
    bar.done();
    println!("point {point} exported to {out}");
    Ok(())
}

/// `blockrep tracker inspect FILE`.
pub fn tracker_inspect(file: &str, json: bool) -> Result<()> {
    let h = PersistentTracker::read_header(file)?;
    let mut o = Out::new();
    o.put("disk_id", h.disk_id)
        .put("disk_size", h.geometry.size())
        .put("block_size", h.geometry.block_size())
        .put("region_size", h.region_size)
        .put("generation", h.generation)
        .put("in_use", h.in_use)
        .put(
            "state",
            if h.in_use {
                "in use or stopped uncleanly: the next open resends its intent regions"
            } else {
                "closed cleanly"
            },
        );
    o.print(json);
    Ok(())
}

/// Runs a long copy of `total` bytes with a progress bar named `what`.
pub fn with_bar<R>(
    what: &'static str,
    total: u64,
    f: impl FnOnce(TransferOptions<'_>) -> Result<R>,
) -> Result<R> {
    let bar = Progress::new(what, total);
    let mut progress = |p: blockrep::source::Progress| bar.set(p.done);
    let r = f(TransferOptions {
        progress: Some(&mut progress),
        ..TransferOptions::default()
    })?;
    bar.done();
    Ok(r)
}

/// Sends the blocks of `disk` whose digests differ from `replica`'s, as
/// one resync log applied to it (written at `log_path`, then removed).
pub fn digest_resync(disk: &dyn Storage, replica: &Replica, log_path: &Path) -> Result<LogSummary> {
    let st = replica.status();
    let g = Geometry::new(disk.len()?, st.geometry.block_size())?;
    let remote = replica.block_digests(0)?;
    let mut src = Source::enable(st.disk_id, st.epoch, g);
    let f = private_file(log_path)?;
    let (_, summary) = with_bar("digest resync", g.size(), |t| {
        src.resync(disk, &remote, std::io::BufWriter::new(f), t)
    })?;
    let applied = replica.apply_file(log_path);
    std::fs::remove_file(log_path).map_err(|e| Error::io("remove log", e).with_path(log_path))?;
    applied?;
    Ok(summary)
}

/// `blockrep sync SOURCE-IMAGE REPLICA-DIR`: the first run copies the
/// image (a full log, holes skipped); later runs send only the blocks
/// whose digests differ. Each run leaves a retention point.
pub fn sync(source: &str, dir: &str, image: Option<&str>, json: bool) -> Result<()> {
    let disk = FileStorage::open_read_only(source)?;
    let g = Geometry::new(disk.len()?, 4096)?;
    let d = Path::new(dir);
    let log_path = d.join("sync.brlog");
    let started = std::time::Instant::now();
    let (kind, summary, replica) = if d.join("state").exists() {
        let r = open_replica(dir, image)?;
        if r.status().geometry.block_size() != g.block_size() {
            return Err(Error::mismatch(format!(
                "{dir}: replica of another block size"
            )));
        }
        let summary = digest_resync(&disk, &r, &log_path)?;
        ("digest resync", summary, r)
    } else if image.is_some() {
        return Err(Error::invalid(format!(
            "{dir}: no replica yet: the first sync creates it with its image inside"
        )));
    } else {
        let fs = Arc::new(FsDir::new(d)?);
        let id = DiskId::random()?;
        let mut src = Source::enable(id, 1, g);
        let f = private_file(&log_path)?;
        let (_, summary) = with_bar("initial sync", g.size(), |t| {
            src.initial_sync(&disk, std::io::BufWriter::new(f), t)
        })?;
        let r = Replica::create_from_file(fs, &log_path);
        std::fs::remove_file(&log_path)
            .map_err(|e| Error::io("remove log", e).with_path(&log_path))?;
        ("initial sync", summary, r?)
    };
    let mut o = Out::new();
    o.put("source", source)
        .put("replica", dir)
        .put("run", kind)
        .put("point", summary.header.sequence)
        .put("blocks_sent", summary.trailer.blocks)
        .put("log_bytes", summary.bytes)
        .put("points", replica.points().len())
        .put("time", format!("{:.2} s", started.elapsed().as_secs_f64()));
    o.print(json);
    Ok(())
}

/// `blockrep replica prune DIR`: drops the oldest points `policy` does not
/// keep (the latest point is always kept); with `dry_run`, prints what it
/// would drop and keep, from the same plan, and drops nothing.
pub fn replica_prune(
    dir: &str,
    image: Option<&str>,
    policy: &blockrep::replica::RetentionPolicy,
    dry_run: bool,
    json: bool,
) -> Result<()> {
    let r = open_replica(dir, image)?;
    let (dropped, kept): (Vec<u64>, Vec<u64>) = if dry_run {
        let plan = r.prune_plan(policy, now_ns())?;
        let kept = r
            .points()
            .iter()
            .map(|p| p.sequence)
            .filter(|s| !plan.contains(s))
            .collect();
        (plan, kept)
    } else {
        let dropped = r.prune(policy, now_ns())?;
        (dropped, r.points().iter().map(|p| p.sequence).collect())
    };
    if json {
        println!(
            "{}",
            serde_json::json!({ "dropped": dropped, "kept": kept, "dry_run": dry_run })
        );
    } else if dry_run {
        println!("would drop points: {}", none_or(&dropped));
        println!("would keep points: {}", none_or(&kept));
    } else {
        println!("dropped points: {}", none_or(&dropped));
        println!("kept points:    {}", none_or(&kept));
    }
    Ok(())
}

/// Creates (or truncates) a log at `path`, mode 0600 as the library's:
/// it holds disk data.
fn private_file(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("create log", e).with_path(path))
}

fn none_or(list: &[u64]) -> String {
    if list.is_empty() {
        "none".into()
    } else {
        list.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    }
}
