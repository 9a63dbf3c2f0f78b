//! `blockrep qemu replicate` as an operator runs it: qemu-storage-daemon
//! serves a qcow2 writable over NBD and qemu-io writes into it while the
//! command replicates it, first to local replicas, killed with SIGKILL at
//! random moments (in the middle of cycles) and started again each time,
//! then to a replica server (`blockrep serve`) over mutual TLS, then to an
//! object store (s3s-fs on loopback) from which another directory is
//! hydrated, compacted, and a second primary is fenced. After the
//! writes stop, the replica equals the disk (`qemu-img compare`) and QEMU
//! holds nothing of blockrep's but its current bitmap.

mod common;
#[path = "../../tests/common/s3.rs"]
mod s3;

use common::site::Site;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZE: u64 = 32 << 20;

struct Qsd(Child);

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// qemu-storage-daemon serving `image` as node `disk0` (NBD export
/// `disk0`, writable) with QMP, in `dir`.
fn qsd(dir: &Path, image: &Path) -> Qsd {
    let (qmp, nbd) = (dir.join("qmp.sock"), dir.join("nbd.sock"));
    let child = Command::new("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={}",
            image.display()
        ))
        .args(["--blockdev", "driver=qcow2,node-name=disk0,file=file0"])
        .arg("--nbd-server")
        .arg(format!("addr.type=unix,addr.path={}", nbd.display()))
        .args([
            "--export",
            "type=nbd,id=exp0,node-name=disk0,name=disk0,writable=on",
        ])
        .arg("--chardev")
        .arg(format!(
            "socket,path={},server=on,wait=off,id=qmp0",
            qmp.display()
        ))
        .args(["--monitor", "chardev=qmp0"])
        .stdout(Stdio::null())
        .spawn()
        .expect("qemu-storage-daemon is required (qemu-utils)");
    let t = Instant::now();
    // The files appear at bind, before listen: ready is a connection taken.
    while !(std::os::unix::net::UnixStream::connect(&qmp).is_ok()
        && std::os::unix::net::UnixStream::connect(&nbd).is_ok())
    {
        assert!(t.elapsed() < Duration::from_secs(20), "qsd did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    Qsd(child)
}

fn image(dir: &Path) -> PathBuf {
    let img = dir.join("disk.qcow2");
    let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg(SIZE.to_string()));
    ok(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x31 0 4M"])
        .arg(&img)
        .stdout(Stdio::null()));
    img
}

/// qemu-io batches over NBD until `stop`.
fn guest(nbd: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut batches = 0;
        while !stop.load(Ordering::SeqCst) {
            let mut c = Command::new("qemu-io");
            c.args(["-f", "raw"])
                .arg(format!("nbd+unix:///disk0?socket={}", nbd.display()));
            for _ in 0..6 {
                let cmd = match next(6) {
                    0..=2 => format!("write -P {} {} 4k", 1 + next(250), next(SIZE / 4096) * 4096),
                    3 => format!(
                        "write -P {} {} 1M",
                        1 + next(250),
                        next(SIZE / 4096 - 256) * 4096
                    ),
                    4 => format!("write -z {} 64k", next(SIZE / 65536) * 65536),
                    _ => format!("discard {} 64k", next(SIZE / 65536) * 65536),
                };
                c.arg("-c").arg(cmd);
            }
            let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
            batches += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        batches
    })
}

/// `blockrep qemu replicate` with `extra` arguments, standard output piped.
fn replicate(dir: &Path, extra: &[&str], env: &[(&str, &Path)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_blockrep"));
    c.args(["qemu", "replicate", "--qmp"])
        .arg(dir.join("qmp.sock"))
        .args(["--node", "disk0", "--nbd"])
        .arg(dir.join("nbd.sock"))
        .arg("--spool")
        .arg(dir.join("spool"))
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    c
}

/// Reads the child's status lines until `n` points were written.
fn wait_points(child: &mut Child, n: usize) -> BufReader<std::process::ChildStdout> {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = 0;
    let mut line = String::new();
    while seen < n {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the command ended early"
        );
        if line.contains("point") {
            seen += 1;
        }
    }
    out
}

