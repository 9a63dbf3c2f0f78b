//! A QMP client: the QEMU Machine Protocol on a Unix socket, as
//! `qemu-system-*` and `qemu-storage-daemon` offer it (`-qmp
//! unix:PATH,server=on,wait=off`, or `--chardev socket,...` with
//! `--monitor`). One JSON object per line; the greeting, then
//! `qmp_capabilities`, then commands answered by `return` or `error`
//! (each carrying the `id` sent), with events interleaved.
//!
//! QEMU's refusals are reported with QEMU's own message and class. Lines
//! are bounded in length and time, so a wedged or hostile peer cannot
//! hold the caller forever or fill its memory.

use crate::{Error, ErrorKind, Result};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The longest line accepted from QEMU (a `query-named-block-nodes` of
/// many nodes stays far below).
const MAX_LINE: u64 = 16 << 20;
/// Events kept for [`Qmp::take_events`]; older ones are dropped.
const MAX_EVENTS: usize = 1024;

/// A QMP connection, past the capabilities negotiation.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    events: Vec<Value>,
    /// QEMU's version as its greeting gave it (major, minor, micro).
    version: (u64, u64, u64),
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connects to the QMP socket at `path`, reads the greeting and leaves
    /// capabilities negotiation. `timeout` bounds every read and write.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let s = UnixStream::connect(path)
            .map_err(|e| Error::io("connect to QEMU's QMP socket", e).with_path(path))?;
        let io = |e| Error::io("set the QMP socket's timeouts", e);
        s.set_read_timeout(Some(timeout)).map_err(io)?;
        s.set_write_timeout(Some(timeout)).map_err(io)?;
        let writer = s
            .try_clone()
            .map_err(|e| Error::io("clone the QMP socket", e))?;
        let mut q = Qmp {
            reader: BufReader::new(s),
            writer,
            next_id: 0,
            events: Vec::new(),
            version: (0, 0, 0),
        };
        let greeting = q.read_line()?;
        let v = greeting
            .get("QMP")
            .ok_or_else(|| Error::corrupt("QMP: the first message is not QEMU's greeting"))?;
        let n = |k: &str| v["version"]["qemu"][k].as_u64().unwrap_or(0);
        q.version = (n("major"), n("minor"), n("micro"));
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    /// QEMU's version (major, minor, micro).
    pub fn version(&self) -> (u64, u64, u64) {
        self.version
    }

    fn read_line(&mut self) -> Result<Value> {
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::io(
                    "QMP: QEMU did not answer in time (is another client on this monitor?)",
                    e,
                ),
                _ => Error::io("read from QMP", e),
            })?;
        if n == 0 {
            return Err(Error::new(ErrorKind::Io, "QMP: QEMU closed the connection"));
        }
        if line.last() != Some(&b'\n') {
            return Err(Error::corrupt(format!(
                "QMP: a line of more than {MAX_LINE} bytes"
            )));
        }
        serde_json::from_slice(&line)
            .map_err(|e| Error::corrupt(format!("QMP: a line that is not JSON: {e}")))
    }

    /// Runs `command` with `arguments` (an object; `{}` for none) and
    /// returns its `return` value. A refusal is an error carrying QEMU's
    /// class and message.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "execute": command, "id": id });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| Error::io(format!("QMP: send {command}"), e))?;
        loop {
            let mut v = self.read_line()?;
            if v.get("event").is_some() {
                if self.events.len() == MAX_EVENTS {
                    self.events.remove(0);
                }
                self.events.push(v);
                continue;
            }
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                // A reply without our id (to a command sent before a
                // reconnect, say) is not ours.
                continue;
            }
            if let Some(e) = v.get("error") {
                let class = e["class"].as_str().unwrap_or("Error");
                let desc = e["desc"].as_str().unwrap_or("(no message)");
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("QEMU refused {command}: {desc} ({class})"),
                ));
            }
            return Ok(v.get_mut("return").map_or(Value::Null, Value::take));
        }
    }

    /// Runs a `transaction` of `actions` (each `{"type": ..., "data":
    /// ...}`): all take effect at one instant, or none.
    pub fn transaction(&mut self, actions: Vec<Value>) -> Result<()> {
        self.execute("transaction", json!({ "actions": actions }))
            .map(drop)
    }

    /// The events received so far (oldest first), emptied.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }
}
