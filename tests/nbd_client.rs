//! The NBD client against real servers (qemu-nbd exporting a qcow2 with a
//! dirty bitmap, over a Unix socket and TCP; nbdkit with its pattern
//! plugin, its error filter, without structured replies, oldstyle) and
//! against a hostile one that sends crafted bytes. Exact bytes
//! throughout: reads are compared with `qemu-img convert` of the image,
//! maps with the ranges written.
#![cfg(feature = "qemu")]

use blockrep::nbd::{wire, NbdClient, NbdExtent, NbdOptions, STATE_DIRTY, STATE_HOLE};
use blockrep::ErrorKind;
#[cfg(feature = "net")]
mod net_common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, ready: impl Fn() -> bool) -> Running {
    let child = cmd
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} is required (scripts/test.sh installs it): {e}"));
    let r = Running(child);
    let t = Instant::now();
    while !ready() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{cmd:?} did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    r
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} is required (scripts/test.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_io(image: &Path, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2"]);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    run(c.arg(image));
}

const MIB: u64 = 1 << 20;
const SIZE: u64 = 16 * MIB;

/// A qcow2 written before and after its bitmap `b0` (4 KiB granularity)
/// was added; returns it, its raw bytes and the ranges written since.
fn bitmap_image(dir: &Path) -> (PathBuf, Vec<u8>, Vec<(u64, u64)>) {
    let img = dir.join("disk.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&img)
        .arg(SIZE.to_string()));
    qemu_io(&img, &["write -P 0x11 0 1M", "write -P 0x22 4M 64k"]);
    run(Command::new("qemu-img")
        .args(["bitmap", "--add", "--granularity", "4096"])
        .arg(&img)
        .arg("b0"));
    qemu_io(
        &img,
        &[
            "write -P 0x33 8k 4k",
            "write -P 0x44 2M 1M",
            "write -z 4M 4k",
            "discard 512k 64k",
        ],
    );
    let raw = dir.join("disk.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&img)
        .arg(&raw));
    let bytes = std::fs::read(&raw).unwrap();
    let dirty = vec![
        (8 << 10, 4 << 10),
        (512 << 10, 64 << 10),
        (2 * MIB, MIB),
        (4 * MIB, 4 << 10),
    ];
    (img, bytes, dirty)
}

fn options(contexts: &[&str]) -> NbdOptions {
    NbdOptions {
        contexts: contexts.iter().map(|c| (*c).to_string()).collect(),
        timeout: Some(Duration::from_secs(30)),
        ..NbdOptions::default()
    }
}

const BITMAP: &str = "qemu:dirty-bitmap:b0";
const ALLOCATION: &str = "base:allocation";

/// Reads the export whole in uneven pieces and checks every byte, then
/// the dirty map and the allocation map.
fn check_export(c: &mut NbdClient, bytes: &[u8], dirty: &[(u64, u64)]) {
    assert_eq!(c.size(), SIZE);
    let mut at = 0u64;
    let mut step = 4095u64;
    while at < SIZE {
        let n = step.min(SIZE - at);
        let mut buf = vec![0xa5u8; n as usize];
        c.read(at, &mut buf).unwrap();
        assert!(
            buf == bytes[at as usize..(at + n) as usize],
            "bytes differ in the {n} at {at}"
        );
        at += n;
        step = step * 3 % (5 * MIB) + 1;
    }
    let map = c.map(BITMAP, 0, SIZE).unwrap();
    let got: Vec<(u64, u64)> = map
        .iter()
        .filter(|e| e.flags & STATE_DIRTY != 0)
        .map(|e| (e.offset, e.len))
        .collect();
    assert_eq!(got, dirty);
    assert_eq!(map.iter().map(|e| e.len).sum::<u64>(), SIZE);
    let alloc = c.map(ALLOCATION, 0, SIZE).unwrap();
    assert_eq!(alloc.first().map(|e| e.offset), Some(0));
    assert!(alloc
        .windows(2)
        .all(|w| w[0].offset + w[0].len == w[1].offset));
    assert_eq!(alloc.iter().map(|e| e.len).sum::<u64>(), SIZE);
    // Never written: a hole; everything reported as a hole reads as zeros.
    let tail = alloc.last().unwrap();
    assert!(
        tail.flags & STATE_HOLE != 0 && tail.offset <= 5 * MIB,
        "{alloc:?}"
    );
    for e in alloc.iter().filter(|e| e.flags & STATE_HOLE != 0) {
        let (s, n) = (e.offset as usize, e.len as usize);
        assert!(
            bytes[s..s + n].iter().all(|&b| b == 0),
            "hole {e:?} not zero"
        );
    }
    // Many small reads in flight at once, as a cycle reads dirty blocks.
    let mut bufs: Vec<(u64, Vec<u8>)> = (0..300u64)
        .map(|i| {
            (
                (i * 7919 * 4096) % (SIZE - 8192),
                vec![0u8; 512 + (i as usize % 5) * 1024],
            )
        })
        .collect();
    let mut reads: Vec<(u64, &mut [u8])> = bufs
        .iter_mut()
        .map(|(at, b)| (*at, b.as_mut_slice()))
        .collect();
    c.read_many(&mut reads).unwrap();
    for (at, b) in &bufs {
        let at = *at as usize;
        assert!(
            b[..] == bytes[at..at + b.len()],
            "read_many differs at {at}"
        );
    }
    // A block status of a range inside one extent is cut to the range.
    let e = c.block_status(BITMAP, 2 * MIB + 4096, 8192).unwrap();
    assert_eq!(
        e,
        vec![NbdExtent {
            offset: 2 * MIB + 4096,
            len: 8192,
            flags: STATE_DIRTY
        }]
    );
}

#[test]
fn qemu_nbd_over_a_unix_socket_reads_bytes_and_maps_the_bitmap() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bytes, dirty) = bitmap_image(dir.path());
    let sock = dir.path().join("nbd.sock");
    let _server = spawn(
        Command::new("qemu-nbd")
            .args(["-r", "-t", "-f", "qcow2", "-B", "b0", "--socket"])
            .arg(&sock)
            .arg(&img),
        || std::os::unix::net::UnixStream::connect(&sock).is_ok(),
    );
    let mut c = NbdClient::connect_unix(&sock, &options(&[ALLOCATION, BITMAP])).unwrap();
    assert!(c.info().structured);
    assert!(c.info().flags & wire::TFLAG_READ_ONLY != 0);
    check_export(&mut c, &bytes, &dirty);
    // Past the end: refused before anything is sent; the connection serves on.
    let mut b = [0u8; 2];
    assert_eq!(
        c.read(SIZE - 1, &mut b).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        c.block_status("qemu:dirty-bitmap:other", 0, 4096)
            .unwrap_err()
            .kind(),
        ErrorKind::Misuse
    );
    c.read(SIZE - 2, &mut b).unwrap();
    c.disconnect();
    // A bitmap the export does not have is named in the refusal.
    let e = NbdClient::connect_unix(&sock, &options(&["qemu:dirty-bitmap:nope"]))
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("qemu:dirty-bitmap:nope"), "{e}");
    // An export that does not exist.
    let e = NbdClient::connect_unix(
        &sock,
        &NbdOptions {
            export: "nope".into(),
            ..options(&[])
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn qemu_nbd_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bytes, dirty) = bitmap_image(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let _server = spawn(
        Command::new("qemu-nbd")
            .args([
                "-r",
                "-t",
                "-f",
                "qcow2",
                "-B",
                "b0",
                "-b",
                "127.0.0.1",
                "-p",
            ])
            .arg(port.to_string())
            .arg(&img),
        || std::net::TcpStream::connect(addr).is_ok(),
    );
    let mut c = NbdClient::connect_tcp(addr, &options(&[ALLOCATION, BITMAP])).unwrap();
    check_export(&mut c, &bytes, &dirty);
}

/// nbdkit serving `args` on a Unix socket in `dir`.
fn nbdkit(dir: &Path, args: &[&str]) -> (Running, PathBuf) {
    let sock = dir.join("nbdkit.sock");
    let r = spawn(
        Command::new("nbdkit")
            .args(["-f", "-U"])
            .arg(&sock)
            .args(args),
        || std::os::unix::net::UnixStream::connect(&sock).is_ok(),
    );
    (r, sock)
}

/// nbdkit's pattern plugin: each 8 bytes hold their own offset.
fn pattern(at: u64, n: usize) -> Vec<u8> {
    (at..at + n as u64)
        .map(|i| (i & !7).to_be_bytes()[(i & 7) as usize])
        .collect()
}

#[test]
fn nbdkit_pattern_with_a_server_error_in_the_middle() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("fail-now");
    let (_server, sock) = nbdkit(
        dir.path(),
        &[
            "--filter=error",
            "pattern",
            "size=8M",
            "error-pread=EIO",
            "error-pread-rate=100%",
            &format!("error-pread-file={}", trigger.display()),
        ],
    );
    let mut c = NbdClient::connect_unix(&sock, &options(&[ALLOCATION])).unwrap();
    assert_eq!(c.size(), 8 * MIB);
    for (at, n) in [
        (0, 1),
        (12345, 100_000),
        (8 * MIB - 7, 7),
        (MIB - 3, 3 << 20),
    ] {
        let mut buf = vec![0u8; n];
        c.read(at, &mut buf).unwrap();
        assert!(buf == pattern(at, n), "pattern differs at {at}");
    }
    // The server's error: typed, named, and the connection serves on.
    std::fs::write(&trigger, b"").unwrap();
    let mut buf = vec![0u8; 4096];
    let e = c.read(4096, &mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().contains("EIO"), "{e}");
    std::fs::remove_file(&trigger).unwrap();
    c.read(4096, &mut buf).unwrap();
    assert!(buf == pattern(4096, 4096));
    let map = c.map(ALLOCATION, 0, 8 * MIB).unwrap();
    assert_eq!(
        map,
        vec![NbdExtent {
            offset: 0,
            len: 8 * MIB,
            flags: 0
        }]
    );
}

