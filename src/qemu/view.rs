//! A frozen view of a QEMU disk read over NBD, as a [`Storage`]: what the
//! log writers read from. Read-only; holes and zero extents come from the
//! export's `base:allocation` context, so a full log skips them without
//! reading them.

use crate::io::Storage;
use crate::nbd::{NbdClient, NbdExtent, STATE_ZERO};
use crate::{Error, ErrorKind, Result};
use parking_lot::Mutex;

/// The allocation context every view asks for.
pub(crate) const ALLOCATION: &str = "base:allocation";

/// A read-only [`Storage`] over one NBD export.
pub(crate) struct NbdView {
    client: Mutex<NbdClient>,
    size: u64,
    /// The allocation map, fetched on first use.
    map: Mutex<Option<Vec<NbdExtent>>>,
}

impl NbdView {
    pub(crate) fn new(client: NbdClient) -> NbdView {
        NbdView {
            size: client.size(),
            client: Mutex::new(client),
            map: Mutex::new(None),
        }
    }

    /// The extents of `context` over the whole export.
    pub(crate) fn map(&self, context: &str) -> Result<Vec<NbdExtent>> {
        self.client.lock().map(context, 0, self.size)
    }

    /// Several reads with many requests in flight.
    pub(crate) fn read_many(&self, reads: &mut [(u64, &mut [u8])]) -> Result<()> {
        self.client.lock().read_many(reads)
    }

    pub(crate) fn into_client(self) -> NbdClient {
        self.client.into_inner()
    }
}

fn read_only() -> Error {
    Error::new(ErrorKind::Misuse, "a QEMU disk's frozen view is read-only")
}

impl Storage for NbdView {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.client.lock().read(offset, buf)
    }

    fn write_at(&self, _: &[u8], _: u64) -> Result<()> {
        Err(read_only())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn len(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn set_len(&self, _: u64) -> Result<()> {
        Err(read_only())
    }

    fn next_data(&self, offset: u64) -> Result<Option<(u64, u64)>> {
        let mut map = self.map.lock();
        if map.is_none() {
            *map = Some(self.map(ALLOCATION)?);
        }
        let extents = map.as_deref().unwrap_or_default();
        // The first extent that does not read as zeros and ends after
        // `offset`, from `offset` on.
        let at = extents.partition_point(|e| e.offset + e.len <= offset);
        Ok(extents[at..]
            .iter()
            .find(|e| e.flags & STATE_ZERO == 0)
            .map(|e| {
                let start = e.offset.max(offset);
                (start, e.offset + e.len - start)
            }))
    }
}
