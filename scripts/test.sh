#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs formatting,
# lints, every test and the doc tests. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
# A clean clone builds everything once: incremental caches would only
# cost disk and time (they double the debug build's size), and a full
# disk fails a build with errors that hide the cause: say what is free.
export CARGO_INCREMENTAL=0
df -h . | sed 's/^/disk: /' >&2

need_pkgs=()
command -v qemu-img >/dev/null 2>&1 || need_pkgs+=(qemu-utils)
command -v valgrind >/dev/null 2>&1 || need_pkgs+=(valgrind)
command -v gcc >/dev/null 2>&1 || need_pkgs+=(gcc)
command -v g++ >/dev/null 2>&1 || need_pkgs+=(g++)
command -v nbdkit >/dev/null 2>&1 || need_pkgs+=(nbdkit)
[ -f /usr/include/nbdkit-filter.h ] || need_pkgs+=(nbdkit-plugin-dev)
command -v rsync >/dev/null 2>&1 || need_pkgs+=(rsync)
command -v lz4 >/dev/null 2>&1 || need_pkgs+=(lz4)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
command -v readelf >/dev/null 2>&1 || need_pkgs+=(binutils)
# cargo-c (below) builds against OpenSSL.
[ -f /usr/include/openssl/ssl.h ] || need_pkgs+=(libssl-dev)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
    else
        echo "note: missing ${need_pkgs[*]}; tests that need them are skipped" >&2
    fi
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy
# cargo-c installs the library as C libraries install (tests/c_abi.rs):
# built once per machine, the newest release this toolchain builds.
cargo cinstall --version 2>/dev/null | grep -q '^cargo-c 0\.1[0-9]' ||
    cargo install --quiet --locked cargo-c@0.10.24+cargo-0.98.0
# A real S3 server on loopback for the object-store tests
# (tests/store_s3.rs starts it): s3s-fs, light to build and with
# conditional writes; Garage 2.5 has none on PUT, so it could not fence.
command -v s3s-fs >/dev/null 2>&1 || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/s3s-fs" ] ||
    cargo install --quiet --locked s3s-fs@0.14.1 --features binary
# Azure Blob Storage's emulator, Azurite, for the Azure tests
# (tests/store_azure.rs starts it), from npm with the machine's Node.js,
# into a prefix of the user's own (no root needed).
if ! command -v azurite-blob >/dev/null 2>&1; then
    npm_prefix="${XDG_CACHE_HOME:-$HOME/.cache}/blockrep-npm"
    if [ ! -x "$npm_prefix/bin/azurite-blob" ]; then
        if command -v npm >/dev/null 2>&1; then
            npm install --global --silent --prefix "$npm_prefix" azurite@3.37.0 >/dev/null
        else
            echo "note: no npm; the Azure tests are skipped" >&2
        fi
    fi
    export PATH="$npm_prefix/bin:$PATH"
fi

cargo fmt --check
cargo clippy --all-targets -- -D warnings
# An embedder that wants only tracking and logs: the library alone builds
# without the `net` feature and pulls no TLS or HTTP crate.
cargo check --quiet -p blockrep --lib
if cargo tree -p blockrep -e normal --prefix none | grep -Eq '^(rustls|httparse|serde_json) '; then
    echo "the library without features depends on a network crate" >&2
    exit 1
fi
RUSTDOCFLAGS="-D warnings" cargo doc --quiet --no-deps --workspace
# The fuzz targets (run by hand with `cargo +nightly fuzz`) must keep
# compiling as the API changes.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    (cd fuzz && cargo +nightly check --quiet --bins)
else
    echo "note: no nightly toolchain; the fuzz targets are not checked" >&2
fi
# Unit, integration and doc tests; examples are built too. Benchmarks
# are only compiled (by clippy above) and run by hand.
cargo test