#[test]
fn nbdkit_without_structured_replies_and_oldstyle() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_server, sock) = nbdkit(dir.path(), &["--no-sr", "pattern", "size=1M"]);
        let mut c = NbdClient::connect_unix(&sock, &options(&[])).unwrap();
        assert!(!c.info().structured);
        let mut buf = vec![0u8; 70_000];
        c.read(1000, &mut buf).unwrap();
        assert!(buf == pattern(1000, 70_000));
        let e = NbdClient::connect_unix(&sock, &options(&[ALLOCATION]))
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("structured replies"), "{e}");
    }
    std::fs::remove_file(dir.path().join("nbdkit.sock")).ok();
    let (_server, sock) = nbdkit(dir.path(), &["--oldstyle", "pattern", "size=1M"]);
    let e = NbdClient::connect_unix(&sock, &options(&[])).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert!(e.to_string().contains("oldstyle"), "{e}");
}

/// What a hostile server says: the greeting, then `script` whatever the
/// client sends (read and dropped).
fn hostile(
    script: Vec<u8>,
) -> std::result::Result<(NbdClient, std::thread::JoinHandle<()>), blockrep::Error> {
    hostile_with(script, &options(&[]))
}

/// [`hostile`], the client asking `options`.
fn hostile_with(
    script: Vec<u8>,
    options: &NbdOptions,
) -> std::result::Result<(NbdClient, std::thread::JoinHandle<()>), blockrep::Error> {
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut drain = b.try_clone().unwrap();
    let server = std::thread::spawn(move || {
        let mut bytes = wire::greeting(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES).to_vec();
        bytes.extend_from_slice(&script);
        let _ = b.write_all(&bytes);
        // The script is all it says: a client waiting for more sees the end.
        let _ = b.shutdown(std::net::Shutdown::Write);
        let mut sink = [0u8; 4096];
        while matches!(drain.read(&mut sink), Ok(n) if n > 0) {}
    });
    a.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    NbdClient::handshake(Box::new(a), options).map(|c| (c, server))
}

