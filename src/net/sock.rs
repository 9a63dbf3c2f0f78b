//! A TCP stream whose writes never raise SIGPIPE: a peer that closes the
//! connection is an error (`EPIPE`) for the write, never a signal that
//! would end the host process. A library cannot rely on the process
//! ignoring SIGPIPE (a C host keeps the default), and rustls writes
//! through `write_vectored`, which for a plain `TcpStream` is `writev`,
//! without the flag that `send` takes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// A connected socket, written with `send(MSG_NOSIGNAL)`.
#[derive(Debug)]
pub struct Sock(pub TcpStream);

impl std::ops::Deref for Sock {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.0
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            // SAFETY: the descriptor is this stream's, open while `self`
            // lives; `buf` is readable for its length.
            let n = unsafe {
                libc::send(
                    self.0.as_raw_fd(),
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

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
