//! A fault-injecting storage wrapper for crash tests.
//!
//! A [`FaultPlan`] counts the mutating operations (write, `set_len`,
//! `punch_hole`, sync) of every [`FaultStorage`] that shares it, and at the
//! chosen N-th operation injects a [`Fault`]. Crash tests run an operation
//! once to learn how many steps it takes ([`FaultPlan::ops`]), then again for
//! every N.
//!
//! A power loss drops every write not yet synced, on every storage of the
//! plan, as a machine losing power drops its page cache. The write that hits
//! the fault may be torn: its first half (whole 512-byte sectors) survives.
//! After a power loss every operation fails until the test reopens the
//! underlying storages, which then hold exactly the durable state.

use super::Storage;
use crate::error::{Error, Result};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// What happens at the chosen operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails with an I/O error (`EIO`) and changes nothing;
    /// later operations succeed.
    Error,
    /// The operation fails with `ENOSPC` and changes nothing; later
    /// operations succeed.
    NoSpace,
    /// Power is lost: unsynced writes vanish; with `torn`, the faulting
    /// write leaves its first half (whole sectors) behind.
    PowerLoss {
        /// Whether the faulting write is torn rather than lost whole.
        torn: bool,
    },
}

const SECTOR: usize = 512;

/// The shared schedule of a crash test: counts operations and fires once.
#[derive(Clone, Default)]
pub struct FaultPlan {
    state: Arc<PlanState>,
}

#[derive(Default)]
struct PlanState {
    ops: AtomicU64,
    trigger: Mutex<Option<(u64, Fault)>>,
    fired: AtomicBool,
    powered_off: AtomicBool,
    members: Mutex<Vec<Weak<dyn Volatile>>>,
}

trait Volatile: Send + Sync {
    fn drop_unsynced(&self);
}

impl std::fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultPlan")
            .field("ops", &self.ops())
            .field("trigger", &*self.state.trigger.lock())
            .field("fired", &self.fired())
            .finish()
    }
}

impl FaultPlan {
    /// A plan that only counts and never fires.
    pub fn counting() -> Self {
        Self::default()
    }

    /// A plan that injects `fault` at the `n`-th mutating operation (from 1).
    pub fn at(n: u64, fault: Fault) -> Self {
        let plan = Self::default();
        *plan.state.trigger.lock() = Some((n, fault));
        plan
    }

    /// How many mutating operations have been counted so far.
    pub fn ops(&self) -> u64 {
        self.state.ops.load(Ordering::SeqCst)
    }

    /// Whether the fault has fired.
    pub fn fired(&self) -> bool {
        self.state.fired.load(Ordering::SeqCst)
    }

    /// Whether power has been lost.
    pub fn powered_off(&self) -> bool {
        self.state.powered_off.load(Ordering::SeqCst)
    }

    /// Counts one operation; returns the fault to inject now, if any.
    fn step(&self) -> Result<Option<Fault>> {
        if self.powered_off() {
            return Err(power_is_off());
        }
        let n = self.state.ops.fetch_add(1, Ordering::SeqCst) + 1;
        let trigger = *self.state.trigger.lock();
        match trigger {
            Some((at, fault)) if at == n => {
                self.state.fired.store(true, Ordering::SeqCst);
                Ok(Some(fault))
            }
            _ => Ok(None),
        }
    }

    fn lose_power(&self) {
        self.state.powered_off.store(true, Ordering::SeqCst);
        let members: Vec<_> = self.state.members.lock().clone();
        for m in members.iter().filter_map(Weak::upgrade) {
            m.drop_unsynced();
        }
    }

    fn register(&self, member: Weak<dyn Volatile>) {
        let mut members = self.state.members.lock();
        members.retain(|m| m.strong_count() > 0);
        members.push(member);
    }
}

fn power_is_off() -> Error {
    Error::io(
        "injected power loss",
        std::io::Error::other("device is powered off"),
    )
}

fn injected(fault: Fault) -> Error {
    let errno = if fault == Fault::NoSpace {
        libc::ENOSPC
    } else {
        libc::EIO
    };
    Error::io("injected fault", std::io::Error::from_raw_os_error(errno))
}

