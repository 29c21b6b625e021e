//! An append-only JSON Lines file whose lines stay whole.
//!
//! Each record is serialized in full, newline included, and written with a
//! single `write` on a file opened in append mode, under a lock, so lines
//! from concurrent tasks never interleave. A process killed mid-write can
//! leave only the line in flight cut short (the kernel checks for a fatal
//! signal between pages), and only at the end of the file: readers skip a
//! last line with no newline, and opening the file again cuts it off, with
//! a warning, before anything is appended. A write that fails (a full disk)
//! is taken back, so a later line never glues onto a partial one.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

/// An open JSON Lines file; clones append to the same file.
#[derive(Debug, Clone)]
pub(crate) struct JsonlFile {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    file: Mutex<File>,
    sync: bool,
}

impl JsonlFile {
    /// Opens `path` for appending, creating it and repairing a torn tail.
    /// With `sync`, every line is flushed to the disk before `append`
    /// returns (survives power loss, costs a disk flush per line).
    pub(crate) fn open(path: &Path, sync: bool) -> io::Result<Self> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let cut = repair_tail(&mut file)?;
        if cut > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = cut,
                "cut an unfinished last line off a JSON Lines file"
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                file: Mutex::new(file),
                sync,
            }),
        })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends `record` as one line, on a blocking thread.
    ///
    /// Cancel safety: dropping the future does not stop the write, which
    /// completes (or fails) on its own thread; the line is whole either way.
    pub(crate) async fn append(&self, record: &impl Serialize) -> io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.write_line(&line))
            .await
            .map_err(io::Error::other)?
    }
}

impl Inner {
    fn write_line(&self, line: &[u8]) -> io::Result<()> {
        let mut file = self.file.lock();
        let before = file.metadata()?.len();
        let written = (|| {
            // One write call for the whole line: appends of a few kilobytes
            // to a regular file are not split by a signal.
            let written = file.write(line)?;
            if written < line.len() {
                // Short writes happen when the disk is nearly full.
                file.write_all(&line[written..])?;
            }
            if self.sync {
                file.sync_data()?;
            }
            Ok(())
        })();
        if written.is_err() {
            // Take back a partial line (the disk filled up mid-way), so the
            // next line does not glue onto it.
            let _ = file.set_len(before);
        }
        written
    }
}

/// Cuts everything after the last newline; returns how many bytes went.
fn repair_tail(file: &mut File) -> io::Result<u64> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(0);
    }
    // Walk back in blocks to the last newline.
    const BLOCK: u64 = 4096;
    let mut end = len;
    let mut buf = vec![0_u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let block = &mut buf[..usize::try_from(end - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(block)?;
        if let Some(newline) = block.iter().rposition(|&byte| byte == b'\n') {
            let keep = start + newline as u64 + 1;
            if keep < len {
                file.set_len(keep)?;
            }
            return Ok(len - keep);
        }
        end = start;
    }
    file.set_len(0)?;
    Ok(len)
}

/// Reads every whole line of a JSON Lines file as `T`. An unfinished last
/// line (being written right now) is left out; any other line that does not
/// parse is an error naming its number.
pub(crate) fn read_lines<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<Vec<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line).map_err(|error| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} line {}: {error}", path.display(), index + 1),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("deputy-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        path
    }

    #[tokio::test]
    async fn appends_whole_lines() {
        let path = temp_path("whole.jsonl");
        let file = JsonlFile::open(&path, true).unwrap();
        file.append(&serde_json::json!({"n": 1})).await.unwrap();
        file.append(&serde_json::json!({"n": 2})).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n"
        );
        let values: Vec<serde_json::Value> = read_lines(&path).unwrap();
        assert_eq!(values.len(), 2);
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_before_new_lines() {
        let path = temp_path("torn.jsonl");
        std::fs::write(&path, "{\"n\":1}\n{\"n\":2}\n{\"n\":3,\"par").unwrap();
        let file = JsonlFile::open(&path, false).unwrap();
        file.append(&serde_json::json!({"n": 4})).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"n\":1}\n{\"n\":2}\n{\"n\":4}\n"
        );
    }

    #[test]
    fn a_file_with_no_newline_at_all_is_emptied() {
        let path = temp_path("nonewline.jsonl");
        std::fs::write(&path, "x".repeat(10_000)).unwrap();
        JsonlFile::open(&path, false).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn a_newline_far_back_is_found_across_blocks() {
        let path = temp_path("far.jsonl");
        let text = format!("{{\"n\":1}}\n{}", "y".repeat(9_000));
        std::fs::write(&path, text).unwrap();
        JsonlFile::open(&path, false).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":1}\n");
    }

    #[test]
    fn an_unfinished_last_line_is_left_out_when_reading() {
        let path = temp_path("live.jsonl");
        std::fs::write(&path, "{\"n\":1}\n{\"n\":2,\"pa").unwrap();
        let values: Vec<serde_json::Value> = read_lines(&path).unwrap();
        assert_eq!(values, [serde_json::json!({"n": 1})]);
    }

    #[test]
    fn a_bad_line_is_named_by_number() {
        let path = temp_path("bad.jsonl");
        std::fs::write(&path, "{\"n\":1}\nnope\n").unwrap();
        let error = read_lines::<serde_json::Value>(&path)
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 2"), "{error}");
    }
}
