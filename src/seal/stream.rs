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

    /// The output (to take the sealed bytes written so far out of a
    /// buffer, say).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
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

/// Opens a sealed object pushed to it in pieces of any size (as a
/// download arrives): every chunk is authenticated (against the header,
/// the expected binding, its position and whether it is the last) before
/// its bytes are handed on.
pub struct Opener {
    state: OpenState,
    /// Sealed bytes received and not yet opened.
    pending: Vec<u8>,
    counter: u64,
    /// Offset in the sealed object of `pending[0]`, for errors.
    offset: u64,
}

enum OpenState {
    /// Waiting for the header.
    Header { keys: Keyring, binding: Binding },
    /// Opening chunks.
    Chunks {
        key: Box<LessSafeKey>,
        aad: [u8; HEADER_LEN + BINDING_LEN],
        chunk: usize,
    },
    /// The last chunk was opened.
    Done,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("counter", &self.counter)
            .field("offset", &self.offset)
            .finish()
    }
}

impl Opener {
    /// Prepares to open an object that must be `binding`'s, with the
    /// keyring's key its header names.
    pub fn new(keys: &Keyring, binding: &Binding) -> Self {
        Opener {
            state: OpenState::Header {
                keys: keys.clone(),
                binding: *binding,
            },
            pending: Vec::new(),
            counter: 0,
            offset: 0,
        }
    }

    fn start(&mut self) -> Result<()> {
        let OpenState::Header { keys, binding } = &self.state else {
            return Ok(());
        };
        if self.pending.len() < HEADER_LEN {
            return Ok(());
        }
        let mut hb = [0; HEADER_LEN];
        hb.copy_from_slice(&self.pending[..HEADER_LEN]);
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
        self.state = OpenState::Chunks {
            key: Box::new(object_key(key, &h.salt)),
            aad: aad_of(&hb, binding),
            chunk: h.chunk as usize,
        };
        self.pending.drain(..HEADER_LEN);
        self.offset = HEADER_LEN as u64;
        Ok(())
    }

    /// Opens the first `n` pending bytes as the next chunk and hands its
    /// plain bytes to `out`.
    fn open_chunk(
        &mut self,
        n: usize,
        last: bool,
        out: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let OpenState::Chunks { key, aad, .. } = &self.state else {
            return Err(unauthentic(self.offset, "data after the last chunk"));
        };
        if n < TAG_LEN {
            return Err(unauthentic(
                self.offset,
                "the object ends inside a chunk (truncated)",
            ));
        }
        let counter = self.counter;
        let plain = key
            .open_in_place(
                nonce(counter, last),
                Aad::from(&aad[..]),
                &mut self.pending[..n],
            )
            .map_err(|_| {
                unauthentic(
                    self.offset,
                    &format!(
                        "chunk {counter} failed authentication (altered, truncated, \
                         reordered, or another object's)"
                    ),
                )
            })?;
        out(plain)?;
        self.pending.drain(..n);
        self.offset += n as u64;
        self.counter += 1;
        if last {
            self.state = OpenState::Done;
        }
        Ok(())
    }

    /// Takes the next sealed bytes; hands every chunk they complete to
    /// `out`, opened. A chunk is opened once a byte after it arrived (so
    /// it is known not to be the last).
    pub fn push(&mut self, data: &[u8], out: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        if matches!(self.state, OpenState::Done) {
            if data.is_empty() {
                return Ok(());
            }
            return Err(unauthentic(
                self.offset,
                "data after the last chunk (extended)",
            ));
        }
        self.pending.extend_from_slice(data);
        self.start()?;
        while let OpenState::Chunks { chunk, .. } = self.state {
            let sealed = chunk + TAG_LEN;
            if self.pending.len() <= sealed {
                break;
            }
            self.open_chunk(sealed, false, out)?;
        }
        Ok(())
    }

    /// The object ended: opens what is pending as the last chunk.
    pub fn finish(mut self, out: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<()> {
        match self.state {
            OpenState::Header { .. } => {
                Err(unauthentic(0, "the object is shorter than a sealed header"))
            }
            OpenState::Done => Ok(()),
            OpenState::Chunks { .. } => {
                let n = self.pending.len();
                self.open_chunk(n, true, out)
            }
        }
    }
}

/// Opens a sealed object read from `R` (see [`Opener`]), as a reader of
/// its plain bytes.
pub struct OpenReader<R: Read> {
    input: R,
    opener: Option<Opener>,
    /// Opened bytes not yet read: `plain[at..]`.
    plain: Vec<u8>,
    at: usize,
    buf: Vec<u8>,
}

impl<R: Read> std::fmt::Debug for OpenReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenReader")
            .field("opener", &self.opener)
            .finish()
    }
}

impl<R: Read> OpenReader<R> {
    /// Reads the header from `input` and prepares to open it with the
    /// keyring's key it names, as the object `binding` says it must be.
    pub fn new(mut input: R, keys: &Keyring, binding: &Binding) -> Result<Self> {
        let mut opener = Opener::new(keys, binding);
        let mut hb = [0; HEADER_LEN];
        let n = read_full(&mut input, &mut hb)?;
        if n < HEADER_LEN {
            return Err(unauthentic(0, "the object is shorter than a sealed header"));
        }
        opener.push(&hb, &mut |_| Ok(()))?;
        Ok(OpenReader {
            input,
            opener: Some(opener),
            plain: Vec::new(),
            at: 0,
            buf: vec![0; 256 << 10],
        })
    }

    /// Opens more: false once the object is opened whole.
    fn more(&mut self) -> Result<bool> {
        let Some(opener) = self.opener.as_mut() else {
            return Ok(false);
        };
        self.plain.clear();
        self.at = 0;
        let plain = &mut self.plain;
        let mut sink = |b: &[u8]| {
            plain.extend_from_slice(b);
            Ok(())
        };
        let n = read_full(&mut self.input, &mut self.buf)?;
        opener.push(&self.buf[..n], &mut sink)?;
        if n < self.buf.len() {
            self.opener.take().expect("held").finish(&mut sink)?;
        }
        Ok(true)
    }

    /// Opens the whole object into memory, refusing one whose plain bytes
    /// exceed `limit` (a manifest, say).
    pub fn read_to_vec(mut self, limit: usize) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        while self.more()? {
            if v.len() + self.plain.len() > limit {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("the sealed object holds more than {limit} bytes"),
                ));
            }
            v.extend_from_slice(&self.plain);
        }
        Ok(v)
    }

    /// Opens the whole object into `out`; returns the plain bytes written.
    pub fn copy_to(mut self, out: &mut dyn Write) -> Result<u64> {
        let mut total = 0;
        while self.more()? {
            out.write_all(&self.plain)
                .map_err(|e| Error::io("write an opened object", e))?;
            total += self.plain.len() as u64;
        }
        Ok(total)
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, dst: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.plain.len() {
            if !self.more().map_err(std::io::Error::other)? {
                return Ok(0);
            }
        }
        let n = (self.plain.len() - self.at).min(dst.len());
        dst[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
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
