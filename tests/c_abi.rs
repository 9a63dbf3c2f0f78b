//! The C ABI: the committed header matches what cbindgen generates, it
//! compiles as C11 and C++17 with warnings as errors, and the C programs
//! under tests/c run against the static and the shared library with
//! `AddressSanitizer` and `UBSan`, and under valgrind. The library installs
//! with `cargo cinstall` (soname, static library, header, pkg-config); the
//! programs under the sanitizers link that installed copy, and the nbdkit
//! filter and one C program build against it through pkg-config alone.

#[cfg(feature = "net")]
mod net_common;
#[cfg(feature = "s3")]
#[path = "common/s3.rs"]
mod s3;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Cargo, run from this test without the variables cargo set for it
/// (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, ...): ring's build script
/// reruns when one differs from the build's, which would rebuild ring and
/// every crate above it on each run.
fn cargo() -> Command {
    const SET_FOR_TESTS: [&str; 6] = [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
        "CARGO_PRIMARY_",
        "CARGO_TARGET_TMPDIR",
    ];
    let mut c = Command::new(env!("CARGO"));
    for (k, _) in std::env::vars_os() {
        if SET_FOR_TESTS
            .iter()
            .any(|p| k.to_string_lossy().starts_with(p))
        {
            c.env_remove(k);
        }
    }
    c
}

/// The directory holding the test profile's libblockrep.a, built from the
/// current sources, for the runs under valgrind: valgrind reads optimised
/// Rust as branching on uninitialised bytes (a comparison of an `Option`'s
/// payload hoisted above the check of its tag), so it checks the build
/// without optimisation of blockrep itself. `--tests` resolves features as
/// `cargo test` did, so this is a no-op after it (plain `--lib` would
/// rebuild the HTTP crates with other features, then `cargo test` again).
fn valgrind_lib_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let deps = exe.parent().unwrap().to_path_buf();
            let profile_dir = deps.parent().unwrap().to_path_buf();
            let mut cargo = cargo();
            cargo
                .args(["build", "--lib", "--tests", "--quiet", "--manifest-path"])
                .arg(root().join("Cargo.toml"))
                .arg("--target-dir")
                .arg(profile_dir.parent().unwrap());
            if profile_dir.ends_with("release") {
                cargo.arg("--release");
            }
            let status = cargo.status().expect("run cargo build --lib");
            assert!(status.success(), "cargo build --lib failed");
            // `cargo build` leaves the fresh libraries in the profile
            // directory.
            profile_dir
        })
        .clone()
}

/// The directory of the installed libblockrep.a and libblockrep.so (with
/// its soname), which the C programs under the sanitizers link: they run
/// against exactly what an integrator installs.
fn installed_lib_dir() -> PathBuf {
    installed().1.parent().unwrap().to_path_buf()
}

/// An installed copy of the library, as a C integrator gets it: `cargo
/// cinstall` (cargo-c) into a temporary prefix, once per run. Returns the
/// prefix and the `PKG_CONFIG_PATH` that finds its `blockrep.pc`.
fn installed() -> &'static (PathBuf, PathBuf) {
    static INSTALLED: std::sync::OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> =
        std::sync::OnceLock::new();
    // The paths without the TempDir (which the first static keeps alive).
    static VIEW: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    let (_, prefix, pc) = INSTALLED.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let prefix = t.path().join("usr");
        let exe = std::env::current_exe().unwrap();
        let target = exe.ancestors().nth(3).unwrap().join("cinstall");
        let out = cargo()
            .args(["cinstall", "--release", "-p", "blockrep"])
            .arg("--manifest-path")
            .arg(root().join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .arg("--prefix")
            .arg(&prefix)
            // Line tables in the release build: a sanitizer's report names
            // the Rust frames, inlined ones too.
            .env("CARGO_PROFILE_RELEASE_DEBUG", "line-tables-only")
            .output()
            .expect("run cargo cinstall");
        assert!(
            out.status.success(),
            "cargo cinstall failed (cargo-c is required: \
             cargo install cargo-c@0.10.24+cargo-0.98.0 --locked):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pc = std::fs::read_dir(prefix.join("lib"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .flat_map(|d| [d.join("pkgconfig"), d])
            .find(|d| d.join("blockrep.pc").exists())
            .expect("blockrep.pc installed");
        (t, prefix, pc)
    });
    VIEW.get_or_init(|| (prefix.clone(), pc.clone()))
}