/// A good negotiation of a 1 MiB export with structured replies.
fn negotiated() -> Vec<u8> {
    let mut v = wire::option_reply(wire::OPT_STRUCTURED_REPLY, wire::REP_ACK, &[]);
    let mut info = wire::INFO_EXPORT.to_be_bytes().to_vec();
    info.extend_from_slice(&MIB.to_be_bytes());
    info.extend_from_slice(&wire::TFLAG_HAS_FLAGS.to_be_bytes());
    v.extend(wire::option_reply(wire::OPT_GO, wire::REP_INFO, &info));
    v.extend(wire::option_reply(wire::OPT_GO, wire::REP_ACK, &[]));
    v
}

fn chunk(flags: u16, kind: u16, cookie: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&wire::STRUCTURED_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&cookie.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn data_chunk(flags: u16, cookie: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut p = offset.to_be_bytes().to_vec();
    p.extend_from_slice(data);
    chunk(flags, wire::REPLY_TYPE_OFFSET_DATA, cookie, &p)
}

#[test]
fn a_hostile_server_gets_typed_errors_and_no_allocation() {
    // Not an NBD server at all.
    let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
    b.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
    let e = NbdClient::handshake(Box::new(a), &options(&[]))
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("NBDMAGIC"), "{e}");

    // An option reply claiming 4 GiB of data: refused before allocating.
    let mut s = wire::option_reply(wire::OPT_STRUCTURED_REPLY, wire::REP_ACK, &[]);
    s.extend_from_slice(&wire::REPLY_MAGIC.to_be_bytes());
    s.extend_from_slice(&wire::OPT_GO.to_be_bytes());
    s.extend_from_slice(&wire::REP_INFO.to_be_bytes());
    s.extend_from_slice(&u32::MAX.to_be_bytes());
    let e = hostile(s).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupt);
    assert!(e.to_string().contains("4294967295"), "{e}");

    // A reply to another option than the one asked.
    let e = hostile(wire::option_reply(wire::OPT_GO, wire::REP_ACK, &[]))
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupt);

    // Read replies that break the rules, each on a fresh connection: the
    // call fails as corrupt and the connection is closed for good.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("outside the read", data_chunk(1, 1, 8192, &[7; 16])),
        ("wrong cookie", data_chunk(1, 99, 0, &[7; 16])),
        ("overlap", {
            let mut v = data_chunk(0, 1, 0, &[7; 8]);
            v.extend(data_chunk(1, 1, 4, &[7; 8]));
            v
        }),
        ("gap", data_chunk(1, 1, 0, &[7; 8])),
        ("length past the request", {
            let mut v = chunk(1, wire::REPLY_TYPE_OFFSET_DATA, 1, &[]);
            let n = v.len();
            v[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
            v
        }),
        (
            "block status in a read",
            chunk(1, wire::REPLY_TYPE_BLOCK_STATUS, 1, &[0; 12]),
        ),
        ("unknown chunk type", chunk(1, 77, 1, &[])),
        ("bad magic", vec![0xde; 20]),
        ("end of stream", data_chunk(1, 1, 0, &[7; 4])[..24].to_vec()),
    ];
    for (name, reply) in cases {
        let mut s = negotiated();
        s.extend(reply);
        let (mut c, server) = hostile(s).unwrap();
        assert_eq!(c.size(), MIB);
        let mut buf = [0u8; 16];
        let e = c.read(0, &mut buf).unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Io),
            "{name}: {e}"
        );
        let again = c.read(0, &mut buf).unwrap_err();
        assert_eq!(again.kind(), ErrorKind::Misuse, "{name}: {again}");
        drop(c);
        server.join().unwrap();
    }

    // Several reads in flight answered out of order, their chunks
    // interleaved: each lands in its own buffer.
    let mut s = negotiated();
    s.extend(data_chunk(0, 2, 100, &[2; 4]));
    s.extend(data_chunk(0, 1, 0, &[1; 2]));
    s.extend(data_chunk(1, 2, 104, &[3; 4]));
    s.extend(data_chunk(1, 1, 2, &[4; 2]));
    let (mut c, server) = hostile(s).unwrap();
    let (mut a, mut b) = ([0u8; 4], [0u8; 8]);
    c.read_many(&mut [(0, &mut a[..]), (100, &mut b[..])])
        .unwrap();
    assert_eq!((a, b), ([1, 1, 4, 4], [2, 2, 2, 2, 3, 3, 3, 3]));
    drop(c);
    server.join().unwrap();

    // A well-formed split reply with a hole is put together exactly.
    let mut s = negotiated();
    s.extend(data_chunk(0, 1, 8, &[9; 8]));
    let mut hole = 0u64.to_be_bytes().to_vec();
    hole.extend_from_slice(&8u32.to_be_bytes());
    s.extend(chunk(0, wire::REPLY_TYPE_OFFSET_HOLE, 1, &hole));
    s.extend(chunk(1, wire::REPLY_TYPE_NONE, 1, &[]));
    let (mut c, server) = hostile(s).unwrap();
    let mut buf = [0xffu8; 16];
    c.read(0, &mut buf).unwrap();
    assert_eq!(buf, [0, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9]);
    drop(c);
    server.join().unwrap();
}

