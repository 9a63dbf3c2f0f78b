#!/usr/bin/env bash
# The transport's soak, run by hand (not in CI): two sites as processes,
# `blockrep serve` and a primary (nbdkit with the blockrep filter, qemu-io
# writing through NBD), for DURATION seconds with random SIGKILLs of both,
# link cuts (the primary reaches the server through a relay that is killed
# and restarted) and quiesce points. At every quiesce point the primary stops cleanly
# (its last cycle acknowledged by the server) and the server's replica is
# compared with the image by qemu-img; then both start again.
#
#   scripts/soak.sh [DURATION_SECONDS=3600] [WORK_DIR]
#
# Needs: cargo, gcc, pkg-config, nbdkit, nbdkit-plugin-dev, qemu-utils.
# Prints one line per event and a summary (figures for BENCHMARKS.md).
set -euo pipefail
DURATION=${1:-3600}
WORK=${2:-$(mktemp -d /tmp/blockrep-soak.XXXXXX)}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$WORK"
cd "$WORK"
echo "soak: ${DURATION}s in $WORK"

cargo build --quiet --release --manifest-path "$ROOT/Cargo.toml" -p blockrep-cli
BLOCKREP="$ROOT/target/release/blockrep"
PREFIX="$WORK/prefix"
if [ ! -f "$PREFIX/include/blockrep.h" ]; then
    (cd "$ROOT" && cargo cinstall --release -p blockrep --prefix "$PREFIX" --libdir "$PREFIX/lib")
fi
export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig"
gcc -std=c11 -O2 -shared -fPIC -pthread "$ROOT/examples/nbdkit/blockrep-filter.c" \
    -o filter.so $(pkg-config --cflags --libs blockrep) -Wl,-rpath,"$PREFIX/lib"

[ -d pki ] || "$BLOCKREP" certs pki --server localhost --primary host1.site-a.soak >/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > serve.toml <<TOML
listen = "127.0.0.1:$PORT"
certificate = "pki/localhost.crt"
key = "pki/localhost.key"
client_ca = "pki/ca.crt"
[[primary]]
identity = "*.site-a.soak"
root = "site-b"
TOML
IMAGE="$WORK/disk.raw"
[ -f "$IMAGE" ] || qemu-img create -q -f raw "$IMAGE" 256M
REPLICA="site-b/$(printf '42%.0s' $(seq 16))/replica/image"

LINK_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

SERVER_PID=
NBDKIT_PID=
LINK_PID=
# The link: a TCP relay from LINK_PORT to the server; killing it cuts
# every connection across it at whatever byte they were.
start_link() {
    python3 - "$LINK_PORT" "$PORT" <<'PY' &
import socket, sys, threading
listen = socket.socket(); listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listen.bind(("127.0.0.1", int(sys.argv[1]))); listen.listen(64)
def pump(a, b):
    try:
        while (d := a.recv(65536)):
            b.sendall(d)
    except OSError:
        pass
    for s in (a, b):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
while True:
    c, _ = listen.accept()
    try:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    except OSError:
        c.close(); continue
    threading.Thread(target=pump, args=(c, s), daemon=True).start()
    threading.Thread(target=pump, args=(s, c), daemon=True).start()
PY
    LINK_PID=$!
    sleep 0.2
}
start_server() {
    "$BLOCKREP" serve --config serve.toml >>serve.log 2>&1 &
    SERVER_PID=$!
    sleep 0.3
}
start_primary() {
    rm -f nbd.sock
    nbdkit --foreground --exit-with-parent --unix "$WORK/nbd.sock" --filter="$WORK/filter.so" \
        file "$IMAGE" blockrep-disk="$IMAGE" blockrep-spool="$WORK/spool" \
        blockrep-tracker="$WORK/tracker" blockrep-interval=200 \
        blockrep-server="127.0.0.1:$LINK_PORT" blockrep-server-name=localhost \
        blockrep-cert=pki/host1.site-a.soak.crt blockrep-key=pki/host1.site-a.soak.key \
        blockrep-ca=pki/ca.crt >>nbdkit.log 2>&1 &
    NBDKIT_PID=$!
    for _ in $(seq 300); do [ -S nbd.sock ] && return; sleep 0.1; done
    echo "nbdkit did not start; see $WORK/nbdkit.log" >&2
    exit 1
}
cleanup() { kill -9 "$NBDKIT_PID" "$SERVER_PID" "$LINK_PID" 2>/dev/null || true; }
trap cleanup EXIT

writes() {
    local cmds=()
    for _ in 1 2 3 4 5 6; do
        cmds+=(-c "write -P $((RANDOM % 250 + 1)) $(((RANDOM * 32768 + RANDOM) % 65536 * 4096)) 4k")
    done
    cmds+=(-c "write -P $((RANDOM % 250 + 1)) $((RANDOM % 250))M 1M")
    cmds+=(-c "write -z $((RANDOM % 250))M 64k")
    qemu-io -f raw "${cmds[@]}" "nbd+unix:///?socket=$WORK/nbd.sock" >/dev/null 2>&1 || true
}

start_server
start_link
start_primary
END=$((SECONDS + DURATION))
KILLS_SERVER=0 KILLS_PRIMARY=0 LINK_CUTS=0 CHECKS=0 BATCHES=0
while [ $SECONDS -lt $END ]; do
    writes
    BATCHES=$((BATCHES + 1))
    case $((RANDOM % 40)) in
        0)  kill -9 "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
            KILLS_SERVER=$((KILLS_SERVER + 1)); echo "$(date +%T) server killed"
            sleep 0.$((RANDOM % 9)); start_server ;;
        1)  kill -9 "$NBDKIT_PID"; wait "$NBDKIT_PID" 2>/dev/null || true
            KILLS_PRIMARY=$((KILLS_PRIMARY + 1)); echo "$(date +%T) primary killed"
            start_primary ;;
        3)  kill -9 "$LINK_PID"; wait "$LINK_PID" 2>/dev/null || true
            LINK_CUTS=$((LINK_CUTS + 1)); echo "$(date +%T) link cut"
            sleep 0.$((RANDOM % 9)); start_link ;;
        2)  # A quiesce point: the primary stops cleanly (its last cycle
            # acknowledged), the replica must equal the image.
            kill -TERM "$NBDKIT_PID"; wait "$NBDKIT_PID" 2>/dev/null || true
            if qemu-img compare -q -f raw -F raw "$IMAGE" "$REPLICA"; then
                CHECKS=$((CHECKS + 1)); echo "$(date +%T) check $CHECKS: replica equals the image"
            else
                echo "$(date +%T) MISMATCH: the replica differs from the image" >&2
                exit 1
            fi
            start_primary ;;
    esac
done
kill -TERM "$NBDKIT_PID"; wait "$NBDKIT_PID" 2>/dev/null || true
qemu-img compare -q -f raw -F raw "$IMAGE" "$REPLICA" && CHECKS=$((CHECKS + 1))
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
kill -9 "$LINK_PID" 2>/dev/null || true
echo "soak: ${DURATION}s, $BATCHES write batches, $KILLS_SERVER server kills, $KILLS_PRIMARY primary kills, $LINK_CUTS link cuts, $CHECKS checks passed"
