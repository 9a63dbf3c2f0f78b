//! `blockrep plan run FILE`: a recovery plan from TOML. Groups fail over in
//! order, each between its hook commands; a dry run prints what would
//! happen; the report stops at the first failure and says where.
//!
//! ```toml
//! [[group]]
//! name = "database"
//! before = ["ssh site-a 'virsh shutdown db1'"]
//! after = ["virsh start db1"]
//!
//! [[group.machine]]
//! name = "db1"
//! [[group.machine.disk]]
//! replica = "/srv/replicas/db1-os"
//! [[group.machine.disk]]
//! replica = "/srv/replicas/db1-data"
//! point = 42
//! ```
//!
//! Hooks run with `sh -c`, with `BLOCKREP_PLAN_MODE`, `BLOCKREP_PLAN_GROUP`,
//! `BLOCKREP_PLAN_STEP` (`before` or `after`) and, after a group,
//! `BLOCKREP_PLAN_DISKS`: one `MACHINE=DISK` per line, DISK the image to
//! boot (planned and unplanned: the committed image) or the NBD address of
//! the test disk.

use crate::nbd;
use crate::ops::open_replica;
use blockrep::failover::{
    DiskFailover, MachineFailover, PlanGroup, PlanHooks, PlanMachine, PlanMode, RecoveryPlan,
};
use blockrep::io::{FileStorage, Storage};
use blockrep::{Error, ErrorKind, Result};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The plan file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    group: Vec<GroupFile>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    name: String,
    #[serde(default)]
    before: Vec<String>,
    #[serde(default)]
    after: Vec<String>,
    machine: Vec<MachineFile>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct MachineFile {
    name: String,
    disk: Vec<DiskFile>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct DiskFile {
    /// The replica directory.
    replica: PathBuf,
    /// The image when kept outside the directory.
    image: Option<PathBuf>,
    /// The point for unplanned and test failovers (default: the latest).
    point: Option<u64>,
}

/// How `plan run` was asked to run.
pub struct RunOptions {
    /// Test, planned or unplanned.
    pub mode: PlanMode,
    /// Print what would happen; change nothing.
    pub dry_run: bool,
    /// Test mode: where the overlays and NBD sockets go.
    pub test_dir: Option<PathBuf>,
    /// Print the report as JSON.
    pub json: bool,
}

fn mode_name(m: PlanMode) -> &'static str {
    match m {
        PlanMode::Test => "test",
        PlanMode::Planned => "planned",
        PlanMode::Unplanned => "unplanned",
    }
}

fn load(file: &Path) -> Result<PlanFile> {
    let text =
        std::fs::read_to_string(file).map_err(|e| Error::io("read the plan", e).with_path(file))?;
    let plan: PlanFile =
        toml::from_str(&text).map_err(|e| Error::invalid(format!("{}: {e}", file.display())))?;
    if plan.group.is_empty() {
        return Err(Error::invalid(format!("{}: no [[group]]", file.display())));
    }
    Ok(plan)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| Error::invalid(format!("{} is not UTF-8", p.display())))
}

