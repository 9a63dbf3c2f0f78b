//! The commands that talk to a replica server: `blockrep status URL`,
//! `blockrep sync IMAGE URL` (an image replicated by digests across the
//! network) and `blockrep certs` (a CA and certificates for a lab or the
//! demo; production sites use their own PKI).

use super::ops::{with_bar, Out};
use blockrep::io::{FileStorage, Storage};
use blockrep::log::BlockDigests;
use blockrep::net::{client_config, Client, Response, TlsFiles};
use blockrep::source::Source;
use blockrep::{DiskId, Error, ErrorKind, Geometry, Result};
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A replica server: where it is and how to authenticate to it.
pub struct Remote {
    addr: std::net::SocketAddr,
    host: String,
    tls: TlsFiles,
}

impl Remote {
    /// `https://HOST:PORT` (port 8443 when absent) and this primary's
    /// certificate files.
    pub fn new(url: &str, tls: TlsFiles) -> Result<Remote> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| Error::invalid(format!("{url}: an https:// URL")))?;
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('/') {
            return Err(Error::invalid(format!("{url}: no path expected")));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>()
                    .map_err(|_| Error::invalid(format!("{url}: port {p:?}")))?,
            ),
            None => (hostport, 8443),
        };
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| Error::io(format!("resolve {host}"), e))?
            .next()
            .ok_or_else(|| Error::invalid(format!("{host} resolves to no address")))?;
        Ok(Remote {
            addr,
            host: host.to_string(),
            tls,
        })
    }

    /// A shipper's configuration for this server.
    pub fn shipper_config(&self) -> blockrep::net::ShipperConfig {
        blockrep::net::ShipperConfig::new(self.addr, &self.host, self.tls.clone())
    }

    /// A new connection.
    pub fn connect(&self) -> Result<Client> {
        Client::connect(
            self.addr,
            &self.host,
            client_config(&self.tls)?,
            Duration::from_secs(60),
        )
    }
}

/// A GET's answer, a refusal as an error with the server's message.
fn get(c: &mut Client, path: &str) -> Result<Response> {
    let r = c.request("GET", path, &[], &mut std::io::empty(), 0)?;
    refused(r)
}

fn refused(r: Response) -> Result<Response> {
    if r.head.status == 200 {
        return Ok(r);
    }
    let msg = r
        .json()
        .ok()
        .and_then(|j| j["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_default();
    Err(Error::new(
        ErrorKind::Io,
        format!("the server answered {}: {msg}", r.head.status),
    ))
}

/// `blockrep status URL`: the disks this primary holds on the server.
pub fn status(remote: &Remote, json: bool) -> Result<()> {
    let mut c = remote.connect()?;
    let list = get(&mut c, "/v1/disks")?.json()?;
    if json {
        println!("{list}");
        return Ok(());
    }
    let disks = list.as_array().cloned().unwrap_or_default();
    println!(
        "{:<32}  {:<10}  {:>6}  {:>10}  health",
        "disk", "role", "point", "rpo"
    );
    for d in &disks {
        let rpo = d["rpo_ns"]
            .as_u64()
            .map_or_else(|| "-".to_string(), |n| format!("{:.1} s", n as f64 / 1e9));
        let reasons: Vec<&str> = d["health"]["reasons"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r.as_str()).collect())
            .unwrap_or_default();
        println!(
            "{:<32}  {:<10}  {:>6}  {:>10}  {}{}",
            d["disk_id"].as_str().unwrap_or("?"),
            d["role"].as_str().unwrap_or("?"),
            d["latest_point"],
            rpo,
            d["health"]["state"].as_str().unwrap_or("?"),
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join("; "))
            }
        );
    }
    if disks.is_empty() {
        println!("(no disks for this identity)");
    }
    Ok(())
}

