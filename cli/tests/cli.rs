//! The `blockrep` command: the demo end to end on a small disk, the
//! operator commands on what it leaves, `sync` twice, and one-line errors.

mod common;

use common::{blockrep, fails, ok};
use std::process::Command;

#[test]
fn the_demo_runs_end_to_end_and_leaves_inspectable_files() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("demo");
    let d = dir.to_str().unwrap();
    let table = ok(&["demo", "--size", "8M", "--seconds", "1", "--dir", d]);
    assert!(table.contains("| checks passed |"), "{table}");
    let passed = table
        .lines()
        .find(|l| l.starts_with("| checks passed"))
        .unwrap();
    let n: Vec<&str> = passed.split_whitespace().collect();
    assert_eq!((n[4], n[6]), (n[6], n[6]), "{passed}");
    // Operator commands on what the demo left.
    // The final replica: an adopted disk, its image outside its directory.
    let replica = dir.join("replica-b2");
    let r = replica.to_str().unwrap();
    // The secondary site's server kept its replica under its root, one
    // directory per disk (the demo's disk id is "blockrep-demo-01").
    let image = dir
        .join("site-b")
        .join("626c6f636b7265702d64656d6f2d3031")
        .join("replica/image");
    assert!(dir.join("pki/ca.crt").exists() && dir.join("serve.log").exists());
    let im = image.to_str().unwrap();
    assert!(ok(&["replica", "status", r, "--image", im, "--json"]).contains("\"role\":\"replica\""));
    assert!(ok(&["replica", "points", r, "--image", im, "--json"]).starts_with('['));
    assert!(ok(&["replica", "verify", r, "--image", im]).contains("ok"));
    let exported = t.path().join("point.raw");
    let latest: u64 = {
        let s = ok(&["replica", "status", r, "--image", im, "--json"]);
        let i = s.find("\"latest_point\":").unwrap() + 15;
        s[i..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    ok(&[
        "replica",
        "export",
        r,
        "--image",
        im,
        "--point",
        &latest.to_string(),
        exported.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&exported).unwrap(),
        std::fs::read(dir.join("primary.img")).unwrap()
    );
    assert!(ok(&[
        "tracker",
        "inspect",
        dir.join("tracker").to_str().unwrap(),
        "--json"
    ])
    .contains("\"block_size\":4096"));
}

#[test]
fn sync_copies_then_sends_only_what_changed_and_errors_are_one_line() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("disk.img");
    let mut data = vec![0u8; 4 << 20];
    for (i, b) in data.iter_mut().enumerate().skip(1 << 20) {
        *b = (i % 251) as u8;
    }
    std::fs::write(&img, &data).unwrap();
    let dir = t.path().join("replica");
    let (i, d) = (img.to_str().unwrap(), dir.to_str().unwrap());
    assert!(ok(&["sync", i, d, "--json"]).contains("\"run\":\"initial sync\""));
    data[2 << 20..(2 << 20) + 10].fill(0xff);
    data[3 << 20] = 1;
    std::fs::write(&img, &data).unwrap();
    let second = ok(&["sync", i, d, "--json"]);
    assert!(second.contains("\"run\":\"digest resync\""), "{second}");
    assert!(second.contains("\"blocks_sent\":2"), "{second}");
    assert_eq!(std::fs::read(dir.join("image")).unwrap(), data);
    // A log inspect of something that is not a log: one line, non-zero.
    let out = blockrep(&["log", "inspect", i]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("blockrep: ") && err.contains(&*img.to_string_lossy()),
        "{err}"
    );
    assert!(!blockrep(&["replica", "status", "/nonexistent"])
        .status
        .success());
    assert!(!blockrep(&["frobnicate"]).status.success());
}

#[test]
fn the_bench_harness_verifies_and_prints_one_line_per_figure() {
    let t = tempfile::tempdir().unwrap();
    let out = ok(&[
        "bench",
        "--size",
        "16M",
        "--repeat",
        "2",
        "--keep-cache",
        "--dir",
        t.path().to_str().unwrap(),
    ]);
    for figure in [
        "initial.blockrep",
        "initial.cp",
        "cycle.1%.blockrep",
        "cycle.1%.bare_copy",
    ] {
        // One line per repetition.
        assert_eq!(
            out.lines()
                .filter(|l| l.starts_with(&format!("bench {figure} seconds=")))
                .count(),
            2,
            "{figure}:\n{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("bench {figure} seconds="))),
            "{figure} missing:\n{out}"
        );
    }
    // The table: medians of the repetitions against the targets.
    assert!(
        out.lines()
            .any(|l| l.starts_with("| cycle 1% | bare copy") && l.contains("| 2 | <= 1.3: ")),
        "{out}"
    );
}

