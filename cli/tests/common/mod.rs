//! Running the `blockrep` binary from the command's tests.
#![allow(dead_code)]

pub mod site;

use std::process::{Command, Output};

/// Runs `blockrep args`.
pub fn blockrep(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blockrep"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `blockrep args`, which must succeed; its standard output.
pub fn ok(args: &[&str]) -> String {
    let out = blockrep(args);
    assert!(
        out.status.success(),
        "blockrep {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `blockrep args`, which must fail; its standard error.
pub fn fails(args: &[&str]) -> String {
    let out = blockrep(args);
    assert!(!out.status.success(), "blockrep {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}
