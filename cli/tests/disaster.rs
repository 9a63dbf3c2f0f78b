//! What an operator types during a disaster, through the binary: a test
//! failover served over NBD (read and written by qemu-io and qemu-img,
//! real NBD clients), planned failover, reverse replication, failback and
//! recovery plans. Every disk is compared byte for byte with the state it
//! must equal.

mod common;

use common::{blockrep, fails, ok};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A deterministic pseudo-random disk image of `len` bytes.
fn image(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Overwrites `count` 4 KiB blocks from block `at` with bytes from `seed`.
fn scribble(path: &Path, at: usize, count: usize, seed: u64) {
    let mut d = std::fs::read(path).unwrap();
    d[at * 4096..(at + count) * 4096].copy_from_slice(&image(seed, count * 4096));
    std::fs::write(path, d).unwrap();
}

/// Runs a command that must succeed (qemu-io, qemu-img).
fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A `blockrep` process in the background, killed if the test fails; its
/// standard output stays open (a closed pipe would end it at its next
/// line, as for any Unix command).
struct Background(
    Child,
    #[allow(dead_code)] BufReader<std::process::ChildStdout>,
);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `blockrep args` and waits for its first line on stdout.
fn start(args: &[&str]) -> (Background, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_blockrep"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut first).unwrap();
    (Background(child, out), first)
}

fn wait_gone(p: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while p.exists() {
        assert!(Instant::now() < deadline, "{} stayed", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn nbd(socket: &Path) -> String {
    format!("nbd+unix:///?socket={}", socket.display())
}

/// `blockrep failover test start` of point 1 of `dir`, in the background.
fn start_test_failover(dir: &Path, overlay: &Path, socket: &Path) -> (Background, String) {
    start(&[
        "failover",
        "test",
        "start",
        s(dir),
        "--point",
        "1",
        "--overlay",
        s(overlay),
        "--socket",
        s(socket),
    ])
}

/// Two points of a 4 MiB disk: returns the source image path, the replica
/// directory and the disk's bytes at points 1 and 2.
fn two_points(t: &Path) -> (PathBuf, PathBuf, Vec<u8>, Vec<u8>) {
    let img = t.join("disk.raw");
    let dir = t.join("replica");
    std::fs::write(&img, image(1, 4 << 20)).unwrap();
    ok(&["sync", s(&img), s(&dir)]);
    let p1 = std::fs::read(&img).unwrap();
    scribble(&img, 100, 9, 2);
    ok(&["sync", s(&img), s(&dir)]);
    let p2 = std::fs::read(&img).unwrap();
    assert_ne!(p1, p2);
    (img, dir, p1, p2)
}

/// A test failover of the older point, served over NBD: a real client
/// reads the point and its own writes; the replica is locked against
/// other commands meanwhile and untouched afterwards; stop removes the
/// overlay, the socket and the pid file.
#[test]
fn a_test_failover_serves_a_point_over_nbd_until_stopped() {
    let t = tempfile::tempdir().unwrap();
    let (_, dir, p1, p2) = two_points(t.path());
    let overlay = t.path().join("test.overlay");
    let socket = t.path().join("test.sock");
    let (mut server, first) = start_test_failover(&dir, &overlay, &socket);
    assert!(
        first.contains("point 1") && first.contains("nbd+unix"),
        "{first}"
    );
    // A second test failover with the same overlay, and any other command
    // on the replica, are refused while it runs.
    let again = fails(&[
        "failover",
        "test",
        "start",
        s(&dir),
        "--overlay",
        s(&overlay),
        "--socket",
        s(&t.path().join("other.sock")),
    ]);
    assert!(again.contains("runs already"), "{again}");
    assert!(fails(&["replica", "prune", s(&dir), "--keep-last", "1"]).contains("in use"));
    // The test machine writes and reads back through NBD.
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 4096 65536",
            "-c",
            "read -P 0xab 4096 65536",
            &nbd(&socket),
        ],
    );
    let got = t.path().join("got.raw");
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &nbd(&socket), s(&got)],
    );
    let mut want = p1.clone();
    want[4096..4096 + 65536].fill(0xab);
    assert!(std::fs::read(&got).unwrap() == want, "the test disk");
    ok(&["failover", "test", "stop", "--overlay", s(&overlay)]);
    assert!(server.0.wait().unwrap().success());
    for gone in [&overlay, &socket, &t.path().join("test.overlay.pid")] {
        assert!(!gone.exists(), "{} left behind", gone.display());
    }
    // The replica: untouched, both points intact.
    assert!(std::fs::read(dir.join("image")).unwrap() == p2);
    let p1_out = t.path().join("p1.raw");
    ok(&["replica", "export", s(&dir), "--point", "1", s(&p1_out)]);
    assert!(std::fs::read(&p1_out).unwrap() == p1);
    assert!(
        fails(&["failover", "test", "stop", "--overlay", s(&overlay)])
            .contains("no test failover runs")
    );
}

