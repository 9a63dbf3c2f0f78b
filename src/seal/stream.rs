//! Sealing and opening as streams: an object is sealed chunk by chunk as
//! it is written (memory bounded by one chunk, whatever the log's size)
//! and opened chunk by chunk as it is read, each chunk authenticated
//! before a byte of it is handed out.

use super::format::{Binding, Header, BINDING_LEN, HEADER_LEN, TAG_LEN};
use super::key::{Keyring, SealKey};
use crate::error::{Error, ErrorKind, Result};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use std::io::{Read, Write};

/// The flag in a chunk's nonce that marks the last chunk: an object cut
/// short at a chunk boundary lacks it, and one extended past it has a
/// chunk after it; both are refused.
const LAST: u32 = 1;

/// The AEAD key of one object: derived from the pair's key and the
/// object's random salt, so nonces (a chunk counter) never repeat under
/// one key.
fn object_key(key: &SealKey, salt: &[u8]) -> LessSafeKey {
    let mut material = Vec::with_capacity(key.secret().len() + salt.len());
    material.extend_from_slice(key.secret());
    material.extend_from_slice(salt);
    let mut k = blake3::derive_key("blockrep seal v1 object key", &material);
    material.fill(0);
    let unbound = UnboundKey::new(&AES_256_GCM, &k).expect("AES-256 takes a 32-byte key");
    k.fill(0);
    LessSafeKey::new(unbound)
}

fn nonce(counter: u64, last: bool) -> Nonce {
    let mut n = [0; 12];
    n[..8].copy_from_slice(&counter.to_le_bytes());
    n[8..].copy_from_slice(&(if last { LAST } else { 0 }).to_le_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The additional data of every chunk: the header and the binding.
fn aad_of(header: &[u8; HEADER_LEN], binding: &Binding) -> [u8; HEADER_LEN + BINDING_LEN] {
    let mut a = [0; HEADER_LEN + BINDING_LEN];
    a[..HEADER_LEN].copy_from_slice(header);
    a[HEADER_LEN..].copy_from_slice(&binding.encode());
    a
}

/// Seals what is written to it into `W`: the header at once, then a
/// chunk whenever a full one is buffered and more follows, the last one
/// at [`finish`](Self::finish). Dropped without `finish`, the output
/// lacks its last chunk and never opens.
pub struct SealWriter<W: Write> {
    out: W,
    key: LessSafeKey,
    aad: [u8; HEADER_LEN + BINDING_LEN],
    chunk: usize,
    buf: Vec<u8>,
    counter: u64,
    written: u64,
}

impl<W: Write> std::fmt::Debug for SealWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealWriter")
            .field("chunk", &self.chunk)
            .field("counter", &self.counter)
            .field("written", &self.written)
            .finish()
    }
}

impl<W: Write> SealWriter<W> {
    /// Starts sealing into `out` with `key`, in chunks of
    /// [`DEFAULT_CHUNK`](super::DEFAULT_CHUNK) bytes.
    pub fn new(out: W, key: &SealKey, binding: &Binding) -> Result<Self> {
        Self::with_chunk(out, key, binding, super::DEFAULT_CHUNK)
    }

    /// As [`new`](Self::new), with chunks of `chunk` bytes (4 KiB to
    /// 16 MiB).
    pub fn with_chunk(out: W, key: &SealKey, binding: &Binding, chunk: u32) -> Result<Self> {
        let mut salt = [0; super::format::at::SALT_LEN];
        crate::id::fill_random(&mut salt)?;
        Self::with_fixed_salt(out, key, binding, chunk, salt)
    }

    /// As [`with_chunk`](Self::with_chunk) with a given salt: for golden
    /// files only. Two objects sealed with one key and one salt share
    /// their nonces, which breaks the encryption of both.
    #[doc(hidden)]
    pub fn with_fixed_salt(
        mut out: W,
        key: &SealKey,
        binding: &Binding,
        chunk: u32,
        salt: [u8; super::format::at::SALT_LEN],
    ) -> Result<Self> {
        if !(super::format::MIN_CHUNK..=super::format::MAX_CHUNK).contains(&chunk) {
            return Err(Error::invalid(format!(
                "a chunk is 4 KiB to 16 MiB, not {chunk} bytes"
            )));
        }
        let header = Header {
            kind: binding.kind,
            chunk,
            key_id: key.id(),
            salt,
        }
        .encode();
        out.write_all(&header)
            .map_err(|e| Error::io("write a sealed object's header", e))?;
        Ok(SealWriter {
            out,
            key: object_key(key, &salt),
            aad: aad_of(&header, binding),
            chunk: chunk as usize,
            buf: Vec::with_capacity(chunk as usize + TAG_LEN),
            counter: 0,
            written: HEADER_LEN as u64,
        })
    }

    fn seal_buffered(&mut self, last: bool) -> Result<()> {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.counter, last),
                Aad::from(&self.aad),
                &mut self.buf,
            )
            .map_err(|_| Error::new(ErrorKind::Io, "sealing a chunk failed"))?;
        self.buf.extend_from_slice(tag.as_ref());
        self.out
            .write_all(&self.buf)
            .map_err(|e| Error::io("write a sealed chunk", e))?;
        self.written += self.buf.len() as u64;
        self.counter += 1;
        self.buf.clear();
        Ok(())
    }

    /// Appends `data`.
    pub fn append(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if self.buf.len() == self.chunk {
                // More follows a full chunk: it is not the last.
                self.seal_buffered(false)?;
            }
            let n = (self.chunk - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        Ok(())
    }

    /// Seals the last chunk and flushes; returns the output and the
    /// sealed length.
    pub fn finish(mut self) -> Result<(W, u64)> {
        self.seal_buffered(true)?;
        self.out
            .flush()
            .map_err(|e| Error::io("flush a sealed object", e))?;
        Ok((self.out, self.written))
    }

    /// Sealed bytes written to the output so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Only whole chunks are ever written out; `finish` ends the object.
        Ok(())
    }
}

