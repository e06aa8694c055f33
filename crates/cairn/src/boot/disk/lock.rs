//! The lock on a disk (an image file or a block device) that every command
//! takes before it mounts or writes the disk: two writers at once — two
//! pulls, a pull and `disk add` — would each set up their own loop device
//! and mount the same file system twice, which corrupts it. The lock is the
//! disk's own (flock on the file or device node, the convention systemd and
//! udev use for block devices), so another path to the same disk — a
//! symlink, `./disk.img` for `/srv/disk.img`, /dev/disk/by-id for /dev/sda —
//! meets the same lock. Readers (a dry run, `status`) share it.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How a command uses the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Looks only (a dry run, `status`): shared with other readers.
    Read,
    /// Changes it: alone.
    Write,
}

/// How long a command waits for another one's lock before it refuses (a
/// pull of a large image holds it for minutes; a timer's next pull comes).
pub const WAIT: Duration = Duration::from_secs(60);

/// A disk locked for the life of the value.
#[derive(Debug)]
pub struct DiskLock {
    file: File,
    pub disk: PathBuf,
    pub access: Access,
}

impl DiskLock {
    /// Locks `disk` for `access`, waiting up to `wait` for another holder;
    /// then refuses, naming the holder's pid when the kernel tells it.
    pub fn acquire(disk: &Path, access: Access, wait: Duration) -> Result<DiskLock> {
        let file = File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
        let t0 = Instant::now();
        let mut said = false;
        loop {
            let r = match access {
                Access::Read => file.try_lock_shared(),
                Access::Write => file.try_lock(),
            };
            match r {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    let who = holder(&file).map_or(String::new(), |p| format!(" (pid {p})"));
                    if t0.elapsed() >= wait {
                        bail!(
                            "{} is in use by another cairn{who} for {}s: nothing was done; try again when it is finished",
                            disk.display(),
                            wait.as_secs()
                        );
                    }
                    if !said {
                        crate::progress::note(&format!(
                            "waiting for another cairn{who} to finish with {}",
                            disk.display()
                        ));
                        said = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", disk.display()));
                }
            }
        }
        Ok(DiskLock {
            file,
            disk: disk.to_path_buf(),
            access,
        })
    }

    /// Whether the lock allows changing the disk.
    pub fn writable(&self) -> bool {
        self.access == Access::Write
    }

    /// The open disk the lock is on.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// The pid holding a flock on `file`, from /proc/locks.
fn holder(file: &File) -> Option<u32> {
    let m = file.metadata().ok()?;
    let (dev, ino) = (m.dev(), m.ino());
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, &want, std::process::id())
}

/// In a /proc/locks table, the first pid other than `me` with a FLOCK on
/// `id` (`MAJ:MIN:INODE`, as the table writes it).
fn holder_in(locks: &str, id: &str, me: u32) -> Option<u32> {
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let at = f.iter().position(|x| *x == "FLOCK")?;
        let pid: u32 = f.get(at + 3)?.parse().ok()?;
        (f.get(at + 4) == Some(&id) && pid != me).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_read_from_proc_locks() {
        let t = "1: FLOCK  ADVISORY  WRITE 4242 fe:01:1234 0 EOF\n\
                 2: POSIX  ADVISORY  READ 99 fe:01:1234 0 EOF\n\
                 3: FLOCK  ADVISORY  READ 7 fe:01:99 0 EOF\n";
        assert_eq!(holder_in(t, "fe:01:1234", 1), Some(4242));
        assert_eq!(holder_in(t, "fe:01:1234", 4242), None);
        assert_eq!(holder_in(t, "fe:01:5", 1), None);
    }

    /// The disk's own lock: another spelling of its path (a symlink, a
    /// relative path) meets it; readers share it, a writer waits for them
    /// and refuses after its wait, naming the holder.
    #[test]
    fn every_path_to_a_disk_meets_one_lock() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.img");
        std::fs::write(&disk, b"disk").unwrap();
        let link = d.path().join("link.img");
        std::os::unix::fs::symlink(&disk, &link).unwrap();
        let w = DiskLock::acquire(&disk, Access::Write, WAIT).unwrap();
        assert!(w.writable());
        // (flock conflicts between open files, in one process too.)
        let e = DiskLock::acquire(&link, Access::Write, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("link.img is in use by another cairn") && e.contains("nothing was done"),
            "{e}"
        );
        let dotted = d.path().join(".").join("disk.img");
        assert!(DiskLock::acquire(&dotted, Access::Read, Duration::ZERO).is_err());
        drop(w);
        let r1 = DiskLock::acquire(&link, Access::Read, Duration::ZERO).unwrap();
        let _r2 = DiskLock::acquire(&disk, Access::Read, Duration::ZERO).unwrap();
        assert!(!r1.writable());
        assert!(DiskLock::acquire(&disk, Access::Write, Duration::from_millis(300)).is_err());
    }
}
