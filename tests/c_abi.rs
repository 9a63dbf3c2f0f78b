//! The C ABI: the committed header matches what cbindgen generates, it
//! compiles as C11 and C++17 with warnings as errors, and the C programs
//! under tests/c run against the static and the shared library with
//! AddressSanitizer and UBSan, and under valgrind.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding libblockrep.a and libblockrep.so: `cargo test`
/// leaves them beside this test binary in `deps`; `cargo build` also copies
/// them one level up.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    if deps.join("libblockrep.a").exists() {
        return deps;
    }
    deps.parent().unwrap().to_path_buf()
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

/// Builds `tests/c/NAME.c` against the static or the shared library.
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
    if shared {
        cmd.arg("-L")
            .arg(lib_dir())
            .arg("-lblockrep")
            .arg(format!("-Wl,-rpath,{}", lib_dir().display()));
    } else {
        cmd.arg(lib_dir().join("libblockrep.a"));
    }
    cmd.args(["-lm", "-ldl"]);
    run(&mut cmd);
}

fn c_program(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    for shared in [false, true] {
        let exe = dir
            .path()
            .join(format!("{name}-{}", if shared { "so" } else { "a" }));
        build(name, shared, true, &exe);
        run(Command::new(&exe).env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0"));
    }
    let exe = dir.path().join(format!("{name}-valgrind"));
    build(name, false, false, &exe);
    run(Command::new("valgrind")
        .args([
            "--quiet",
            "--error-exitcode=1",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--show-leak-kinds=definite",
        ])
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