/// `blockrep plan run FILE`.
pub fn run(file: &Path, o: RunOptions) -> Result<()> {
    let spec = load(file)?;
    if o.dry_run {
        return dry_run(&spec, o.mode, o.json);
    }
    if o.mode == PlanMode::Test && o.test_dir.is_none() {
        return Err(Error::invalid(
            "a test run needs --test-dir: its overlays and NBD sockets go there",
        ));
    }
    // Every replica opened (and locked) before the first hook runs: a
    // typo in the plan stops it before anything happened.
    let mut plan = RecoveryPlan::default();
    let mut images = HashMap::new();
    for g in &spec.group {
        let mut machines = Vec::new();
        for m in &g.machine {
            let mut disks = Vec::new();
            for (i, d) in m.disk.iter().enumerate() {
                let image = d.image.as_deref().map(path_str).transpose()?;
                let r = open_replica(path_str(&d.replica)?, image)?;
                images.insert(
                    (m.name.clone(), i),
                    d.image.clone().unwrap_or_else(|| d.replica.join("image")),
                );
                disks.push((r, d.point));
            }
            machines.push(PlanMachine {
                name: m.name.clone(),
                disks,
            });
        }
        plan.groups.push(PlanGroup {
            name: g.name.clone(),
            machines,
        });
    }
    let mut hooks = CommandHooks {
        spec: &spec,
        images,
        test_dir: o.test_dir,
        served: Vec::new(),
    };
    let report = plan.run(o.mode, &mut hooks);
    let groups: Vec<_> = report
        .groups
        .iter()
        .map(|(name, machines)| {
            json!({
                "group": name,
                "machines": machines.iter().map(|m| json!({
                    "machine": m.machine,
                    "disks": m.disks.iter().map(|d| match d {
                        DiskFailover::Test(v) => json!({"point": v.sequence(), "state": "test"}),
                        DiskFailover::Promoted(f) => json!({
                            "point": f.point(),
                            "state": if f.is_committed() { "committed" } else { "promoted" },
                        }),
                    }).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let failure = report
        .failure
        .as_ref()
        .map(|f| json!({"group": f.group.1, "step": f.step, "error": f.error.to_string()}));
    if o.json {
        println!(
            "{}",
            json!({"mode": mode_name(o.mode), "groups": groups, "failure": failure})
        );
    } else {
        for (name, machines) in &report.groups {
            println!("group {name}:");
            for m in machines {
                for (i, d) in m.disks.iter().enumerate() {
                    let what = match d {
                        DiskFailover::Test(v) => format!("test view of point {}", v.sequence()),
                        DiskFailover::Promoted(f) if f.is_committed() => {
                            format!("committed at point {}", f.point())
                        }
                        DiskFailover::Promoted(f) => format!("promoted at point {}", f.point()),
                    };
                    println!("  {} disk {i}: {what}", m.machine);
                }
            }
        }
    }
    if o.mode == PlanMode::Test {
        if report.failure.is_some() {
            crate::failover::stop_flag().store(true, Ordering::Relaxed);
        } else {
            println!("test disks served until SIGTERM or SIGINT; their writes are then discarded");
        }
        stop_tests(std::mem::take(&mut hooks.served));
    }
    if let Some(f) = &report.failure {
        return Err(Error::new(
            f.error.kind(),
            format!(
                "the plan stopped in group {} at the {}: {}",
                f.group.1, f.step, f.error
            ),
        ));
    }
    Ok(())
}

/// Prints every step the plan would take and checks what can be checked
/// without changing anything: each replica opens, each chosen point is
/// retained.
fn dry_run(spec: &PlanFile, mode: PlanMode, json_out: bool) -> Result<()> {
    let mut steps = Vec::new();
    let mut problems = Vec::new();
    for g in &spec.group {
        for c in &g.before {
            steps.push(format!("group {}: run before: {c}", g.name));
        }
        for m in &g.machine {
            for (i, d) in m.disk.iter().enumerate() {
                let image = d.image.as_deref().map(path_str).transpose()?;
                let what = match open_replica(path_str(&d.replica)?, image) {
                    Ok(r) => {
                        let latest = r.status().applied;
                        let point = match mode {
                            PlanMode::Planned => latest,
                            _ => d.point.unwrap_or(latest),
                        };
                        if !r.points().iter().any(|p| p.sequence == point) {
                            problems.push(format!(
                                "{} disk {i}: point {point} is not retained",
                                m.name
                            ));
                        }
                        match mode {
                            PlanMode::Test => format!("serve a test view of point {point}"),
                            _ => format!("promote at point {point} and commit"),
                        }
                    }
                    Err(e) => {
                        problems.push(format!("{} disk {i}: {e}", m.name));
                        "cannot be opened".into()
                    }
                };
                steps.push(format!(
                    "group {}: machine {} disk {i} ({}): {what}",
                    g.name,
                    m.name,
                    d.replica.display()
                ));
            }
        }
        for c in &g.after {
            steps.push(format!("group {}: run after: {c}", g.name));
        }
    }
    if json_out {
        println!(
            "{}",
            json!({"mode": mode_name(mode), "dry_run": true, "steps": steps, "problems": problems})
        );
    } else {
        println!("dry run of a {} failover; nothing changes", mode_name(mode));
        for s in &steps {
            println!("  {s}");
        }
        for p in &problems {
            println!("problem: {p}");
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "the plan would fail: {} problem(s)",
            problems.len()
        )))
    }
}

/// A test disk being served: its socket and overlay, and the server.
struct Served {
    socket: PathBuf,
    overlay: PathBuf,
    server: std::thread::JoinHandle<std::io::Result<()>>,
}

/// Runs the plan's hook commands and, in test mode, makes the overlays;
/// after each planned or unplanned group it commits the promotions so the
/// after hook can boot the machines on their images.
struct CommandHooks<'a> {
    spec: &'a PlanFile,
    images: HashMap<(String, usize), PathBuf>,
    test_dir: Option<PathBuf>,
    served: Vec<Served>,
}

impl CommandHooks<'_> {
    fn names(machine: &str, disk: usize) -> String {
        format!("{machine}-{disk}")
    }

    fn run_commands(
        &self,
        index: usize,
        step: &str,
        mode: PlanMode,
        disks: Option<String>,
    ) -> Result<()> {
        let g = &self.spec.group[index];
        let commands = if step == "before" {
            &g.before
        } else {
            &g.after
        };
        for c in commands {
            let mut cmd = std::process::Command::new("sh");
            cmd.arg("-c")
                .arg(c)
                .env("BLOCKREP_PLAN_MODE", mode_name(mode))
                .env("BLOCKREP_PLAN_GROUP", &g.name)
                .env("BLOCKREP_PLAN_STEP", step);
            if let Some(d) = &disks {
                cmd.env("BLOCKREP_PLAN_DISKS", d);
            }
            let status = cmd
                .status()
                .map_err(|e| Error::io(format!("run `{c}`"), e))?;
            if !status.success() {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("`{c}` exited with {status}"),
                ));
            }
        }
        Ok(())
    }
}

impl PlanHooks for CommandHooks<'_> {
    fn before_group(&mut self, index: usize, _: &PlanGroup, mode: PlanMode) -> Result<()> {
        self.run_commands(index, "before", mode, None)
    }

    fn after_group(
        &mut self,
        index: usize,
        _: &PlanGroup,
        mode: PlanMode,
        machines: &[MachineFailover],
    ) -> Result<()> {
        let mut disks = Vec::new();
        for m in machines {
            for (i, d) in m.disks.iter().enumerate() {
                match d {
                    DiskFailover::Promoted(f) => {
                        if !f.is_committed() {
                            f.commit()?;
                        }
                        let image = &self.images[&(m.machine.clone(), i)];
                        disks.push(format!("{}={}", m.machine, image.display()));
                    }
                    DiskFailover::Test(v) => {
                        let dir = self
                            .test_dir
                            .as_ref()
                            .ok_or_else(|| Error::invalid("a test run needs --test-dir"))?;
                        let socket = dir.join(format!("{}.sock", Self::names(&m.machine, i)));
                        disks.push(format!(
                            "{}=nbd+unix:///?socket={}",
                            m.machine,
                            socket.display()
                        ));
                        let overlay = dir.join(format!("{}.overlay", Self::names(&m.machine, i)));
                        // Served from now: the after hook boots the test
                        // machines on these sockets.
                        let listener = UnixListener::bind(&socket)
                            .map_err(|e| Error::io("listen", e).with_path(&socket))?;
                        let export = Arc::new(nbd::Export {
                            disk: v.clone(),
                            name: String::new(),
                            read_only: false,
                        });
                        let stop = crate::failover::stop_flag();
                        self.served.push(Served {
                            socket,
                            overlay,
                            server: std::thread::spawn(move || nbd::serve(&listener, export, stop)),
                        });
                    }
                }
            }
        }
        self.run_commands(index, "after", mode, Some(disks.join("\n")))
    }

    fn test_overlay(&mut self, machine: &str, disk: usize) -> Result<Arc<dyn Storage>> {
        let dir = self
            .test_dir
            .as_ref()
            .ok_or_else(|| Error::invalid("a test run needs --test-dir"))?;
        // The overlays hold the test VMs' writes: private, as replicas.
        blockrep::io::create_private_dir(dir)?;
        let p = dir.join(format!("{}.overlay", Self::names(machine, disk)));
        Ok(Arc::new(FileStorage::create(&p, 0)?))
    }
}

/// Waits for the test disks' servers (until SIGTERM or SIGINT, or at
/// once when `stop` is set already), then removes their sockets and
/// overlays.
fn stop_tests(served: Vec<Served>) {
    for s in served {
        let _ = s.server.join();
        let _ = std::fs::remove_file(&s.socket);
        let _ = std::fs::remove_file(&s.overlay);
    }
}
