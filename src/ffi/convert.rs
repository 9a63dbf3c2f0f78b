//! The one conversion layer between C and the core: every export takes
//! its handles, inputs and outputs through these functions, so each rule
//! is written once.
//!
//! * **Handles** ([`Handle`]): a new one comes from [`handle_out`] (or
//!   [`new_handle`]); [`borrow`] takes it back from a pointer, refusing
//!   null (`INVALID_ARGUMENT`) and a pointer whose tag is not its type's
//!   (`MISUSE`: a handle of another type, or one already freed whose
//!   memory was not reused); [`free`] takes it back for good, refusing a
//!   second free of the same pointer.
//! * **Out-parameters**: [`need`] checks one before any work is done (so a
//!   null `out` never leaves a half-made object behind); [`write_out`]
//!   writes one.
//! * **Inputs**: [`slice_in`], [`slice_out`], [`bytes_in`], [`bytes_out`]
//!   (caller arrays and buffers), [`str_in`], [`path_in`] and
//!   [`opt_path_in`] (NUL-terminated UTF-8), [`struct_in`], [`digest_in`],
//!   [`disk_id_in`]; [`handles_in`] (arrays of handles); [`opt_out`]
//!   (optional outputs).
//! * **Output strings** ([`string_out`]), one policy: the length without
//!   the NUL goes to `*out_len` first; a null `buf` with `len` 0 only asks
//!   for it; a buffer too small is refused (`INVALID_ARGUMENT`) and left
//!   untouched, so the caller allocates `out_len + 1` and calls again.

use crate::error::{Error, ErrorKind, Result};
use crate::id::DiskId;
use crate::log::Digest;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::ffi::{c_char, CStr};

/// A C handle: an opaque struct owning a core value. The pointer C holds
/// is to a [`Tagged`] allocation, so a pointer to something else is caught.
pub(crate) trait Handle: Sized + 'static {
    /// The core value.
    type Inner;
    /// The handle's name in messages ("pipeline", "replica").
    const NAME: &'static str;
    /// The tag of a live handle of this type.
    const TAG: u64;
    /// Wraps a core value.
    fn wrap(inner: Self::Inner) -> Self;
    /// The core value.
    fn inner(&self) -> &Self::Inner;
    /// The core value, mutably (for the calls that own the handle).
    fn inner_mut(&mut self) -> &mut Self::Inner;
    /// Unwraps the core value.
    fn into_inner(self) -> Self::Inner;
}

/// What a handle pointer points at: the tag first in every handle type
/// (`repr(C)`), so reading it through a pointer of the wrong handle type
/// still reads a tag, and finds it is not this type's.
#[repr(C)]
struct Tagged<H> {
    tag: u64,
    handle: H,
}

/// Declares the handle type `$t` (defined beside it with the one field
/// `inner: $inner`) as a [`Handle`] named `$name`.
macro_rules! handle {
    ($t:ident, $inner:ty, $name:literal) => {
        impl $crate::ffi::convert::Handle for $t {
            type Inner = $inner;
            const NAME: &'static str = $name;
            const TAG: u64 = $crate::ffi::convert::tag_of($name);
            fn wrap(inner: $inner) -> Self {
                $t { inner }
            }
            fn inner(&self) -> &$inner {
                &self.inner
            }
            fn inner_mut(&mut self) -> &mut $inner {
                &mut self.inner
            }
            fn into_inner(self) -> $inner {
                self.inner
            }
        }
    };
}
pub(crate) use handle;

