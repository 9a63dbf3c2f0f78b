//! Writing a log file so that a crash never leaves a file that looks
//! complete but is not.

use super::{LogHeader, LogSummary, LogWriter, WriterOptions};
use crate::error::{Error, Result};
use crate::io::{Dir, Storage, StorageWriter};
use std::io::BufWriter;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::Arc;

type FileWriter = LogWriter<BufWriter<StorageWriter<Arc<dyn Storage>>>>;

/// A log being written to `NAME.partial`; [`commit`](Self::commit) finishes
/// it, syncs it, renames it to `NAME` and syncs the directory. Dropped
/// without commit, the partial file is removed.
pub struct LogFile {
    writer: Option<FileWriter>,
    dir: Arc<dyn Dir>,
    name: String,
    partial: String,
}

impl LogFile {
    /// Starts writing the log that will be `path`.
    pub fn create(path: impl AsRef<Path>, header: LogHeader, opts: WriterOptions) -> Result<Self> {
        let (dir, name) = crate::io::split_path(path.as_ref())?;
        Self::create_in(dir, &name, header, opts)
    }

    /// Starts writing the log that will be `name` in `dir`.
    pub fn create_in(
        dir: Arc<dyn Dir>,
        name: &str,
        header: LogHeader,
        opts: WriterOptions,
    ) -> Result<Self> {
        let partial = format!("{name}.partial");
        let at = |e: Error| match dir.path_of(&partial) {
            Some(p) => e.with_path(p),
            None => e,
        };
        let file = dir.create(&partial).map_err(at)?;
        let out = BufWriter::with_capacity(1 << 20, StorageWriter::new(file, 0));
        let writer = match LogWriter::new(out, header, opts) {
            Ok(w) => w,
            Err(e) => {
                let _ = dir.remove(&partial);
                return Err(at(e));
            }
        };
        Ok(LogFile {
            writer: Some(writer),
            dir,
            name: name.to_owned(),
            partial,
        })
    }

    /// Finishes the log and makes it durable under its final name.
    pub fn commit(mut self) -> Result<LogSummary> {
        let w = self.writer.take().expect("writer present until commit");
        let result = (|| {
            let (buf, summary) = w.finish()?;
            let (file, _) = buf
                .into_inner()
                .map_err(|e| Error::io("flush log", e.into_error()))?
                .into_inner();
            file.sync()?;
            self.dir.rename(&self.partial, &self.name)?;
            self.dir.sync()?;
            Ok(summary)
        })();
        result.map_err(|e: Error| {
            let _ = self.dir.remove(&self.partial);
            match self.dir.path_of(&self.partial) {
                Some(p) => e.with_path(p),
                None => e,
            }
        })
    }
}

impl Deref for LogFile {
    type Target = FileWriter;
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
            let _ = self.dir.remove(&self.partial);
        }
    }
}
