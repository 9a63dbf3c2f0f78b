//! Replication to a real S3 server on loopback (`s3s-fs`, installed by
//! scripts/test.sh): cycles shipped sealed, every point hydrated on
//! another "host" byte for byte, through a proxy that cuts connections;
//! fencing of a second primary; tampering, the wrong key, a replayed
//! manifest, each refused; no plain block in any object; compaction and
//! key rotation.
#![cfg(all(feature = "s3", feature = "net"))]

mod common;
#[path = "common/store_flow.rs"]
mod flow;
mod net_common;
#[path = "common/s3.rs"]
mod s3;

use blockrep::io::{FsDir, MemStorage, Storage};
use blockrep::seal::{Keyring, SealKey};
use blockrep::source::{CycleOptions, TransferOptions};
use blockrep::store::{
    compact, compact_until, hydrate, read_manifest, StoreConfig, StorePolicy, StoreShipper,
    WriterId,
};
use blockrep::ErrorKind;
use common::Rng;
use flow::{
    hydrated, keys, pipeline, scribble, shipper_config, snapshot, wait_shipped, work_dir, Primary,
    ID, SIZE,
};
use s3::S3;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn store_config(addr: SocketAddr) -> StoreConfig {
    let options = [
        ("aws_endpoint", format!("http://{addr}")),
        ("aws_allow_http", "true".into()),
        ("aws_access_key_id", "AKTEST".into()),
        ("aws_secret_access_key", "SKTEST".into()),
        ("aws_region", "us-east-1".into()),
    ];
    flow::test_config(
        "s3://brtest/fleet".into(),
        options.into_iter().map(|(k, v)| (k.into(), v)).collect(),
    )
}

/// Every object file the server holds (its own metadata aside).
fn objects(root: &Path) -> Vec<std::path::PathBuf> {
    flow::files_under(&root.join("brtest"))
}

#[test]
fn cycles_ship_sealed_through_cuts_and_every_point_hydrates_exactly() {
    let t = tempfile::tempdir().unwrap();
    let Some(s3) = S3::start(&t.path().join("s3")) else {
        return;
    };
    // Through a proxy that cuts uploads at random offsets, drops answers,
    // stalls, and answers "503 Slow Down": the shipper retries, resumes
    // from the manifest; hydrates go through it too.
    let proxy = flow::faulty_http_proxy(s3.addr, 7);
    flow::cycles_through_faults(
        &store_config(s3.addr),
        &store_config(proxy.addr),
        &proxy,
        &s3.root.join("brtest"),
        t.path(),
    );
    assert!(
        proxy
            .counts
            .refused
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0,
        "the proxy refused nothing"
    );
}

#[test]
fn a_second_primary_is_fenced_and_tampering_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let Some(s3) = S3::start(&t.path().join("s3")) else {
        return;
    };
    let config = store_config(s3.addr);
    // (Not `flow::two_writers_racing_one_wins`: s3s-fs checks
    // `If-None-Match` before it writes the body, so two creates racing
    // can both succeed there, as they cannot on S3; Azurite and the
    // vault run it.)
    let ((_, disk), _, _) = flow::a_second_writer_is_fenced(&config);
    let latest = snapshot(&*disk);
    assert_eq!(
        hydrated(&config, &keys(), &t.path().join("ok"), None).unwrap(),
        latest
    );

    // Tampering with the store: each refused, the replica untouched.
    let m = read_manifest(&config, &keys(), ID).unwrap().unwrap();
    let log_file = |i: usize| {
        s3.root
            .join("brtest/fleet")
            .join(format!("disks/{ID}"))
            .join(&m.logs[i].object)
    };
    let original = std::fs::read(log_file(1)).unwrap();
    let other = std::fs::read(log_file(0)).unwrap();
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a flipped bit", flipped),
        (
            "a truncated object",
            original[..original.len() - 100].to_vec(),
        ),
        (
            "an extended object",
            [original.clone(), vec![0; 10]].concat(),
        ),
        ("another log in its place", other),
    ];
    for (what, bytes) in cases {
        std::fs::write(log_file(1), &bytes).unwrap();
        let e = hydrated(
            &config,
            &keys(),
            &t.path().join(format!("t-{}", what.len())),
            None,
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthentic, "{what}: {e}");
    }
    std::fs::write(log_file(1), &original).unwrap();
    // A replayed (older) manifest: refused by a reader that saw a newer.
    let mdir = t.path().join("replay");
    std::fs::create_dir_all(&mdir).unwrap();
    let d: Arc<dyn blockrep::io::Dir> = Arc::new(FsDir::new(&mdir).unwrap());
    let e = hydrate(&config, &keys(), ID, d, None, m.generation + 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthentic, "{e}");
}

