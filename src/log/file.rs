//! Writing a log file so that a crash never leaves a file that looks
//! complete but is not.

use super::{LogHeader, LogSummary, LogWriter, WriterOptions};
use crate::error::{Error, Result};
use std::fs::File;
use std::io::BufWriter;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

/// A log being written to `NAME.partial`; [`commit`](Self::commit) finishes
/// it, syncs it, renames it to `NAME` and syncs the directory. Dropped
/// without commit, the partial file is removed.
pub struct LogFile {
    writer: Option<LogWriter<BufWriter<File>>>,
    path: PathBuf,
    partial: PathBuf,
}

impl LogFile {
    /// Starts writing the log that will be `path`.
    pub fn create(path: impl AsRef<Path>, header: LogHeader, opts: WriterOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut name = path
            .file_name()
            .ok_or_else(|| Error::invalid("log path has no file name"))?
            .to_owned();
        name.push(".partial");
        let partial = path.with_file_name(name);
        let file =
            File::create(&partial).map_err(|e| Error::io("create log", e).with_path(&partial))?;
        let writer = LogWriter::new(BufWriter::with_capacity(1 << 20, file), header, opts)
            .map_err(|e| e.with_path(&partial))?;
        Ok(LogFile {
            writer: Some(writer),
            path,
            partial,
        })
    }

    /// Finishes the log and makes it durable under its final name.
    pub fn commit(mut self) -> Result<LogSummary> {
        let w = self.writer.take().expect("writer present until commit");
        let (buf, summary) = w.finish().map_err(|e| e.with_path(&self.partial))?;
        let file = buf
            .into_inner()
            .map_err(|e| Error::io("flush log", e.into_error()).with_path(&self.partial))?;
        file.sync_all()
            .map_err(|e| Error::io("sync log", e).with_path(&self.partial))?;
        std::fs::rename(&self.partial, &self.path)
            .map_err(|e| Error::io("rename log", e).with_path(&self.partial))?;
        crate::io::sync_parent_dir(&self.path)?;
        Ok(summary)
    }
}

impl Deref for LogFile {
    type Target = LogWriter<BufWriter<File>>;
    fn deref(&self) -> &Self::Target {
        self.writer.as_ref().expect("writer present until commit")
    }
}

impl DerefMut for LogFile {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.writer.as_mut().expect("writer present until commit")
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}
