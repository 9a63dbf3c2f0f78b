//! A TCP stream whose writes never raise SIGPIPE: a peer that closes the
//! connection is an error (`EPIPE`) for the write, never a signal that
//! would end the host process. A library cannot rely on the process
//! ignoring SIGPIPE (a C host keeps the default), and rustls writes
//! through `write_vectored`, which for a plain `TcpStream` is `writev`,
//! without the flag that `send` and `sendmsg` take.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// A connected socket, written with `send(MSG_NOSIGNAL)`, read through a
/// buffer: rustls asks the socket for 4 KiB at a time, which at hundreds
/// of MB/s is a system call per TLS record; the buffer takes what the
/// kernel holds (up to 256 KiB) in one.
#[derive(Debug)]
pub struct Sock {
    tcp: TcpStream,
    buf: Box<[u8]>,
    at: usize,
    end: usize,
}

impl Sock {
    /// Wraps a connected stream.
    pub fn new(tcp: TcpStream) -> Sock {
        Sock {
            tcp,
            buf: vec![0u8; 256 << 10].into_boxed_slice(),
            at: 0,
            end: 0,
        }
    }
}

impl std::ops::Deref for Sock {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.tcp
    }
}

impl Read for Sock {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.end {
            if out.len() >= self.buf.len() {
                return self.tcp.read(out);
            }
            self.end = self.tcp.read(&mut self.buf)?;
            self.at = 0;
        }
        let n = out.len().min(self.end - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            // SAFETY: the descriptor is this stream's, open while `self`
            // lives; `buf` is readable for its length.
            let n = unsafe {
                libc::send(
                    self.tcp.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return Ok(n.unsigned_abs());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Many TLS records in one call (rustls hands them over together):
    /// `sendmsg` with `MSG_NOSIGNAL`, as `writev` would without it.
    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        // At most IOV_MAX (1024 on Linux) slices in one call.
        let bufs = &bufs[..bufs.len().min(1024)];
        // SAFETY: msghdr is plain old data; all zeroes (no name, no
        // control data) is valid and the fields set below complete it.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        // `IoSlice` is ABI-compatible with `iovec` on Unix (std documents
        // it); sendmsg only reads through the pointer.
        msg.msg_iov = bufs.as_ptr().cast_mut().cast::<libc::iovec>();
        msg.msg_iovlen = bufs.len();
        loop {
            // SAFETY: the descriptor is this stream's, open while `self`
            // lives; `msg` points at `bufs`, alive and readable for the call.
            let n =
                unsafe { libc::sendmsg(self.tcp.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL) };
            if n >= 0 {
                return Ok(n.unsigned_abs());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
