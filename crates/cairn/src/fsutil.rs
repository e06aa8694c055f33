//! File-system helpers that keep half-done work invisible: write to a hidden
//! sibling, fsync, rename; directory fsync; safe relative paths.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Writes `data` to `path` atomically (temporary sibling, fsync, rename, fsync dir).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tmp_sibling(path);
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_dir(dir)
}

/// `.<name>.tmp-<pid>` beside `path`.
pub fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// fsyncs a directory so a rename in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Checks that `rel` is a plain relative path below `prefix` (no absolute
/// path, no `..`, no `.`, no empty component) and returns it as a path.
pub fn safe_relative(rel: &str, prefix: &str) -> Result<PathBuf> {
    if rel.contains('\0') || rel.contains('\\') {
        bail!("unsafe path {rel:?}: forbidden character");
    }
    let p = Path::new(rel);
    let mut comps = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => comps.push(s),
            _ => bail!("unsafe path {rel:?}: absolute paths, `.` and `..` are not allowed"),
        }
    }
    if rel
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("unsafe path {rel:?}: empty, `.` or `..` component");
    }
    if comps.first().map(|c| c.to_str()) != Some(Some(prefix)) || comps.len() < 2 {
        bail!("unsafe path {rel:?}: not inside {prefix}/");
    }
    Ok(p.to_path_buf())
}

/// An exclusive lock (flock) held while the value lives; the holder's pid is
/// written into the file so a refusal can name it.
pub struct Lock {
    _file: File,
}

impl Lock {
    /// Locks `path` for `what` ("mirror debian"). With `wait`, waits for the
    /// holder; otherwise refuses, naming it, and ends the message with `hint`.
    pub fn acquire(path: &Path, what: &str, wait: bool, hint: &str) -> Result<Lock> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock {}", path.display()))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(path).unwrap_or_default();
                let holder = if holder.trim().is_empty() {
                    "?".to_string()
                } else {
                    holder.trim().to_string()
                };
                if !wait {
                    bail!(
                        "{what} is locked by another cairn (pid {holder}): wait for it to finish{hint}"
                    );
                }
                eprintln!("waiting for the lock on {what} (held by pid {holder})");
                f.lock()
                    .with_context(|| format!("locking {}", path.display()))?;
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        f.set_len(0).ok();
        let _ = write!(f, "{}", std::process::id());
        Ok(Lock { _file: f })
    }
}

/// Whether this process runs as root (effective UID 0).
pub fn is_root() -> bool {
    euid() == Some(0)
}

/// This process's effective user id (from /proc/self/status).
pub fn euid() -> Option<u32> {
    fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
    })
}

/// Makes `dir` (and its parents) if needed and checks that it is a real
/// directory (not a symlink) of this user that no one else may write: files
/// written into it by name (logs, a variable store qemu opens) cannot be
/// redirected by anyone else — a `/var/tmp/...` path someone made first is
/// refused, not used.
pub fn own_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if fs::symlink_metadata(dir).is_err() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let m = fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    let me = euid().context("cannot tell this process's user id")?;
    if !m.file_type().is_dir() {
        bail!(
            "{} is not a directory (a symlink?): refusing to write into it",
            dir.display()
        );
    }
    if m.uid() != me || m.mode() & 0o022 != 0 {
        bail!(
            "{} belongs to user {} or others may write to it (mode {:o}): refusing to write into it; choose another directory",
            dir.display(),
            m.uid(),
            m.mode() & 0o7777
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_relative_refuses_escapes() {
        assert!(safe_relative("pool/main/a/a_1.deb", "pool").is_ok());
        for bad in [
            "/etc/passwd",
            "pool/../etc/passwd",
            "pool/./a",
            "dists/x",
            "pool",
            "pool//a",
            "../pool/a",
            "pool/a\0b",
        ] {
            assert!(safe_relative(bad, "pool").is_err(), "{bad}");
        }
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x/lock");
        let _held = Lock::acquire(&p, "thing t", false, "").unwrap();
        let err = Lock::acquire(&p, "thing t", false, ", or pass --wait")
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            err,
            format!(
                "thing t is locked by another cairn (pid {}): wait for it to finish, or pass --wait",
                std::process::id()
            )
        );
    }

    #[test]
    fn write_atomic_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/f");
        write_atomic(&p, b"x").unwrap();
        write_atomic(&p, b"y").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"y");
        assert_eq!(fs::read_dir(d.path().join("sub")).unwrap().count(), 1);
    }
}