/// How to undo one unsynced mutation: restore the old length, then the old
/// bytes at `offset`.
struct Undo {
    old_len: u64,
    offset: u64,
    old: Vec<u8>,
}

struct Shared<S> {
    inner: S,
    unsynced: Mutex<Vec<Undo>>,
}

impl<S: Storage> Shared<S> {
    fn undo_record(&self, offset: u64, len: u64) -> Result<Undo> {
        let old_len = self.inner.len()?;
        let end = offset.saturating_add(len).min(old_len);
        let mut old = vec![0; end.saturating_sub(offset) as usize];
        if !old.is_empty() {
            self.inner.read_at(&mut old, offset)?;
        }
        Ok(Undo {
            old_len,
            offset,
            old,
        })
    }
}

impl<S: Storage> Volatile for Shared<S> {
    fn drop_unsynced(&self) {
        let mut unsynced = self.unsynced.lock();
        while let Some(u) = unsynced.pop() {
            // Restoring can only fail if the inner storage itself fails, which
            // the backends used under crash tests (memory, files) do not.
            let _ = self.inner.set_len(u.old_len);
            if !u.old.is_empty() {
                let _ = self.inner.write_at(&u.old, u.offset);
            }
        }
    }
}

/// A storage that passes through to `inner` and injects its plan's fault.
pub struct FaultStorage<S: Storage + 'static> {
    shared: Arc<Shared<S>>,
    plan: FaultPlan,
}

impl<S: Storage + 'static> FaultStorage<S> {
    /// Wraps `inner`, counting its operations in `plan`.
    pub fn new(inner: S, plan: &FaultPlan) -> Self {
        let shared = Arc::new(Shared {
            inner,
            unsynced: Mutex::new(Vec::new()),
        });
        let weak: Weak<dyn Volatile> = Arc::downgrade(&shared) as Weak<dyn Volatile>;
        plan.register(weak);
        FaultStorage {
            shared,
            plan: plan.clone(),
        }
    }

    /// The wrapped storage (after a power loss: the durable state).
    pub fn inner(&self) -> &S {
        &self.shared.inner
    }

    /// The plan this storage counts in.
    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// Runs one mutation of `len` bytes at `offset`, with undo capture and
    /// fault injection. `torn_write` writes the surviving prefix of a torn
    /// write.
    fn mutate(
        &self,
        offset: u64,
        len: u64,
        op: impl FnOnce(&S) -> Result<()>,
        torn_write: impl FnOnce(&S) -> Result<()>,
    ) -> Result<()> {
        match self.plan.step()? {
            None => {
                let mut unsynced = self.shared.unsynced.lock();
                let undo = self.shared.undo_record(offset, len)?;
                op(&self.shared.inner)?;
                unsynced.push(undo);
                Ok(())
            }
            Some(Fault::PowerLoss { torn }) => {
                self.plan.lose_power();
                if torn {
                    torn_write(&self.shared.inner)?;
                }
                Err(power_is_off())
            }
            Some(f) => Err(injected(f)),
        }
    }
}