/// Opens a sealed object read from `R`, chunk by chunk: every chunk is
/// authenticated (against the header, the expected binding, its position
/// and whether it is the last) before its bytes are handed out.
pub struct OpenReader<R: Read> {
    input: R,
    key: LessSafeKey,
    aad: [u8; HEADER_LEN + BINDING_LEN],
    chunk: usize,
    /// One sealed chunk and the byte after it (to know whether it is the
    /// last).
    buf: Vec<u8>,
    /// Bytes of `buf` filled.
    filled: usize,
    /// The opened chunk being handed out: `buf[out.0..out.1]`.
    out: (usize, usize),
    counter: u64,
    /// Offset in the sealed object of `buf[0]`, for errors.
    offset: u64,
    done: bool,
}

impl<R: Read> std::fmt::Debug for OpenReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenReader")
            .field("chunk", &self.chunk)
            .field("counter", &self.counter)
            .field("done", &self.done)
            .finish()
    }
}

impl<R: Read> OpenReader<R> {
    /// Reads the header from `input` and prepares to open it with the
    /// keyring's key it names, as the object `binding` says it must be.
    pub fn new(mut input: R, keys: &Keyring, binding: &Binding) -> Result<Self> {
        let mut hb = [0; HEADER_LEN];
        read_full(&mut input, &mut hb).and_then(|n| {
            if n == HEADER_LEN {
                Ok(())
            } else {
                Err(unauthentic(0, "the object is shorter than a sealed header"))
            }
        })?;
        let h = Header::decode(&hb)?;
        if h.kind != binding.kind {
            return Err(unauthentic(
                0,
                &format!(
                    "a sealed {:?} object, not the {:?} expected",
                    h.kind, binding.kind
                ),
            ));
        }
        let key = keys.get(h.key_id).ok_or_else(|| {
            Error::new(
                ErrorKind::Mismatch,
                format!(
                    "sealed with key {}, which is not among the keys held ({})",
                    h.key_id,
                    keys.ids()
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        let chunk = h.chunk as usize;
        Ok(OpenReader {
            input,
            key: object_key(key, &h.salt),
            aad: aad_of(&hb, binding),
            chunk,
            buf: vec![0; chunk + TAG_LEN + 1],
            filled: 0,
            out: (0, 0),
            counter: 0,
            offset: HEADER_LEN as u64,
            done: false,
        })
    }

    /// The next chunk's bytes, authenticated; `None` after the last.
    pub fn next_chunk(&mut self) -> Result<Option<&[u8]>> {
        if self.done {
            return Ok(None);
        }
        let sealed = self.chunk + TAG_LEN;
        let got = read_full(&mut self.input, &mut self.buf[self.filled..])
            .map_err(|e| e.with_offset(self.offset))?;
        self.filled += got;
        // A full chunk followed by at least one more byte is not the
        // last; anything else is.
        let last = self.filled <= sealed;
        let n = self.filled.min(sealed);
        if n < TAG_LEN {
            return Err(unauthentic(
                self.offset,
                "the object ends inside a chunk (truncated)",
            ));
        }
        let opened = self
            .key
            .open_in_place(
                nonce(self.counter, last),
                Aad::from(&self.aad),
                &mut self.buf[..n],
            )
            .map_err(|_| {
                unauthentic(
                    self.offset,
                    &format!(
                        "chunk {} failed authentication (altered, truncated, reordered, \
                         or another object's)",
                        self.counter
                    ),
                )
            })?
            .len();
        self.out = (0, opened);
        self.counter += 1;
        self.done = last;
        Ok(Some(&self.buf[..opened]))
    }

    /// Moves the byte read past a full chunk to the front for the next.
    fn recycle(&mut self) {
        let sealed = self.chunk + TAG_LEN;
        if self.filled > sealed {
            self.buf.copy_within(sealed..self.filled, 0);
            self.filled -= sealed;
            self.offset += sealed as u64;
        } else {
            self.filled = 0;
        }
        self.out = (0, 0);
    }

    /// Opens the whole object into memory, refusing one whose plain bytes
    /// exceed `limit` (a manifest, say).
    pub fn read_to_vec(mut self, limit: usize) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        while let Some(c) = self.next_chunk()? {
            if v.len() + c.len() > limit {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("the sealed object holds more than {limit} bytes"),
                ));
            }
            v.extend_from_slice(c);
            self.recycle();
        }
        Ok(v)
    }

    /// Opens the whole object into `out`; returns the plain bytes written.
    pub fn copy_to(mut self, out: &mut dyn Write) -> Result<u64> {
        let mut total = 0;
        while let Some(c) = self.next_chunk()? {
            out.write_all(c)
                .map_err(|e| Error::io("write an opened object", e))?;
            total += c.len() as u64;
            self.recycle();
        }
        Ok(total)
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, dst: &mut [u8]) -> std::io::Result<usize> {
        while self.out.0 == self.out.1 {
            if self.done {
                return Ok(0);
            }
            if self.counter > 0 {
                self.recycle();
            }
            self.next_chunk().map_err(std::io::Error::other)?;
        }
        let n = (self.out.1 - self.out.0).min(dst.len());
        dst[..n].copy_from_slice(&self.buf[self.out.0..self.out.0 + n]);
        self.out.0 += n;
        Ok(n)
    }
}

fn unauthentic(offset: u64, what: &str) -> Error {
    Error::new(ErrorKind::Unauthentic, what).with_offset(offset)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read a sealed object", e)),
        }
    }
    Ok(n)
}