/// `pkg-config --cflags --libs blockrep` against the installed copy, and
/// an rpath to its library directory.
fn pkg_config_flags() -> Vec<String> {
    let (_, pc) = installed();
    let out = Command::new("pkg-config")
        .args(["--cflags", "--libs", "blockrep"])
        .env("PKG_CONFIG_PATH", pc)
        .output()
        .expect("pkg-config is required");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let libs = Command::new("pkg-config")
        .args(["--variable=libdir", "blockrep"])
        .env("PKG_CONFIG_PATH", pc)
        .output()
        .unwrap();
    let libdir = String::from_utf8(libs.stdout).unwrap().trim().to_string();
    let mut flags: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    flags.push(format!("-Wl,-rpath,{libdir}"));
    flags
}

/// The installed copy is what C libraries install: the header, the static
/// library, a shared object with a versioned soname and its links, and a
/// pkg-config file; a C program built only from `pkg-config --cflags
/// --libs blockrep` runs against it.
#[test]
fn the_installed_library_builds_a_c_program_through_pkg_config() {
    let (prefix, pc) = installed();
    assert!(prefix.join("include/blockrep.h").exists());
    let libdir = pc.parent().unwrap();
    assert!(libdir.join("libblockrep.a").exists());
    let so = std::fs::read_dir(libdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("libblockrep.so"))
        .collect::<Vec<_>>();
    assert!(so.len() >= 2, "{so:?}");
    let dynamic = Command::new("readelf")
        .arg("-d")
        .arg(libdir.join("libblockrep.so"))
        .output()
        .unwrap();
    let dynamic = String::from_utf8_lossy(&dynamic.stdout);
    let soname = dynamic
        .lines()
        .find(|l| l.contains("SONAME"))
        .unwrap_or_else(|| panic!("no soname:\n{dynamic}"));
    assert!(soname.contains("[libblockrep.so."), "{soname}");
    let t = tempfile::tempdir().unwrap();
    let exe = t.path().join("tracker-installed");
    run(Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-O1", "-pthread"])
        .arg(root().join("tests/c/tracker.c"))
        .arg("-o")
        .arg(&exe)
        .args(pkg_config_flags()));
    let needed = Command::new("readelf")
        .arg("-d")
        .arg(&exe)
        .output()
        .unwrap();
    let needed = String::from_utf8_lossy(&needed.stdout);
    assert!(
        needed
            .lines()
            .any(|l| l.contains("NEEDED") && l.contains("[libblockrep.so.")),
        "linked against the versioned soname:\n{needed}"
    );
    run(&mut Command::new(&exe));
}

fn generate_header() -> String {
    let mut config = cbindgen::Config::from_file(root().join("cbindgen.toml")).unwrap();
    let v = env!("CARGO_PKG_VERSION");
    let mut parts = v.split('.');
    let (major, minor, patch) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    config.after_includes = Some(format!(
        "\n#define BLOCKREP_VERSION \"{v}\"\n#define BLOCKREP_VERSION_MAJOR {major}\n#define BLOCKREP_VERSION_MINOR {minor}\n#define BLOCKREP_VERSION_PATCH {patch}\n"
    ));
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(root())
        .with_config(config)
        .generate()
        .unwrap()
        .write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn header_matches_the_generated_one() {
    let got = generate_header();
    let path = root().join("include/blockrep.h");
    if std::env::var_os("BLOCKREP_BLESS").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        got == want,
        "include/blockrep.h is stale: run BLOCKREP_BLESS=1 cargo test --test c_abi"
    );
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn header_compiles_as_c11_and_cpp17() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("h.c");
    std::fs::write(
        &src,
        "#include \"blockrep.h\"\nint main(void) { return blockrep_version() == 0; }\n",
    )
    .unwrap();
    let inc = root().join("include");
    run(Command::new("gcc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-fsyntax-only",
            "-I",
        ])
        .arg(&inc)
        .arg(&src));
    run(Command::new("g++")
        .args([
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsyntax-only",
            "-x",
            "c++",
            "-I",
        ])
        .arg(&inc)
        .arg(&src));
}

