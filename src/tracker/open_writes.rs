//! Writes begun without a guard (callers that cannot hold one, such as
//! the C ABI), by range, so that an end without its begin, or a second end,
//! is refused instead of completing another write that is still in flight
//! (which would let its region's intent bit be cleared under it).

use crate::error::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use std::collections::HashMap;

/// A multiset of the `(offset, len)` ranges begun and not yet ended.
#[derive(Debug, Default)]
pub(crate) struct OpenWrites(Mutex<HashMap<(u64, u64), u32>>);

impl OpenWrites {
    /// Records a write begun.
    pub fn begin(&self, offset: u64, len: u64) {
        *self.0.lock().entry((offset, len)).or_insert(0) += 1;
    }

    /// Records the end of a write begun over the same range; misuse when
    /// none is open.
    pub fn end(&self, offset: u64, len: u64) -> Result<()> {
        let mut open = self.0.lock();
        match open.get_mut(&(offset, len)) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                open.remove(&(offset, len));
            }
            None => {
                return Err(Error::new(
                    ErrorKind::Misuse,
                    format!(
                        "end of a write of {len} bytes at {offset} that was never begun \
                         (or was ended already)"
                    ),
                ))
            }
        }
        Ok(())
    }
}