#[test]
fn a_hostile_block_status_is_cut_or_refused() {
    let with_context = |reply: Vec<u8>| {
        let mut s = wire::option_reply(wire::OPT_STRUCTURED_REPLY, wire::REP_ACK, &[]);
        let mut granted = 5u32.to_be_bytes().to_vec();
        granted.extend_from_slice(ALLOCATION.as_bytes());
        s.extend(wire::option_reply(
            wire::OPT_SET_META_CONTEXT,
            wire::REP_META_CONTEXT,
            &granted,
        ));
        s.extend(wire::option_reply(
            wire::OPT_SET_META_CONTEXT,
            wire::REP_ACK,
            &[],
        ));
        s.extend_from_slice(&negotiated()[20..]);
        s.extend(reply);
        hostile_with(s, &options(&[ALLOCATION])).unwrap()
    };
    let status = |id: u32, extents: &[(u32, u32)]| {
        let mut p = id.to_be_bytes().to_vec();
        for (len, flags) in extents {
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(&flags.to_be_bytes());
        }
        chunk(1, wire::REPLY_TYPE_BLOCK_STATUS, 1, &p)
    };
    // Extents past the request are cut at its end.
    let (mut c, server) = with_context(status(5, &[(1024, 3), (1 << 20, 0)]));
    assert_eq!(
        c.block_status(ALLOCATION, 4096, 4096).unwrap(),
        vec![
            NbdExtent {
                offset: 4096,
                len: 1024,
                flags: 3
            },
            NbdExtent {
                offset: 5120,
                len: 3072,
                flags: 0
            }
        ]
    );
    drop(c);
    server.join().unwrap();
    // No extents for the context asked, an empty extent, a ragged payload.
    for reply in [
        status(6, &[(4096, 0)]),
        status(5, &[(0, 0)]),
        chunk(1, wire::REPLY_TYPE_BLOCK_STATUS, 1, &[0, 0, 0, 5, 0, 0, 16]),
    ] {
        let (mut c, server) = with_context(reply);
        let e = c.block_status(ALLOCATION, 0, 4096).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
        drop(c);
        server.join().unwrap();
    }
}