/// A chain of six points of a fresh disk in the store under `prefix`,
/// shipped whole; the source's content at each point.
fn chain(s3: &S3, prefix: &str, writer: WriterId) -> (StoreConfig, Vec<Vec<u8>>, Primary) {
    let mut config = store_config(s3.addr);
    config.url = format!("s3://brtest/{prefix}");
    let disk: Arc<dyn Storage> = Arc::new(MemStorage::zeroed(SIZE).unwrap());
    let mut rng = Rng(prefix.len() as u64 + 17);
    scribble_raw(&*disk, &mut rng);
    let p = Arc::new(pipeline(disk.clone()));
    p.initial_sync(TransferOptions::default()).unwrap();
    let mut states = vec![snapshot(&*disk)];
    for _ in 0..5 {
        scribble(&p, &*disk, &mut rng);
        p.cycle(&CycleOptions::default()).unwrap();
        states.push(snapshot(&*disk));
    }
    let s = StoreShipper::start(p.shared_spool(), shipper_config(config.clone(), writer)).unwrap();
    wait_shipped("the chain to ship", &p, &s);
    drop(s);
    (config, states, (p, disk))
}

fn scribble_raw(disk: &dyn Storage, rng: &mut Rng) {
    for _ in 0..12 {
        let off = rng.below(SIZE - 40_000);
        let mut w = vec![0u8; 1 + rng.below(40_000) as usize];
        rng.fill(&mut w);
        disk.write_at(&w, off).unwrap();
    }
}

/// Every point the manifest names hydrates to the source's content there.
fn every_point_exact(config: &StoreConfig, states: &[Vec<u8>], scratch: &Path) -> Vec<u64> {
    let m = read_manifest(config, &keys(), ID).unwrap().unwrap();
    for p in m.points() {
        let dir = scratch.join(format!("p{p}-{}", m.generation));
        let got = hydrated(config, &keys(), &dir, Some(p)).unwrap();
        assert!(
            got == states[p as usize - 1],
            "point {p} differs (generation {})",
            m.generation
        );
    }
    m.points()
}

#[test]
fn compaction_keeps_the_newest_points_exactly_and_survives_a_crash_at_every_step() {
    let t = tempfile::tempdir().unwrap();
    let Some(s3) = S3::start(&t.path().join("s3")) else {
        return;
    };
    let policy = StorePolicy {
        keep_last: 3,
        grace: Duration::ZERO,
    };
    let writer = WriterId::random().unwrap();

    // Whole: points 1 to 3 fold into a base at 4; their objects go.
    let (config, mut states, (p, disk)) = chain(&s3, "whole", writer);
    // A replica left at point 3, which the compaction folds away.
    let behind = t.path().join("behind");
    assert_eq!(
        hydrated(&config, &keys(), &behind, Some(3)).unwrap(),
        states[2]
    );
    let r = compact(
        &config,
        &keys(),
        ID,
        work_dir(&t.path().join("work")),
        policy,
    )
    .unwrap();
    assert_eq!(r.base, Some(4));
    assert_eq!(r.dropped, vec![1, 2, 3]);
    assert_eq!(r.deleted, 4, "the first base and logs 2 to 4: {r:?}");
    assert_eq!(
        every_point_exact(&config, &states, &t.path().join("h")),
        vec![4, 5, 6]
    );
    let e = hydrated(&config, &keys(), &t.path().join("gone"), Some(2)).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutOfRange, "{e}");
    // The replica at 3 cannot go on (its next log is inside the new
    // base): refused, and left as it was.
    let e = hydrated(&config, &keys(), &behind, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Mismatch, "{e}");
    assert_eq!(std::fs::read(behind.join("image")).unwrap(), states[2]);
    let left = objects(&s3.root)
        .iter()
        .filter(|f| f.starts_with(s3.root.join("brtest/whole")))
        .count();
    assert_eq!(left, 1 + 1 + 2, "manifest, the new base, logs 5 and 6");
    // The writer goes on over the compacted chain; a fresh host and a
    // follower both reach the new head exactly.
    let mut rng = Rng(99);
    scribble(&p, &*disk, &mut rng);
    p.cycle(&CycleOptions::default()).unwrap();
    states.push(snapshot(&*disk));
    let s = StoreShipper::start(p.shared_spool(), shipper_config(config.clone(), writer)).unwrap();
    wait_shipped("the next cycle to ship", &p, &s);
    drop(s);
    assert_eq!(
        hydrated(&config, &keys(), &t.path().join("fresh"), None).unwrap(),
        states[6]
    );
    assert_eq!(
        hydrated(&config, &keys(), &t.path().join("h/p5-2"), None).unwrap(),
        states[6]
    );
    // Again: the work replica goes on from where it was.
    let r = compact(
        &config,
        &keys(),
        ID,
        work_dir(&t.path().join("work")),
        policy,
    )
    .unwrap();
    assert_eq!(r.base, Some(5));
    assert_eq!(
        every_point_exact(&config, &states, &t.path().join("h2")),
        vec![5, 6, 7]
    );

    // A crash after each of its effects on the store (base uploaded,
    // manifest written, each object deleted, garbage list written): the
    // chain stays readable at every point it names, and the next run
    // finishes the job.
    for n in 1..=7 {
        let (config, states, _) = chain(&s3, &format!("crash{n}"), writer);
        let work = t.path().join(format!("work{n}"));
        let e = compact_until(&config, &keys(), ID, work_dir(&work), policy, Some(n)).unwrap_err();
        assert!(e.to_string().contains("simulated crash"), "step {n}: {e}");
        every_point_exact(&config, &states, &t.path().join(format!("c{n}")));
        compact(&config, &keys(), ID, work_dir(&work), policy).unwrap();
        assert_eq!(
            every_point_exact(&config, &states, &t.path().join(format!("d{n}"))),
            vec![4, 5, 6]
        );
        let left = objects(&s3.root)
            .iter()
            .filter(|f| f.starts_with(s3.root.join(format!("brtest/crash{n}"))))
            .count();
        assert_eq!(left, 4, "step {n}: everything dropped is deleted");
    }
}