/// A tag from a handle's name (FNV-1a), never 0 (the dead tag).
pub(crate) const fn tag_of(name: &str) -> u64 {
    let b = name.as_bytes();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < b.len() {
        h ^= b[i] as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    h | 1
}

/// The error for a null pointer named `what`.
pub(crate) fn null(what: &str) -> Error {
    Error::invalid(format!("{what} is a null pointer"))
}

/// Live handles: a second `_free` of the same pointer is refused rather
/// than freeing memory twice. Only creation and release touch it, never
/// the hot calls.
static LIVE: Mutex<Option<HashSet<usize>>> = Mutex::new(None);

/// A new handle owning `inner`; the caller's until freed.
pub(crate) fn new_handle<H: Handle>(inner: H::Inner) -> *mut H {
    let p = Box::into_raw(Box::new(Tagged {
        tag: H::TAG,
        handle: H::wrap(inner),
    }));
    LIVE.lock()
        .get_or_insert_with(HashSet::new)
        .insert(p as usize);
    p.cast()
}

/// Writes a new handle owning `inner` to `*out` (checked non-null).
pub(crate) fn handle_out<H: Handle>(out: *mut *mut H, inner: H::Inner) -> Result<()> {
    need(out, "out")?;
    write_out(out, new_handle::<H>(inner))
}

/// The core value behind handle `p`.
pub(crate) fn borrow<'a, H: Handle>(p: *const H) -> Result<&'a H::Inner> {
    // SAFETY: per every export's contract `p` is null (refused here) or a
    // handle from `new_handle` (a `Tagged<H>`) not yet freed; the tag
    // check below catches some breaches of that contract, not all.
    let t = unsafe { p.cast::<Tagged<H>>().as_ref() }.ok_or_else(|| null(H::NAME))?;
    if t.tag != H::TAG {
        return Err(Error::new(
            ErrorKind::Misuse,
            format!(
                "not a live {} handle (freed already, or another type)",
                H::NAME
            ),
        ));
    }
    Ok(t.handle.inner())
}

/// The core value behind handle `p`, for the calls that own the handle
/// for their duration (one thread at a time, per their contract).
pub(crate) fn borrow_mut<'a, H: Handle>(p: *mut H) -> Result<&'a mut H::Inner> {
    borrow(p.cast_const())?;
    // SAFETY: a live `Tagged<H>` (checked just above); exclusive for the
    // call per its contract.
    Ok(unsafe { &mut *p.cast::<Tagged<H>>() }.handle.inner_mut())
}

/// Takes handle `p` back for good: null is an invalid argument; a pointer
/// that is not a live handle (freed already, or never created) is misuse.
pub(crate) fn free<H: Handle>(p: *mut H) -> Result<H::Inner> {
    if p.is_null() {
        return Err(null(H::NAME));
    }
    let live = LIVE
        .lock()
        .as_mut()
        .is_some_and(|s| s.remove(&(p as usize)));
    if !live {
        return Err(Error::new(
            ErrorKind::Misuse,
            format!("{} was already released, or never created", H::NAME),
        ));
    }
    // SAFETY: `p` came from `new_handle` (Box::into_raw of a
    // Box<Tagged<H>>) and was live until the removal just above, which
    // only one caller can win: a valid, uniquely owned allocation.
    let mut b = unsafe { Box::from_raw(p.cast::<Tagged<H>>()) };
    // Dead before its memory is freed: a later use finds no live tag
    // unless the memory was reused.
    b.tag = 0;
    Ok(b.handle.into_inner())
}

/// Writes `v` to `*out` when `out` is not null (an optional output).
pub(crate) fn opt_out<T>(out: *mut T, v: T) {
    if !out.is_null() {
        // SAFETY: non-null; writable per the export's contract.
        unsafe { out.write(v) };
    }
}

/// A copy of the caller's struct at `p`.
pub(crate) fn struct_in<T: Copy>(p: *const T, what: &str) -> Result<T> {
    // SAFETY: null (refused) or readable per the export's contract.
    unsafe { p.as_ref() }.copied().ok_or_else(|| null(what))
}

/// The core values behind an array of `n` handles (a null array, an empty
/// one or a null member is refused).
pub(crate) fn handles_in<'a, H: Handle>(p: *const *const H, n: usize) -> Result<Vec<&'a H::Inner>> {
    if n == 0 {
        return Err(null(H::NAME));
    }
    slice_in(p, n, H::NAME)?
        .iter()
        .map(|&h| borrow(h))
        .collect()
}

/// Refuses a null out-parameter `what`; call before any work is done.
pub(crate) fn need<T>(out: *mut T, what: &str) -> Result<()> {
    if out.is_null() {
        Err(null(what))
    } else {
        Ok(())
    }
}

/// Writes `v` to `*out` (a null `out` is refused).
pub(crate) fn write_out<T>(out: *mut T, v: T) -> Result<()> {
    need(out, "out")?;
    // SAFETY: non-null; writable per the export's contract.
    unsafe { out.write(v) };
    Ok(())
}

/// `n` readable elements at `p` (null only when `n` is 0).
pub(crate) fn slice_in<'a, T>(p: *const T, n: usize, what: &str) -> Result<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-null with `n` readable elements per the export's contract.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// `n` writable elements at `p` (null only when `n` is 0).
pub(crate) fn slice_out<'a, T>(p: *mut T, n: usize, what: &str) -> Result<&'a mut [T]> {
    if n == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-null with `n` writable elements per the export's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, n) })
}

/// `len` readable bytes at `buf` (null only when `len` is 0).
pub(crate) fn bytes_in<'a>(buf: *const u8, len: usize) -> Result<&'a [u8]> {
    slice_in(buf, len, "buf")
}

/// `len` writable bytes at `buf` (null only when `len` is 0).
pub(crate) fn bytes_out<'a>(buf: *mut u8, len: usize) -> Result<&'a mut [u8]> {
    slice_out(buf, len, "buf")
}

/// A NUL-terminated UTF-8 string named `what`.
pub(crate) fn str_in<'a>(p: *const c_char, what: &str) -> Result<&'a str> {
    if p.is_null() {
        return Err(null(what));
    }
    // SAFETY: non-null and NUL-terminated per the export's contract.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Error::invalid(format!("{what} is not UTF-8")))
}

/// A NUL-terminated UTF-8 path.
pub(crate) fn path_in<'a>(p: *const c_char) -> Result<&'a str> {
    str_in(p, "path")
}

/// [`path_in`], where null means none.
pub(crate) fn opt_path_in<'a>(p: *const c_char) -> Result<Option<&'a str>> {
    if p.is_null() {
        Ok(None)
    } else {
        path_in(p).map(Some)
    }
}

/// `N` readable bytes at `p`.
fn array_in<const N: usize>(p: *const u8, what: &str) -> Result<[u8; N]> {
    if p.is_null() {
        return Err(null(what));
    }
    let mut a = [0u8; N];
    // SAFETY: non-null with N readable bytes per the export's contract.
    a.copy_from_slice(unsafe { std::slice::from_raw_parts(p, N) });
    Ok(a)
}

/// A 32-byte content digest.
pub(crate) fn digest_in(p: *const u8) -> Result<Digest> {
    array_in(p, "digest").map(Digest)
}

/// A disk id.
pub(crate) fn disk_id_in(p: *const super::types::blockrep_disk_id) -> Result<DiskId> {
    struct_in(p, "disk_id").map(DiskId::from)
}

/// Writes `s` under the one output-string policy (module docs): its length
/// to `*out_len`, then, when `buf` holds `len` > its length bytes, the
/// string and a NUL.
pub(crate) fn string_out(s: &str, buf: *mut c_char, len: usize, out_len: *mut usize) -> Result<()> {
    write_out(out_len, s.len())?;
    if buf.is_null() && len == 0 {
        return Ok(());
    }
    if buf.is_null() || len <= s.len() {
        return Err(Error::invalid(format!(
            "a string of {} bytes does not fit a buffer of {len}: pass {} or more",
            s.len(),
            s.len() + 1
        )));
    }
    // SAFETY: `buf` holds `len` > s.len() writable bytes per the contract.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(())
}