impl<S: Storage + 'static> Storage for FaultStorage<S> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if self.plan.powered_off() {
            return Err(power_is_off());
        }
        self.shared.inner.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        let torn_len = (buf.len() / 2) / SECTOR * SECTOR;
        self.mutate(
            offset,
            buf.len() as u64,
            |s| s.write_at(buf, offset),
            |s| {
                if torn_len > 0 {
                    s.write_at(&buf[..torn_len], offset)?;
                }
                Ok(())
            },
        )
    }

    fn sync(&self) -> Result<()> {
        match self.plan.step()? {
            None => {
                let mut unsynced = self.shared.unsynced.lock();
                self.shared.inner.sync()?;
                unsynced.clear();
                Ok(())
            }
            Some(Fault::PowerLoss { .. }) => {
                self.plan.lose_power();
                Err(power_is_off())
            }
            Some(f) => Err(injected(f)),
        }
    }

    fn len(&self) -> Result<u64> {
        if self.plan.powered_off() {
            return Err(power_is_off());
        }
        self.shared.inner.len()
    }

    fn identity(&self) -> Result<Option<super::DiskIdentity>> {
        self.shared.inner.identity()
    }

    fn set_len(&self, len: u64) -> Result<()> {
        let old = self.shared.inner.len()?;
        // Shrinking loses the bytes past `len`: capture them for undo.
        let (off, span) = if len < old {
            (len, old - len)
        } else {
            (old, 0)
        };
        self.mutate(off, span, |s| s.set_len(len), |_| Ok(()))
    }

    fn punch_hole(&self, offset: u64, len: u64) -> Result<bool> {
        let mut punched = false;
        self.mutate(
            offset,
            len,
            |s| {
                punched = s.punch_hole(offset, len)?;
                Ok(())
            },
            |_| Ok(()),
        )?;
        Ok(punched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemStorage;
    use crate::ErrorKind;

    fn pair(plan: &FaultPlan) -> (FaultStorage<Arc<MemStorage>>, Arc<MemStorage>) {
        let mem = Arc::new(MemStorage::zeroed(4096).unwrap());
        (FaultStorage::new(mem.clone(), plan), mem)
    }

    #[test]
    fn counts_mutations_only() {
        let plan = FaultPlan::counting();
        let (s, _) = pair(&plan);
        s.write_at(&[1; 10], 0).unwrap();
        let mut b = [0; 10];
        s.read_at(&mut b, 0).unwrap();
        s.sync().unwrap();
        s.set_len(8192).unwrap();
        s.punch_hole(0, 10).unwrap();
        assert_eq!(plan.ops(), 4);
        assert!(!plan.fired());
    }

    #[test]
    fn error_fault_changes_nothing_and_is_transient() {
        for fault in [Fault::Error, Fault::NoSpace] {
            let plan = FaultPlan::at(2, fault);
            let (s, mem) = pair(&plan);
            s.write_at(&[1; 10], 0).unwrap();
            let e = s.write_at(&[2; 10], 0).unwrap_err();
            let want = if fault == Fault::NoSpace {
                ErrorKind::NoSpace
            } else {
                ErrorKind::Io
            };
            assert_eq!(e.kind(), want);
            assert_eq!(&mem.to_vec()[..10], &[1; 10]);
            s.write_at(&[3; 10], 0).unwrap();
            assert_eq!(&mem.to_vec()[..10], &[3; 10]);
        }
    }

    #[test]
    fn power_loss_drops_unsynced_writes_on_every_member() {
        let plan = FaultPlan::at(6, Fault::PowerLoss { torn: false });
        let (a, mem_a) = pair(&plan);
        let (b, mem_b) = pair(&plan);
        a.write_at(&[1; 100], 0).unwrap(); // 1
        a.sync().unwrap(); // 2
        a.write_at(&[2; 100], 50).unwrap(); // 3
        b.write_at(&[3; 100], 0).unwrap(); // 4
        b.set_len(100).unwrap(); // 5
        assert!(a.write_at(&[4; 100], 0).is_err()); // 6: power lost
        assert!(b.sync().is_err());
        let mut want_a = vec![0; 4096];
        want_a[..100].fill(1);
        assert_eq!(mem_a.to_vec(), want_a);
        assert_eq!(mem_b.to_vec(), vec![0; 4096]);
    }

    #[test]
    fn torn_write_keeps_whole_sectors_of_its_first_half() {
        let plan = FaultPlan::at(1, Fault::PowerLoss { torn: true });
        let (s, mem) = pair(&plan);
        assert!(s.write_at(&[9; 3000], 0).is_err());
        let got = mem.to_vec();
        assert!(got[..1024].iter().all(|&b| b == 9));
        assert!(got[1024..].iter().all(|&b| b == 0));
    }

    #[test]
    fn shrink_is_undone_by_power_loss() {
        let plan = FaultPlan::at(4, Fault::PowerLoss { torn: false });
        let (s, mem) = pair(&plan);
        s.write_at(&[5; 4096], 0).unwrap();
        s.sync().unwrap();
        s.set_len(10).unwrap();
        assert!(s.sync().is_err());
        assert_eq!(mem.to_vec(), vec![5; 4096]);
    }
}