/// `blockrep sync IMAGE URL --disk ID`: the first run sends the image
/// whole (a full log, holes skipped); later runs fetch the server's block
/// digests and send only the blocks that differ. The log is built in a
/// temporary file beside the image's directory, streamed, then removed.
pub fn sync(source: &str, remote: &Remote, id: DiskId, json: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let disk = FileStorage::open_read_only(source)?;
    let g = Geometry::new(disk.len()?, 4096)?;
    let mut c = remote.connect()?;
    let disk_path = format!("/v1/disks/{id}");
    let resume = get(&mut c, &format!("{disk_path}/resume"))?.json()?;
    let tmp = tempfile_in(Path::new(source))?;
    let (kind, summary) = match resume.get("applied").filter(|a| !a.is_null()) {
        None => {
            let mut src = Source::enable(id, 1, g);
            let f = tmp.reopen()?;
            let (_, s) = with_bar("initial sync", g.size(), |t| {
                src.initial_sync(&disk, std::io::BufWriter::new(f), t)
            })?;
            ("initial sync", s)
        }
        Some(applied) => {
            let epoch = applied["epoch"].as_u64().unwrap_or(1);
            let r = get(&mut c, &format!("{disk_path}/digests"))?;
            let remote_digests = BlockDigests::decode(&r.body)?;
            let mut src = Source::enable(id, epoch, g);
            let f = tmp.reopen()?;
            let (_, s) = with_bar("digest resync", g.size(), |t| {
                src.resync(&disk, &remote_digests, std::io::BufWriter::new(f), t)
            })?;
            ("digest resync", s)
        }
    };
    let seq = summary.header.sequence;
    let digest = summary.trailer.digest;
    let mut body = std::fs::File::open(&tmp.path)
        .map_err(|e| Error::io("open the log", e).with_path(&tmp.path))?;
    let r = c.request(
        "PUT",
        &format!("{disk_path}/logs/{seq}"),
        &[("Blockrep-Digest", format!("{digest:x}"))],
        &mut body,
        summary.bytes,
    )?;
    let answer = refused(r)?.json()?;
    if answer["sequence"].as_u64() != Some(seq) {
        return Err(Error::mismatch(format!(
            "the server answered for another log: {answer}"
        )));
    }
    let mut o = Out::new();
    o.put("source", source)
        .put("server", &remote.host)
        .put("disk", id)
        .put("run", kind)
        .put("point", seq)
        .put("outcome", &answer["outcome"])
        .put("blocks_sent", summary.trailer.blocks)
        .put("log_bytes", summary.bytes)
        .put("time", format!("{:.2} s", started.elapsed().as_secs_f64()));
    o.print(json);
    Ok(())
}

/// A temporary file beside `near` (its directory), removed when dropped.
struct TempFile {
    path: PathBuf,
}

impl TempFile {
    fn reopen(&self) -> Result<std::fs::File> {
        std::fs::File::create(&self.path)
            .map_err(|e| Error::io("create the log", e).with_path(&self.path))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn tempfile_in(near: &Path) -> Result<TempFile> {
    let dir = near
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(TempFile {
        path: dir.join(format!(".blockrep-sync-{}.brlog", std::process::id())),
    })
}

/// `blockrep certs DIR`: a new CA (`ca.crt`, `ca.key`) and, signed by it,
/// a certificate and key per server name and per primary name
/// (`NAME.crt`, `NAME.key`; keys readable by their owner only). Refuses a
/// directory that already holds a CA.
pub fn certs(dir: &Path, servers: &[String], primaries: &[String], days: u32) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let bad = |e: rcgen::Error| Error::invalid(format!("certificate: {e}"));
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io("create the directory", e).with_path(dir))?;
    if dir.join("ca.crt").exists() {
        return Err(Error::invalid(format!(
            "{}: already holds a CA (ca.crt); use another directory",
            dir.display()
        )));
    }
    let now = std::time::SystemTime::now();
    let until = now + Duration::from_secs(u64::from(days) * 86_400);
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "blockrep CA");
    ca.not_before = now.into();
    ca.not_after = until.into();
    let ca_key = KeyPair::generate().map_err(bad)?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = CertifiedIssuer::self_signed(ca, ca_key).map_err(bad)?;
    write(dir, "ca.crt", issuer.pem().as_bytes(), 0o644)?;
    for name in servers.iter().chain(primaries) {
        let mut p = CertificateParams::new(vec![name.clone()]).map_err(bad)?;
        p.distinguished_name
            .push(rcgen::DnType::CommonName, name.as_str());
        p.not_before = now.into();
        p.not_after = until.into();
        let key = KeyPair::generate().map_err(bad)?;
        let cert = p.signed_by(&key, &issuer).map_err(bad)?;
        write(
            dir,
            &format!("{name}.key"),
            key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write(dir, &format!("{name}.crt"), cert.pem().as_bytes(), 0o644)?;
    }
    // The CA's key last: its presence marks a complete directory.
    write(dir, "ca.key", ca_key_pem.as_bytes(), 0o600)?;
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(|e| Error::io("create", e).with_path(&path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("write", e).with_path(&path))
}
