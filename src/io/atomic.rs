//! Atomic file writes: write a temporary file next to the target, fsync it, rename it over the
//! target.
//!
//! The temporary file is `.{name}.tmp-{pid}-{n}` in the target's folder (same file system, so
//! the final `rename` is atomic on POSIX); `n` is a per-process counter so that threads writing
//! the same target do not share a temporary. On any error (including a full disk, which shows up
//! as `ENOSPC` on write, flush or fsync) the temporary is removed and the error names the target.
use super::FlatContext;
use anyhow::{anyhow, bail, Result};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates `dir` and its parents if missing; errors name the folder (and say when a path
/// component exists but is a file).
pub fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if dir.exists() {
        bail!("cannot create folder {}: a file with that name exists", dir.display());
    }
    fs::create_dir_all(dir).flat_context(|| format!("cannot create folder {}", dir.display()))
}

/// Creates the parent folder of `path` (and its parents) if missing.
pub fn ensure_parent_dir(path: &Path) -> Result<()> {
    match path.parent() {
        Some(p) => ensure_dir(p),
        None => Ok(()),
    }
}

fn temp_path(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| anyhow!("cannot write {}: the path has no file name", path.display()))?;
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp_name = format!(".{}.tmp-{}-{}", name.to_string_lossy(), std::process::id(), n);
    Ok(path.with_file_name(tmp_name))
}

/// Writes `path` atomically: `fill` writes the content into a buffered temporary file, which
/// is then flushed, fsynced and renamed over `path`. Parent folders are created as needed.
/// If `fill` or any IO step fails, the temporary is removed and an error naming `path` returned.
pub fn write_atomic<F>(path: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> Result<()>,
{
    if path.is_dir() {
        bail!("cannot write {}: it is a folder", path.display());
    }
    ensure_parent_dir(path)?;
    let tmp = temp_path(path)?;
    let result = (|| -> Result<()> {
        let file = File::create(&tmp).flat_context(|| format!("cannot create temporary file {}", tmp.display()))?;
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| anyhow!("{}", e.error()))?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            // Make the rename durable too (best effort: not every file system supports this).
            if let Some(parent) = path.parent() {
                let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
                if let Ok(d) = File::open(parent) {
                    let _ = d.sync_all();
                }
            }
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(anyhow!("cannot write {}: {e:#}", path.display()))
        }
    }
}

/// Writes `bytes` to `path` atomically (see [`write_atomic`]).
pub fn write_atomic_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| {
        w.write_all(bytes)?;
        Ok(())
    })
}

#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("msdiff-test-{}-{}", name, std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces() {
        let d = test_dir("atomic");
        let p = d.join("sub/dir/f.txt");
        write_atomic_bytes(&p, b"one").unwrap();
        write_atomic_bytes(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let leftovers: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temporary files left behind");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failure_removes_temp_and_keeps_old() {
        let d = test_dir("atomic-fail");
        let p = d.join("f.bin");
        write_atomic_bytes(&p, b"old").unwrap();
        let err = write_atomic(&p, |w| {
            w.write_all(b"partial")?;
            bail!("simulated failure (e.g. disk full)")
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("f.bin") && msg.contains("simulated"), "{msg}");
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1, "temporary file left behind");
        // A parent that is a file -> clear error.
        let err = write_atomic_bytes(&p.join("x"), b"z").unwrap_err();
        assert!(format!("{err:#}").contains("f.bin"), "{err:#}");
        fs::remove_dir_all(&d).unwrap();
    }
}