#[test]
fn every_subcommand_has_help_and_completions_and_man_pages_are_generated() {
    for args in [
        &["--help"][..],
        &["demo", "--help"],
        &["bench", "--help"],
        &["log", "inspect", "--help"],
        &["replica", "status", "--help"],
        &["replica", "points", "--help"],
        &["replica", "verify", "--help"],
        &["replica", "export", "--help"],
        &["tracker", "inspect", "--help"],
        &["sync", "--help"],
        &["failover", "promote", "--help"],
        &["failover", "planned", "--help"],
        &["failover", "test", "start", "--help"],
        &["failover", "test", "stop", "--help"],
        &["failover", "reverse", "--help"],
        &["failover", "failback", "--help"],
        &["plan", "run", "--help"],
        &["serve", "--help"],
        &["completions", "--help"],
        &["man", "--help"],
    ] {
        let help = ok(args);
        assert!(help.contains("Usage: blockrep"), "{args:?}: {help}");
    }
    assert!(ok(&["completions", "bash"]).contains("_blockrep"));
    let t = tempfile::tempdir().unwrap();
    ok(&["man", "--out", t.path().to_str().unwrap()]);
    for page in ["blockrep.1", "blockrep-replica-export.1", "blockrep-sync.1"] {
        let text = std::fs::read_to_string(t.path().join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
    // A bad flag value is refused with clap's message, exit status 2.
    let out = blockrep(&["demo", "--size", "3x"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `blockrep ... | head`: a reader that closed the pipe ends the command
/// quietly (SIGPIPE), never a panic.
#[test]
fn a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_blockrep"))
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before any write
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(libc_sigpipe()),
        "{:?}",
        out.status
    );
}

fn libc_sigpipe() -> i32 {
    13 // SIGPIPE on Linux
}

/// The number after `"key":` in a JSON line.
fn json_u64(json: &str, key: &str) -> u64 {
    let k = format!("\"{key}\":");
    let i = json.find(&k).unwrap_or_else(|| panic!("{key} in {json}")) + k.len();
    json[i..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// What an operator types at the secondary site: points from `sync`,
/// prune by policy, promote at an older point, switch, commit; the
/// committed image equals the source as it was at that point, byte for
/// byte, and no log applies to it any more.
#[test]
fn the_operator_prunes_promotes_switches_and_commits() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("disk.img");
    let dir = t.path().join("replica");
    let (i, d) = (img.to_str().unwrap(), dir.to_str().unwrap());
    let mut states = Vec::new();
    let mut data = vec![0u8; 2 << 20];
    for round in 0..4u8 {
        data[usize::from(round) * 65536..][..4096].fill(round + 1);
        std::fs::write(&img, &data).unwrap();
        ok(&["sync", i, d]);
        let s = ok(&["replica", "status", d, "--json"]);
        states.push((json_u64(&s, "latest_point"), data.clone()));
    }
    let count = |d: &str| {
        ok(&["replica", "points", d, "--json"])
            .matches("\"sequence\"")
            .count()
    };
    assert_eq!(count(d), 4);
    let pruned = ok(&["replica", "prune", d, "--keep-last", "3", "--json"]);
    assert!(pruned.starts_with("{\"dropped\":["), "{pruned}");
    assert_eq!(count(d), 3);
    assert!(!blockrep(&["replica", "prune", d, "--keep-for", "3x"])
        .status
        .success());

    // Not promoted yet: switch and commit are refused.
    assert!(ok(&["failover", "status", d]).contains("not promoted"));
    assert!(!blockrep(&["failover", "commit", d]).status.success());
    let (p1, want1) = &states[1];
    let (p2, want2) = &states[2];
    let out = ok(&[
        "failover",
        "promote",
        d,
        "--point",
        &p1.to_string(),
        "--json",
    ]);
    assert_eq!(json_u64(&out, "point"), *p1);
    // A promoted replica takes no log.
    data[0] = 0xee;
    std::fs::write(&img, &data).unwrap();
    assert!(!blockrep(&["sync", i, d]).status.success());
    // The operator picked the wrong point: switch, then commit.
    ok(&["failover", "switch", d, "--point", &p2.to_string()]);
    let st = ok(&["failover", "status", d, "--json"]);
    assert_eq!(json_u64(&st, "point"), *p2);
    let done = ok(&["failover", "commit", d, "--json"]);
    assert_eq!(json_u64(&done, "point"), *p2);
    assert_eq!(&std::fs::read(dir.join("image")).unwrap(), want2);
    assert_ne!(want1, want2);
    assert!(ok(&["failover", "status", d]).contains("committed"));
}

#[test]
fn an_unplanned_failover_commits_the_latest_point_in_one_step() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("disk.img");
    let dir = t.path().join("replica");
    let (i, d) = (img.to_str().unwrap(), dir.to_str().unwrap());
    let data: Vec<u8> = (0..1u32 << 20).map(|x| (x % 253) as u8).collect();
    std::fs::write(&img, &data).unwrap();
    ok(&["sync", i, d]);
    let out = ok(&["failover", "now", d, "--json"]);
    assert!(out.contains("\"phase\":\"committed\""), "{out}");
    assert_eq!(std::fs::read(dir.join("image")).unwrap(), data);
}

/// `replica prune` destroys nothing by default (issue 27, item 24): with
/// no rule it is refused, naming the rules, and every point stays;
/// `--dry-run` names what a rule would drop and keep, in text and JSON,
/// and drops nothing; the same rule without it drops exactly those.
#[test]
fn prune_needs_a_rule_and_has_a_dry_run() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("disk.img");
    let dir = t.path().join("replica");
    let (i, d) = (img.to_str().unwrap(), dir.to_str().unwrap());
    let mut data = vec![0u8; 1 << 20];
    for round in 0..4u8 {
        data[usize::from(round) * 65536..][..4096].fill(round + 1);
        std::fs::write(&img, &data).unwrap();
        ok(&["sync", i, d]);
    }
    let points = || {
        ok(&["replica", "points", d, "--json"])
            .matches("\"sequence\"")
            .count()
    };
    assert_eq!(points(), 4);
    let err = fails(&["replica", "prune", d]);
    for rule in [
        "--keep-last",
        "--keep-for",
        "--keep-app-last",
        "--keep-app-for",
    ] {
        assert!(err.contains(rule), "{err}");
    }
    assert_eq!(points(), 4);
    let plan = ok(&[
        "replica",
        "prune",
        d,
        "--keep-last",
        "2",
        "--dry-run",
        "--json",
    ]);
    let v: Vec<&str> = plan.trim().split(['[', ']']).collect();
    assert!(plan.contains("\"dry_run\":true"), "{plan}");
    assert_eq!(v[1].split(',').count(), 2, "{plan}");
    assert_eq!(v[3].split(',').count(), 2, "{plan}");
    let text = ok(&["replica", "prune", d, "--keep-last", "2", "--dry-run"]);
    assert!(text.contains("would drop"), "{text}");
    assert_eq!(points(), 4);
    let done = ok(&["replica", "prune", d, "--keep-last", "2", "--json"]);
    assert_eq!(
        done.replace("\"dry_run\":false", ""),
        plan.replace("\"dry_run\":true", ""),
        "the dry run named what the prune did"
    );
    assert_eq!(points(), 2);
}

/// A target that looks like a URL of a scheme the command does not take
/// (issue 27, item 25) is refused with the schemes it takes, and nothing
/// is written (no `./http:/host:port` directory).
#[test]
fn a_url_of_an_unsupported_scheme_is_refused_before_anything_is_written() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("disk.img");
    std::fs::write(&img, vec![7u8; 1 << 20]).unwrap();
    let i = img.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_blockrep"))
            .args(args)
            .current_dir(t.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "blockrep {args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    };
    let err = run(&["sync", i, "http://localhost:8443"]);
    assert!(err.contains("http://") && err.contains("https://"), "{err}");
    let err = run(&[
        "sync",
        i,
        "ftp://dr.example/vm1",
        "--disk",
        &"5a".repeat(16),
    ]);
    assert!(err.contains("https://"), "{err}");
    let err = run(&[
        "qemu",
        "replicate",
        "--qmp",
        "qmp.sock",
        "--node",
        "drive0",
        "--spool",
        "spool",
        "--replica",
        "http://dr.example/vm1",
    ]);
    assert!(
        err.contains("http://dr.example/vm1") && err.contains("directory"),
        "{err}"
    );
    let err = run(&[
        "qemu",
        "replicate",
        "--qmp",
        "qmp.sock",
        "--node",
        "drive0",
        "--spool",
        "spool",
        "--to",
        "htps://dr.example:8443",
    ]);
    assert!(err.contains("https://") && err.contains("s3://"), "{err}");
    let left: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("disk.img")]);
}

/// A second `blockrep serve` on the same storage root (issue 27, item 26)
/// is refused, naming the pid of the one serving it, and the first keeps
/// serving.
#[test]
fn a_second_server_on_the_same_root_is_refused_naming_the_first() {
    let t = tempfile::tempdir().unwrap();
    let mut site = common::site::Site::new(t.path());
    site.start();
    let first = site.server.as_ref().unwrap().id();
    // The second listens elsewhere, so only the root is shared.
    let mut second = common::site::Site::new(&t.path().join("second"));
    second.root.clone_from(&site.root);
    second.configure(&t.path().join("second/pki"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_blockrep"))
        .args(["serve", "--config"])
        .arg(&second.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A second server that starts serves until killed: give it time to
    // refuse, then stop it, so the test fails rather than hangs.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "the second server started: {err}");
    assert!(err.contains(&format!("pid {first}")), "{err}");
    // The first still answers.
    assert!(site
        .run(&["status", &site.url(), "--json"])
        .starts_with('['));
}