/// Builds `tests/c/NAME.c` against the static or the shared library:
/// the installed release copy with the sanitizers, the test build without
/// them (for valgrind).
fn build(name: &str, shared: bool, sanitize: bool, out: &Path) {
    let mut cmd = Command::new("gcc");
    cmd.args([
        "-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1", "-pthread", "-I",
    ])
    .arg(root().join("include"))
    .arg(root().join("tests/c").join(format!("{name}.c")))
    .arg("-o")
    .arg(out);
    if sanitize {
        cmd.args([
            "-fsanitize=address,undefined",
            "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=all",
        ]);
    }
    let lib_dir = if sanitize {
        installed_lib_dir()
    } else {
        valgrind_lib_dir()
    };
    if shared {
        cmd.arg("-L")
            .arg(&lib_dir)
            .arg("-lblockrep")
            .arg(format!("-Wl,-rpath,{}", lib_dir.display()));
    } else {
        cmd.arg(lib_dir.join("libblockrep.a"));
    }
    cmd.args(["-lm", "-ldl"]);
    run(&mut cmd);
}

fn c_program(name: &str) {
    c_program_with(name, &[]);
}

/// [`c_program`] with environment variables for the program.
fn c_program_with(name: &str, env: &[(&str, &std::ffi::OsStr)]) {
    let dir = tempfile::tempdir().unwrap();
    for shared in [false, true] {
        let exe = dir
            .path()
            .join(format!("{name}-{}", if shared { "so" } else { "a" }));
        build(name, shared, true, &exe);
        run(Command::new(&exe)
            .envs(env.iter().copied())
            .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0"));
    }
    let exe = dir.path().join(format!("{name}-valgrind"));
    build(name, false, false, &exe);
    run(Command::new("valgrind")
        .envs(env.iter().copied())
        .args([
            "--quiet",
            "--error-exitcode=1",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--show-leak-kinds=definite",
        ])
        .arg(format!(
            "--suppressions={}",
            root().join("tests/c/valgrind.supp").display()
        ))
        .arg(&exe));
}

#[test]
fn tracker_c_program_under_sanitizers_and_valgrind() {
    c_program("tracker");
}

#[test]
fn persistent_tracker_c_program_under_sanitizers_and_valgrind() {
    c_program("ptracker");
}

#[test]
fn logs_and_replica_c_program_under_sanitizers_and_valgrind() {
    c_program("replica");
}

#[test]
fn pipeline_c_program_with_threads_under_sanitizers_and_valgrind() {
    c_program("pipeline");
}

/// The nbdkit filter of examples/nbdkit, a real host program, built as an
/// integrator builds it (against the installed library, through
/// pkg-config): nbdkit serves an image in `dir` through it on a Unix
/// socket, qemu-io writes through NBD (random 4 KiB writes, sequential
/// 1 MiB writes, zero writes, discards) while the filter's cycles run,
/// then nbdkit stops. `target_args` say where the logs go; with
/// `kill_midway`, nbdkit is killed with SIGKILL halfway and started again.
/// Returns the image.
fn nbdkit_filter_run(dir: &Path, target_args: &[String], kill_midway: bool) -> PathBuf {
    let filter = dir.join("blockrep-filter.so");
    // Built as an integrator builds it: against the installed library,
    // through pkg-config.
    run(Command::new("gcc")
        .args([
            "-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-O1",
        ])
        .arg(root().join("examples/nbdkit/blockrep-filter.c"))
        .arg("-o")
        .arg(&filter)
        .args(pkg_config_flags())
        .arg("-pthread"));
    let image = dir.join("disk.raw");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "raw"])
        .arg(&image)
        .arg("32M"));
    let qemu_io = |target: &str, cmds: &[String]| {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for cmd in cmds {
            c.arg("-c").arg(cmd);
        }
        run(c.arg(target));
    };
    qemu_io(
        image.to_str().unwrap(),
        &["write -P 0x11 0 5M".into(), "write -P 0x22 20M 2M".into()],
    );
    let sock = dir.join("nbd.sock");
    let spool = dir.join("spool");
    let tracker = dir.join("tracker");
    let start_nbdkit = || {
        let _ = std::fs::remove_file(&sock);
        let child = Command::new("nbdkit")
            .args(["--foreground", "--exit-with-parent", "--unix"])
            .arg(&sock)
            .arg(format!("--filter={}", filter.display()))
            .arg("file")
            .arg(&image)
            .arg(format!("blockrep-disk={}", image.display()))
            .arg(format!("blockrep-spool={}", spool.display()))
            .args(target_args)
            .arg(format!("blockrep-tracker={}", tracker.display()))
            .arg("blockrep-interval=50")
            .spawn()
            .expect("nbdkit is required (apt-get install nbdkit nbdkit-plugin-dev)");
        let start = std::time::Instant::now();
        while !sock.exists() {
            assert!(start.elapsed().as_secs() < 30, "nbdkit did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        child
    };
    let mut nbdkit = start_nbdkit();
    let target = format!("nbd+unix:///?socket={}", sock.display());
    let mut seed = 7u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mb: u64 = 1 << 20;
    for round in 0..8 {
        let mut cmds = Vec::new();
        for _ in 0..6 {
            let off = next() % (32 * mb / 4096) * 4096;
            cmds.push(format!("write -P {} {off} 4k", 1 + next() % 250));
        }
        let seq = next() % 30 * mb;
        cmds.push(format!("write -P {} {seq} 1M", 1 + round));
        let z = next() % (31 * mb);
        cmds.push(format!("write -z {z} {}", 1 + next() % (256 << 10)));
        let d = next() % (32 * mb / 4096 - 64) * 4096;
        cmds.push(format!("discard {d} {}", (1 + next() % 64) * 4096));
        qemu_io(&target, &cmds);
        // Let a cycle or two run between batches.
        std::thread::sleep(std::time::Duration::from_millis(60));
        if kill_midway && round == 3 {
            // The primary process dies (SIGKILL: no last cycle, no clean
            // close) and starts again on its tracker file and spool.
            nbdkit.kill().unwrap();
            nbdkit.wait().unwrap();
            nbdkit = start_nbdkit();
        }
    }
    // SAFETY: kill(2) with the child's pid; it is ours and still running.
    unsafe { libc::kill(i32::try_from(nbdkit.id()).unwrap(), libc::SIGTERM) };
    let status = nbdkit.wait().unwrap();
    assert!(
        status.success() || status.code().is_none(),
        "nbdkit: {status}"
    );
    image
}

/// `qemu-img compare` of two raw images.
fn qemu_img_same(a: &Path, b: &Path) {
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "the replica differs: {}",
        String::from_utf8_lossy(&cmp.stdout)
    );
}