/// A hostile or broken NBD client (garbage, an oversized option, a read
/// past the end) ends its own connection or gets an error; the test disk
/// is still served.
#[test]
fn a_misbehaving_nbd_client_does_not_take_the_test_failover_down() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let t = tempfile::tempdir().unwrap();
    let (_, dir, p1, _) = two_points(t.path());
    let overlay = t.path().join("o");
    let socket = t.path().join("s");
    let (_server, _) = start_test_failover(&dir, &overlay, &socket);
    let greet = |c: &mut UnixStream| {
        let mut hello = [0u8; 18];
        c.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..8], b"NBDMAGIC");
    };
    // Garbage instead of client flags and options: the server hangs up.
    let mut c = UnixStream::connect(&socket).unwrap();
    greet(&mut c);
    c.write_all(&[0xff; 64]).unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    // An option claiming 1 GiB of data: refused without reading it.
    let mut c = UnixStream::connect(&socket).unwrap();
    greet(&mut c);
    c.write_all(&3u32.to_be_bytes()).unwrap();
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&7u32.to_be_bytes());
    opt.extend_from_slice(&(1u32 << 30).to_be_bytes());
    c.write_all(&opt).unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(rest.is_empty());
    // A read past the end gets EINVAL, and the connection goes on.
    let mut c = UnixStream::connect(&socket).unwrap();
    greet(&mut c);
    c.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
    let mut opt = b"IHAVEOPT".to_vec();
    opt.extend_from_slice(&1u32.to_be_bytes()); // EXPORT_NAME, default
    opt.extend_from_slice(&0u32.to_be_bytes());
    c.write_all(&opt).unwrap();
    let mut export = [0u8; 10];
    c.read_exact(&mut export).unwrap();
    let size = u64::from_be_bytes(export[..8].try_into().unwrap());
    assert_eq!(size, 4 << 20);
    let request = |c: &mut UnixStream, cookie: u64, offset: u64| {
        let mut r = 0x2560_9513u32.to_be_bytes().to_vec();
        r.extend_from_slice(&[0, 0, 0, 0]); // flags, READ
        r.extend_from_slice(&cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&4096u32.to_be_bytes());
        c.write_all(&r).unwrap();
        let mut reply = [0u8; 16];
        c.read_exact(&mut reply).unwrap();
        assert_eq!(reply[..4], 0x6744_6698u32.to_be_bytes());
        assert_eq!(reply[8..], cookie.to_be_bytes());
        u32::from_be_bytes(reply[4..8].try_into().unwrap())
    };
    assert_eq!(request(&mut c, 7, size - 4095), 22);
    assert_eq!(request(&mut c, 8, 8192), 0);
    let mut block = vec![0u8; 4096];
    c.read_exact(&mut block).unwrap();
    assert!(block == p1[8192..12288]);
    let got = t.path().join("got.raw");
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &nbd(&socket), s(&got)],
    );
    assert!(std::fs::read(&got).unwrap() == p1);
    ok(&["failover", "test", "stop", "--overlay", s(&overlay)]);
}

