//! End to end on a real image file written by qemu-io: initial sync, then
//! twenty cycles of random 4 KiB writes, sequential 1 MiB writes, zero
//! writes and discards, each range also taken as a write guard; the
//! replica equals the image byte for byte and for `qemu-img compare`.

mod common;

use blockrep::io::{Dir, FileStorage, FsDir, Storage};
use blockrep::log::{MappedLog, ReadOptions, WriterOptions};
use blockrep::replica::Replica;
use blockrep::source::{CycleOptions, Pipeline, Primary, Spool};
use blockrep::{DiskId, Geometry, Tracker};
use common::{first_diff, Rng};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

const ID: DiskId = DiskId([0x51; 16]);
const SIZE: u64 = 64 << 20;

fn qemu_io(image: &Path, cmds: &[String]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw", "--discard=unmap"]);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = c.arg(image).output().unwrap_or_else(|e| {
        panic!("qemu-io is required (apt-get install qemu-utils; scripts/test.sh installs it): {e}")
    });
    assert!(
        out.status.success(),
        "qemu-io {cmds:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[test]
fn qemu_io_writes_zeroes_and_discards_replicate_exactly() {
    let t = tempfile::tempdir().unwrap();
    let image = t.path().join("disk.raw");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&image)
        .arg(SIZE.to_string())
        .status()
        .expect("qemu-img is required (apt-get install qemu-utils)");
    assert!(st.success());
    let mut rng = Rng(2024);
    let pattern = t.path().join("random.bin");
    let mut noise = vec![0u8; 1 << 20];
    rng.fill(&mut noise);
    std::fs::write(&pattern, &noise).unwrap();
    let pat = pattern.display().to_string();
    // Some data before replication starts.
    qemu_io(
        &image,
        &[
            format!("write -s {pat} 0 1M"),
            format!("write -P 0x61 {} 3M", 20 << 20),
        ],
    );

    let g = Geometry::new(SIZE, 4096).unwrap();
    let disk: Arc<dyn Storage> = Arc::new(FileStorage::open(&image).unwrap());
    let start = blockrep::source::ChainPoint::start(1, g);
    let spool = Spool::create(
        Arc::new(FsDir::new(t.path().join("spool")).unwrap()),
        ID,
        start,
        1 << 30,
    )
    .unwrap();
    let opts = WriterOptions::default();
    let p = Pipeline::new(Primary::new(Tracker::new(g), disk), spool, opts).unwrap();
    p.initial_sync(opts.into()).unwrap();
    let rdir: Arc<dyn Dir> = Arc::new(FsDir::new(t.path().join("replica")).unwrap());
    let mut replica: Option<Replica> = None;
    let ship = |replica: &mut Option<Replica>| {
        while let Some(l) = p.spool().next_to_ship() {
            let log = MappedLog::open(l.path.as_ref().unwrap(), &ReadOptions::default()).unwrap();
            match replica {
                None => *replica = Some(Replica::create(rdir.clone(), &log).unwrap()),
                Some(r) => {
                    r.apply(&log).unwrap();
                }
            }
            p.spool().ack(l.point.sequence, &l.point.digest).unwrap();
        }
    };
    ship(&mut replica);

    for cycle in 0..20u64 {
        let mut cmds = Vec::new();
        let mut guards = Vec::new();
        for _ in 0..8 {
            let (cmd, off, len, zero) = match rng.below(4) {
                0 => {
                    let off = rng.below(SIZE / 4096) * 4096;
                    (format!("write -s {pat} {off} 4k"), off, 4096, false)
                }
                1 => {
                    let off = rng.below(SIZE / (1 << 20) - 1) * (1 << 20) + rng.below(4096);
                    let p = 1 + rng.below(250);
                    (format!("write -P {p} {off} 1M"), off, 1 << 20, false)
                }
                2 => {
                    let off = rng.below(SIZE - (300 << 10));
                    let len = 1 + rng.below(300 << 10);
                    (format!("write -z {off} {len}"), off, len, true)
                }
                _ => {
                    let off = rng.below(SIZE / 4096 - 128) * 4096;
                    let len = (1 + rng.below(128)) * 4096;
                    (format!("discard {off} {len}"), off, len, true)
                }
            };
            cmds.push(cmd);
            guards.push(if zero {
                p.primary().zero_guard(off, len).unwrap()
            } else {
                p.primary().write_guard(off, len).unwrap()
            });
        }
        qemu_io(&image, &cmds);
        drop(guards);
        p.cycle(&CycleOptions::default()).unwrap();
        ship(&mut replica);
        assert_eq!(
            first_diff(
                &read_file(&t.path().join("replica/image")),
                &read_file(&image)
            ),
            None,
            "cycle {cycle}: {cmds:?}"
        );
    }
    let r = replica.unwrap();
    assert_eq!(r.status().applied, 21);
    let cmp = Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(t.path().join("replica/image"))
        .arg(&image)
        .status()
        .unwrap();
    assert!(cmp.success(), "qemu-img compare: the replica differs");
}