/// The filter applying to a replica directory on the same machine.
#[test]
fn nbdkit_filter_replicates_what_qemu_io_writes_through_nbd() {
    let t = tempfile::tempdir().unwrap();
    let replica = t.path().join("replica");
    let image = nbdkit_filter_run(
        t.path(),
        &[format!("blockrep-replica={}", replica.display())],
        false,
    );
    qemu_img_same(&replica.join("image"), &image);
}

/// The filter shipping to a replica server over mutual TLS, its process
/// killed with SIGKILL halfway and started again on its tracker and
/// spool: the server's replica of the disk equals the image nbdkit served.
/// Then tracking is lost and the image changed unseen: the next start
/// resyncs by the server's digests.
#[cfg(feature = "net")]
#[test]
fn nbdkit_filter_ships_to_a_replica_server_across_a_sigkill_of_nbdkit() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let config = net_common::site(d);
    let root = d.join("site-a");
    let server = net_common::start(&config);
    let args = [
        format!("blockrep-server={}", server.addr),
        "blockrep-server-name=localhost".into(),
        format!("blockrep-cert={}", d.join("host1.crt").display()),
        format!("blockrep-key={}", d.join("host1.key").display()),
        format!("blockrep-ca={}", d.join("ca.crt").display()),
    ];
    let image = nbdkit_filter_run(d, &args, true);
    // The filter's disk id: sixteen 0x42 bytes.
    let replica = root.join("42".repeat(16)).join("replica/image");
    qemu_img_same(&replica, &image);
    // Tracking lost: the tracker file gone and the image rewritten behind
    // nbdkit's back (the next run recreates it). The filter fetches the
    // server's digests, resyncs, and the replica is exact again.
    std::fs::remove_file(d.join("tracker")).unwrap();
    let image = nbdkit_filter_run(d, &args, false);
    qemu_img_same(&replica, &image);
}