/// Planned failover (the primary's last changes sent first: nothing
/// lost), writes on the new primary, reverse replication to the old
/// primary's disk, writes there, failback: each side equals the other
/// byte for byte after each step.
#[test]
fn planned_failover_reverse_replication_and_failback() {
    let t = tempfile::tempdir().unwrap();
    let (img, dir, _, _) = two_points(t.path());
    let rep_image = dir.join("image");
    // Last writes on the primary, never synced: the planned failover
    // sends them.
    scribble(&img, 300, 5, 3);
    let out = ok(&[
        "failover",
        "planned",
        s(&dir),
        "--source",
        s(&img),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["final_sync_blocks"], 5, "{out}");
    assert_eq!(v["phase"], "committed");
    assert!(std::fs::read(&rep_image).unwrap() == std::fs::read(&img).unwrap());
    assert!(
        fails(&["failover", "planned", s(&dir), "--source", s(&img)]).contains("promoted already")
    );

    // The new primary writes; the old primary's disk has stray writes too
    // (made after the last cycle): reverse sends what differs.
    scribble(&rep_image, 700, 4, 4);
    scribble(&img, 20, 2, 5);
    let back = t.path().join("back");
    let out = ok(&[
        "failover",
        "reverse",
        s(&dir),
        "--to",
        s(&img),
        "--new-replica",
        s(&back),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["blocks_sent"], 6, "{out}");
    assert!(std::fs::read(&rep_image).unwrap() == std::fs::read(&img).unwrap());
    // A replica whose failover is not committed cannot replicate back.
    let fresh = t.path().join("fresh");
    ok(&["sync", s(&img), s(&fresh)]);
    assert!(fails(&[
        "failover",
        "reverse",
        s(&fresh),
        "--to",
        s(&img),
        "--new-replica",
        s(&t.path().join("x"))
    ])
    .contains("not committed"));

    // Later writes on the new primary reach the old one by `sync`.
    scribble(&rep_image, 900, 3, 6);
    ok(&["sync", s(&rep_image), s(&back), "--image", s(&img)]);
    assert!(std::fs::read(&rep_image).unwrap() == std::fs::read(&img).unwrap());

    // Failback: the old primary's disk takes over again, the other side
    // becomes its replica.
    let again = t.path().join("again");
    let out = ok(&[
        "failover",
        "failback",
        s(&back),
        "--image",
        s(&img),
        "--to",
        s(&rep_image),
        "--new-replica",
        s(&again),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["blocks_sent"], 0, "{out}");
    scribble(&img, 50, 7, 7);
    ok(&["sync", s(&img), s(&again), "--image", s(&rep_image)]);
    assert!(std::fs::read(&rep_image).unwrap() == std::fs::read(&img).unwrap());
    let st = ok(&[
        "replica",
        "status",
        s(&again),
        "--image",
        s(&rep_image),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(v["role"], "replica", "{st}");
}

fn plan_file(t: &Path, reps: &[PathBuf], second_before: &str, point: u64) -> PathBuf {
    let log = t.join("hooks.log");
    let p = t.join(format!("plan-{second_before}-{point}.toml"));
    std::fs::write(
        &p,
        format!(
            r#"
[[group]]
name = "database"
before = ["echo before $BLOCKREP_PLAN_GROUP $BLOCKREP_PLAN_MODE >> {log}"]
after = ["echo after $BLOCKREP_PLAN_GROUP $BLOCKREP_PLAN_DISKS >> {log}"]
[[group.machine]]
name = "db1"
[[group.machine.disk]]
replica = "{db}"
point = {point}

[[group]]
name = "apps"
before = ["{second_before}"]
after = ["echo after $BLOCKREP_PLAN_GROUP >> {log}"]
[[group.machine]]
name = "app1"
[[group.machine.disk]]
replica = "{app}"
"#,
            log = log.display(),
            db = reps[0].display(),
            app = reps[1].display(),
        ),
    )
    .unwrap();
    p
}

/// A recovery plan from TOML: the dry run lists every step and finds a
/// point that is not retained without changing anything; a run whose
/// second group's hook fails commits the first group (at its chosen
/// point, byte for byte), leaves the second untouched and says where it
/// stopped; a test run serves the disks over NBD until SIGTERM.
#[test]
fn a_recovery_plan_runs_group_by_group_and_stops_at_the_first_failure() {
    let t = tempfile::tempdir().unwrap();
    let mut reps = Vec::new();
    let mut firsts = Vec::new();
    for m in ["db", "app"] {
        let sub = t.path().join(m);
        std::fs::create_dir(&sub).unwrap();
        let (_, dir, p1, _) = two_points(&sub);
        reps.push(dir);
        firsts.push(p1);
    }
    let log = t.path().join("hooks.log");

    let bad = plan_file(t.path(), &reps, "true", 99);
    let err = fails(&["plan", "run", s(&bad), "--mode", "unplanned", "--dry-run"]);
    assert!(err.contains("1 problem"), "{err}");
    let plan = plan_file(t.path(), &reps, "false", 1);
    let dry = ok(&["plan", "run", s(&plan), "--mode", "unplanned", "--dry-run"]);
    assert!(
        dry.contains("machine db1 disk 0") && dry.contains("promote at point 1"),
        "{dry}"
    );
    assert!(dry.contains("run before: false"), "{dry}");
    assert!(!log.exists(), "a dry run ran a hook");
    assert!(ok(&["failover", "status", s(&reps[0])]).contains("not promoted"));

    // Test mode: both disks served; the hooks see their addresses.
    let test_dir = t.path().join("drill");
    let test_plan = plan_file(t.path(), &reps, "true", 1);
    let (mut server, _) = start(&[
        "plan",
        "run",
        s(&test_plan),
        "--mode",
        "test",
        "--test-dir",
        s(&test_dir),
    ]);
    let sock = test_dir.join("db1-0.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("after apps")
    {
        assert!(Instant::now() < deadline, "the test plan did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = t.path().join("db-test.raw");
    run(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &nbd(&sock), s(&got)],
    );
    assert!(std::fs::read(&got).unwrap() == firsts[0]);
    let pid = libc::pid_t::try_from(server.0.id()).unwrap();
    // SAFETY: kill takes plain integers and touches no memory.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0);
    assert!(server.0.wait().unwrap().success());
    wait_gone(&sock);
    assert!(!test_dir.join("db1-0.overlay").exists());
    let hooks = std::fs::read_to_string(&log).unwrap();
    assert!(
        hooks.starts_with(&format!(
            "before database test\nafter database db1=nbd+unix:///?socket={}\n",
            sock.display()
        )),
        "{hooks}"
    );
    std::fs::remove_file(&log).unwrap();

    // Unplanned, the second group's before hook fails.
    let out = blockrep(&["plan", "run", s(&plan), "--mode", "unplanned", "--json"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["failure"]["group"], "apps");
    assert_eq!(report["failure"]["step"], "before hook");
    assert_eq!(
        report["groups"][0]["machines"][0]["disks"][0]["state"],
        "committed"
    );
    assert_eq!(report["groups"][0]["machines"][0]["disks"][0]["point"], 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stopped in group apps at the before hook"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!(
            "before database unplanned\nafter database db1={}\n",
            reps[0].join("image").display()
        )
    );
    assert!(std::fs::read(reps[0].join("image")).unwrap() == firsts[0]);
    assert!(ok(&["failover", "status", s(&reps[0])]).contains("committed"));
    assert!(ok(&["failover", "status", s(&reps[1])]).contains("not promoted"));
}
