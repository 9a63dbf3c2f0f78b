//! The `blockrep` command: the end-to-end demo and the benchmark against
//! peers, and the operator's commands to inspect logs, replicas and
//! trackers, export a point and sync an image.

mod bench;
mod bench_link;
mod bench_net;
mod bench_qemu;
mod bench_store;
mod demo;
mod failover;
mod link;
mod nbd;
mod ops;
mod plan;
mod qemu;
mod remote;
mod serve;
mod store;

use blockrep::{Error, Result};
use clap::{Args, CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;

/// Block-level disaster-recovery replication: what an operator runs on
/// both sites.
#[derive(Parser, Debug)]
#[command(name = "blockrep", version, propagate_version = true)]
#[command(after_long_help = "Examples:
  blockrep demo                          replicate a 1 GiB image end to end
  blockrep replica status /srv/rep/disk0 --json
  blockrep replica export /srv/rep/disk0 --point 12 /tmp/disk0-p12.raw
  blockrep completions bash > /etc/bash_completion.d/blockrep")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replicates an image end to end while writers run: initial sync,
    /// cycles, retention, test failover, planned failover, reverse
    /// replication and failback, every step checked byte for byte.
    #[command(after_long_help = "Example:
  blockrep demo --size 256M --seconds 5 --dir /tmp/blockrep-demo")]
    Demo {
        /// Size of the demo disk (K, M, G suffixes: powers of 1024).
        #[arg(long, default_value = "1G", value_parser = parse_size)]
        size: u64,
        /// How long writers run while cycles replicate.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        seconds: u64,
        /// Keep the demo's files here (default: a temporary directory,
        /// removed at the end).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Measures blockrep against its peers (cp, qemu-img convert, rsync,
    /// QEMU's dirty-bitmap flow, a bare copy, lz4) on an image, checking
    /// every result.
    #[command(after_long_help = "Example:
  blockrep bench --size 4G --dir /var/tmp/blockrep-bench
  blockrep bench --link 100")]
    Bench {
        /// Size of the bench image (K, M, G suffixes).
        #[arg(long, default_value = "4G", value_parser = parse_size)]
        size: u64,
        /// Work directory (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Instead: one replica server (its own process) taking this many
        /// small disks replicating at once, its memory per disk and CPU
        /// seconds per GB received.
        #[arg(long)]
        disks: Option<usize>,
        /// With --disks: how long the disks write and cycle, in seconds.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Instead: the 1 % cycle from cut to applied on a replica server
        /// across a link of this many megabits per second, against QEMU's
        /// dirty-bitmap flow over NBD through the same link.
        #[arg(long, conflicts_with = "disks")]
        link: Option<f64>,
        /// Instead: the object store target on an s3s-fs server on
        /// loopback (sealed upload against a bare multipart upload,
        /// hydrate against downloading the same objects).
        #[arg(long, conflicts_with_all = ["disks", "link"])]
        store: bool,
        /// Repetitions of each timed step of the main bench; its table
        /// gives the medians and the spread.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
        repeat: u16,
        /// Keep the page cache between timed steps (by default it is
        /// dropped before each, as root, so both sides start cold).
        #[arg(long)]
        keep_cache: bool,
    },
    /// Delta logs.
    #[command(subcommand)]
    Log(LogCommand),
    /// Replicas on the secondary site.
    #[command(subcommand)]
    Replica(ReplicaCommand),
    /// Persistent tracker files on the primary site.
    #[command(subcommand)]
    Tracker(TrackerCommand),
    /// Fails a replica over: test failover, promote at a point, switch
    /// points, commit, planned and unplanned failover, reverse replication
    /// and failback. After the commit the replica's image is the new
    /// primary's disk.
    #[command(subcommand)]
    Failover(FailoverCommand),
    /// Recovery plans: machines failed over group by group.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// A running QEMU's disks, replicated from its own dirty bitmaps.
    #[command(subcommand)]
    Qemu(QemuCommand),
    /// A replication pair's sealing key (logs in an object store are
    /// encrypted and authenticated with it).
    #[command(subcommand)]
    Key(KeyCommand),
    /// An object store holding replicas (s3://, az://, file://, a
    /// replica server's vault at blockrep://): its points and its
    /// retention.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The replica server of the secondary site (docs/PROTOCOL.md): HTTP
    /// over mutual TLS 1.3, primaries identified by their certificates,
    /// each confined to its storage root. Runs until SIGTERM or SIGINT;
    /// SIGHUP reloads the configuration and certificates without dropping
    /// a connection. Each storage root is locked while it serves: a second
    /// server on the same root is refused, naming the first's pid.
    #[command(after_long_help = "Example:
  blockrep serve --config /etc/blockrep/server.toml

A configuration:
  listen = \"0.0.0.0:8443\"
  certificate = \"/etc/blockrep/server.crt\"
  key = \"/etc/blockrep/server.key\"
  client_ca = \"/etc/blockrep/primaries-ca.crt\"
  [[primary]]
  identity = \"*.site-a.example\"
  root = \"/srv/blockrep/site-a\"

Query it as an operator:
  curl --cert op.crt --key op.key --cacert ca.crt https://dr:8443/v1/disks")]
    Serve {
        /// The configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Replicates an image no one is writing into a replica directory, or
    /// to a replica server (an https:// URL): the initial copy the first
    /// time, then only the blocks whose digests differ.
    #[command(after_long_help = "Examples:
  blockrep sync /var/lib/images/vm1.raw /srv/replicas/vm1
  blockrep sync /var/lib/images/vm1.raw https://dr.example:8443 \\
      --disk 5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a \\
      --cert host1.crt --key host1.key --ca ca.crt")]
    Sync {
        /// The source image.
        source: PathBuf,
        /// The replica directory (created the first time), or a replica
        /// server's https:// URL (another scheme is refused, never taken
        /// for a directory).
        replica: String,
        /// The replica's image when kept outside its directory (an
        /// adopted disk, after `failover reverse`).
        #[arg(long)]
        image: Option<PathBuf>,
        /// The disk's id on the server (32 hex digits); with a URL.
        #[arg(long)]
        disk: Option<blockrep::DiskId>,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        out: Output,
    },
    /// The disks this primary holds on a replica server, with their points
    /// and RPO.
    #[command(after_long_help = "Example:
  blockrep status https://dr.example:8443 --cert host1.crt --key host1.key --ca ca.crt")]
    Status {
        /// The server's https:// URL (port 8443 when absent).
        url: String,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        out: Output,
    },
    /// Makes a CA and, signed by it, certificates for servers and
    /// primaries (NAME.crt and NAME.key each): for a lab or a first
    /// setup; production sites use their own PKI.
    #[command(after_long_help = "Example:
  blockrep certs /etc/blockrep/pki --server dr.example --primary host1.site-a.example")]
    Certs {
        /// The directory to write to (must not hold a CA yet).
        dir: PathBuf,
        /// A replica server's name (repeatable).
        #[arg(long = "server")]
        servers: Vec<String>,
        /// A primary's name (repeatable).
        #[arg(long = "primary")]
        primaries: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Prints a shell completion script.
    #[command(after_long_help = "Example:
  blockrep completions bash > /etc/bash_completion.d/blockrep")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Writes the man pages (blockrep.1 and one per subcommand).
    Man {
        /// The directory to write them to.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum LogCommand {
    /// Verifies a log whole and prints its header and trailer.
    #[command(after_long_help = "Example:
  blockrep log inspect spool/log-00000000000000000007 --json")]
    Inspect {
        /// The log file.
        file: PathBuf,
        #[command(flatten)]
        out: Output,
    },
}

#[derive(Subcommand, Debug)]
enum ReplicaCommand {
    /// The replica's role, epoch, latest point and health.
    Status(ReplicaArgs),
    /// The retained points, oldest first.
    Points(ReplicaArgs),
    /// Reads every retained point back through its undo logs.
    Verify(ReplicaArgs),
    /// Drops the oldest points a retention policy does not keep; a point
    /// is kept when any rule keeps it, and the latest always is. At least
    /// one rule is required (nothing is dropped by default); --dry-run
    /// prints what would be dropped and kept and drops nothing.
    #[command(after_long_help = "Examples:
  blockrep replica prune /srv/replicas/vm1 --keep-last 24 --keep-app-for 7d --dry-run
  blockrep replica prune /srv/replicas/vm1 --keep-last 24 --keep-app-for 7d")]
    Prune {
        #[command(flatten)]
        replica: ReplicaArgs,
        /// Keep the newest this many points.
        #[arg(long)]
        keep_last: Option<usize>,
        /// Keep points younger than this (s, m, h, d suffixes).
        #[arg(long, value_parser = parse_duration)]
        keep_for: Option<std::time::Duration>,
        /// Keep the newest this many app-consistent points.
        #[arg(long)]
        keep_app_last: Option<usize>,
        /// Keep app-consistent points younger than this.
        #[arg(long, value_parser = parse_duration)]
        keep_app_for: Option<std::time::Duration>,
        /// Print the points that would be dropped and kept; drop none.
        #[arg(long)]
        dry_run: bool,
    },
    /// Builds a replica from an object store on this host (at the latest
    /// point, or one chosen), verifying every object; with --follow it
    /// keeps applying what the store gains, so a standby stays near the
    /// head. Failover and its tests then work on it as on any replica.
    #[command(after_long_help = "Examples:
  blockrep replica hydrate s3://dr-bucket/fleet /srv/replicas/vm1 --disk 5a5a... --seal-key vm1.key
  blockrep replica hydrate s3://dr-bucket/fleet /srv/replicas/vm1 --disk 5a5a... --seal-key vm1.key --follow 30s")]
    Hydrate {
        /// The store: s3://bucket/prefix, az://container/prefix,
        /// file:///dir or a replica server's vault
        /// blockrep://host:port/prefix.
        url: String,
        /// The replica directory (created, or brought forward).
        dir: PathBuf,
        /// The disk (32 hex digits).
        #[arg(long)]
        disk: blockrep::DiskId,
        #[command(flatten)]
        store: store::StoreArgs,
        /// The point (the latest without).
        #[arg(long, conflicts_with = "follow")]
        point: Option<u64>,
        /// Keep following the store, checking it this often, until
        /// SIGTERM or SIGINT.
        #[arg(long, value_parser = parse_duration)]
        follow: Option<std::time::Duration>,
        #[command(flatten)]
        out: Output,
    },
    /// Writes a point as a sparse raw image.
    #[command(after_long_help = "Example:
  blockrep replica export /srv/replicas/vm1 --point 12 /tmp/vm1-p12.raw")]
    Export {
        #[command(flatten)]
        replica: ReplicaArgs,
        /// The point (a sequence from `replica points`).
        #[arg(long)]
        point: u64,
        /// The raw image to write.
        out: PathBuf,
    },
}

/// A replica directory, and where its image is when not inside it.
#[derive(Args, Debug)]
struct ReplicaArgs {
    /// The replica directory.
    dir: PathBuf,
    /// The replica's image when kept outside its directory (a disk adopted
    /// after a failover).
    #[arg(long)]
    image: Option<PathBuf>,
    #[command(flatten)]
    out: Output,
}

#[derive(Subcommand, Debug)]
enum FailoverCommand {
    /// Promotes the replica at a point (the latest by default): no log
    /// applies any more. The point is served to the new primary until the
    /// commit; switch points meanwhile if the first choice was wrong.
    #[command(after_long_help = "Example:
  blockrep failover promote /srv/replicas/vm1 --point 12")]
    Promote {
        #[command(flatten)]
        replica: ReplicaArgs,
        /// The point (default: the latest).
        #[arg(long)]
        point: Option<u64>,
    },
    /// Moves a promoted replica to another retained point.
    Switch {
        #[command(flatten)]
        replica: ReplicaArgs,
        /// The point.
        #[arg(long)]
        point: u64,
    },
    /// Makes the promoted point final (crash-safe: finished on the next
    /// open if interrupted). The replica's image is then the new primary's
    /// disk; later points are dropped.
    Commit(ReplicaArgs),
    /// Unplanned failover in one step: promotes at the point (the latest
    /// by default) and commits.
    #[command(after_long_help = "Example:
  blockrep failover now /srv/replicas/vm1
  qemu-system-x86_64 -drive file=/srv/replicas/vm1/image,format=raw ...")]
    Now {
        #[command(flatten)]
        replica: ReplicaArgs,
        /// The point (default: the latest).
        #[arg(long)]
        point: Option<u64>,
    },
    /// Planned failover: the primary is shut down; its image's last
    /// changes are sent (only the blocks whose digests differ), then the
    /// replica fails over at that final point and commits. Nothing written
    /// on the primary is lost.
    #[command(after_long_help = "Example:
  virsh shutdown vm1
  blockrep failover planned /srv/replicas/vm1 --source /var/lib/images/vm1.raw")]
    Planned {
        #[command(flatten)]
        replica: ReplicaArgs,
        /// The stopped primary's image.
        #[arg(long)]
        source: PathBuf,
    },
    /// Where a failover stands: not promoted, promoted at a point, or
    /// committed.
    Status(ReplicaArgs),
    /// Test failover: a writable view of a point for a test machine,
    /// while replication goes on.
    #[command(subcommand)]
    Test(TestCommand),
    /// Reverse replication after a committed failover: the old primary's
    /// disk becomes a replica at the failover point and receives every
    /// block that differs from the new primary's (by digest). Run `sync`
    /// from the new primary's image to send later changes.
    #[command(after_long_help = "Example:
  blockrep failover reverse /srv/replicas/vm1 --to /var/lib/images/vm1.raw \\
      --new-replica /srv/replicas/vm1-back")]
    Reverse {
        #[command(flatten)]
        replica: ReplicaArgs,
        /// The old primary's disk (image or block device).
        #[arg(long)]
        to: PathBuf,
        /// The directory for the old primary's replica state.
        #[arg(long)]
        new_replica: PathBuf,
    },
    /// Failback: the old primary's replica (from `reverse`) fails over at
    /// its latest point and commits, then the other site's disk becomes its
    /// replica again, by digest.
    #[command(after_long_help = "Example:
  blockrep failover failback /srv/replicas/vm1-back --image /var/lib/images/vm1.raw \\
      --to /srv/replicas/vm1/image --new-replica /srv/replicas/vm1-again")]
    Failback {
        #[command(flatten)]
        replica: ReplicaArgs,
        /// The disk that served while failed over (becomes the replica).
        #[arg(long)]
        to: PathBuf,
        /// The directory for its replica state.
        #[arg(long)]
        new_replica: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum TestCommand {
    /// Serves a writable view of a point over NBD on a Unix socket until
    /// `test stop`; writes go to the overlay file, the replica is not
    /// written. Runs in the foreground.
    #[command(after_long_help = "Example:
  blockrep failover test start /srv/replicas/vm1 --point 12 \\
      --overlay /var/tmp/vm1-test.overlay --socket /run/vm1-test.sock &
  qemu-system-x86_64 -drive file=nbd+unix:///?socket=/run/vm1-test.sock,format=raw ...
  blockrep failover test stop --overlay /var/tmp/vm1-test.overlay")]
    Start {
        /// The replica directory.
        dir: PathBuf,
        /// The replica's image when kept outside its directory.
        #[arg(long)]
        image: Option<PathBuf>,
        /// The point (default: the latest).
        #[arg(long)]
        point: Option<u64>,
        /// The overlay file for the test machine's writes (created; must
        /// not exist).
        #[arg(long)]
        overlay: PathBuf,
        /// The Unix socket to serve NBD on.
        #[arg(long)]
        socket: PathBuf,
    },
    /// Stops the test failover with this overlay and discards its writes.
    Stop {
        /// The overlay given to `test start`.
        #[arg(long)]
        overlay: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum PlanCommand {
    /// Runs a recovery plan (TOML): groups in order, hook commands before
    /// and after each, a report that stops at the first failure.
    #[command(after_long_help = "Example:
  blockrep plan run site-b.toml --mode unplanned --dry-run
  blockrep plan run site-b.toml --mode unplanned
  blockrep plan run site-b.toml --mode test --test-dir /var/tmp/drill

A plan:
  [[group]]
  name = \"database\"
  before = [\"ssh site-a virsh shutdown db1\"]
  after = [\"virsh start db1\"]
  [[group.machine]]
  name = \"db1\"
  [[group.machine.disk]]
  replica = \"/srv/replicas/db1-os\"
  [[group.machine.disk]]
  replica = \"/srv/replicas/db1-data\"
  point = 42

Hooks get BLOCKREP_PLAN_MODE, _GROUP, _STEP (before, after) and, after a
group, BLOCKREP_PLAN_DISKS: MACHINE=DISK lines (an image, or an NBD address
in a test).")]
    Run {
        /// The plan file.
        file: PathBuf,
        /// test (NBD-served views; nothing changes), planned (the latest
        /// points, after the before hooks stopped the primaries) or
        /// unplanned (each disk's point, the latest by default).
        #[arg(long, value_enum)]
        mode: ModeArg,
        /// Print what would happen and check the replicas and points;
        /// change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Test mode: where the overlays and NBD sockets go.
        #[arg(long)]
        test_dir: Option<PathBuf>,
        #[command(flatten)]
        out: Output,
    },
}

/// `--mode` of `plan run`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ModeArg {
    Test,
    Planned,
    Unplanned,
}

#[derive(Subcommand, Debug)]
enum QemuCommand {
    /// Replicates block nodes of a running QEMU (qemu-system or
    /// qemu-storage-daemon) from persistent dirty bitmaps over QMP and
    /// NBD, no write hook: every interval one point of all the nodes at
    /// one instant (a fleecing transaction; the guest does not pause),
    /// into a spool per node, shipped to a replica server or applied to
    /// local replicas. Runs until SIGTERM or SIGINT; a restart continues
    /// from QEMU's bitmaps, or resyncs by digests when they were lost.
    #[command(after_long_help = "Example:
  blockrep qemu replicate --qmp /run/vm1/qmp.sock --node drive0,drive1 \\
      --spool /var/lib/blockrep/vm1 --to https://dr.example:8443 \\
      --cert host1.crt --key host1.key --ca ca.crt --interval 300")]
    Replicate {
        /// QEMU's QMP socket (-qmp unix:PATH,server=on,wait=off).
        #[arg(long)]
        qmp: PathBuf,
        /// The block nodes (node-name), comma-separated; cut together.
        #[arg(long, value_delimiter = ',', required = true)]
        node: Vec<String>,
        /// The spools' directory (one per node, created the first time).
        #[arg(long)]
        spool: PathBuf,
        /// A replica server's https:// URL, or an object store with
        /// --seal-key: s3://bucket/prefix, az://container/prefix (Azure
        /// Blob Storage), file:///dir, or a replica
        /// server's vault blockrep://host:port/prefix (sealed there, the
        /// server holding no key; reached with --cert, --key and --ca).
        #[arg(long, required_unless_present = "replica", conflicts_with = "replica")]
        to: Option<String>,
        #[command(flatten)]
        store: store::StoreArgs,
        /// Take the disks over in the object store from the writer that
        /// holds them (after a failover to this site).
        #[arg(long)]
        take_over: bool,
        /// Instead: local replicas, one directory per node under this one.
        #[arg(long)]
        replica: Option<PathBuf>,
        /// Seconds between points.
        #[arg(long, default_value_t = 60.0)]
        interval: f64,
        /// QEMU's NBD server socket when it already runs one (QEMU has at
        /// most one); otherwise blockrep starts it in the spool directory.
        #[arg(long)]
        nbd: Option<PathBuf>,
        /// The most each spool holds before cycles wait for the transport.
        #[arg(long, default_value = "4G", value_parser = parse_size)]
        spool_limit: u64,
        /// Stop after this many points.
        #[arg(long)]
        cycles: Option<u64>,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(flatten)]
        out: Output,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Makes a new key in a new file (mode 0600) and prints its id.
    #[command(after_long_help = "Example:
  blockrep key new /etc/blockrep/vm1.key")]
    New {
        /// The key file to create (never overwritten).
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum StoreCommand {
    /// A disk's chain in the store: its bases, logs and writer.
    #[command(after_long_help = "Example:
  blockrep store points s3://dr-bucket/fleet --disk 5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a --seal-key vm1.key")]
    Points {
        /// The store: s3://bucket/prefix, az://container/prefix,
        /// file:///dir or a replica server's vault
        /// blockrep://host:port/prefix.
        url: String,
        /// The disk (32 hex digits).
        #[arg(long)]
        disk: blockrep::DiskId,
        #[command(flatten)]
        store: store::StoreArgs,
        #[command(flatten)]
        out: Output,
    },
    /// Keeps the newest points: folds the older ones into a base image
    /// at the oldest point kept, and deletes what left the chain longer
    /// ago than the grace period.
    #[command(after_long_help = "Example:
  blockrep store compact s3://dr-bucket/fleet --disk 5a5a... --seal-key vm1.key \\
      --work /var/lib/blockrep/compact/vm1 --keep-last 48 --grace 1h")]
    Compact {
        /// The store: s3://bucket/prefix, az://container/prefix,
        /// file:///dir or a replica server's vault
        /// blockrep://host:port/prefix.
        url: String,
        /// The disk (32 hex digits).
        #[arg(long)]
        disk: blockrep::DiskId,
        #[command(flatten)]
        store: store::StoreArgs,
        /// A local directory for the compaction's replica (kept between
        /// runs: the next one downloads only what is new).
        #[arg(long)]
        work: PathBuf,
        /// Keep the newest this many points.
        #[arg(long, default_value_t = 24)]
        keep_last: usize,
        /// How long a dropped object stays for readers under way (s, m,
        /// h, d suffixes).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        grace: std::time::Duration,
        #[command(flatten)]
        out: Output,
    },
}

#[derive(Subcommand, Debug)]
enum TrackerCommand {
    /// Prints a tracker file's header: disk, geometry, generation, in use.
    Inspect {
        /// The tracker file.
        file: PathBuf,
        #[command(flatten)]
        out: Output,
    },
}

impl Command {
    /// Whether the command serves clients (a replica server, an NBD
    /// export) or talks to a server.
    fn serves(&self) -> bool {
        matches!(
            self,
            Command::Serve { .. }
                | Command::Status { .. }
                | Command::Sync { .. }
                | Command::Demo { .. }
                | Command::Plan(_)
                | Command::Qemu(_)
                | Command::Store(_)
                | Command::Replica(ReplicaCommand::Hydrate { .. })
                | Command::Failover(FailoverCommand::Test(_))
        )
    }
}

/// This primary's certificate files, to talk to a replica server.
#[derive(Args, Debug, Clone)]
struct TlsArgs {
    /// This primary's certificate (PEM).
    #[arg(long, env = "BLOCKREP_CERT")]
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "BLOCKREP_KEY")]
    key: Option<PathBuf>,
    /// The CA that signed the server's certificate (PEM).
    #[arg(long, env = "BLOCKREP_CA")]
    ca: Option<PathBuf>,
}

/// The URL schemes of object stores (S3, Azure Blob Storage, a
/// directory, a replica server's vault).
const STORE_SCHEMES: &[&str] = &[
    "s3://",
    "s3a://",
    "az://",
    "azure://",
    "abfs://",
    "abfss://",
    "adl://",
    "file://",
    "blockrep://",
];

/// Whether `url` names an object store (S3, a directory, a replica
/// server's vault) rather than a replica server's https:// API.
fn is_store(url: &str) -> bool {
    STORE_SCHEMES.iter().any(|s| url.starts_with(s))
}

/// The scheme of `target` (`https://`, say) when it is a URL of one of
/// `schemes`, `None` when it is a local path. A target that looks like a
/// URL (`scheme://`) of another scheme is refused, naming the schemes
/// taken: a typo such as http:// for https:// would otherwise be taken
/// for a path and a replica written into `./http:/host:port`. Every
/// command whose target may be a URL or a directory checks it here,
/// before anything is written.
fn target_scheme<'a>(target: &str, schemes: &[&'a str]) -> Result<Option<&'a str>> {
    let Some((scheme, _)) = target.split_once("://") else {
        return Ok(None);
    };
    let looks_like_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !looks_like_scheme {
        return Ok(None);
    }
    if let Some(s) = schemes.iter().find(|s| target.starts_with(**s)) {
        return Ok(Some(s));
    }
    Err(Error::invalid(if schemes.is_empty() {
        format!("{target}: a local directory is expected here, not a URL ({scheme}://)")
    } else {
        format!(
            "{target}: {scheme}:// is not supported here; it takes {} (a path without a scheme is a local directory)",
            schemes.join(", ")
        )
    }))
}

/// A directory argument that must not be a URL (see [`target_scheme`]).
fn local_dir(dir: &std::path::Path) -> Result<()> {
    target_scheme(&dir.to_string_lossy(), &[]).map(|_| ())
}

impl TlsArgs {
    fn files(&self) -> Result<blockrep::net::TlsFiles> {
        let need = |p: &Option<PathBuf>, flag: &str| {
            p.clone().ok_or_else(|| {
                Error::invalid(format!(
                    "a replica server needs --{flag} (or BLOCKREP_{})",
                    flag.to_uppercase()
                ))
            })
        };
        Ok(blockrep::net::TlsFiles {
            cert: need(&self.cert, "cert")?,
            key: need(&self.key, "key")?,
            ca: need(&self.ca, "ca")?,
        })
    }
}

/// How results are printed.
#[derive(Args, Debug, Clone, Copy)]
struct Output {
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

fn main() {
    // A closed pipe (`blockrep --help | head`) ends the process quietly, as
    // for any Unix command, instead of a panic in `println!`.
    // SAFETY: restoring the default action of SIGPIPE before any thread
    // starts touches no Rust state.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if cli.command.serves() {
        // A command that serves or talks to peers: a peer closing its end
        // is an error for that connection, never the end of the process.
        // SAFETY: as above, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
    }
    if let Err(e) = run(cli.command) {
        eprintln!("blockrep: {e}");
        std::process::exit(1);
    }
}

fn path(p: &std::path::Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| Error::invalid(format!("{} is not UTF-8", p.display())))
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Demo { size, seconds, dir } => {
            if size < 1 << 20 {
                return Err(Error::invalid("the demo disk is at least 1M"));
            }
            demo::run(demo::DemoOptions { size, seconds, dir })
        }
        Command::Bench {
            disks: Some(n),
            seconds,
            dir,
            ..
        } => {
            let work = demo::WorkDir::new(dir.as_deref(), "bench-disks")?;
            bench_net::many_disks(work.path(), n, seconds)
        }
        Command::Bench {
            link: Some(megabits),
            size,
            dir,
            ..
        } => {
            if !megabits.is_finite() || megabits <= 0.0 {
                return Err(Error::invalid("--link takes a positive rate in Mbit/s"));
            }
            let work = demo::WorkDir::new(dir.as_deref(), "bench-link")?;
            bench_link::run(work.path(), size, megabits)
        }
        Command::Bench {
            store: true,
            size,
            dir,
            ..
        } => {
            let work = demo::WorkDir::new(dir.as_deref(), "bench-store")?;
            bench_store::run(work.path(), size)
        }
        Command::Bench {
            size,
            dir,
            repeat,
            keep_cache,
            ..
        } => {
            if size < 16 << 20 {
                return Err(Error::invalid("the bench image is at least 16M"));
            }
            bench::run(bench::BenchOptions {
                size,
                dir,
                repeat: repeat.into(),
                drop_caches: !keep_cache,
            })
        }
        Command::Log(LogCommand::Inspect { file, out }) => ops::log_inspect(path(&file)?, out.json),
        Command::Replica(c) => replica(c),
        Command::Failover(c) => failover(c),
        Command::Plan(c) => plan(c),
        Command::Serve { config } => serve::run(&config),
        Command::Qemu(QemuCommand::Replicate {
            qmp,
            node,
            spool,
            to,
            store,
            take_over,
            replica,
            interval,
            nbd,
            spool_limit,
            cycles,
            tls,
            out,
        }) => {
            if !interval.is_finite() || interval < 0.0 {
                return Err(Error::invalid("--interval takes seconds, 0 or more"));
            }
            // Checked before anything is created: a mistyped URL names
            // no directory.
            if let Some(url) = &to {
                let schemes: Vec<&str> = std::iter::once("https://")
                    .chain(STORE_SCHEMES.iter().copied())
                    .collect();
                target_scheme(url, &schemes)?;
            }
            if let Some(dir) = &replica {
                local_dir(dir)?;
            }
            local_dir(&spool)?;
            let target = match (to, replica) {
                (Some(url), _) if is_store(&url) => qemu::Target::Store {
                    config: store.config_with_tls(&url, tls.files().ok().as_ref()),
                    keys: store.keys()?,
                    take_over,
                },
                (Some(url), _) => qemu::Target::Server(remote::Remote::new(&url, tls.files()?)?),
                (None, Some(dir)) => qemu::Target::Replicas(dir),
                (None, None) => return Err(Error::invalid("--to URL or --replica DIR")),
            };
            qemu::replicate(&qemu::ReplicateOptions {
                qmp,
                nodes: node,
                spool,
                target,
                interval: std::time::Duration::from_secs_f64(interval),
                nbd,
                spool_limit,
                cycles,
                json: out.json,
            })
        }
        Command::Key(KeyCommand::New { file }) => store::key_new(&file),
        Command::Store(StoreCommand::Points {
            url,
            disk,
            store,
            out,
        }) => store::points(&url, disk, &store, out.json),
        Command::Store(StoreCommand::Compact {
            url,
            disk,
            store,
            work,
            keep_last,
            grace,
            out,
        }) => store::compact_cmd(
            &url,
            disk,
            &store,
            &work,
            blockrep::store::StorePolicy { keep_last, grace },
            out.json,
        ),
        Command::Tracker(TrackerCommand::Inspect { file, out }) => {
            ops::tracker_inspect(path(&file)?, out.json)
        }
        Command::Sync {
            source,
            replica,
            image,
            disk,
            tls,
            out,
        } => {
            if target_scheme(&replica, &["https://"])?.is_some() {
                let id = disk.ok_or_else(|| {
                    Error::invalid("a sync to a server names the disk: --disk ID")
                })?;
                let remote = remote::Remote::new(&replica, tls.files()?)?;
                return remote::sync(path(&source)?, &remote, id, out.json);
            }
            let image = image.as_deref().map(path).transpose()?;
            ops::sync(path(&source)?, &replica, image, out.json)
        }
        Command::Status { url, tls, out } => {
            remote::status(&remote::Remote::new(&url, tls.files()?)?, out.json)
        }
        Command::Certs {
            dir,
            servers,
            primaries,
            days,
        } => {
            remote::certs(&dir, &servers, &primaries, days)?;
            println!(
                "{}: ca.crt and {} certificate(s), valid {days} days",
                dir.display(),
                servers.len() + primaries.len()
            );
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "blockrep",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man { out } => man(&out),
    }
}

/// The `--image` of a replica command, as a path string.
fn image(a: &ReplicaArgs) -> Result<Option<&str>> {
    a.image.as_deref().map(path).transpose()
}

fn replica(c: ReplicaCommand) -> Result<()> {
    match c {
        ReplicaCommand::Status(a) => ops::replica_status(path(&a.dir)?, image(&a)?, a.out.json),
        ReplicaCommand::Points(a) => ops::replica_points(path(&a.dir)?, image(&a)?, a.out.json),
        ReplicaCommand::Verify(a) => ops::replica_verify(path(&a.dir)?, image(&a)?, a.out.json),
        ReplicaCommand::Export {
            replica: a,
            point,
            out,
        } => ops::replica_export(path(&a.dir)?, image(&a)?, point, path(&out)?),
        ReplicaCommand::Hydrate {
            url,
            dir,
            disk,
            store,
            point,
            follow,
            out,
        } => {
            target_scheme(&url, STORE_SCHEMES)?;
            local_dir(&dir)?;
            store::hydrate_cmd(&url, &dir, disk, &store, point, follow, out.json)
        }
        ReplicaCommand::Prune {
            replica: a,
            keep_last,
            keep_for,
            keep_app_last,
            keep_app_for,
            dry_run,
        } => {
            // Pruning deletes points for good: with no rule it would keep
            // only the latest, so a rule is required, never defaulted.
            if keep_last.is_none()
                && keep_for.is_none()
                && keep_app_last.is_none()
                && keep_app_for.is_none()
            {
                return Err(Error::invalid(
                    "prune needs at least one rule of what to keep: --keep-last N, \
                     --keep-for DURATION, --keep-app-last N or --keep-app-for DURATION \
                     (--dry-run shows what a rule would drop)",
                ));
            }
            let policy = blockrep::replica::RetentionPolicy {
                keep_last: keep_last.unwrap_or(0),
                keep_for,
                keep_app_last: keep_app_last.unwrap_or(0),
                keep_app_for,
            };
            ops::replica_prune(path(&a.dir)?, image(&a)?, &policy, dry_run, a.out.json)
        }
    }
}

fn failover(c: FailoverCommand) -> Result<()> {
    use failover::FailoverAction as A;
    let (a, action) = match c {
        FailoverCommand::Promote { replica, point } => (replica, A::Promote(point)),
        FailoverCommand::Switch { replica, point } => (replica, A::Switch(point)),
        FailoverCommand::Commit(replica) => (replica, A::Commit),
        FailoverCommand::Now { replica, point } => (replica, A::Now(point)),
        FailoverCommand::Status(replica) => (replica, A::Status),
        FailoverCommand::Planned { replica: a, source } => {
            return failover::planned(path(&a.dir)?, image(&a)?, path(&source)?, a.out.json)
        }
        FailoverCommand::Reverse {
            replica: a,
            to,
            new_replica,
        } => {
            return failover::reverse(
                path(&a.dir)?,
                image(&a)?,
                path(&to)?,
                path(&new_replica)?,
                a.out.json,
            )
        }
        FailoverCommand::Failback {
            replica: a,
            to,
            new_replica,
        } => {
            return failover::failback(
                path(&a.dir)?,
                image(&a)?,
                path(&to)?,
                path(&new_replica)?,
                a.out.json,
            )
        }
        FailoverCommand::Test(TestCommand::Start {
            dir,
            image,
            point,
            overlay,
            socket,
        }) => {
            let image = image.as_deref().map(path).transpose()?;
            return failover::test_start(path(&dir)?, image, point, &overlay, &socket);
        }
        FailoverCommand::Test(TestCommand::Stop { overlay }) => {
            return failover::test_stop(&overlay)
        }
    };
    failover::failover(path(&a.dir)?, image(&a)?, action, a.out.json)
}

fn plan(c: PlanCommand) -> Result<()> {
    let PlanCommand::Run {
        file,
        mode,
        dry_run,
        test_dir,
        out,
    } = c;
    let mode = match mode {
        ModeArg::Test => blockrep::failover::PlanMode::Test,
        ModeArg::Planned => blockrep::failover::PlanMode::Planned,
        ModeArg::Unplanned => blockrep::failover::PlanMode::Unplanned,
    };
    plan::run(
        &file,
        plan::RunOptions {
            mode,
            dry_run,
            test_dir,
            json: out.json,
        },
    )
}

fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let secs = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("{s:?}: use s, m, h or d")),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(secs))
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is not a duration (a number with s, m, h or d)"))
}

/// Writes `blockrep.1` and a page per subcommand (`blockrep-replica-status.1`, …).
fn man(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create the man directory", e))?;
    fn write(dir: &std::path::Path, cmd: clap::Command, name: &str) -> Result<()> {
        let file = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .render(&mut buf)
            .map_err(|e| Error::io("render a man page", e))?;
        std::fs::write(&file, buf)
            .map_err(|e| Error::io("write a man page", e).with_path(&file))?;
        for sub in cmd
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            let sub_name = format!("{name}-{}", sub.get_name());
            write(dir, sub.clone().name(sub_name.clone()), &sub_name)?;
        }
        Ok(())
    }
    let mut cmd = Cli::command();
    cmd.build();
    write(dir, cmd, "blockrep")
}

fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let (num, shift) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    num.parse::<u64>()
        .map_err(|_| format!("{s:?} is not a size (a number with K, M or G)"))?
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s} is too large"))
}

/// Bytes for people.
pub fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A progress bar on standard error (indicatif: drawn only on a terminal).
pub struct Progress(ProgressBar);

impl Progress {
    /// A bar for `what`, out of `total` units.
    pub fn new(what: &'static str, total: u64) -> Self {
        let bar = ProgressBar::new(total.max(1));
        bar.set_style(
            ProgressStyle::with_template("  {msg} [{bar:25}] {percent:>3}% {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("#> "),
        );
        bar.set_message(what);
        Progress(bar)
    }

    /// `done` units are done.
    pub fn set(&self, done: u64) {
        self.0.set_position(done);
    }

    /// All done: the final line stays.
    pub fn done(&self) {
        self.0.finish();
    }
}