fn qemu_compare(qcow2: &Path, raw: &Path) {
    let out = Command::new("qemu-img")
        .args(["compare", "-U", "-f", "qcow2", "-F", "raw"])
        .arg(qcow2)
        .arg(raw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The final run: writes stopped, two more points; must exit cleanly.
fn finish(dir: &Path, extra: &[&str], env: &[(&str, &Path)]) {
    let out = replicate(dir, extra, env)
        .args(["--cycles", "2", "--interval", "0"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn replicate_to_local_replicas_through_kills() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let img = image(dir);
    let _qsd = qsd(dir, &img);
    let replicas = dir.join("replicas");
    let args = ["--replica", replicas.to_str().unwrap()];
    let stop = Arc::new(AtomicBool::new(false));
    let writer = guest(dir.join("nbd.sock"), stop.clone());
    let mut x = 0x1234_5678_u64;
    for round in 0..5 {
        let mut child = replicate(dir, &args, &[])
            .args(["--interval", "0.1"])
            .spawn()
            .unwrap();
        let _out = wait_points(&mut child, 1 + round % 2);
        // A random moment: usually inside a cycle (the overlay, export and
        // bitmaps then stay in QEMU for the next run to clear).
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(x % 150));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    assert!(writer.join().unwrap() > 0);
    finish(dir, &args, &[]);
    qemu_compare(&img, &replicas.join("disk0/image"));
}

#[test]
fn replicate_to_a_server_and_stop_cleanly() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let img = image(dir);
    let _qsd = qsd(dir, &img);
    let mut site = Site::new(dir);
    site.start();
    let tls = site.tls();
    let env = [
        ("BLOCKREP_CERT", tls.cert.as_path()),
        ("BLOCKREP_KEY", tls.key.as_path()),
        ("BLOCKREP_CA", tls.ca.as_path()),
    ];
    let url = site.url();
    let args = ["--to", url.as_str()];
    let stop = Arc::new(AtomicBool::new(false));
    let writer = guest(dir.join("nbd.sock"), stop.clone());
    let mut child = replicate(dir, &args, &env)
        .args(["--interval", "0.1"])
        .spawn()
        .unwrap();
    let _out = wait_points(&mut child, 4);
    // SIGTERM: the command stops between cycles and ships what it spooled.
    // SAFETY: signals our own child, not yet reaped.
    unsafe { libc::kill(child.id().cast_signed(), libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    finish(dir, &args, &env);
    let replica = std::fs::read_dir(&site.root)
        .unwrap()
        .map(|e| e.unwrap().path().join("replica/image"))
        .find(|p| p.exists())
        .expect("the server holds the disk's replica");
    qemu_compare(&img, &replica);
}

fn blockrep(args: &[&str], env: &[(&'static str, String)]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_blockrep"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    out
}

fn ok(args: &[&str], env: &[(&'static str, String)]) -> String {
    let out = blockrep(args, env);
    assert!(
        out.status.success(),
        "blockrep {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn replicate_to_an_object_store_then_hydrate_compact_and_fence() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let Some(store) = s3::S3::start(&dir.join("s3")) else {
        return;
    };
    let img = image(dir);
    let _qsd = qsd(dir, &img);
    let key = dir.join("pair.key");
    let key_s = key.to_str().unwrap();
    assert!(ok(&["key", "new", key_s], &[]).contains("key "));
    assert!(
        !blockrep(&["key", "new", key_s], &[]).status.success(),
        "never overwritten"
    );
    let env = store.env();
    let url = format!("s3://{}/fleet", s3::BUCKET);
    let args = ["--to", url.as_str(), "--seal-key", key_s];
    let envs: Vec<(&str, PathBuf)> = env.iter().map(|(k, v)| (*k, PathBuf::from(v))).collect();
    let env_paths: Vec<(&str, &Path)> = envs.iter().map(|(k, v)| (*k, v.as_path())).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = guest(dir.join("nbd.sock"), stop.clone());
    // Killed at random moments (inside cycles, uploads, manifest writes),
    // started again each time.
    let mut x = 0x2545_f491_u64;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for round in 0..4 {
        let mut child = replicate(dir, &args, &env_paths)
            .args(["--interval", "0.1"])
            .spawn()
            .unwrap();
        let _out = wait_points(&mut child, 1 + round % 2);
        std::thread::sleep(Duration::from_millis(next(200)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut child = replicate(dir, &args, &env_paths)
        .args(["--interval", "0.1"])
        .spawn()
        .unwrap();
    let _out = wait_points(&mut child, 3);
    // SAFETY: signals our own child, not yet reaped.
    unsafe { libc::kill(child.id().cast_signed(), libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    finish(dir, &args, &env_paths);

    // Another host: only the store, the key and the disk id. The hydrate
    // is killed at random moments too, and goes on from what it holds.
    let disks = store.root.join(s3::BUCKET).join("fleet/disks");
    let id = std::fs::read_dir(&disks)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let id = id.to_str().unwrap();
    let standby = dir.join("standby");
    let standby_s = standby.to_str().unwrap();
    let hydrate_args = [
        "replica",
        "hydrate",
        &url,
        standby_s,
        "--disk",
        id,
        "--seal-key",
        key_s,
    ];
    for _ in 0..4 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_blockrep"))
            .args(hydrate_args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(next(400)));
        let _ = child.kill();
        child.wait().unwrap();
    }
    ok(&hydrate_args, &env);
    qemu_compare(&img, &standby.join("image"));
    ok(&["replica", "verify", standby_s], &[]);
    let points: serde_json::Value = serde_json::from_str(&ok(
        &[
            "store",
            "points",
            &url,
            "--disk",
            id,
            "--seal-key",
            key_s,
            "--json",
        ],
        &env,
    ))
    .unwrap();
    let head = points["logs"].as_array().unwrap().last().unwrap()["sequence"]
        .as_u64()
        .unwrap();
    assert!(head >= 5, "{points}");

    // Retention: two points kept; a new host still gets the disk exactly.
    let work = dir.join("compact");
    let out = ok(
        &[
            "store",
            "compact",
            &url,
            "--disk",
            id,
            "--seal-key",
            key_s,
            "--work",
            work.to_str().unwrap(),
            "--keep-last",
            "2",
            "--grace",
            "0s",
            "--json",
        ],
        &env,
    );
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["base"].as_u64(), Some(head - 1), "{r}");
    let fresh = dir.join("fresh");
    ok(
        &[
            "replica",
            "hydrate",
            &url,
            fresh.to_str().unwrap(),
            "--disk",
            id,
            "--seal-key",
            key_s,
        ],
        &env,
    );
    qemu_compare(&img, &fresh.join("image"));
    // The wrong key: refused.
    let other = dir.join("other.key");
    ok(&["key", "new", other.to_str().unwrap()], &[]);
    let out = blockrep(
        &[
            "replica",
            "hydrate",
            &url,
            dir.join("x").to_str().unwrap(),
            "--disk",
            id,
            "--seal-key",
            other.to_str().unwrap(),
        ],
        &env,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not among the keys held"));

    // A second primary with the same disk (a copy of the spool, another
    // writer): fenced, and says by whom.
    let copy = dir.join("copy");
    std::fs::create_dir_all(copy.join("spool")).unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(dir.join("spool/disk0"))
        .arg(copy.join("spool/disk0"))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_file(copy.join("spool/disk0/store-writer")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_blockrep"))
        .args(["qemu", "replicate", "--qmp"])
        .arg(dir.join("qmp.sock"))
        .args(["--node", "disk0", "--nbd"])
        .arg(dir.join("nbd.sock"))
        .arg("--spool")
        .arg(copy.join("spool"))
        .args(args)
        .envs(env_paths.iter().copied())
        .args(["--cycles", "1", "--interval", "0"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("fenced") && said.contains("held in the store by writer"),
        "{said}"
    );
}