/// qemu-nbd with x509 credentials: the export read over TLS exactly as in
/// the clear; a client without TLS is refused with the server's reason; a
/// server certificate from another CA, or for another name, is refused
/// with that reason.
#[cfg(feature = "net")]
#[test]
fn qemu_nbd_over_tls() {
    use net_common::{files, Ca};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (img, bytes, dirty) = bitmap_image(d);
    let ca = Ca::new("nbd");
    let creds = d.join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    ca.write_ca(&creds.join("ca-cert.pem"));
    ca.leaf(&creds, "server", &["localhost"], false);
    std::fs::rename(creds.join("server.crt"), creds.join("server-cert.pem")).unwrap();
    std::fs::rename(creds.join("server.key"), creds.join("server-key.pem")).unwrap();
    ca.write_ca(&d.join("ca.crt"));
    ca.leaf(d, "client", &["client.example"], false);
    Ca::new("other").write_ca(&d.join("other.crt"));
    let sock = d.join("tls.sock");
    let _server = spawn(
        Command::new("qemu-nbd")
            .arg("--object")
            .arg(format!(
                "tls-creds-x509,id=tls0,dir={},endpoint=server,verify-peer=off",
                creds.display()
            ))
            .args([
                "--tls-creds",
                "tls0",
                "-r",
                "-t",
                "-f",
                "qcow2",
                "-B",
                "b0",
                "--socket",
            ])
            .arg(&sock)
            .arg(&img),
        || std::os::unix::net::UnixStream::connect(&sock).is_ok(),
    );
    let tls = |ca: &str, name: &str| NbdOptions {
        tls: Some((
            blockrep::net::client_config(&files(d, "client", ca)).unwrap(),
            name.to_string(),
        )),
        ..options(&[ALLOCATION, BITMAP])
    };
    let mut c = NbdClient::connect_unix(&sock, &tls("ca.crt", "localhost")).unwrap();
    check_export(&mut c, &bytes, &dirty);
    c.disconnect();
    let e = NbdClient::connect_unix(&sock, &options(&[ALLOCATION]))
        .err()
        .unwrap();
    assert!(e.to_string().contains("TLS required"), "{e}");
    let e = NbdClient::connect_unix(&sock, &tls("other.crt", "localhost"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("unknown CA"), "{e}");
    let e = NbdClient::connect_unix(&sock, &tls("ca.crt", "elsewhere.example"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("name"), "{e}");
}