#[test]
fn failover_c_program_under_sanitizers_and_valgrind() {
    c_program("failover");
}

#[test]
fn groups_resize_and_tags_c_program_under_sanitizers_and_valgrind() {
    c_program("group");
}

/// The shipper from C, against a replica server running here over real
/// TLS: three runs (static, shared, valgrind), each a disk of its own; the
/// server's replica of each equals the disk file the program wrote.
#[cfg(feature = "net")]
#[test]
fn shipper_c_program_under_sanitizers_and_valgrind() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let config = net_common::site(d);
    let root = d.join("site-a");
    let server = net_common::start(&config);
    let addr = server.addr.to_string();
    c_program_with(
        "shipper",
        &[
            ("BLOCKREP_SERVER", addr.as_ref()),
            ("BLOCKREP_DIR", d.as_os_str()),
        ],
    );
    let mut disks = 0;
    for e in std::fs::read_dir(&root).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if name.starts_with('.') {
            continue; // the server's lock on its root
        }
        let image = std::fs::read(e.path().join("replica/image")).unwrap();
        let want = std::fs::read(d.join(format!("disk-{name}.img"))).unwrap();
        assert!(image == want, "disk {name}: the replica differs");
        disks += 1;
    }
    assert_eq!(disks, 3);
}

/// The object store from C, against s3s-fs running here: three runs
/// (static, shared, valgrind), each a disk of its own; the replica each
/// hydrated through the ABI equals the disk file the program wrote.
#[cfg(feature = "s3")]
#[test]
fn store_c_program_under_sanitizers_and_valgrind() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let Some(store) = s3::S3::start(&d.join("s3")) else {
        return;
    };
    let endpoint = format!("http://{}", store.addr);
    c_program_with(
        "store",
        &[
            ("BLOCKREP_S3", endpoint.as_ref()),
            ("BLOCKREP_DIR", d.as_os_str()),
        ],
    );
    let mut disks = 0;
    for e in std::fs::read_dir(d).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        let Some(hex) = name.strip_prefix("hydrated-") else {
            continue;
        };
        let image = std::fs::read(d.join(&name).join("image")).unwrap();
        let want = std::fs::read(d.join(format!("disk-{hex}.img"))).unwrap();
        assert!(image == want, "disk {hex}: the hydrated replica differs");
        disks += 1;
    }
    assert_eq!(disks, 3);
}