#[test]
fn a_rotated_key_seals_new_logs_and_old_points_open_until_compacted() {
    let t = tempfile::tempdir().unwrap();
    let Some(s3) = S3::start(&t.path().join("s3")) else {
        return;
    };
    let writer = WriterId::random().unwrap();
    let (config, mut states, (p, disk)) = chain(&s3, "rotate", writer);
    // The pair's key is rotated: new logs are sealed with the new one.
    let new = SealKey::from_bytes([0x77; 32]);
    let rotated = Keyring::new(new.clone()).with_old(SealKey::from_bytes([0x42; 32]));
    let mut rng = Rng(3);
    for _ in 0..2 {
        scribble(&p, &*disk, &mut rng);
        p.cycle(&CycleOptions::default()).unwrap();
        states.push(snapshot(&*disk));
    }
    let mut c = shipper_config(config.clone(), writer);
    c.keys = rotated.clone();
    let s = StoreShipper::start(p.shared_spool(), c).unwrap();
    wait_shipped("the rotated logs to ship", &p, &s);
    drop(s);
    let m = read_manifest(&config, &rotated, ID).unwrap().unwrap();
    let ids: Vec<&str> = m.logs.iter().map(|l| l.key_id.as_str()).collect();
    assert_eq!(ids[ids.len() - 1], new.id().to_string());
    assert_eq!(ids[0], keys().current().id().to_string());
    // Both keys open every point; the new key alone does not.
    let hydrate_with = |ring: &Keyring, dir: &str, point| {
        std::fs::create_dir_all(t.path().join(dir)).unwrap();
        let d: Arc<dyn blockrep::io::Dir> = Arc::new(FsDir::new(t.path().join(dir)).unwrap());
        hydrate(&config, ring, ID, d, point, 0)
            .map(|_| std::fs::read(t.path().join(dir).join("image")).unwrap())
    };
    assert_eq!(hydrate_with(&rotated, "both", None).unwrap(), states[7]);
    let only_new = Keyring::new(new.clone());
    let e = hydrate_with(&only_new, "new", None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Mismatch, "{e}");
    // Once the old points are compacted (the new base sealed with the
    // new key), the old key is no longer needed.
    let policy = StorePolicy {
        keep_last: 2,
        grace: Duration::ZERO,
    };
    compact(&config, &rotated, ID, work_dir(&t.path().join("w")), policy).unwrap();
    assert_eq!(
        hydrate_with(&only_new, "new-after", Some(7)).unwrap(),
        states[6]
    );
    assert_eq!(
        hydrate_with(&only_new, "new-after", None).unwrap(),
        states[7]
    );
}
